"""The observability artefacts against real components: every PromQL of the Grafana dashboards and of the rules
file evaluates on a real Prometheus scraping a real worker, and every dashboard SQL runs on the worker's chDB.

One module-scoped stack (Tansu broker, ``cem worker``, Prometheus on loopback scraping the worker every second
with deploy/prometheus/rules/cem.rules.yml loaded) is fed two waves of touchpoints, so every counter that the
traffic touches has increased between two scrapes and rates are > 0. Wave contents: valid touchpoints on five
channels with NPS/CSAT/CES/amounts/texts, survey comments whose score labels their text (so the trainer learns
them and writes ``cem.model_metrics``), a redelivered duplicate, and three bad records with different
dead-letter reasons.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PARTITIONS, now_ms, required_binary, run, worker_settings
from test_deploy import (
    RULES_FILE,
    all_rules,
    grafana_targets,
    substitute_macros,
    substitute_promql_vars,
)
from test_top import CHANNELS, TEXTS, make_events

from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
from pipeline.runtime.embedded import WorkerProcess, publish, publish_raw
from pipeline.runtime.processes import spawn, stop
from processors.sentiment import SentimentModel
from schemas.contract import MODEL_SENTIMENT as SENTIMENT_MODEL

pytestmark = pytest.mark.integration

WAVE = 150  # valid touchpoints per wave (30 per channel)
COMMENTS = 10  # labelled survey comments (text + NPS/CSAT) added to each wave

# Dashboard/rule expressions that must return at least one series with a finite value > 0 after the traffic.
CORE_NONEMPTY = {
    "sum(rate(cem_touchpoints_processed_total[1m]))",  # throughput
    "sum by (channel) (rate(cem_touchpoints_received_total[1m]))",
    "sum by (reason, stage) (rate(cem_touchpoints_dead_lettered_total[1m]))",  # DLQ by reason
    'histogram_quantile(0.99, sum by (le) (rate(cem_processing_latency_seconds_bucket{stage="committed"}[1m])))',
    "sum by (table) (rate(cem_clickhouse_insert_rows_total[1m]))",  # ClickHouse insert rows
    "sum by (topic) (rate(cem_kafka_produced_total[1m]))",
}

# Every panel and recording-rule expression must return data after the traffic (the error and drift
# counters start at 0 for every known table, topic and model). Alerting rules are conditions: in a
# healthy stack they are (mostly) empty; only parse + evaluate is asserted (their firing is tested
# with promtool in test_deploy.py, e.g. CemThroughputDrop, which compares with an hour ago).
# Every dashboard SQL panel must return rows (Model metrics too: the waves carry labelled survey comments).


def prometheus_binary() -> str:
    return required_binary("prometheus", "prometheus")


class Prometheus:
    """A real Prometheus server on 127.0.0.1, scraping one worker every second, with the project's rules."""

    def __init__(self, binary: str, workdir: Path, metrics_port: int):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE.resolve())],
            "scrape_configs": [{"job_name": "cem-worker", "scrape_interval": "1s",
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.process = spawn(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            self.log,
        )
        return self

    def stop(self) -> None:
        stop(self.process, 10)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # 400 / 422 carry a JSON error body
            return json.load(exc)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        result = self.query(expr).get("data", {}).get("result") or []
        return float(result[0]["value"][1]) if result else None

    def wait_until(self, predicate: Any, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if predicate():
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout_s:.0f}s\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def target_up(self) -> bool:
        targets = self.api("targets")["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)


@dataclass
class Stack:
    worker: WorkerProcess
    prometheus: Prometheus
    started_ms: int
    events: list[dict] = field(default_factory=list)
    bad_reasons: set[str] = field(default_factory=set)
    received: int = 0


def bad_records(base_ms: int) -> list[tuple[bytes, bytes]]:
    """Three records the worker dead-letters, each for another reason."""
    def touchpoint(**fields: Any) -> bytes:
        record = {"event_id": "bad-x", "customer_id": "c1", "occurred_at": base_ms, "channel": "web", "type": "login"}
        return json.dumps({**record, **fields}).encode()

    return [
        (b"c1", b"\x01garbage"),  # undecodable
        (b"c1", touchpoint(event_id="bad-enum", channel="fax")),  # unknown_enum
        (b"c1", touchpoint(event_id="bad-range", type="survey_response", nps=11)),  # out_of_range
    ]


def wave_events(start_ms: int, prefix: str) -> list[dict]:
    """WAVE touchpoints from make_events plus COMMENTS survey comments among them (half a second after their
    neighbour, same customer, in event-time order) whose score labels their text: promoter and satisfied
    (NPS 10, CSAT 5) on the praise, detractor and dissatisfied (NPS 2, CSAT 1) on the complaint. These are
    the sentiment trainer's labels (SentimentModel.label_from_scores)."""
    events = make_events(WAVE, start_ms, prefix=prefix)
    after = {3 + 14 * n: n for n in range(COMMENTS)}  # every channel, both labels
    out = []
    for i, event in enumerate(events):
        out.append(event)
        if i in after:
            n = after[i]
            positive = n % 2 == 0
            out.append({"event_id": f"{prefix}comment{n}", "customer_id": event["customer_id"],
                        "occurred_at": event["occurred_at"] + 500, "channel": event["channel"],
                        "type": "survey_response", "text": TEXTS[0 if positive else 1],
                        "nps": 10 if positive else 2, "csat": 5 if positive else 1})
    return out


def labelled(events: list[dict]) -> int:
    """How many of ``events`` the sentiment trainer learns from."""
    return sum(bool(e.get("text")) and SentimentModel.label_from_scores(e.get("csat"), e.get("nps")) is not None
               for e in events)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("observability")
    with EmbeddedBroker(free_port()) as broker:
        ensure_topics(broker.bootstrap, PARTITIONS)
        settings = worker_settings(broker, workdir)
        prometheus = Prometheus(binary, workdir, settings.metrics_port).start()  # starts while the worker joins
        worker = WorkerProcess(settings, workdir / "worker.log")
        try:
            worker.start(timeout_s=90)
            prometheus.wait_until(prometheus.target_up, "prometheus did not scrape the worker")
            st = Stack(worker, prometheus, now_ms())
            base = st.started_ms - 10 * 60_000
            # Wave 1 creates the labelled series; after Prometheus has scraped them, wave 2 increases them,
            # so rate() and histogram_quantile() see an increase between two samples.
            for wave in range(2):
                events = wave_events(base + wave * WAVE * 1000, prefix=f"w{wave}-")
                bad = bad_records(base)
                run(publish(broker.bootstrap, events + [events[0]], "json"))  # + a redelivered duplicate
                run(publish_raw(broker.bootstrap, bad))
                st.events += events
                st.received += len(events) + 1 + len(bad)
                worker.wait_drained(st.received)
                expected = st.received
                # Committed latencies are observed after both sinks flushed: every counter of the wave is final.
                prometheus.wait_until(
                    lambda expected=expected: prometheus.value('sum(cem_processing_latency_seconds_count{stage="committed"})') == expected,
                    f"prometheus did not see {expected} committed touchpoints")
            st.bad_reasons = {"undecodable", "unknown_enum", "out_of_range"}
            # The trainer learns the labelled comments and, at its next publish, writes their quality figures to
            # cem.model_metrics (the version column counts the stream labels learned): wait for the last label.
            labels = labelled(st.events)
            assert labels == 2 * COMMENTS
            worker.wait_until(
                lambda _: worker.query(
                    f"SELECT max(version) FROM cem.model_metrics WHERE model = '{SENTIMENT_MODEL}'")[0][0] == labels,
                30, f"the trainer did not write model_metrics for {labels} sentiment labels", interval_s=0.2)
            # The recording rules have evaluated on the final data (evaluation_interval 1s), the lag gauge
            # (set on a 2 s timer once the worker has partitions) has been scraped and recorded, and so has the
            # model quality gauge (set when the trainer publishes, every model_publish_interval_s = 5 s).
            prometheus.wait_until(
                lambda: (prometheus.value("cem:touchpoints_processed:rate5m") or 0) > 0
                and prometheus.value("cem:latency_slo_errors:ratio_rate5m") is not None
                and prometheus.value("cem:consumer_lag:drain_seconds") is not None
                and prometheus.value("cem:model_quality:min") is not None,
                "the recording rules did not produce values")
            yield st
        finally:
            prometheus.stop()
            worker.kill()


# -- (a) PromQL on a real Prometheus --------------------------------------------------------------
def substitute_all_vars(expr: str) -> str:
    """Grafana's built-in variables -> 1m; any dashboard template variable ($channel, ${channel}) -> .*"""
    out = substitute_promql_vars(expr, rate_interval="1m", interval="1m", range_="1h")
    return re.sub(r"\$\{?\w+\}?", ".*", out)


def promql_expressions() -> list[tuple[str, str, str]]:
    """(origin, kind, expr): kind "panel", "record" or "alert"."""
    out = []
    for t in grafana_targets():
        if t["kind"] == "promql":
            out.append((f"{t['dashboard']} / {t['panel']}", "panel", substitute_all_vars(t["expr"])))
    for rule in all_rules():
        if "record" in rule:
            out.append((f"record {rule['record']}", "record", rule["expr"]))
        else:
            out.append((f"alert {rule['alert']}", "alert", rule["expr"]))
    return out


def finite_values(result: list[dict]) -> list[float]:
    values = [float(r["value"][1]) for r in result]
    return [v for v in values if math.isfinite(v)]


def test_every_promql_expression_evaluates(stack: Stack):
    prom = stack.prometheus
    expressions = promql_expressions()
    assert len([e for e in expressions if e[1] == "panel"]) >= 20 and len([e for e in expressions if e[1] != "panel"]) >= 20
    failures, empty = [], []
    for origin, kind, expr in expressions:
        assert "$" not in expr, (origin, expr)
        body = prom.query(expr)
        if body.get("status") != "success":
            failures.append(f"{origin}: {body.get('errorType')}: {body.get('error')}\n  {' '.join(expr.split())}")
            continue
        if kind != "alert" and not body["data"]["result"]:
            empty.append(f"{origin}: {' '.join(expr.split())}")
    assert not failures, "PromQL that Prometheus rejects:\n" + "\n".join(failures)
    assert not empty, "PromQL with no data after the test traffic:\n" + "\n".join(empty)


def test_core_expressions_have_data(stack: Stack):
    prom = stack.prometheus
    used = {" ".join(expr.split()) for _, _, expr in promql_expressions()}
    for expr in CORE_NONEMPTY:
        assert expr in used, f"core expression no longer in the dashboards/rules: {expr}"
        body = prom.query(expr)
        assert body["status"] == "success", body
        values = finite_values(body["data"]["result"])
        assert values and max(values) > 0, f"{expr}: {body['data']['result']}"
    # DLQ by reason shows each reason the traffic produced; the throughput split covers every channel.
    reasons = {r["metric"]["reason"] for r in prom.query(
        "sum by (reason, stage) (rate(cem_touchpoints_dead_lettered_total[1m]))")["data"]["result"]}
    assert reasons == stack.bad_reasons
    channels = {r["metric"]["channel"] for r in prom.query(
        "sum by (channel) (rate(cem_touchpoints_processed_total[1m]))")["data"]["result"]}
    assert channels == set(CHANNELS)
    # The counters Prometheus holds are exactly the traffic that was sent.
    assert prom.value("sum(cem_touchpoints_processed_total)") == len(stack.events)
    assert prom.value("sum(cem_touchpoints_deduplicated_total)") == 2
    assert prom.value("sum(cem_touchpoints_dead_lettered_total)") == 2 * len(stack.bad_reasons)
    assert prom.value('count(up{job="cem-worker"} == 1)') == 1
    p99 = prom.value('histogram_quantile(0.99, sum by (le) (rate(cem_processing_latency_seconds_bucket{stage="committed"}[1m])))')
    assert 0 < p99 <= 30


def test_rules_load_and_evaluate_without_errors(stack: Stack):
    groups = stack.prometheus.api("rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    expected = {r.get("record") or r.get("alert") for r in all_rules()}
    assert loaded == expected
    broken = [f"{r['name']}: {r.get('lastError')}" for g in groups for r in g["rules"]
              if r.get("health") != "ok" or r.get("lastError")]
    assert not broken, broken
    # No pipeline alert fires on a healthy stack (CemDeadLetterRate* have a `for:`, so at most pending).
    firing = [a["labels"]["alertname"] for a in stack.prometheus.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert not firing, firing


# -- (b) dashboard SQL on the worker's chDB -------------------------------------------------------
def test_every_dashboard_sql_runs_on_the_workers_chdb(stack: Stack):
    worker = stack.worker
    for table in ("alerts", "model_metrics"):  # the worker's DDL created them (the read side allows cem's tables only)
        assert worker.query(f"SELECT count() FROM cem.{table}")
    start_s = stack.started_ms // 1000 - 3600  # event times are ~10 minutes before the test's start
    end_s = int(time.time()) + 3600
    failures, empty, results = [], [], {}
    for t in grafana_targets():
        if t["kind"] != "sql":
            continue
        sql = substitute_macros(t["expr"], start_s, end_s, 60)
        origin = f"{t['dashboard']} / {t['panel']}"
        try:
            rows = worker.query(sql)
        except Exception as exc:
            failures.append(f"{origin}: {str(exc).splitlines()[0][:300]}\n  {sql}")
            continue
        results[t["panel"]] = rows
        if not rows:
            empty.append(f"{origin}: {sql}")
    assert not failures, "dashboard SQL that chDB rejects:\n" + "\n".join(failures)
    assert not empty, "dashboard SQL with no rows after the test traffic:\n" + "\n".join(empty)

    # A few panels checked against the traffic itself.
    nps = [e["nps"] for e in stack.events if "nps" in e]
    expected_nps = 100 * (sum(n >= 9 for n in nps) - sum(n <= 6 for n in nps)) / len(nps)
    assert results["NPS"][0][0] == pytest.approx(expected_nps)
    revenue = sum(e["amount"] * (1 if e["type"] == "purchase" else -1) for e in stack.events if "amount" in e)
    assert results["Net revenue"][0][0] == pytest.approx(revenue)
    by_channel = {}
    for _, channel, value in results["Net revenue by channel"]:
        by_channel[channel] = by_channel.get(channel, 0) + value
    assert set(by_channel) == set(CHANNELS)
    assert {row[1] for row in results["Recent dead letters (ClickHouse)"]} == stack.bad_reasons
    assert len(results["Recent dead letters (ClickHouse)"]) == 2 * len(stack.bad_reasons)
    customers = {e["customer_id"] for e in stack.events}
    assert results["Unique customers"][0][0] == len(customers)
    # The trainer's figures as of its last label: every sentiment metric at version = the labels sent.
    series = {row[1] for row in results["Model metrics (ClickHouse)"]}
    version = f" v{labelled(stack.events)}"
    final = {s.split()[1] for s in series if s.startswith(f"{SENTIMENT_MODEL} ") and s.endswith(version)}
    assert final >= {"accuracy", "macro_f1", "labels"}, series
