"""Identity stitching rules (processors.identity): pure logic, no broker.

Properties: junk never links; a known customer never absorbs another known customer's identifier;
an identifier shared by too many customers attributes nobody; the graph depends only on the links
and their order (a replay builds the same graph); contacts are only ever held as pseudonyms.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.identity import (
    JUNK_VALUES,
    KINDS,
    Identifier,
    IdentityGraph,
    IdentityRules,
    identifiers,
    normalise,
)
from processors.pseudonym import Pseudonymizer

PSEUDONYM = Pseudonymizer(b"identity tests, sixteen+ bytes")


def ident(kind: str, raw: str) -> Identifier:
    value = normalise(kind, raw, default_country_code="44")
    assert value is not None, raw
    return Identifier(kind, PSEUDONYM(value))


@pytest.mark.parametrize("raw", sorted(JUNK_VALUES) + ["NULL", " Undefined ", "0000000", "ffffffff", "x" * 257])
@pytest.mark.parametrize("kind", KINDS)
def test_junk_identifiers_never_normalise(kind: str, raw: str) -> None:
    """Property: the values producers send when they have no identifier are refused for every kind."""
    assert normalise(kind, raw) is None


@pytest.mark.parametrize("raw", ["test@example.com", "noreply@shop.io", "a@localhost", "x@y", "two@@signs.io", "no at sign"])
def test_placeholder_and_malformed_emails_are_refused(raw: str) -> None:
    assert normalise("email", raw) is None


@pytest.mark.parametrize(("raw", "e164"), [
    ("+44 20 7946 0958", "+442079460958"),
    ("0044-20-7946-0958", "+442079460958"),
    ("+44 (0)20 7946 0958", "+442079460958"),
    ("020 7946 0958", "+442079460958"),  # national, with the default country code
    ("+1 (415) 555-2671", "+14155552671"),
])
def test_phones_normalise_to_e164(raw: str, e164: str) -> None:
    assert normalise("phone", raw, default_country_code="44") == e164


def test_the_same_person_written_differently_is_one_identifier() -> None:
    """Property: case, spacing and punctuation do not make a second identifier."""
    assert ident("email", " Ann.Lee@Example.CO.uk") == ident("email", "ann.lee@example.co.uk")
    assert ident("phone", "+44 20 7946 0958") == ident("phone", "020-7946-0958")


def test_identifiers_of_a_touchpoint_are_pseudonyms_only() -> None:
    """Property: no contact leaves this step in clear."""
    found = identifiers({"email": "Ann@Shop.io", "phone": "+44 20 7946 0958", "anonymous_id": "cookie-1"}, PSEUDONYM)
    assert [i.kind for i in found] == list(KINDS)
    for i in found:
        assert i.value.startswith("p:") and "ann" not in i.value and "7946" not in i.value


def test_a_shared_identifier_never_merges_two_known_customers() -> None:
    graph = IdentityGraph(IdentityRules())
    family_inbox = ident("email", "family@home.io")
    graph.link("alice", [family_inbox], at=1)
    second = graph.link("bob", [family_inbox], at=2)
    assert second.conflicts == [str(family_inbox)] and not second.linked
    assert graph.resolve([family_inbox]) == "alice"
    assert graph.held.get("alice") == [str(family_inbox)] and not graph.held.get("bob")


def test_the_refuse_policy_changes_nothing_and_says_so() -> None:
    graph = IdentityGraph(IdentityRules(conflict_policy="refuse"))
    phone, cookie = ident("phone", "+44 20 7946 0958"), ident("anonymous_id", "cookie-9")
    graph.link("alice", [phone], at=1)
    before = graph.to_dict()
    outcome = graph.link("bob", [cookie, phone], at=2)
    assert outcome.refused and outcome.conflicts == [str(phone)]
    assert graph.to_dict() == before, "a refused touchpoint links nothing, not even its other identifiers"


def test_an_identifier_on_too_many_customers_attributes_nobody() -> None:
    """Property: a shared device (seen on more than the limit) stops attributing anyone's touchpoints."""
    graph = IdentityGraph(IdentityRules(max_customers_per_identifier=2))
    kiosk = ident("anonymous_id", "store-kiosk-3")
    graph.link("c1", [kiosk], at=1)
    graph.link("c2", [kiosk], at=2)
    assert graph.resolve([kiosk]) == "c1"
    outcome = graph.link("c3", [kiosk], at=3)
    assert outcome.shared == [str(kiosk)]
    assert graph.resolve([kiosk]) is None and graph.held["c1"] == []


