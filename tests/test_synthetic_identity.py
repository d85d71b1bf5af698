"""The journey generator's identity traffic (``identity=``): anonymous browsing, identify, contact
identifiers, shared devices and junk, with its ground truth. Pure and fast: no broker."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from processors.identity import normalise
from processors.synthetic import JourneyGenerator, kpi_totals

KINDS = ("anonymous_id", "email", "phone")
WEB = ("web", "mobile_app")
ACCOUNT_TYPES = ("identify", "refund", "complaint_opened", "complaint_resolved", "subscription_cancelled", "account_closed")


@pytest.fixture(scope="module")
def run() -> tuple[JourneyGenerator, list[dict], dict]:
    """One mid-size run with identity traffic (~10 simulated days), shared by the read-only tests."""
    gen = JourneyGenerator(customers=300, seed=11, identity=0.3)
    events = list(gen.events(30_000))
    return gen, events, gen.ground_truth()["identity"]


def _dump(events) -> bytes:
    return "\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in events).encode()


def _owner(e: dict, truth: dict) -> str | None:
    """The customer an event truly belongs to (None: junk only)."""
    return e["customer_id"] if "customer_id" in e else truth["events"][e["event_id"]]


def _good(e: dict) -> dict[str, str]:
    """The identifiers of an event that are not junk, normalised."""
    found = {}
    for kind in KINDS:
        if kind in e:
            value = normalise(kind, e[kind])
            if value is not None:
                found[kind] = value
    return found


# -- off by default ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"customers": 300, "seed": 11, "label_text": True}, {"customers": 40, "seed": 3, "run": "r"}])
def test_identity_zero_leaves_the_output_byte_identical(kwargs):
    default, explicit = JourneyGenerator(**kwargs), JourneyGenerator(**kwargs, identity=0.0)
    assert _dump(default.events(20_000)) == _dump(explicit.events(20_000))
    assert list(default.profiles()) == list(explicit.profiles())
    truth = default.ground_truth()
    assert truth == explicit.ground_truth()
    identity = truth["identity"]
    assert identity["identifiers"] == identity["events"] == identity["shared_anonymous_ids"] == {}
    assert identity["identified"] == identity["unlinked_at_arrival"] == []
    assert sum(identity["touchpoints"].values()) == truth["events"] == 20_000


def test_identity_off_emits_no_identifiers():
    events = list(JourneyGenerator(customers=50, seed=5).events(5000))
    assert all("customer_id" in e and not set(KINDS) & set(e) and e["type"] != "identify" for e in events)


def test_identity_share_is_validated():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="identity"):
            JourneyGenerator(customers=5, identity=bad)


# -- determinism ---------------------------------------------------------------------------------

def test_identity_traffic_is_deterministic():
    a = JourneyGenerator(customers=60, seed=5, identity=0.3)
    b = JourneyGenerator(customers=60, seed=5, identity=0.3)
    assert _dump(a.events(4000)) == _dump(b.events(4000))
    assert a.ground_truth() == b.ground_truth()
    other = JourneyGenerator(customers=60, seed=6, identity=0.3)
    assert _dump(JourneyGenerator(customers=60, seed=5, identity=0.3).events(500)) != _dump(other.events(500))


def test_identity_traffic_continues_across_calls():
    whole = JourneyGenerator(customers=40, seed=2, identity=0.5)
    parts = JourneyGenerator(customers=40, seed=2, identity=0.5)
    assert _dump(whole.events(2000)) == _dump(list(parts.events(700)) + list(parts.events(1300)))
    assert whole.ground_truth() == parts.ground_truth()


# -- the traffic ---------------------------------------------------------------------------------

def test_some_events_lack_customer_id_and_each_carries_an_identifier(run):
    gen, events, truth = run
    unkeyed = [e for e in events if "customer_id" not in e]
    assert 0.02 * len(events) < len(unkeyed) < 0.2 * len(events)
    assert all(set(KINDS) & set(e) for e in unkeyed)
    assert all(v is not None for e in events for v in e.values())  # absent keys, never None
    assert {e["event_id"] for e in unkeyed} == set(truth["events"])
    assert len(truth["identifiers"]) == 90  # round(300 * 0.3)
    assert {truth["events"][e["event_id"]] for e in unkeyed} - {None} <= set(truth["identifiers"])


def test_events_stay_ordered_unique_and_counted(run):
    gen, events, _ = run
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    assert len({e["event_id"] for e in events}) == len(events)
    assert gen.ground_truth()["kpi"] == kpi_totals(events)  # identifier-only events count too


def test_identify_events_link_a_customer_to_its_device(run):
    _, events, truth = run
    identifies = [e for e in events if e["type"] == "identify"]
    assert identifies and all(e["channel"] in WEB and e["customer_id"] in truth["identifiers"] for e in identifies)
    for e in identifies:
        assert normalise("anonymous_id", e["anonymous_id"]) == truth["identifiers"][e["customer_id"]]["anonymous_id"]
    assert 0 < sum("email" in e for e in identifies) < len(identifies)
    assert 0 < sum("phone" in e for e in identifies) < len(identifies)
    assert {e["attributes"]["method"] for e in identifies} == {"sign_up", "login"}
    assert truth["identified"] == sorted({e["customer_id"] for e in identifies})


def test_identity_customers_browse_anonymously_until_they_identify(run):
    _, events, truth = run
    identified: set[str] = set()
    before = after = 0
    for e in events:
        owner = _owner(e, truth)
        if owner not in truth["identifiers"] or e["channel"] not in WEB or e["type"] in ACCOUNT_TYPES:
            if e["type"] == "identify":
                identified.add(e["customer_id"])
            continue
        if owner in identified:
            assert "customer_id" in e
            after += 1
        else:
            assert "customer_id" not in e and "anonymous_id" in e
            before += 1
    assert before > 100 and after > before
    # Logged in, the app sometimes still sends its device id beside the customer.
    assert any("customer_id" in e and "anonymous_id" in e and e["type"] != "identify" for e in events)


def test_contact_channels_know_only_the_contact_identifier(run):
    _, events, truth = run
    expected = {"email": "email", "sms": "phone", "phone": "phone"}
    first_identify: dict[str, int] = {}
    early = late = 0
    by_channel: Counter[str] = Counter()
    for e in events:
        if e["type"] == "identify":
            first_identify.setdefault(e["customer_id"], e["occurred_at"])
        if "customer_id" in e or e["channel"] in WEB or truth["events"][e["event_id"]] is None:
            continue
        kind = expected[e["channel"]]
        assert set(_good(e)) == {kind}  # the one good identifier is the channel's (junk may sit beside it)
        by_channel[e["channel"]] += 1
        owner = truth["events"][e["event_id"]]
        if owner in first_identify and first_identify[owner] <= e["occurred_at"]:
            late += 1
        else:
            early += 1
    assert by_channel["email"] > 200 and by_channel["sms"] > 50 and by_channel["phone"] > 20
    assert 0 < early < 0.25 * (early + late)  # mostly after the identify, a few before it
    calls = [e for e in events if e["channel"] == "phone" and e["type"] == "call" and _owner(e, truth) in truth["identifiers"]]
    assert 0.2 < sum("customer_id" not in e for e in calls) / len(calls) < 0.8  # only sometimes


def test_written_identifiers_vary_but_normalise_to_the_customer_s_value(run):
    _, events, truth = run
    forms: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        owner = _owner(e, truth)
        for kind, value in _good(e).items():
            assert owner is not None
            if kind == "anonymous_id" and value in truth["shared_anonymous_ids"]:
                assert owner in truth["shared_anonymous_ids"][value]
            else:
                assert value == truth["identifiers"][owner][kind], (kind, e[kind])
            forms[(kind, value)].add(e[kind])
    emails = [f for (kind, _), f in forms.items() if kind == "email"]
    phones = [f for (kind, _), f in forms.items() if kind == "phone"]
    assert sum(len(f) > 1 for f in emails) > 20 and sum(len(f) > 1 for f in phones) > 20
    raw_emails = set().union(*emails)
    assert any(r != r.strip() for r in raw_emails) and any(r != r.lower() for r in raw_emails)
    raw_phones = set().union(*phones)
    assert any(r.startswith("00") for r in raw_phones) and any("(0)" in r for r in raw_phones)
    assert any(r.startswith("+") and " " in r for r in raw_phones)
    # A country code every time: the numbers normalise with no default country.
    assert all(normalise("phone", r) is not None for r in raw_phones)
    canonical = [ids["phone"] for ids in truth["identifiers"].values()]
    assert len(set(canonical)) == len(canonical) and all(p.startswith("+") for p in canonical)


def test_some_customers_share_a_device_and_both_identify_with_it(run):
    _, events, truth = run
    shared = truth["shared_anonymous_ids"]
    assert len(shared) == 4  # round(90 * 0.05) pairs
    for device, customers in shared.items():
        assert len(customers) == 2 and all(truth["identifiers"][c]["anonymous_id"] == device for c in customers)
    devices = Counter(ids["anonymous_id"] for ids in truth["identifiers"].values())
    assert {d for d, n in devices.items() if n > 1} == set(shared)
    identified_with: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["type"] == "identify":
            identified_with[e["anonymous_id"]].add(e["customer_id"])
    assert any(identified_with[d] == set(c) for d, c in shared.items())


def test_junk_identifiers_ride_beside_a_good_one_and_a_few_events_carry_only_junk(run):
    _, events, truth = run
    unkeyed = [e for e in events if "customer_id" not in e]
    junk_only = [e for e in unkeyed if truth["events"][e["event_id"]] is None]
    with_junk = [e for e in unkeyed if truth["events"][e["event_id"]] and len(set(KINDS) & set(e)) > len(_good(e))]
    assert junk_only and all(not _good(e) for e in junk_only)
    assert len(junk_only) < 0.03 * len(unkeyed) and 0.02 * len(unkeyed) < len(with_junk) < 0.1 * len(unkeyed)
    assert all(len(_good(e)) == 1 for e in with_junk)
    junk_values = {e[k] for e in junk_only + with_junk for k in KINDS if k in e and normalise(k, e[k]) is None}
    assert {"null", "undefined"} & junk_values and {"test@example.com", "0000000000"} & junk_values


# -- ground truth --------------------------------------------------------------------------------

def test_identity_ground_truth_has_its_shape_and_adds_up(run):
    gen, events, truth = run
    assert list(truth) == ["identifiers", "events", "unlinked_at_arrival", "identified", "shared_anonymous_ids", "touchpoints"]
    assert all(list(ids) == ["anonymous_id", "email", "phone"] for ids in truth["identifiers"].values())
    counts = Counter(_owner(e, truth) for e in events)
    junk_only = counts.pop(None)
    assert truth["touchpoints"] == {c: counts.get(c, 0) for c in truth["touchpoints"]}
    assert sum(truth["touchpoints"].values()) + junk_only == gen.ground_truth()["events"] == len(events)


def test_unlinked_at_arrival_is_what_a_first_link_wins_replay_cannot_attribute(run):
    _, events, truth = run
    links: dict[tuple[str, str], str] = {}
    unattributable = []
    for e in events:
        if e["type"] == "identify":
            for kind, value in _good(e).items():
                links.setdefault((kind, value), e["customer_id"])
        elif "customer_id" not in e and truth["events"][e["event_id"]] is not None:
            resolved = [links[(kind, value)] for kind, value in _good(e).items() if (kind, value) in links]
            if not resolved:
                unattributable.append(e["event_id"])
            elif e.get("anonymous_id") not in truth["shared_anonymous_ids"]:
                assert resolved == [truth["events"][e["event_id"]]]  # stitched to the right customer
    assert unattributable == truth["unlinked_at_arrival"]
    assert 0 < len(unattributable) < 0.5 * len(truth["events"])
