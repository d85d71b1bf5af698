"""Identity stitching through the whole planner, with the pipeline's own outputs fed back as its input.

No broker: :class:`~pipeline.runtime.loopback.Loopback` feeds every record the planner ships to
``cem.touchpoints`` or ``cem.identity`` back in, as the workers of the partitions would read it. The
real broker and chDB run the same journey in ``tests/test_stitching_live.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.runtime.loopback import Loopback
from processors.customer import CustomerState, mark_written
from processors.identity import IdentityRules
from processors.plan import DictStates
from processors.pseudonym import Pseudonymizer
from schemas.contract import (
    HEADER_IDENTITY,
    HEADER_REASON,
    HEADER_STAGE,
    MINUTE_MS,
    TOPIC_DLQ,
    TOPIC_ENRICHED,
    TOPIC_IDENTITY,
    TOPIC_TOUCHPOINTS,
)

T0 = 1_767_225_600_000
KEY = b"a pseudonym key of 32 bytes....."
pseudonym = Pseudonymizer(KEY)


def loopback(rules: IdentityRules | None = None) -> Loopback:
    return Loopback.with_stitching(KEY, rules)


_SHARED = loopback().planner  # for the property tests: building the scorers costs more than an example


def fresh() -> Loopback:
    """New logs and states over the shared planner."""
    return Loopback(_SHARED)


def touchpoint(event_id: str, minutes: int, channel: str, type_: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "occurred_at": T0 + minutes * MINUTE_MS, "channel": channel, "type": type_, **fields}


JOURNEY = [
    touchpoint("w1", 0, "web", "page_view", anonymous_id="cookie-1"),
    touchpoint("w2", 1, "web", "add_to_cart", anonymous_id="cookie-1"),
    touchpoint("w3", 2, "web", "identify", customer_id="c1", anonymous_id="cookie-1", email=" Ann.Lee@Example.co.uk",
               phone="+44 20 7946 0958"),
    touchpoint("a1", 60, "mobile_app", "purchase", customer_id="c1", amount=50.0, currency="EUR"),
    touchpoint("p1", 24 * 60, "phone", "call", phone="0044 20 7946 0958"),
]


def enriched(loop: Loopback) -> dict[str, tuple[str, str | None]]:
    """event_id -> (the state that took it, the identifier that led there), from the enriched topic."""
    from schemas.codec import RecordEncoder

    decoder = RecordEncoder("enriched")
    out = {}
    for r in loop.of(TOPIC_ENRICHED):
        record = decoder.decode(r.value or b"")
        out[record["event"]["event_id"]] = (record["event"]["customer_id"], record["identified_by"])
    return out


def test_an_anonymous_journey_an_identify_and_a_call_become_one_customer() -> None:
    """Property: web browsing before login, the login, an app purchase and a call from the customer's
    phone number end in one customer state holding the whole journey; the anonymous touchpoints keep
    the rows they had (no touchpoint is stored twice); no contact is anywhere in clear."""
    loop = loopback()
    for event in JOURNEY:  # each a while after the one before: what it caused has been processed
        loop.publish([event])
        loop.run()
    c1 = loop.states.states["c1"]
    assert c1.events_total == 5 and c1.channel_events == {"web": 3, "mobile_app": 1, "phone": 1}
    assert c1.orders == 1 and c1.first_seen == T0
    cookie, phone = f"anonymous_id:{pseudonym('cookie-1')}", f"phone:{pseudonym('+442079460958')}"
    assert set(c1.merged) == {cookie, f"email:{pseudonym('ann.lee@example.co.uk')}", phone}
    rows = enriched(loop)
    assert rows == {"w1": (cookie, cookie), "w2": (cookie, cookie), "w3": ("c1", None), "a1": ("c1", None),
                    "p1": ("c1", phone)}, "each touchpoint once, by the state that took it"
    every_byte = b"".join(r.value or b"" for log in loop.logs.values() for r in log if r.topic != TOPIC_TOUCHPOINTS or r.headers)
    for clear in (b"Ann.Lee", b"ann.lee", b"7946", b"cookie-1"):
        assert clear not in every_byte, f"{clear!r} left the edge in clear"


def test_an_identifiers_own_history_gives_the_churn_model_no_examples() -> None:
    """Property: only customers' touchpoints train churn: nothing would ever label an anonymous
    history's examples (its customer's churn labels the customer's), so they would all be negatives."""
    loop, plans = loopback(), []
    plan = loop.planner.plan
    loop.planner.plan = lambda records, states: plans.append(p := plan(records, states)) or p  # type: ignore[method-assign]
    for event in JOURNEY:
        loop.publish([event])
        loop.run()
    scored = {customer for p in plans for customer, *_ in p.training.churn_examples}
    assert scored == {"c1"}


