"""Identity stitching in the stream: which state takes a touchpoint, and how an anonymous history
joins its customer exactly once, though the two live on different partitions.

A touchpoint that names its ``customer_id`` is the customer's, on the customer's partition, as ever.
One that names only identifiers (``anonymous_id``, ``email``, ``phone``) is attributed by the first
usable one (:data:`processors.identity.KINDS` order), its *subject*: an identifier has a state of its
own (its anonymous history, keyed ``kind:pseudonym``) on its *home* partition of ``cem.identity``
(:func:`home_partition`; co-partitioned with ``cem.touchpoints``, so the worker of a partition holds
both). Everything goes through Kafka, so every step is a record in a log, replayed exactly:

1. An identifier-only touchpoint is forwarded to its subject's home (``cem.identity``).
2. A customer's touchpoint that carries identifiers sends a :class:`Claim` for each one it has not
   claimed before (at most ``max_identifiers_per_customer``) to the identifier's home.
3. At the home, a claim is decided by the identifier's links (:class:`~processors.identity.IdentityGraph`
   over that one identifier: keep the first, shared ones link nobody, ``refuse`` dead-letters the
   claim). A claim that links sends the identifier's whole state as a :class:`Merge` to the
   customer's partition (``cem.identity`` again), and from that log position on the identifier's
   touchpoints are forwarded to the customer's partition of ``cem.touchpoints``, keyed by the
   customer, with the identifier in the header ``cem.identified-by``.
4. The customer's state absorbs a merge once (:func:`processors.customer.absorb`; ``merged`` says
   which identifiers it holds), and its attributed touchpoints are deduplicated and counted there.

Whether an identifier's touchpoint is its own or its owner's is decided by its log position against
the link's (:func:`owner_at`), so a replay decides every record as the first reading did; the
anonymous touchpoints processed before the link keep their rows and per-minute KPIs.

>>> s = CustomerState("anonymous_id:p:1")
>>> verdict = claim(s, Claim("anonymous_id:p:1", "c1", 3, 1_000), partition=0, position=5, rules=IdentityRules())
>>> verdict.outcome, verdict.merge.customer_id, owner_at(s, 4), owner_at(s, 6)
('linked', 'c1', None, ('c1', 3))
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from processors.customer import CustomerState, absorb, move_on, read_before
from processors.identity import KINDS, Identifier, IdentityGraph, IdentityRules, identifiers
from processors.touchpoint import Touchpoint
from schemas.contract import Reason, Rejected


def home_partition(subject: str, partitions: int) -> int:
    """The partition of ``cem.identity`` that holds an identifier's state (CRC-32 of its key).

    >>> home_partition("email:p:00", 4) == home_partition("email:p:00", 4), 0 <= home_partition("x", 3) < 3
    (True, True)
    """
    return zlib.crc32(subject.encode()) % partitions


def forwarder_key(partition: int) -> str:
    """The state that remembers how far a partition of cem.touchpoints has forwarded (step 1): no
    customer's, so it has no customer_state row.

    >>> is_forwarder(forwarder_key(3)), is_forwarder("c1")
    (True, False)
    """
    return f"{_FORWARDER}{partition}"


def is_forwarder(key: str) -> bool:
    return key.startswith(_FORWARDER)


def is_subject(key: str) -> bool:
    """Whether a state key names an identifier's own state (``kind:p:...``), not a customer's.

    >>> is_subject("anonymous_id:p:0123"), is_subject("cust-1"), is_subject("email:ann@x.io")
    (True, False, False)
    """
    kind, _, value = key.partition(":")
    return kind in KINDS and value.startswith("p:")


_FORWARDER = "cem.forwarder:"


def subject_of(found: Iterable[Identifier]) -> Identifier | None:
    """The identifier a touchpoint without ``customer_id`` is attributed by (the first; see KINDS)."""
    return next(iter(found), None)


@dataclass(frozen=True, slots=True)
class Claim:
    """A customer claims an identifier; sent to the identifier's home partition."""

    subject: str  # "kind:pseudonym"
    customer_id: str
    partition: int  # the customer's partition (of cem.touchpoints): where merges and touchpoints go
    at: int  # event time of the touchpoint that carried the identifier

    def to_json(self) -> bytes:
        return orjson.dumps({"claim": self.subject, "customer_id": self.customer_id, "partition": self.partition, "at": self.at})


@dataclass(frozen=True, slots=True)
class Merge:
    """An identifier's anonymous history, for the customer it is now linked to."""

    subject: str
    customer_id: str
    at: int
    history: dict[str, Any]  # the identifier's state (CustomerState.to_dict)

    def to_json(self) -> bytes:
        return orjson.dumps({"merge": self.subject, "customer_id": self.customer_id, "at": self.at, "history": self.history})


