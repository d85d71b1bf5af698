"""``cem top``: its pure helpers, one ``--once`` frame against a real worker, and the live view in a real terminal.

The integration tests publish a known set of touchpoints (60 per channel, one duplicate, one undecodable
record) through the real broker into a real worker, then check that the frame shows exactly those counts,
per channel, in both the pipeline section (from ``/status``) and the KPI section (from ``cem.kpi_minute``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import now_ms, required_binary, run

from pipeline.cli import main
from pipeline.runtime.broker import free_port
from pipeline.runtime.embedded import publish, publish_raw
from pipeline.views import top
from processors.synthetic import kpi_totals

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("web", "mobile_app", "email", "chat", "sms")
PER_CHANNEL = 60
TEXTS = ("great service, very happy with the quick answer", "terrible experience, slow and rude support")


def make_events(n: int, start_ms: int, prefix: str = "e", customers: int = 37) -> list[dict]:
    """``n`` valid touchpoints, one second apart, round-robin over CHANNELS, with every KPI input."""
    events = []
    for i in range(n):
        event = {"event_id": f"{prefix}{i}", "customer_id": f"c{i % customers}", "occurred_at": start_ms + i * 1000,
                 "channel": CHANNELS[i % len(CHANNELS)]}
        kind = i % 6
        if kind == 0:
            event.update(type="page_view", session_id=f"s{i // 10}")
        elif kind == 1:
            event.update(type="purchase", amount=float(10 + i % 7))
        elif kind == 2:
            event.update(type="survey_response", nps=(i // 5) % 11, csat=1 + (i // 5) % 5, ces=1 + (i // 5) % 7)
        elif kind == 3:
            event.update(type="feedback", text=TEXTS[i % 2])
        elif kind == 4:
            event.update(type="complaint_opened", case_id=f"k{i}")
        else:
            event.update(type="refund", amount=2.0)
        events.append(event)
    return events


def load(broker, worker, n: int = PER_CHANNEL * len(CHANNELS)) -> list[dict]:
    """Publish ``n`` touchpoints + a duplicate + an undecodable record; wait until all are committed."""
    events = make_events(n, now_ms() - 10 * 60_000)
    run(publish(broker.bootstrap, events + [events[0]], "json"))
    run(publish_raw(broker.bootstrap, [(b"c0", b"\x01garbage")]))
    worker.wait_drained(n + 2)
    wait_for_lag_gauge(worker)
    return events


def wait_for_lag_gauge(worker, timeout_s: float = 15.0) -> dict[str, float]:
    """The worker sets cem_consumer_lag on a 2 s timer once it has partitions: wait for the first value."""
    lag: dict[str, float] = {}

    def has_lag(_status: dict) -> bool:
        lag.update(top.fetch_lag(metrics_url(worker)))
        return bool(lag)

    worker.wait_until(has_lag, timeout_s, "the worker never exported cem_consumer_lag", interval_s=0.2)
    return lag


def cells(line: str) -> list[str]:
    """The cells of a rendered table body line (header lines use ┃ and are not rows)."""
    return [c.strip() for c in line.split("│")]


def row_for(section: str, first_cell: str) -> list[str]:
    """Cells from ``first_cell`` on, in the first body row that has a cell equal to it (tables may sit side by side)."""
    for line in section.splitlines():
        parts = cells(line)
        if first_cell in parts[1:]:
            return parts[parts.index(first_cell, 1):]
    raise AssertionError(f"no row {first_cell!r} in:\n{section}")


def split_frame(frame: str) -> tuple[str, str, str]:
    """(pipeline section, KPI section, alerts section) of a rendered frame."""
    head, _, rest = frame.partition("KPIs per channel")
    kpis, _, alerts = rest.partition("Latest alerts")
    assert kpis and alerts, frame
    return head, kpis, alerts


def metrics_url(worker) -> str:
    return f"http://127.0.0.1:{worker.settings.metrics_port}"


# -- pure helpers (no processes) ------------------------------------------------------------------
def test_helpers():
    assert top.compute_rates(None, {"a": {"x": 1}}, 1.0) == {}
    assert top.compute_rates({"a": {"x": 10}}, {"a": {"x": 4, "y": 3}}, 0.5) == {"a": {"x": 0.0, "y": 6.0}}  # reset -> 0
    assert top.by_first_label({"undecodable,decode": 2, "undecodable,validate": 1, "oversize,decode": 1}) == {
        "undecodable": 3, "oversize": 1}
    text = ('cem_consumer_lag{partition="0",topic="cem.touchpoints"} 5.0\n'
            'cem_consumer_lag{partition="1",topic="cem.touchpoints"} 2.0\ncem_other_total 9.0\n')
    assert top.parse_lag(text) == {"cem.touchpoints": 7.0}
    assert top.is_missing_table(RuntimeError("Code: 60. DB::Exception: Table cem.alerts does not exist. (UNKNOWN_TABLE)"))
    assert not top.is_missing_table(RuntimeError("Code: 62. Syntax error"))
    assert "latest - INTERVAL 15 MINUTE" in top.kpi_sql("cem")


def test_unreachable_worker_is_shown_not_raised(capsys, tmp_path):
    port = free_port()
    assert main(["top", "--status-url", f"http://127.0.0.1:{port}", "--once", "--interval", "0.05"]) == 1
    out = capsys.readouterr()
    assert "unreachable" in out.out and "Traceback" not in out.out + out.err
    assert main(["top", "--data-dir", str(tmp_path), "--once"]) == 1
    out = capsys.readouterr()
    assert "no running worker under" in out.out and "Traceback" not in out.out + out.err


# -- against a real worker ------------------------------------------------------------------------
@pytest.mark.integration
def test_top_once_shows_channels_and_counts(broker, start_worker, tmp_path, capsys):
    worker = start_worker()
    events = load(broker, worker)
    expected = kpi_totals(events)

    # The data functions: what the frame is built from.
    snap = top.Collector(top.Target(status_url=worker.url, metrics_url=metrics_url(worker))).collect()
    assert snap.ok and snap.status_error is None and snap.kpi_error is None and snap.lag_error is None
    kpis = {row["channel"]: row for row in snap.kpis}
    assert set(kpis) == set(CHANNELS)
    for channel, want in expected.items():
        assert kpis[channel]["events"] == want["events"] == PER_CHANNEL
        assert kpis[channel]["nps_n"] == want["nps_responses"]
        assert kpis[channel]["nps"] == pytest.approx(100 * (want["promoters"] - want["detractors"]) / want["nps_responses"])
        assert kpis[channel]["revenue"] == pytest.approx(want["revenue"])
    assert snap.lag is not None and set(snap.lag) == {"cem.touchpoints"} and snap.lag["cem.touchpoints"] == 0
    assert snap.funnel_error is None and snap.funnel is not None
    assert snap.funnel["customers"] == len({e["customer_id"] for e in events})

    # Production form: --status-url (+ --metrics-url for the lag).
    rc = main(["top", "--status-url", worker.url, "--metrics-url", metrics_url(worker), "--once", "--interval", "0.2"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert "Traceback" not in out.out + out.err
    pipeline_part, kpi_part, alerts_part = split_frame(out.out)
    for channel in CHANNELS:
        duplicated = int(channel == events[0]["channel"])  # the duplicate is read (in), then dropped (dedup)
        assert row_for(pipeline_part, channel)[1:4] == [str(PER_CHANNEL + duplicated), str(PER_CHANNEL), str(duplicated)], out.out
        assert row_for(kpi_part, channel)[1] == str(PER_CHANNEL)
    total_row = row_for(pipeline_part, "total")
    assert total_row[1:4] == [str(len(events) + 2), str(len(events)), "1"]
    assert total_row[4:6] == ["0.0", "0.0"]  # rates from two samples: drained, so nothing flows
    assert row_for(pipeline_part, "unknown")[1:3] == ["1", "0"]  # the undecodable record has no channel
    assert row_for(pipeline_part, "undecodable")[1] == "1"
    assert row_for(pipeline_part, "ClickHouse pending rows")[1] == "0"
    assert row_for(pipeline_part, "consumer lag cem.touchpoints")[1] == "0"
    assert re.search(r"commit latency p99\s*│\s*[\d,.]+ ms", pipeline_part)
    assert "no cem.alerts table" in alerts_part or "no alerts" in alerts_part or "emitted_at" in alerts_part
    assert f"of {snap.funnel['customers']:,} customers" in out.out, out.out

    # Embedded form: --data-dir finds the worker (status and metrics ports) through worker.json.
    rc = main(["top", "--data-dir", str(tmp_path), "--once", "--interval", "0.2"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    pipeline_part, kpi_part, _ = split_frame(out.out)
    assert row_for(pipeline_part, "chat")[1] == str(PER_CHANNEL)
    assert row_for(kpi_part, "chat")[1] == str(PER_CHANNEL)
    assert row_for(pipeline_part, "consumer lag cem.touchpoints")[1] == "0"

    # Through pipeline.views.query.run_query (the --clickhouse-url path; a chdb:// URL whose engine a live worker holds
    # is read through that worker, as `cem query` does).
    rc = main(["top", "--status-url", worker.url, "--clickhouse-url", f"chdb://{tmp_path / 'clickhouse'}",
               "--once", "--interval", "0.05"])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert row_for(split_frame(out.out)[1], "sms")[1] == str(PER_CHANNEL)

    # Alerts: once cem.alerts has rows, the newest ones are shown (a detractor, through the worker).
    detractor = {"event_id": "top-detractor", "customer_id": "c7", "occurred_at": now_ms(), "channel": "web",
                 "type": "survey_response", "nps": 2, "text": "Awful, never again"}
    run(publish(broker.bootstrap, [detractor], "avro", timestamp_from_event=True))
    worker.wait_drained(len(events) + 3)
    snap = top.Collector(top.Target(status_url=worker.url)).collect()
    assert snap.alerts_error is None and snap.alerts and snap.alerts[0]["customer_id"] == "c7"
    assert main(["top", "--status-url", worker.url, "--once", "--interval", "0.05"]) == 0
    _, _, alerts_part = split_frame(capsys.readouterr().out)
    assert row_for(alerts_part, snap.alerts[0]["emitted_at"])[1:3] == ["detractor", "high"]


# -- the live view in a real terminal -------------------------------------------------------------
def tmux_or_skip() -> str:
    return required_binary("tmux", "tmux")


class Tmux:
    """One tmux server on a private socket, so nothing touches the user's sessions."""

    def __init__(self, binary: str):
        self.binary = binary
        self.socket = f"cem-top-test-{os.getpid()}-{free_port()}"

    def __call__(self, *args: str) -> str:
        # An explicit environment: a C library in the test process may have set COLUMNS/LINES=80x24 in the
        # C-level environ (which env=None would pass on), and rich would believe them over the pane size.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        proc = subprocess.run([self.binary, "-L", self.socket, *args], capture_output=True, text=True, timeout=10, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def capture(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def wait_for(self, predicate, timeout_s: float = 30.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout_s
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the terminal never showed {what} within {timeout_s:.0f}s:\n{screen}")

    def kill(self) -> None:
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def _cell(screen: str, section: int, first: str, index: int) -> str | None:
    try:
        return row_for(split_frame(screen)[section], first)[index]
    except AssertionError:
        return None


