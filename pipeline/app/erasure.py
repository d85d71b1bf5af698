"""Erasure: a customer's right to be forgotten, carried out by the worker that owns the customer.

``cem erase`` publishes requests to the compacted ``cem.erasures``, keyed by the customer as the
pipeline knows it (its pseudonym when pseudonymisation is on) and on the partition of the customer's
touchpoints, so the erasure agent that receives a request runs on the worker holding the customer.

* :class:`ErasureList` is the suppression list: every worker reads ``cem.erasures`` to its end before
  it processes a touchpoint, then follows it. A touchpoint of an erased customer that arrives later
  is dropped and counted (``cem_touchpoints_suppressed_total``), nothing of it kept.
* :class:`Eraser` carries a request out, in this order: (0) the identifiers linked to the customer
  (``processors.stitching``) get requests of their own, on their home partitions, so their anonymous
  histories go too (durable before the state that names them is deleted); (1) the customer joins the suppression list
  at once; (2) its state is deleted from the table, with a tombstone on the changelog, and dropped
  from what the next commit would write; (3) the trainer is told to forget its pending examples;
  (4) a commit, so nothing of the customer is left in the sinks' buffers; (5) in ClickHouse its
  enriched touchpoints are anonymised in place (customer, event id and free text replaced, so the
  per-minute KPIs stay exact) and its rows in ``customer_state``, ``alerts`` and ``dead_letters``
  are deleted; (6) an audit row goes to ``cem.erasure_audit``. Only then is the request acked: a
  crash replays it, and every step is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.app.logs import TopicFollower
from schemas.contract import TOPIC_ERASURES
from sinks.base import Sink
from sinks.clickhouse import Connection, TableRow, quote

log = logging.getLogger("cem.erasure")


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """One request on ``cem.erasures``."""

    customer_id: str  # as the state knows the customer
    requested_at: int  # epoch ms, wall clock of the request
    requested_by: str
    reason: str = ""

    def to_value(self) -> bytes:
        return orjson.dumps({"customer_id": self.customer_id, "requested_at": self.requested_at,
                             "requested_by": self.requested_by, "reason": self.reason})

    @classmethod
    def from_value(cls, value: bytes | None) -> ErasureRequest:
        """The request a record value carries; ``ValueError`` if it is not one.

        >>> ErasureRequest.from_value(ErasureRequest("c1", 5, "dpo").to_value())
        ErasureRequest(customer_id='c1', requested_at=5, requested_by='dpo', reason='')
        """
        data = orjson.loads(value or b"null")
        if not isinstance(data, dict) or not isinstance(data.get("customer_id"), str) or not data["customer_id"]:
            raise ValueError("an erasure request is a JSON object with a non-empty customer_id")
        return cls(data["customer_id"], int(data.get("requested_at") or 0), str(data.get("requested_by") or ""),
                   str(data.get("reason") or ""))


class ErasureList(TopicFollower):
    """The customers erased so far (every partition), read to the end at start, then followed."""

    topic = TOPIC_ERASURES
    what = "erasure list"

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None):
        super().__init__(bootstrap, client_options)
        self.ids: set[str] = set()

    def _take(self, records: list[Any]) -> None:
        for record in records:
            try:
                self.ids.add(ErasureRequest.from_value(record.value).customer_id)
            except (ValueError, TypeError) as exc:
                log.error("erasure request %s/%s ignored: %s", record.partition, record.offset, exc)



# Table -> the statement that removes (or anonymises) one customer's rows; {c} is the quoted id,
# {t} a random token that replaces the customer in the rows kept for the KPIs.
_STATEMENTS = {
    "touchpoints_enriched": (
        "ALTER TABLE {db}.touchpoints_enriched UPDATE customer_id = {t}, "
        "event_id = concat({t}, '-', toString(source_epoch), '-', toString(source_offset)), text = NULL, "
        "session_id = NULL, case_id = NULL, attributes = map() WHERE customer_id = {c}"
    ),
    "customer_state": "ALTER TABLE {db}.customer_state DELETE WHERE customer_id = {c}",
    "alerts": "ALTER TABLE {db}.alerts DELETE WHERE customer_id = {c}",
    "dead_letters": "ALTER TABLE {db}.dead_letters DELETE WHERE key = {c}",
}
_KEY_COLUMN = {"dead_letters": "key"}


class ClickHouseErasure:
    """The ClickHouse side of an erasure: count, then remove or anonymise, a customer's rows."""

    def __init__(self, connection: Connection, database: str):
        self._connection = connection
        self._db = database

    def erase(self, customer_id: str) -> dict[str, int]:
        """Rows removed or anonymised per table (mutations wait until they are done)."""
        c, t = quote(customer_id), quote(f"erased-{secrets.token_hex(8)}")
        removed = {}
        for table, statement in _STATEMENTS.items():
            column = _KEY_COLUMN.get(table, "customer_id")
            removed[table] = int(self._connection.rows(f"SELECT count() FROM {self._db}.{table} WHERE {column} = {c}")[0][0])
            if removed[table]:
                self._connection.command(statement.format(db=self._db, c=c, t=t) + " SETTINGS mutations_sync = 2")
        return removed


@dataclass
class Erased:
    request: ErasureRequest
    removed: dict[str, int]
    erased_at: int

    def audit_row(self) -> tuple[str, tuple]:
        r = self.request
        return "erasure_audit", (r.customer_id, r.requested_at, r.requested_by, r.reason, self.erased_at, self.removed)


async def erase_in_clickhouse(clickhouse: ClickHouseErasure, sink: Sink[TableRow], request: ErasureRequest,
                              removed: dict[str, int]) -> Erased:
    """Steps (5) and (6): after the caller's commit."""
    removed.update(await asyncio.to_thread(clickhouse.erase, request.customer_id))
    erased = Erased(request, removed, int(time.time() * 1000))
    await sink.write([erased.audit_row()])
    log.info("erased %s (requested by %s): %s", request.customer_id, request.requested_by or "?", removed)
    return erased