def parse(value: bytes | None) -> Claim | Merge:
    """A claim or a merge back from its record value; :class:`Rejected` if it is neither.

    >>> parse(Claim("email:p:1", "c1", 2, 3).to_json())
    Claim(subject='email:p:1', customer_id='c1', partition=2, at=3)
    >>> parse(b'{"claim": 1}')
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: undecodable: not a claim or merge record: ValueError expected a non-empty string, got 1
    """
    try:
        data = orjson.loads(value or b"")
        if "claim" in data:
            return Claim(_text(data["claim"]), _text(data["customer_id"]), int(data["partition"]), int(data["at"]))
        return Merge(_text(data["merge"]), _text(data["customer_id"]), int(data["at"]), dict(data["history"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise Rejected(Reason.UNDECODABLE, f"not a claim or merge record: {type(exc).__name__} {exc}"[:300]) from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}"[:100])
    return value


def claims(state: CustomerState, found: Iterable[Identifier], rules: IdentityRules, at: int, partition: int,
           again: bool = False) -> list[Claim]:
    """The claims a customer's touchpoint sends: for identifiers it has not claimed yet, up to the cap;
    ``again`` (a replay, whose claims may have been lost in a crash): for all it carries and holds."""
    out = []
    for identifier in found:
        key = str(identifier)
        if key in state.claimed:
            if again:
                out.append(Claim(key, state.customer_id, partition, at))
        elif len(state.claimed) < rules.max_identifiers_per_customer:
            state.claimed.append(key)
            out.append(Claim(key, state.customer_id, partition, at))
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a claim did at the identifier's home."""

    outcome: str  # linked | owned (already the claimant's) | conflict | refused | shared | settled
    merge: Merge | None = None  # to send to the customer's partition


def claim(subject: CustomerState, request: Claim, partition: int, position: int, rules: IdentityRules) -> Verdict:
    """Decide one claim against the identifier's state (in place), read at ``position`` of its home log."""
    if read_before(subject, partition, position):
        if position == subject.linked_position and position > subject.written_position:
            return Verdict("linked", _merge(subject, request))  # its merge may have died with the crash
        return Verdict("settled")
    graph = IdentityGraph.from_dict(rules, subject.links) if subject.links else IdentityGraph(rules)
    before = graph.owner.get(request.subject)
    outcome = graph.link(request.customer_id, [_identifier(request.subject)], at=request.at)
    subject.links = graph.to_dict()
    move_on(subject, partition, position)
    if outcome.linked:
        subject.owner_partition, subject.linked_position = request.partition, position
        return Verdict("linked", _merge(subject, request))
    if outcome.shared:
        if before is not None and not subject.unlinked_position:
            subject.unlinked_position = position  # it attributes nobody's touchpoints from here on
        return Verdict("shared")
    if outcome.conflicts:
        return Verdict("refused" if outcome.refused else "conflict")
    return Verdict("owned")


def _merge(subject: CustomerState, request: Claim) -> Merge:
    return Merge(request.subject, request.customer_id, request.at, subject.to_dict())


def _identifier(subject: str) -> Identifier:
    kind, _, value = subject.partition(":")
    return Identifier(kind, value)


def owner_at(subject: CustomerState, position: int) -> tuple[str, int] | None:
    """The customer (and its partition) the identifier's touchpoint at ``position`` is attributed to,
    if it was linked then; None: the identifier's own."""
    linked, unlinked = subject.linked_position, subject.unlinked_position
    if not linked or position <= linked or (unlinked and position > unlinked) or subject.links is None:
        return None
    # A link needs its customer to be the first the identifier was seen on: that is its owner.
    return subject.links["seen_on"][subject.customer_id][0], subject.owner_partition


def merge(customer: CustomerState, request: Merge) -> bool:
    """Absorb an identifier's history into its customer once; whether it did now."""
    if request.subject in customer.merged:
        return False
    absorb(customer, CustomerState.from_dict(request.history))
    customer.merged[request.subject] = request.at
    return True


@dataclass(frozen=True, slots=True)
class Forward:
    """A touchpoint on its way to the state that takes it: its subject's home, or its owner's partition."""

    touchpoint: Touchpoint  # protected; its customer_id is the key of the state that takes it
    topic: str
    partition: int
    identified_by: str
    timestamp_ms: int  # the input record's, so the receiving state sees the same record time


@dataclass(frozen=True, slots=True)
class Stitching:
    """How identifiers are read (their pseudonymizer, ``CEM_IDENTITY_*``) and where their states live."""

    pseudonymize: Callable[[str], str]
    rules: IdentityRules = IdentityRules()
    partitions: int = 4  # of cem.touchpoints and cem.identity
    default_country_code: str = ""

    def identify(self, tp: Touchpoint) -> list[Identifier]:
        """The touchpoint's usable identifiers, pseudonymised; its identifier fields become their
        pseudonyms (None for junk), so no contact leaves this step in clear."""
        found = identifiers({kind: getattr(tp, kind) for kind in KINDS}, self.pseudonymize, self.default_country_code)
        values = {i.kind: i.value for i in found}
        for kind in KINDS:
            setattr(tp, kind, values.get(kind))
        return found

    def home(self, subject: str) -> int:
        return home_partition(subject, self.partitions)