def test_a_customer_holds_at_most_the_cap() -> None:
    graph = IdentityGraph(IdentityRules(max_identifiers_per_customer=2))
    cookies = [ident("anonymous_id", f"cookie-{n}") for n in range(4)]
    outcome = graph.link("c1", cookies, at=1)
    assert len(outcome.linked) == 2 and len(outcome.capped) == 2


def test_resolution_prefers_contacts_over_devices() -> None:
    graph = IdentityGraph(IdentityRules())
    email, cookie = ident("email", "ann@shop.io"), ident("anonymous_id", "cookie-1")
    graph.link("ann", [email], at=1)
    graph.link("bob", [cookie], at=2)
    assert graph.resolve([cookie, email]) == "ann"


def test_bad_rules_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="conflict policy"):
        IdentityRules(conflict_policy="merge_everything")
    with pytest.raises(ValueError, match=">= 1"):
        IdentityRules(max_customers_per_identifier=0)


_customers = st.sampled_from([f"c{n}" for n in range(6)])
_identifiers = st.builds(Identifier, st.sampled_from(KINDS), st.sampled_from([f"p:{n:032x}" for n in range(8)]))
_links = st.lists(st.tuples(_customers, st.lists(_identifiers, max_size=4), st.integers(0, 10**12)), max_size=60)
_rules = st.builds(IdentityRules, st.sampled_from(["keep_first", "refuse"]), st.integers(1, 4), st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(_rules, _links)
def test_any_links_keep_the_graph_consistent_and_replays_identical(rules: IdentityRules, links: list) -> None:
    """Properties, over arbitrary link sequences: never raises; an identifier has at most one owner,
    which holds it; nobody holds more than the cap; an owner is the first customer the identifier
    was seen on (a later customer never takes it over); the same links again give the same graph."""
    graph, again = IdentityGraph(rules), IdentityGraph(rules)
    for customer, found, at in links:
        graph.link(customer, found, at)
        again.link(customer, found, at)
    assert graph.to_dict() == again.to_dict()
    assert IdentityGraph.from_dict(rules, orjson.loads(orjson.dumps(graph.to_dict()))) == graph
    for key, owner in graph.owner.items():
        assert key in graph.held[owner]
        assert graph.seen_on[key][0] == owner
        assert len(graph.seen_on[key]) <= rules.max_customers_per_identifier
    for customer, held in graph.held.items():
        assert len(held) <= rules.max_identifiers_per_customer
        assert all(graph.owner[key] == customer for key in held)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KINDS), st.text(max_size=300))
def test_normalising_arbitrary_text_never_raises_and_is_idempotent(kind: str, raw: str) -> None:
    value = normalise(kind, raw, default_country_code="1")
    if value is not None:
        assert normalise(kind, value, default_country_code="1") == value


def test_international_phone_spellings_normalise_as_libphonenumber_formats_them() -> None:
    """Property (interop with Google's libphonenumber, which nobody here wrote): for every region's
    example numbers, spelled as producers do (international format, 00 prefix, dashes, no spaces),
    cem's E.164 is libphonenumber's."""
    import phonenumbers
    from phonenumbers import PhoneNumberFormat

    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
            international = phonenumbers.format_number(example, PhoneNumberFormat.INTERNATIONAL)
            for spelling in (international, "00" + e164[1:], international.replace(" ", "-"), e164):
                assert normalise("phone", spelling) == e164, (region, spelling)
            checked += 1
    assert checked > 400  # every region, both kinds of line