def test_a_shared_identifier_never_merges_two_known_customers() -> None:
    """Property: two known customers claiming one phone number stay two; the first keeps it, and a
    call from it goes to the first."""
    loop = loopback()
    loop.publish([
        touchpoint("x1", 0, "web", "identify", customer_id="c1", phone="+44 20 7946 0958"),
        touchpoint("x2", 5, "web", "identify", customer_id="c2", phone="+442079460958"),
        touchpoint("x3", 10, "phone", "call", phone="+44 20 7946 0958"),
    ])
    loop.run()
    c1, c2 = loop.states.states["c1"], loop.states.states["c2"]
    assert c1.events_total == 2 and c2.events_total == 1
    assert c2.merged == {} and len(c1.merged) == 1


def test_the_refuse_policy_dead_letters_the_conflicting_claim() -> None:
    loop = loopback(IdentityRules(conflict_policy="refuse"))
    loop.publish([
        touchpoint("x1", 0, "web", "identify", customer_id="c1", email="ann@shop.io"),
        touchpoint("x2", 5, "web", "identify", customer_id="c2", email="ANN@shop.io"),
    ])
    loop.run()
    dead = [dict(r.headers)[HEADER_REASON] for r in loop.of(TOPIC_DLQ)]
    assert dead == [b"identity_conflict"] and loop.states.states["c2"].merged == {}


def test_junk_identifiers_never_link_and_identifier_only_junk_is_dead_lettered() -> None:
    loop = loopback()
    loop.publish([
        touchpoint("j1", 0, "web", "identify", customer_id="c1", email="test@example.com", anonymous_id="undefined"),
        touchpoint("j2", 1, "web", "identify", customer_id="c2", email="test@example.com", anonymous_id="undefined"),
        touchpoint("j3", 2, "email", "email_open", email="test@example.com"),
    ])
    loop.run()
    assert loop.states.states["c1"].claimed == [] and loop.states.states["c2"].claimed == []
    assert [dict(r.headers)[HEADER_REASON] for r in loop.of(TOPIC_DLQ)] == [b"missing_field"]


def test_a_device_on_too_many_customers_stops_attributing() -> None:
    """Property: a device shared by more customers than the limit attributes nobody's touchpoints
    after that; before it, its touchpoints went to the first."""
    loop = loopback(IdentityRules(max_customers_per_identifier=2))
    loop.publish([touchpoint(f"i{n}", n, "web", "identify", customer_id=f"c{n}", anonymous_id="kiosk-7") for n in range(3)])
    loop.publish([touchpoint("k1", 10, "web", "page_view", anonymous_id="kiosk-7")])
    loop.run()
    kiosk = f"anonymous_id:{pseudonym('kiosk-7')}"
    assert enriched(loop)["k1"] == (kiosk, kiosk), "a shared device's touchpoint is its own, nobody's"


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_delivered_twice_and_replayed_the_graph_merges_and_kpis_are_identical(batch: int) -> None:
    """Property: every touchpoint delivered twice by its channel, and the whole stream read again
    from the start after a restart (states as last written), give the states, the links, the merges
    and the stored rows of one clean reading, and the replay sends nothing new."""
    clean = loopback()
    clean.publish(JOURNEY)
    clean.run(batch)

    loop = loopback()
    loop.publish([e for e in JOURNEY for _ in range(2)])
    loop.run(batch)
    assert _comparable(loop.states) == _comparable(clean.states)
    assert enriched(loop) == enriched(clean)

    restarted = loopback()  # a new worker: the same logs, from offset 0, and the states as last written
    restarted.logs = loop.logs
    restarted.states.states = {k: CustomerState.from_dict(v.to_dict()) for k, v in loop.states.states.items()}
    for state in restarted.states.states.values():
        mark_written(state)
    sizes = {k: len(v) for k, v in loop.logs.items()}
    restarted.run(batch)
    assert _comparable(restarted.states) == _comparable(clean.states)
    assert {k: len(v) for k, v in loop.logs.items()} == sizes, "a replay of committed work sends nothing"


