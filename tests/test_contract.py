"""The event contract: wire forms, schema evolution, every rejection reason, dedupe and enrichment."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from processors.alert_state import CustomerAlertState
from processors.customer import CustomerState, Outcome, apply, mark_written, prune_seen
from processors.ingest import Ingestor, Kind, SourceRecord
from processors.synthetic import DEFAULT_START_MS as T0  # 2026-01-01T00:00:00Z
from processors.touchpoint import Touchpoint, validate
from schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, SchemaRegistry, fingerprint, load_schema
from schemas.contract import MAX_RECORD_BYTES, Reason, Rejected, schema_json

BASE = {"event_id": "e1", "customer_id": "c1", "occurred_at": T0, "channel": "web", "type": "purchase", "amount": 12.5}


def record(value: bytes, key: bytes | None = b"c1", offset: int = 0) -> SourceRecord:
    return SourceRecord("cem.touchpoints", 0, offset, T0, key, value)


def ingest(value: bytes, key: bytes | None = b"c1", codec: AvroCodec | None = None):
    states: dict[str, CustomerState] = {}
    return Ingestor(codec or AvroCodec()).handle(record(value, key), lambda c: states.setdefault(c, CustomerState(c)))


@pytest.mark.parametrize("fmt", ["avro", "confluent", "json"])
def test_every_wire_form_decodes_to_the_same_touchpoint(fmt):
    codec = AvroCodec()
    result = ingest(codec.encode(BASE, fmt), codec=codec)
    assert result.kind is Kind.PROCESSED
    tp = result.enriched.touchpoint
    assert (tp.event_id, tp.occurred_at, tp.channel, tp.amount) == ("e1", T0, "web", 12.5)


def test_single_object_header_is_the_spec_fingerprint():
    payload = AvroCodec().encode(BASE, "avro")
    assert payload[:2] == SINGLE_OBJECT_MAGIC
    assert payload[2:10] == fingerprint(load_schema("touchpoint"))


def test_iso_8601_with_offset_and_epoch_ms_are_the_same_instant():
    a = validate({**BASE, "occurred_at": "2026-01-01T01:00:00+01:00"}, T0)
    b = validate({**BASE, "occurred_at": T0}, T0)
    assert a.occurred_at == b.occurred_at == T0


def test_a_writer_that_added_an_optional_field_is_still_read():
    """Schema evolution: v2 writers add a field with a default; the v1 reader must not break."""
    v2 = json.loads(json.dumps(schema_json("touchpoint")))
    v2["fields"].append({"name": "loyalty_tier", "type": ["null", "string"], "default": None})
    registry = SchemaRegistry.from_config()
    fp = registry.register(v2)
    body = io.BytesIO()
    writer = fastavro.parse_schema(v2)
    full = {**{f["name"]: f.get("default") for f in v2["fields"] if "default" in f}, **BASE, "loyalty_tier": "gold"}
    fastavro.schemaless_writer(body, writer, full)
    result = ingest(SINGLE_OBJECT_MAGIC + fp + body.getvalue(), codec=AvroCodec(registry))
    assert result.kind is Kind.PROCESSED
    assert result.enriched.touchpoint.amount == 12.5


BAD_JSON = [
    (Reason.MISSING_FIELD, {k: v for k, v in BASE.items() if k != "event_id"}),
    (Reason.EMPTY_FIELD, {**BASE, "customer_id": "  "}),
    (Reason.WRONG_TYPE, {**BASE, "nps": "nine"}),
    (Reason.WRONG_TYPE, {**BASE, "attributes": {"a": 1}}),
    (Reason.OUT_OF_RANGE, {**BASE, "csat": 6}),
    (Reason.OUT_OF_RANGE, {**BASE, "ces": 0}),
    (Reason.OUT_OF_RANGE, {**BASE, "amount": -1}),
    (Reason.BAD_TIMESTAMP, {**BASE, "occurred_at": "yesterday"}),
    (Reason.BAD_TIMESTAMP, {**BASE, "occurred_at": "2026-01-01T00:00:00"}),
    (Reason.FUTURE_TIMESTAMP, {**BASE, "occurred_at": T0 + 25 * 3600 * 1000}),
    (Reason.UNKNOWN_ENUM, {**BASE, "channel": "fax"}),
    (Reason.UNKNOWN_ENUM, {**BASE, "type": "teleport"}),
]


@pytest.mark.parametrize("reason,bad", BAD_JSON, ids=[f"{r.value}-{i}" for i, (r, _) in enumerate(BAD_JSON)])
def test_each_contract_violation_is_dead_lettered_with_its_reason(reason, bad):
    result = ingest(json.dumps(bad).encode(), key=str(bad.get("customer_id", "c1")).encode())
    assert result.kind is Kind.DEAD_LETTER
    assert result.dead_letter.reason is reason
    assert result.dead_letter.detail


def test_occurred_at_just_inside_24h_ahead_is_accepted():
    assert ingest(json.dumps({**BASE, "occurred_at": T0 + 24 * 3600 * 1000}).encode()).kind is Kind.PROCESSED


@pytest.mark.parametrize("payload,reason", [
    (b"not json at all", Reason.UNDECODABLE),
    (b"[1, 2, 3]", Reason.UNDECODABLE),
    (b"", Reason.UNDECODABLE),
    (SINGLE_OBJECT_MAGIC + b"\x01" * 8 + b"\x02", Reason.UNKNOWN_SCHEMA),
    (b"\x00\x00\x00\x00\x63body", Reason.UNKNOWN_SCHEMA),
    (SINGLE_OBJECT_MAGIC + fingerprint(load_schema("touchpoint")) + b"\x02", Reason.UNDECODABLE),
    (b"{" + b" " * MAX_RECORD_BYTES + b"}", Reason.OVERSIZE),
])
def test_undecodable_and_unknown_records(payload, reason):
    result = ingest(payload)
    assert result.kind is Kind.DEAD_LETTER and result.dead_letter.reason is reason


def test_avro_with_a_symbol_the_reader_does_not_know_is_unknown_enum():
    writer = json.loads(json.dumps(schema_json("touchpoint")))
    writer["fields"][3]["type"]["symbols"].append("fax")
    registry = SchemaRegistry.from_config()
    fp = registry.register(writer)
    body = io.BytesIO()
    full = {**{f["name"]: f.get("default") for f in writer["fields"] if "default" in f}, **BASE, "channel": "fax"}
    fastavro.schemaless_writer(body, fastavro.parse_schema(writer), full)
    result = ingest(SINGLE_OBJECT_MAGIC + fp + body.getvalue(), codec=AvroCodec(registry))
    assert result.dead_letter.reason is Reason.UNKNOWN_ENUM


def test_a_record_keyed_by_something_else_than_the_customer_is_rejected():
    assert ingest(json.dumps(BASE).encode(), key=b"c2").dead_letter.reason is Reason.KEY_MISMATCH
    assert ingest(json.dumps(BASE).encode(), key=None).dead_letter.reason is Reason.KEY_MISMATCH


def test_dead_letters_keep_the_original_bytes():
    payload = b'{"event_id": 1}'
    result = ingest(payload, key=b"k")
    assert result.dead_letter.source.value == payload and result.dead_letter.source.key == b"k"


# -- dedupe and enrichment, event time ---------------------------------------------------------
def tp(event_id: str, t: int, type_: str = "page_view", **fields) -> Touchpoint:
    return Touchpoint(event_id, "c1", t, fields.pop("channel", "web"), type_, **fields)


def test_replay_redelivery_and_horizon():
    state = CustomerState("c1")
    assert apply(state, tp("a", T0), 0, 1, T0)[0] is Outcome.NEW
    assert apply(state, tp("a", T0), 0, 1, T0)[0] is Outcome.REPLAY  # same record after a restart
    assert apply(state, tp("a", T0), 0, 2, T0)[0] is Outcome.DUPLICATE  # redelivered
    assert state.events_total == 1
    apply(state, tp("b", T0 + 25 * 3600 * 1000), 0, 3, T0)
    apply(state, tp("c", T0 + 26 * 3600 * 1000), 0, 4, T0)
    mark_written(state)  # entries applied since the state was last written are kept for replays
    prune_seen(state, 24 * 3600 * 1000)
    # beyond the horizon, in event time, measured back from the second-latest touchpoint (b)
    assert "a" not in state.seen and {"b", "c"} <= set(state.seen)


def test_one_record_with_an_extreme_time_does_not_switch_dedupe_off():
    """Property: after a touchpoint decades ahead, redeliveries of the customer's real touchpoints
    are still duplicates (the dedupe clock is the second-latest event time, which one record cannot move)."""
    state = CustomerState("c1")
    for i in range(3):
        apply(state, tp(f"e{i}", T0 + i * 60_000), 0, i, T0)
    apply(state, tp("far", T0 + 70 * 365 * 24 * 3600 * 1000), 0, 10, T0)
    for i in range(3):
        assert apply(state, tp(f"e{i}", T0 + i * 60_000, amount=99.0), 0, 20 + i, T0)[0] is Outcome.DUPLICATE
    for n in range(40):  # pruning, whenever it runs, keeps them
        apply(state, tp(f"more{n}", T0 + 3 * 60_000 + n), 0, 30 + n, T0)
    assert apply(state, tp("e0", T0), 0, 99, T0)[0] is Outcome.DUPLICATE


def test_a_log_that_started_over_is_not_a_replay():
    """The same offset in a new incarnation of the source log (epoch 2) is another record."""
    state = CustomerState("c1")
    assert apply(state, tp("a", T0), 0, 5, T0, source_epoch=1)[0] is Outcome.NEW
    assert apply(state, tp("a", T0), 0, 5, T0, source_epoch=1)[0] is Outcome.REPLAY
    assert apply(state, tp("a", T0), 0, 5, T0, source_epoch=2)[0] is Outcome.DUPLICATE
    assert apply(state, tp("z", T0), 0, 5, T0, source_epoch=2)[0] is Outcome.NEW


def test_enrichment_follows_event_time_not_arrival_order():
    state = CustomerState("c1")
    apply(state, tp("late", T0 + 60_000), 0, 1, T0)
    _, enriched = apply(state, tp("early", T0), 0, 2, T0)  # arrives second, happened first
    assert state.first_seen == T0 and state.last_seen == T0 + 60_000
    assert enriched.recency_s == 0.0


def test_complaint_resolution_time_and_clv():
    state = CustomerState("c1")
    apply(state, tp("o", T0, "complaint_opened", case_id="k1", channel="phone"), 0, 1, T0)
    apply(state, tp("p", T0 + 1000, "purchase", amount=30.0), 0, 2, T0)
    apply(state, tp("r", T0 + 2000, "refund", amount=5.0), 0, 3, T0)
    _, enriched = apply(state, tp("x", T0 + 3_600_000, "complaint_resolved", case_id="k1"), 0, 4, T0)
    assert enriched.resolve_s == 3600.0 and enriched.open_complaints == 0
    assert state.revenue == 25.0 and state.orders == 1 and state.refunds == 5.0


def test_channel_switch_within_a_session():
    state = CustomerState("c1")
    apply(state, tp("a", T0, session_id="s", channel="web"), 0, 1, T0)
    _, enriched = apply(state, tp("b", T0 + 1, session_id="s", channel="mobile_app"), 0, 2, T0)
    assert enriched.channel_switch and state.channel_switches == 1


def test_state_round_trips_through_the_changelog_form():
    state = CustomerState("c1")
    apply(state, tp("a", T0, "purchase", amount=3.0), 0, 1, T0)
    state.alerting = CustomerAlertState("c1", fired={"a1": T0}, cases={"k1": [T0, T0 + 1, "chat", "e", 0, None, False]})
    again = CustomerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state and isinstance(again.alerting, CustomerAlertState)


def test_an_older_changelog_record_is_read_with_real_types():
    """Records written before the churn example had its name (and any record: its alert state is a
    JSON object) come back as the state they were."""
    old = {"customer_id": "c1", "events_total": 2, "seen": {"e1": [T0, 5]}, "churn_snapshot_at": T0,
           "alerting": {"customer_id": "c1", "last_alert_at": {"detractor": T0}, "churn_armed": False}}
    state = CustomerState.from_dict(json.loads(json.dumps(old)))
    assert state.churn_example_at == T0 and state.seen == {"e1": (T0, 5)}
    assert state.alerting == CustomerAlertState("c1", last_alert_at={"detractor": T0}, churn_armed=False)
    with pytest.raises(Rejected):
        validate({**BASE, "nps": True}, T0)
    with pytest.raises(Rejected):
        AvroCodec().decode(b"\x00\x00\x00\x00\x07")