@pytest.mark.integration
def test_top_live_view_in_tmux(broker, start_worker):
    tmux = Tmux(tmux_or_skip())
    worker = start_worker()
    events = load(broker, worker)
    command = (f"cd {shlex.quote(str(ROOT))} && {shlex.quote(sys.executable)} -m pipeline.cli top "
               f"--status-url {worker.url} --metrics-url {metrics_url(worker)} --interval 0.3; "
               "echo cem-top-exited-$?; sleep 60")
    try:
        tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "50", command)
        screen = tmux.wait_for(
            lambda s: _cell(s, 1, "web", 1) == str(PER_CHANNEL) and _cell(s, 0, "total", 4) not in (None, "…"),
            what="the web channel's KPIs and rates")
        assert "Traceback" not in screen
        pipeline_part, kpi_part, _ = split_frame(screen)
        for channel in CHANNELS:
            assert row_for(pipeline_part, channel)[2] == str(PER_CHANNEL), screen
            assert row_for(kpi_part, channel)[1] == str(PER_CHANNEL), screen
        assert row_for(pipeline_part, "total")[1] == str(len(events) + 2)
        assert row_for(pipeline_part, "undecodable")[1] == "1"

        # It is live: new traffic shows up without restarting the view.
        more = make_events(50, now_ms() - 5 * 60_000, prefix="live")
        run(publish(broker.bootstrap, more, "json"))
        screen = tmux.wait_for(lambda s: _cell(s, 0, "total", 1) == str(len(events) + 2 + len(more)),
                               what="the new traffic in the totals")
        assert row_for(split_frame(screen)[0], "chat")[1] == str(PER_CHANNEL + 10)
        screen = tmux.wait_for(lambda s: _cell(s, 1, "web", 1) == str(PER_CHANNEL + 10), what="the new KPI counts")

        # Ctrl-C leaves cleanly: exit code 0, no traceback.
        tmux("send-keys", "-t", "top", "C-c")
        screen = tmux.wait_for(lambda s: "cem-top-exited-" in s, timeout_s=10, what="the view exiting")
        assert "cem-top-exited-0" in screen and "Traceback" not in screen, screen
    finally:
        tmux.kill()
