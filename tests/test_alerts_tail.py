"""``cem alerts tail``: its pure helpers, and the command against a real broker (Avro and JSON values,
a redelivered alert printed once, type filtering, clean exits on Ctrl-C and on an unreachable broker)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from conftest import run

from pipeline.cli import alerts as alerts_cli
from pipeline.cli import build_parser
from pipeline.cli.alerts import Deduper, decode_value, format_json, format_text, matches, normalize
from pipeline.runtime.broker import free_port
from processors.alerts import AlertConfig, detractor_alert, example_enriched
from processors.synthetic import DEFAULT_START_MS as T0  # 2026-01-01T00:00:00Z
from processors.touchpoint import Touchpoint
from schemas.codec import RecordEncoder
from schemas.contract import TOPIC_ALERTS, Rejected

ROOT = Path(__file__).resolve().parents[1]


def detractor_record(emitted_at: int = T0 + 1234) -> dict:
    tp = Touchpoint("e1", "c1", T0, "survey", "survey_response", nps=3, text="Never again")
    return detractor_alert(example_enriched(tp), AlertConfig()).to_record(emitted_at)


def anomaly_record() -> dict:
    """A channel-level alert, built by hand to the schema (no customer, no trigger events)."""
    return {
        "alert_id": "f" * 40, "type": "channel_anomaly", "severity": "critical", "customer_id": None,
        "channel": "chat", "occurred_at": T0 + 60_000, "emitted_at": T0 + 125_000,
        "reason": "CSAT on chat dropped to 41% (usual 78%).", "evidence": {"metric": "csat", "z": "-5.2"},
        "recommended_action": "check the chat queue and staffing", "model_version": None, "trigger_event_ids": [],
    }


# -- pure helpers -------------------------------------------------------------------------------------
def test_decodes_avro_and_json_values_to_the_same_record():
    record = detractor_record()
    avro = RecordEncoder("alert").encode(record)
    assert avro[:1] != b"{"
    assert decode_value(avro) == record
    assert decode_value(orjson.dumps(record)) == record
    # JSON may omit optional fields: they come back with their schema defaults, in schema order
    sparse = {k: v for k, v in record.items() if k not in ("model_version", "evidence", "customer_id")}
    assert decode_value(json.dumps(sparse).encode()) == {**record, "model_version": None, "evidence": {}, "customer_id": None}
    assert list(decode_value(json.dumps(sparse).encode())) == list(record)


def test_undecodable_values_raise_value_errors():
    with pytest.raises(Rejected):
        decode_value(b"\xc3\x01" + b"\x00" * 8 + b"body")  # single-object, but another schema's fingerprint
    with pytest.raises(ValueError):
        decode_value(b"{not json")
    with pytest.raises(ValueError, match="missing field 'reason'"):
        decode_value(json.dumps({k: v for k, v in anomaly_record().items() if k != "reason"}).encode())
    with pytest.raises(ValueError):
        normalize({})


def test_dedupe_prints_each_alert_id_once_and_is_bounded():
    dedupe = Deduper(capacity=3)
    ids = ["a", "b", "a", "c", "b", "d"]
    assert [dedupe.first(i) for i in ids] == [True, True, False, True, False, True]
    assert len(dedupe) == 3
    assert dedupe.first("a") is True  # "a" was the least recently seen: forgotten once the bound was hit
    assert Deduper().capacity == alerts_cli.DEDUPE_CAPACITY == 100_000


def test_filters_by_type_and_severity():
    det, anomaly = detractor_record(), anomaly_record()
    assert [matches(r) for r in (det, anomaly)] == [True, True]
    assert [matches(r, ["detractor"]) for r in (det, anomaly)] == [True, False]
    assert [matches(r, None, ["critical"]) for r in (det, anomaly)] == [False, True]
    assert [matches(r, ["detractor", "channel_anomaly"], ["high", "critical"]) for r in (det, anomaly)] == [True, True]


def test_formats_json_with_iso_times_and_text_lines():
    det = detractor_record()
    out = json.loads(format_json(det))
    assert out == {**det, "occurred_at": "2026-01-01T00:00:00.000Z", "emitted_at": "2026-01-01T00:00:01.234Z"}
    assert format_text(det) == f"2026-01-01T00:00:00.000Z high detractor c1: {det['reason']} -> {det['recommended_action']}"
    assert format_text(anomaly_record()) == (
        "2026-01-01T00:01:00.000Z critical channel_anomaly chat: CSAT on chat dropped to 41% (usual 78%)."
        " -> check the chat queue and staffing"
    )


def test_filters_are_validated_against_the_schema_enums(capsys):
    assert alerts_cli.ALERT_TYPES == ("detractor", "negative_feedback", "complaint_sla_breach", "churn_risk",
                                      "high_effort", "vip_at_risk", "channel_anomaly")
    assert alerts_cli.SEVERITIES == ("low", "medium", "high", "critical")
    args = build_parser().parse_args(["alerts", "tail", "--type", "detractor", "--severity", "high", "--max", "3"])
    assert (args.types, args.severities, args.max_alerts, args.timeout, args.format) == (["detractor"], ["high"], 3, None, "json")
    for bad in (["--type", "nps"], ["--severity", "urgent"], ["--max", "0"], ["--format", "xml"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["alerts", "tail", *bad])
        assert exit_.value.code == 2
    assert "invalid choice: 'nps'" in capsys.readouterr().err


# -- the command, against a real broker ---------------------------------------------------------------
def cem(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


async def publish_alerts(bootstrap: str, records: list[tuple[dict, str]]) -> None:
    """Publish ``(record, "avro" | "json")`` pairs keyed as the worker keys them, all to partition 0
    (ordering holds per partition only, and the test asserts the exact order of the output)."""
    encoder = RecordEncoder("alert")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for record, fmt in records:
            value = encoder.encode(record) if fmt == "avro" else orjson.dumps(record)
            key = (record["customer_id"] or record["channel"]).encode()
            await producer.send_and_wait(TOPIC_ALERTS, value, key=key, partition=0)
    finally:
        await producer.stop()


@pytest.mark.integration
def test_tail_prints_each_alert_once_and_filters_by_type(broker):
    det, anomaly = detractor_record(), anomaly_record()
    redelivered = {**det, "emitted_at": det["emitted_at"] + 5_000}  # same trigger, same alert_id, later wall clock
    run(publish_alerts(broker.bootstrap, [(det, "avro"), (redelivered, "avro"), (anomaly, "json")]))

    every = cem("alerts", "tail", "--from-beginning", "--max", "2", "--bootstrap", broker.bootstrap)
    assert (every.returncode, every.stderr) == (0, "")
    assert every.stdout.splitlines() == [format_json(det), format_json(anomaly)]
    assert json.loads(every.stdout.splitlines()[0])["occurred_at"] == "2026-01-01T00:00:00.000Z"

    detractors = cem("alerts", "tail", "--from-beginning", "--type", "detractor", "--timeout", "1.5",
                     "--format", "text", "--bootstrap", broker.bootstrap)
    assert (detractors.returncode, detractors.stderr) == (0, "")
    assert detractors.stdout == f"2026-01-01T00:00:00.000Z high detractor c1: {det['reason']} -> {det['recommended_action']}\n"


@pytest.mark.integration
def ignore_sigint() -> None:
    """Start as a background job of a script does (CI, ``nohup``): with SIGINT inherited ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_tail_skips_undecodable_records_and_exits_cleanly_on_ctrl_c(broker):
    """Properties: an undecodable record is one line on stderr and the tail goes on; Ctrl-C ends it
    cleanly (exit 0), even when it was started with SIGINT ignored."""
    anomaly = anomaly_record()

    async def publish_garbage_then_alert() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(TOPIC_ALERTS, b"\x01garbage", key=b"chat", partition=0)
        finally:
            await producer.stop()
        await publish_alerts(broker.bootstrap, [(anomaly, "avro")])

    run(publish_garbage_then_alert())
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "alerts", "tail", "--from-beginning", "--bootstrap", broker.bootstrap],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_sigint,
    )
    try:
        assert process.stdout.readline() == format_json(anomaly) + "\n"  # it is consuming: now interrupt it
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert (process.returncode, out) == (0, "")
    assert err == f"cem alerts tail: skipped {TOPIC_ALERTS}[0]@0: unknown_schema: not single-object encoded with this schema\n"


def test_unreachable_broker_is_one_line_and_exit_2():
    result = cem("alerts", "tail", "--bootstrap", f"127.0.0.1:{free_port()}", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("cem alerts tail: cannot reach Kafka at 127.0.0.1:")
    assert result.stderr.count("\n") == 1, result.stderr
