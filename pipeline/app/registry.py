"""Confluent Schema Registry client: the writer schemas of Confluent-framed touchpoints, by id.

A Confluent-framed value names its writer schema by a registry id. Before the worker decodes a
batch, :meth:`SchemaRegistryClient.resolve` makes every id in it known to the pipeline's
:class:`~schemas.codec.SchemaRegistry`, fetching each new id with the one REST endpoint used here::

    GET {url}/schemas/ids/{id}      Accept: application/vnd.schemaregistry.v1+json

Each id ends up in one of four states:

* **found** -- registered under its id, so ``AvroCodec.decode`` resolves it against the reader
  schema. Cached for good: a registry never reuses an id for another schema.
* **unknown** -- HTTP 404 / error 40403, a schema type other than Avro, or a schema fastavro
  cannot parse. Also cached for good; its records are dead-lettered as ``unknown_schema``.
* **unreachable** -- connection errors, timeouts, HTTP 408, 429 and 5xx. The caller is held and
  the request retried with exponential backoff until ``hold_s`` after the outage began; later
  resolves during the same outage fail fast (one try each) so the input is not stalled again and
  again. An outage ends at the first answer, or once nothing has been tried for ``hold_s``.
* **refused** -- HTTP 401/403 (and any other unexpected 4xx). Logged as an ERROR and not retried:
  waiting does not fix a wrong password, and a hold would only hide it. Not cached either, so the
  next batch asks again and a fix on the registry side needs no restart.

Unknown, unreachable and refused ids are returned by ``resolve`` with a dead-letter detail.
Credentials: ``user``/``password``, or ``https://user:pass@host`` in the URL (the explicit user
wins). Several comma-separated URLs are tried in turn, starting with the last one that answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from schemas.codec import SchemaRegistry

log = logging.getLogger("cem.registry")

ACCEPT = "application/vnd.schemaregistry.v1+json"
SCHEMA_NOT_FOUND = 40403  # Confluent error code of GET /schemas/ids/{id} for an id it never issued


class _Transient(Exception):
    """A failed request that waiting may heal (the message names the endpoint and the error)."""


class Unavailable(Exception):
    """Ids that cannot be fetched now; the message is their dead-letter detail."""


@dataclass(frozen=True)
class Endpoint:
    """One registry URL, without credentials (it appears in logs), and the auth to send to it."""

    base: str
    auth: tuple[str, str] | None


def parse_endpoints(urls: str, user: str = "", password: str = "") -> list[Endpoint]:
    """Comma-separated registry URLs, credentials moved out of the URL.

    >>> parse_endpoints("https://u:p%40ss@reg:8081/ctx/, http://other", "")
    [Endpoint(base='https://reg:8081/ctx', auth=('u', 'p@ss')), Endpoint(base='http://other', auth=None)]
    """
    endpoints = []
    for url in filter(None, (u.strip() for u in urls.split(","))):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"schema registry URL must be http(s)://host[:port][/path], got {url!r}")
        host = parts.netloc.rpartition("@")[2]
        in_url = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        auth = (user, password) if user else in_url
        endpoints.append(Endpoint(f"{parts.scheme}://{host}{parts.path.rstrip('/')}", auth))
    if not endpoints:
        raise ValueError("no schema registry URL given")
    return endpoints


class SchemaRegistryClient:
    """Fetches Confluent writer schemas by id into a :class:`SchemaRegistry`.

    Counters for the worker's metrics: ``fetched`` schemas registered, ``unknown`` ids the registry
    lacks or cem cannot read, ``retries`` backoff waits, ``failures`` resolves that left ids
    unreachable or refused.
    """

    def __init__(self, url: str, user: str = "", password: str = "", *, timeout_s: float = 5.0,
                 hold_s: float = 300.0, retry_base_s: float = 0.2, retry_max_s: float = 10.0,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoints = parse_endpoints(url, user, password)
        self.timeout_s, self.hold_s = timeout_s, hold_s
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._sleep, self._clock = sleep, clock
        self._unknown: dict[int, str] = {}  # id -> dead-letter detail; ids are immutable, so for good
        self._preferred = 0  # index of the endpoint that answered last
        self._outage_since: float | None = None
        self._last_failure = 0.0
        self._lock = asyncio.Lock()  # concurrent batches wait for one fetch instead of repeating it
        self.fetched = self.unknown = self.retries = self.failures = 0

    async def resolve(self, ids: Iterable[int], registry: SchemaRegistry) -> dict[int, str]:
        """Make every id in `ids` known to `registry` before a batch is decoded.

        Returns the ids that are not (unknown, unreachable or refused), each with the detail to
        dead-letter its records with under reason ``unknown_schema``; empty when all are known.
        """
        missing = sorted({i for i in ids if i not in registry.by_confluent_id})
        if not missing:
            return {}
        async with self._lock:
            to_fetch = [i for i in missing if i not in registry.by_confluent_id and i not in self._unknown]
            failed = {i: self._unknown[i] for i in missing if i in self._unknown}
            if to_fetch:
                failed.update(await self._fetch_all(to_fetch, registry))
        return failed

    async def _fetch_all(self, ids: list[int], registry: SchemaRegistry) -> dict[int, str]:
        failed: dict[int, str] = {}
        async with httpx.AsyncClient(timeout=self.timeout_s, headers={"Accept": ACCEPT}) as http:
            for position, schema_id in enumerate(ids):
                try:
                    body = await self._fetch(http, schema_id)
                except Unavailable as exc:  # about the registry, not the id: the rest would fail alike
                    self.failures += 1
                    log.error("schema ids %s left unresolved: %s", ids[position:], exc)
                    failed.update(dict.fromkeys(ids[position:], str(exc)))
                    break
                detail = self._adopt(schema_id, body, registry)
                if detail is not None:
                    self.unknown += 1
                    self._unknown[schema_id] = detail
                    log.warning("%s: its records will be dead-lettered", detail)
                    failed[schema_id] = detail
        return failed

    def _adopt(self, schema_id: int, body: dict | None, registry: SchemaRegistry) -> str | None:
        """Register a fetched schema; the reason it cannot be, if so."""
        if body is None:
            return f"schema registry has no schema with id {schema_id}"
        schema_type = body.get("schemaType") or "AVRO"  # absent means Avro (the REST API's default)
        if schema_type.upper() != "AVRO":
            return f"schema id {schema_id} in the schema registry is {schema_type}, not AVRO"
        try:
            schema = json.loads(body["schema"])
            if not isinstance(schema, dict):
                raise TypeError(f"a {type(schema).__name__} schema, not a record")
            registry.register(schema, confluent_id=schema_id)
        # fastavro's parse errors share no base (SchemaParseException, UnknownType, KeyError, ...), and a
        # schema it cannot read must dead-letter its records, not stop the worker.
        except Exception as exc:  # noqa: BLE001
            refs = " (it uses schema references, which cem does not follow)" if body.get("references") else ""
            return f"schema id {schema_id} is not a usable Avro schema{refs}: {type(exc).__name__}: {exc}"[:300]
        self.fetched += 1
        return None

    async def _fetch(self, http: httpx.AsyncClient, schema_id: int) -> dict | None:
        """The registry's answer for one id (None: it has no such id), held through an outage."""
        attempt = 0
        while True:
            try:
                body = await self._get_any(http, schema_id)
            except _Transient as exc:
                await self._back_off(attempt, schema_id, str(exc))
                attempt += 1
            else:
                self._outage_since = None
                return body

    async def _back_off(self, attempt: int, schema_id: int, error: str) -> None:
        """Wait before the next try, or raise :class:`Unavailable` once the hold is spent."""
        now = self._clock()
        if self._outage_since is None or now - self._last_failure > self.hold_s:
            self._outage_since = now  # no try for a whole hold: this may be a new outage
        self._last_failure = now
        held = now - self._outage_since
        if held >= self.hold_s:
            raise Unavailable(f"schema registry unreachable after {held:.0f} s: {error}"[:300])
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempt, 32), self.hold_s - held)
        self.retries += 1
        log.warning("schema registry unreachable (%s); retry %d for schema id %d in %.2f s",
                    error, attempt + 1, schema_id, delay)
        await self._sleep(delay)

    async def _get_any(self, http: httpx.AsyncClient, schema_id: int) -> dict | None:
        """Ask each endpoint in turn, from the last one that answered; :class:`_Transient` if none did."""
        n = len(self.endpoints)
        error = _Transient("no endpoint")
        for index in [(self._preferred + k) % n for k in range(n)]:
            try:
                body = await self._get(http, self.endpoints[index], schema_id)
            except _Transient as exc:
                error = exc
                continue
            self._preferred = index
            return body
        raise error

    async def _get(self, http: httpx.AsyncClient, endpoint: Endpoint, schema_id: int) -> dict | None:
        try:
            response = await http.get(f"{endpoint.base}/schemas/ids/{schema_id}", auth=endpoint.auth)
        except httpx.TransportError as exc:  # refused, reset, timed out, name not resolved
            raise _Transient(f"{endpoint.base}: {_describe(exc)}") from None
        status, body = response.status_code, _json_object(response)
        if status == 404 or (body or {}).get("error_code") == SCHEMA_NOT_FOUND:
            return None
        if status in (408, 429) or status >= 500:
            raise _Transient(f"{endpoint.base}: HTTP {status}")
        if status in (401, 403):
            raise Unavailable(f"schema registry refused credentials (HTTP {status})")
        if status != 200:
            message = (body or {}).get("message") or response.text[:100]
            raise Unavailable(f"schema registry rejected the request (HTTP {status}): {message}")
        if body is None:  # e.g. a proxy's error page: treated as a glitch worth waiting out
            raise _Transient(f"{endpoint.base}: HTTP 200 without a JSON object")
        return body


def _describe(exc: Exception) -> str:
    """``ConnectError: [Errno 111] Connection refused``; some httpx errors have no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json_object(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