def _comparable(states: DictStates) -> dict[str, Any]:
    fields = ("events_total", "channel_events", "revenue", "orders", "first_seen", "last_seen", "merged", "claimed",
              "links", "journey_stage")
    return {k: {f: getattr(s, f) for f in fields} for k, s in states.states.items()}


def test_a_redelivery_after_the_link_of_what_the_identifier_took_itself_is_a_duplicate() -> None:
    """Property: a channel's second copy of an anonymous touchpoint, arriving once the identifier is
    linked, is not stored again for the customer (it may reach the customer before the merge does)."""
    loop = loopback()
    for event in [JOURNEY[0], JOURNEY[2], JOURNEY[0]]:
        loop.publish([event])
        loop.run(hold_merges=True)
    loop.run()
    assert sorted(enriched(loop)) == ["w1", "w3"] and loop.states.states["c1"].events_total == 2


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.binary(max_size=200), st.builds(
    lambda kind, fields: json.dumps({kind: "email:p:" + "0" * 32, **fields}).encode(),
    st.sampled_from(["claim", "merge", "other"]),
    st.dictionaries(st.sampled_from(["customer_id", "partition", "at", "history"]),
                    st.one_of(st.none(), st.integers(-2, 2**70), st.text(max_size=5),
                              st.dictionaries(st.text(max_size=8), st.integers()))))),
       kind=st.sampled_from([b"claim", b"merge"]))
def test_any_identity_record_is_decided_or_dead_lettered_never_raised(value: bytes, kind: bytes) -> None:
    """Property: whatever bytes reach cem.identity as a claim or a merge (a bug, or a writer that should
    not be there), the planner never raises: the record is applied, or dead-lettered with its reason."""
    loop = fresh()
    loop.append(TOPIC_IDENTITY, b"k", value, 0, [(HEADER_IDENTITY, kind)])
    loop.run()
    for dead in loop.of(TOPIC_DLQ):
        assert dict(dead.headers)[HEADER_STAGE] == b"identity"


def _output_without_identifiers(fields: dict[str, str]) -> bytes:
    """What the edge writes for the same touchpoint with other values for its identifiers (their
    records' own text, such as a "channel" key)."""
    loop = fresh()
    others = {"anonymous_id": "zq-anon-7", "email": "zq7@example.org", "phone": "+44 20 7946 0007"}
    kept = {k: others.get(k, v) for k, v in fields.items()}
    loop.publish([touchpoint("f1", 0, "web", "page_view", **kept)])
    loop.run()
    return b"".join(r.value or b"" for r in loop.of(TOPIC_IDENTITY) + loop.of(TOPIC_ENRICHED) + loop.of(TOPIC_DLQ))


@settings(max_examples=150, deadline=None)
@given(fields=st.fixed_dictionaries({}, optional={
    "customer_id": st.text(max_size=20), "anonymous_id": st.text(max_size=40), "email": st.text(max_size=40),
    "phone": st.text(alphabet="+0123456789 ()-.", max_size=20)}))
def test_any_identifiers_end_in_one_outcome_and_never_in_clear(fields: dict[str, str]) -> None:
    """Property: any mix of identifiers (junk, empty, odd Unicode) gives each touchpoint one outcome,
    processed or dead-lettered, and no identifier value leaves the edge in clear."""
    loop = fresh()
    loop.publish([touchpoint("f1", 0, "web", "page_view", **fields)])
    loop.run()
    stored = enriched(loop)
    dead = loop.of(TOPIC_DLQ)
    assert len(stored) + len(dead) == 1
    internal = b"".join(r.value or b"" for r in loop.of(TOPIC_IDENTITY) + loop.of(TOPIC_ENRICHED))
    for name in ("anonymous_id", "email", "phone"):
        value = fields.get(name, "").strip()
        if len(value) >= 6 and not value.startswith("p:") and value not in fields.get("customer_id", "") \
                and value.encode() in internal:  # unless it is text the output always has ('channe' of "channel")
            assert value.encode() in _output_without_identifiers(fields), f"{name} {value!r} in clear"
