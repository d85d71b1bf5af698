"""Identity stitching: which customer a touchpoint belongs to when it carries identifiers.

A touchpoint may carry, beside or instead of ``customer_id``, an ``anonymous_id`` (cookie or device)
and contact identifiers (``email``, ``phone``). Each is normalised (:func:`normalise`), refused if it is
junk (``null``, ``undefined``, placeholder e-mails...), and then only ever used as its pseudonym
(:class:`~processors.pseudonym.Pseudonymizer`, a keyed hash): the graph, the state and the stores
never hold a contact in clear.

:class:`IdentityGraph` links identifiers to known customers, in event order, with the protections the
CDPs' users ask for: a customer never absorbs another known customer through a shared identifier
(keep the first link, or refuse the touchpoint as ``identity_conflict``), an identifier seen on more
than ``max_customers_per_identifier`` customers stops linking (a shared device, a family inbox), and a
customer holds at most ``max_identifiers_per_customer`` identifiers. Everything depends only on the
order of the links and their event times, so a replay builds the same graph.

>>> graph = IdentityGraph(IdentityRules())
>>> login = graph.link("c1", [Identifier("anonymous_id", "p:cookie-1")], at=1_000)
>>> login.linked    # the anonymous history of each newly linked identifier joins c1
['anonymous_id:p:cookie-1']
>>> graph.resolve([Identifier("anonymous_id", "p:cookie-1")])
'c1'
>>> graph.link("c2", [Identifier("anonymous_id", "p:cookie-1")], at=2_000).conflicts   # c1 keeps it
['anonymous_id:p:cookie-1']
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.contract import IDENTIFIER_FIELDS

KINDS = IDENTIFIER_FIELDS  # in the order that resolves a touchpoint's customer
POLICIES = ("keep_first", "refuse")

# Values producers send when they have no identifier; compared after normalisation.
JUNK_VALUES = frozenset({
    "", "0", "-1", "-", "null", "none", "nil", "undefined", "nan", "unknown", "anonymous", "guest",
    "n/a", "na", "test", "[object object]", "00000000-0000-0000-0000-000000000000",
})
JUNK_EMAIL_LOCALS = frozenset({"test", "noreply", "no-reply", "donotreply", "null", "none", "unknown", "email"})
JUNK_EMAIL_DOMAINS = frozenset({"example.com", "example.org", "example.net", "test.com", "localhost", "invalid"})
_EMAIL = re.compile(r"[^@\s]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # 7 to 15 digits: Niue, Tristan da Cunha have 7
MAX_IDENTIFIER_CHARS = 256
_PSEUDONYM = re.compile(r"p:[0-9a-f]{32}")  # processors.pseudonym's form


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """One identifier of a customer: its kind and its (normalised, pseudonymised) value."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def normalise(kind: str, raw: str, default_country_code: str = "") -> str | None:
    """The canonical form of an identifier, or None for junk that must never link anything.

    >>> normalise("email", "  Ann.Lee@Example.co.UK ")
    'ann.lee@example.co.uk'
    >>> normalise("email", "test@example.com") is None, normalise("email", "not an address") is None
    (True, True)
    >>> normalise("phone", "+44 (0)20 7946-0958"), normalise("phone", "0044 20 7946 0958")
    ('+442079460958', '+442079460958')
    >>> normalise("phone", "(415) 555-2671", default_country_code="1"), normalise("phone", "555-2671")
    ('+14155552671', None)
    >>> normalise("anonymous_id", " undefined "), normalise("anonymous_id", "0000"), normalise("anonymous_id", "d-42")
    (None, None, 'd-42')
    """
    value = unicodedata.normalize("NFKC", raw).strip()
    if len(value) > MAX_IDENTIFIER_CHARS or value.casefold() in JUNK_VALUES or _one_repeated_char(value):
        return None
    if kind == "email":
        return _email(value.casefold())
    if kind == "phone":
        return _phone(value, default_country_code)
    if kind == "anonymous_id":
        return value
    raise ValueError(f"unknown identifier kind {kind!r}; one of {', '.join(KINDS)}")


def _one_repeated_char(value: str) -> bool:
    return len(value) > 1 and len(set(value)) == 1


def _email(value: str) -> str | None:
    if not _EMAIL.fullmatch(value):
        return None
    local, domain = value.rsplit("@", 1)
    if local in JUNK_EMAIL_LOCALS or domain in JUNK_EMAIL_DOMAINS:
        return None
    return value


def _phone(value: str, default_country_code: str) -> str | None:
    digits = _PHONE_PUNCTUATION.sub("", value.replace("(0)", ""))
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif not digits.startswith("+"):
        if not default_country_code:
            return None  # a national number without a country: ambiguous, so never linked
        digits = "+" + default_country_code + digits.lstrip("0")
    return digits if _E164.fullmatch(digits) and not _one_repeated_char(digits[1:]) else None


def identifiers(fields: dict[str, Any], pseudonymize: Callable[[str], str], default_country_code: str = "") -> list[Identifier]:
    """The usable identifiers among a touchpoint's ``fields``, pseudonymised, in :data:`KINDS` order.

    >>> from processors.pseudonym import Pseudonymizer
    >>> ids = identifiers({"email": "A@b.io", "phone": "null", "anonymous_id": "d1"}, Pseudonymizer(b"k" * 16))
    >>> [i.kind for i in ids], all(i.value.startswith("p:") for i in ids)
    (['email', 'anonymous_id'], True)
    """
    found = []
    for kind in KINDS:
        raw = fields.get(kind)
        if isinstance(raw, str):
            if _PSEUDONYM.fullmatch(raw):  # pseudonymised already (the pipeline's own forwarded records)
                found.append(Identifier(kind, raw))
                continue
            value = normalise(kind, raw, default_country_code)
            if value is not None:
                found.append(Identifier(kind, pseudonymize(value)))
    return found


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """How links are made (``CEM_IDENTITY_*``)."""

    conflict_policy: str = "keep_first"  # or "refuse": dead-letter the touchpoint as identity_conflict
    max_customers_per_identifier: int = 3  # seen on more customers: shared, it links nobody
    max_identifiers_per_customer: int = 20

    def __post_init__(self) -> None:
        if self.conflict_policy not in POLICIES:
            raise ValueError(f"identity conflict policy must be one of {', '.join(POLICIES)}, not {self.conflict_policy!r}")
        if self.max_customers_per_identifier < 1 or self.max_identifiers_per_customer < 1:
            raise ValueError("identity limits must be >= 1")


@dataclass(slots=True)
class LinkOutcome:
    """What one link did; identifiers are given as ``kind:value``."""

    linked: list[str] = field(default_factory=list)  # newly linked: their anonymous history joins the customer
    conflicts: list[str] = field(default_factory=list)  # already another known customer's: not linked
    shared: list[str] = field(default_factory=list)  # on too many customers: links nobody from now on
    capped: list[str] = field(default_factory=list)  # the customer holds its maximum already
    refused: bool = False  # policy "refuse" and a conflict: the touchpoint is dead-lettered, nothing changed


@dataclass(slots=True)
class IdentityGraph:
    """Identifier -> customer links, with the customers each identifier has been seen on.

    Deterministic: the same links in the same order give the same graph (:meth:`to_dict`).
    """

    rules: IdentityRules
    owner: dict[str, str] = field(default_factory=dict)  # "kind:value" -> customer_id
    seen_on: dict[str, list[str]] = field(default_factory=dict)  # "kind:value" -> customers, first seen first
    linked_at: dict[str, int] = field(default_factory=dict)  # "kind:value" -> event time of its link
    held: dict[str, list[str]] = field(default_factory=dict)  # customer_id -> its identifiers, in link order

    def resolve(self, found: Iterable[Identifier]) -> str | None:
        """The customer the first linked identifier (in ``KINDS`` order) belongs to, if any."""
        for identifier in sorted(found, key=lambda i: KINDS.index(i.kind)):
            customer = self.owner.get(str(identifier))
            if customer is not None:
                return customer
        return None

    def link(self, customer_id: str, found: Iterable[Identifier], at: int) -> LinkOutcome:
        """Link ``found`` to the known ``customer_id`` as of event time ``at``."""
        outcome = LinkOutcome()
        keys = [str(i) for i in found]
        if self.rules.conflict_policy == "refuse" and any(self.owner.get(k, customer_id) != customer_id for k in keys):
            outcome.refused = True
            outcome.conflicts = [k for k in keys if self.owner.get(k, customer_id) != customer_id]
            return outcome
        for key in keys:
            self._link_one(customer_id, key, at, outcome)
        return outcome

    def _link_one(self, customer_id: str, key: str, at: int, outcome: LinkOutcome) -> None:
        seen = self.seen_on.setdefault(key, [])
        if customer_id not in seen:
            seen.append(customer_id)
        owner = self.owner.get(key)
        if owner == customer_id:
            return
        if len(seen) > self.rules.max_customers_per_identifier:
            if owner is not None:
                self._unlink(key)  # shared after all: it stops attributing anyone's touchpoints
            outcome.shared.append(key)
            return
        if owner is not None or seen[0] != customer_id:
            outcome.conflicts.append(key)  # another customer's, or first seen on one that could not hold it
            return
        held = self.held.setdefault(customer_id, [])
        if len(held) >= self.rules.max_identifiers_per_customer:
            outcome.capped.append(key)
            return
        self.owner[key] = customer_id
        self.linked_at[key] = at
        held.append(key)
        outcome.linked.append(key)

    def _unlink(self, key: str) -> None:
        customer = self.owner.pop(key)
        self.linked_at.pop(key, None)
        self.held[customer].remove(key)

    def to_dict(self) -> dict[str, Any]:
        """The graph as plain data (JSON-ready, ordered), for a changelog or comparing two replays."""
        return {"owner": dict(sorted(self.owner.items())), "seen_on": dict(sorted(self.seen_on.items())),
                "linked_at": dict(sorted(self.linked_at.items())), "held": dict(sorted(self.held.items()))}

    @classmethod
    def from_dict(cls, rules: IdentityRules, data: dict[str, Any]) -> IdentityGraph:
        """The graph back from :meth:`to_dict`, under ``rules``.

        >>> g = IdentityGraph(IdentityRules()); _ = g.link("c1", [Identifier("email", "p:1")], at=5)
        >>> IdentityGraph.from_dict(g.rules, g.to_dict()) == g
        True
        """
        return cls(rules, dict(data["owner"]), {k: list(v) for k, v in data["seen_on"].items()},
                   dict(data["linked_at"]), {k: list(v) for k, v in data["held"].items()})
