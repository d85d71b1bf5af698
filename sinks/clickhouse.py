"""ClickHouse sink: batched, columnar, retried, idempotent inserts that a bad row cannot poison.

The same code talks to a server (``http(s)://host:8123``) and to the embedded engine
(``chdb:///abs/dir``, clickhouse-connect's chDB backend). :class:`Connection` owns the client (one
statement at a time: a chDB session is not shared between threads); the sink, the read side and the
source-log book all go through it.

Exactness under at-least-once processing rests on three things:

1. **Source positions.** Every row of an offset-tracked table carries the (topic, partition, epoch,
   offset) of the input record it came from; a projection stored inside each part keeps the highest
   offset per (topic, partition, epoch), so the mark can never disagree with the rows after a crash.
   The sink keeps a mark per position key (the highest offset in ClickHouse, in flight or buffered)
   and drops a row at or below it: a batch re-processed after a crash, or a record delivered twice
   into one buffer, is written once.
2. **One block per table per flush.** The tables are not partitioned, so an insert is one part,
   atomic with its projections; and the rows of each source partition arrive in offset order, so
   whatever a crash leaves in ClickHouse is a prefix of each partition's rows.
3. **Deduplication tokens.** Each insert carries ``insert_deduplication_token`` naming its offset
   ranges, so a retried insert (a timeout after the server committed) is dropped by ClickHouse.

A failing insert is retried with backoff when retrying can help (connection, disk full, memory,
timeouts). When it cannot (a value a column cannot hold), the rows at fault are found by bisecting
against a ``Null``-engine twin of the table, handed to ``on_rejected`` (which turns them into
``dead_letters`` rows, written first), and the rest is written.
"""

from __future__ import annotations

import asyncio
import decimal
import hashlib
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, DataError

from schemas.tables import OFFSET_TRACKED, POSITION, TABLES, names
from sinks.base import NullObserver, PositionKey, SinkObserver
from sinks.clickhouse_ddl import MIGRATIONS, SCHEMA_VERSION, statements

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
TableRow = tuple[str, Row]  # the sink's item: a table name and the row's values in column order
Rejected = Callable[[str, Sequence[Row], str], list[Row]]  # (table, rows, why) -> dead_letters rows

INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}
DEAD_LETTERS = "dead_letters"
# ClickHouse error codes of a value or a block that retrying cannot fix (types, ranges, parsing, sizes).
_DATA_ERROR_CODES = frozenset({6, 26, 27, 38, 41, 43, 53, 69, 70, 72, 117, 131, 190, 321, 407})
_CODE = re.compile(r"Code: (\d+)")
STRIPPED = "dead letter not storable: "  # how a rejected dead letter's replacement begins its detail


def quote(text: str) -> str:
    """A ClickHouse string literal.

    >>> quote("o'neil\\\\x")
    "'o\\\\'neil\\\\\\\\x'"
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SchemaMismatch(RuntimeError):
    """The database was created by another layout of cem's tables."""


class Connection:
    """A clickhouse-connect client for a server URL or an embedded ``chdb://`` path, one statement
    at a time."""

    def __init__(self, url: str, user: str = "default", password: str = "", database: str | None = None,
                 lock: threading.Lock | None = None):
        self._args = (url, user, password, database)
        if url.startswith("chdb://"):
            # clickhouse-connect reads chdb://./dir as host "." and database "dir": make the path absolute.
            self.client = clickhouse_connect.get_client(dsn=f"chdb://{Path(url.removeprefix('chdb://')).resolve()}")
        else:
            self.client = clickhouse_connect.get_client(
                dsn=url, username=user, password=password, database=database or "default",
            )
        self._lock = lock or threading.Lock()

    def sibling(self) -> LockedClient:
        """Another client of the same engine with settings of its own (the read side's), that takes
        turns with this one."""
        return LockedClient(Connection(*self._args, lock=self._lock))

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)

    def query(self, sql: str, settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """clickhouse-connect's ``query`` (so a connection serves wherever a client would)."""
        return self.run(lambda: self.client.query(sql, settings=settings, **kwargs))

    def rows(self, sql: str, settings: dict[str, Any] | None = None) -> list[tuple]:
        return self.query(sql, settings).result_rows

    def command(self, sql: str) -> Any:
        return self.run(self.client.command, sql)

    def insert(self, table: str, columns: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any]) -> None:
        self.run(self.client.insert, table, list(columns), column_names=list(column_names), column_oriented=True,
                 settings=settings)


class LockedClient:
    """A clickhouse-connect client whose statements take the connection's lock; anything else
    (client settings, the database) passes through."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._connection.client, name)
        if name in ("query", "raw_query", "command", "insert"):
            return lambda *args, **kwargs: self._connection.run(attribute, *args, **kwargs)
        return attribute

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_connection":
            object.__setattr__(self, name, value)
        else:
            setattr(self._connection.client, name, value)


class _Buffer:
    __slots__ = ("ranges", "rows")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.ranges: dict[PositionKey, list[int]] = {}  # position key -> [first, last] offset


class ClickHouseSink:
    """Buffers rows per table and inserts them in large, idempotent, columnar batches."""

    def __init__(
        self,
        connection: Connection,
        database: str,
        observer: SinkObserver | None = None,
        flush_rows: int = 20_000,
        flush_interval_s: float = 1.0,
        max_retry_delay_s: float = 10.0,
        on_rejected: Rejected | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self._connection = connection
        self._db = database
        self._observer = observer or NullObserver()
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._max_retry_delay_s = max_retry_delay_s
        self._on_rejected = on_rejected
        self._sleep = sleep
        self._buffers = {table: _Buffer() for table in TABLES}
        self._position_index = {table: tuple(names(table).index(c) for c in POSITION) for table in OFFSET_TRACKED}
        self._marks: dict[str, dict[PositionKey, int]] = {table: {} for table in OFFSET_TRACKED}
        self._last_flush = time.monotonic()
        self._pending_rows = 0
        self._probes: set[str] = set()
        self.skipped_replayed = 0  # rows dropped because their position was already written
        self.rejected_rows = 0  # rows ClickHouse refused for good (dead-lettered instead)
        self.in_flight_rows = 0  # detached from the buffers, insert not yet returned

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, create_schema: bool = True) -> None:
        if create_schema:
            await asyncio.to_thread(self.create_schema)
        await self.load_marks()

    def create_schema(self) -> None:
        """Create cem's tables (idempotent), refusing a database laid out by another version."""
        existing = {r[0] for r in self._connection.rows(f"SELECT name FROM system.tables WHERE database = '{self._db}'")}
        if "touchpoints_enriched" in existing:
            found = self._schema_version() if "schema_version" in existing else 1
            while found in MIGRATIONS and found != SCHEMA_VERSION:  # an earlier layout: brought up to date
                for sql in MIGRATIONS[found]:
                    self._connection.command(sql.format(db=self._db))
                found += 1
                self._connection.command(f"INSERT INTO {self._db}.schema_version VALUES ({found})")
            if found != SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"database {self._db!r} was created by cem with table layout {found}, this is layout "
                    f"{SCHEMA_VERSION}: use another data directory (or database), or migrate it"
                )
        for sql in statements(self._db):
            self._connection.command(sql)
        if self._schema_version() != SCHEMA_VERSION:
            self._connection.command(f"INSERT INTO {self._db}.schema_version VALUES ({SCHEMA_VERSION})")

    def _schema_version(self) -> int | None:
        rows = self._connection.rows(f"SELECT max(version) FROM {self._db}.schema_version")
        return int(rows[0][0]) if rows and rows[0][0] else None

    async def load_marks(self) -> None:
        """(Re)load the high-water marks from ClickHouse, e.g. after a partition assignment. A mark
        never moves back: rows this sink has buffered or sent stay covered."""
        sql = " UNION ALL ".join(
            f"SELECT '{table}', source_topic, source_partition, source_epoch, max(source_offset) FROM {self._db}.{table} "
            f"GROUP BY source_topic, source_partition, source_epoch"  # answered by the `offsets` projection
            for table in OFFSET_TRACKED
        )
        rows = await asyncio.to_thread(self._connection.rows, sql)
        for table, topic, partition, epoch, offset in rows:
            marks = self._marks[table]
            key = (topic, int(partition), int(epoch))
            marks[key] = max(marks.get(key, -1), int(offset))

    def marks(self, table: str) -> dict[PositionKey, int]:
        """Per position key, the highest offset ``table`` holds or will hold (a copy)."""
        return dict(self._marks[table])

    async def close(self) -> None:
        await self.flush()

    # -- the Sink protocol ----------------------------------------------------------------------
    def add(self, item: TableRow) -> None:
        table, row = item
        buffer = self._buffers[table]
        index = self._position_index.get(table)
        if index is not None and not self._claim(table, buffer, row, index):
            self.skipped_replayed += 1
            return
        buffer.rows.append(row)
        self._pending_rows += 1

    def _claim(self, table: str, buffer: _Buffer, row: Row, index: tuple[int, ...]) -> bool:
        """Whether ``row``'s position is new to ``table``; if so it is now taken."""
        key = (row[index[0]], row[index[1]], row[index[2]])
        offset = row[index[3]]
        marks = self._marks[table]
        if offset <= marks.get(key, -1):
            return False  # in ClickHouse, in flight, or already in this buffer
        marks[key] = offset
        span = buffer.ranges.get(key)
        if span is None:
            buffer.ranges[key] = [offset, offset]
        else:
            span[1] = offset
        return True

    def due(self, waiting: bool = False) -> bool:
        """Whether a flush is due: enough rows, or the interval has passed with rows (or, when the
        caller has ``waiting`` work such as unacked input, even without rows)."""
        return self._pending_rows >= self._flush_rows or (
            (self._pending_rows > 0 or waiting) and time.monotonic() - self._last_flush >= self._flush_interval_s
        )

    @property
    def pending_rows(self) -> int:
        """Rows not yet durable: buffered, or in an insert that has not returned."""
        return self._pending_rows + self.in_flight_rows

    async def flush(self) -> None:
        """Insert every buffered table, one block each; retries until ClickHouse takes it.

        The buffers are detached first, so rows added while the inserts run go to the next flush
        (the worker keeps processing meanwhile). Dead letters go last, unless rows of another table
        are rejected: then they go right away, with the rejected rows among them, before the rest
        of that table (a crash in between must not lose the rejected rows' dead letters).
        """
        buffers, self._buffers = self._buffers, {table: _Buffer() for table in TABLES}
        detached, self._pending_rows = self._pending_rows, 0
        self.in_flight_rows += detached
        self._last_flush = time.monotonic()
        dead_letters = buffers.pop(DEAD_LETTERS)
        try:
            for table, buffer in buffers.items():
                if buffer.rows:
                    await self._write_table(table, buffer, dead_letters)
            if dead_letters.rows:
                await self._write_table(DEAD_LETTERS, dead_letters, None)
        finally:
            self.in_flight_rows -= detached

    async def write(self, items: Sequence[TableRow]) -> None:
        """Insert ``items`` now, on their own (not offset-tracked tables: source logs, metrics)."""
        by_table: dict[str, _Buffer] = {}
        for table, row in items:
            assert table not in OFFSET_TRACKED, "offset-tracked rows go through add() and flush()"
            by_table.setdefault(table, _Buffer()).rows.append(row)
        for table, buffer in by_table.items():
            await self._write_table(table, buffer, None)

    # -- inserting --------------------------------------------------------------------------------
    async def _write_table(self, table: str, buffer: _Buffer, dead_letters: _Buffer | None) -> None:
        rows = buffer.rows
        while rows:
            error = await self._insert_with_retry(table, rows, _token(table, buffer.ranges, len(rows)))
            if error is None:
                return
            bad = await asyncio.to_thread(self._find_rejected, table, rows)
            if not bad:  # the whole block fails but no row alone does: not the rows' fault, retry
                log.warning("ClickHouse refused a block of %s but no row alone (%s); retrying", table, error)
                await self._sleep(self._max_retry_delay_s)
                continue
            letters = self._dead_letters_for(table, rows, bad)
            rows = [row for i, row in enumerate(rows) if i not in bad]
            if table == DEAD_LETTERS:
                rows += letters  # their stripped-down replacements, in the same block
            elif letters:
                # Written before the rest of this table: once those rows are in, a replay skips the
                # rejected ones too, and would never dead-letter them again.
                target = dead_letters if dead_letters is not None else _Buffer()
                target.rows += letters
                await self._write_table(DEAD_LETTERS, target, None)
                target.rows, target.ranges = [], {}

    def _dead_letters_for(self, table: str, rows: list[Row], bad: dict[int, str]) -> list[Row]:
        """The dead letters of rejected rows (built by ``on_rejected``), logged and counted.

        A rejected dead letter is replaced by one that ``on_rejected`` strips down, with ``why``
        saying so; a stripped one that ClickHouse refuses again is dropped (logged and counted).
        """
        self.rejected_rows += len(bad)
        letters: list[Row] = []
        detail = names(DEAD_LETTERS).index("detail")
        for why, indexes in _group(bad).items():
            log.error("ClickHouse rejected %d row(s) of %s for good: %s", len(indexes), table, why)
            rejected = [rows[i] for i in indexes]
            if table == DEAD_LETTERS:
                rejected = [row for row in rejected if not str(row[detail]).startswith(STRIPPED)]
                why = STRIPPED + why
            if rejected and self._on_rejected is not None:
                letters += self._on_rejected(table, rejected, why)
        return letters

    async def _insert_with_retry(self, table: str, rows: list[Row], token: str | None) -> str | None:
        """Insert ``rows``; retry transient failures with backoff; return why if the data is at fault."""
        settings: dict[str, Any] = dict(INSERT_SETTINGS)
        if token is not None:
            settings["insert_deduplication_token"] = token
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._insert, table, rows, settings)
            except Exception as exc:
                self._observer.on_write(table, len(rows), time.perf_counter() - started, exc)
                if is_data_error(exc):
                    return _why(exc)
                log.warning("ClickHouse insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self._max_retry_delay_s)
                continue
            self._observer.on_write(table, len(rows), time.perf_counter() - started, None)
            return None

    def _insert(self, table: str, rows: Sequence[Row], settings: dict[str, Any], target: str | None = None) -> None:
        self._connection.insert(f"{self._db}.{target or table}", list(zip(*rows, strict=True)), names(table), settings)

    def _find_rejected(self, table: str, rows: list[Row]) -> dict[int, str]:
        """Which rows ClickHouse refuses on their own, and why: bisection against a Null twin."""
        probe = self._probe_table(table)
        bad: dict[int, str] = {}
        spans = [(0, len(rows))]
        while spans:
            low, high = spans.pop()
            try:
                self._insert(table, rows[low:high], {}, probe)
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                if high - low == 1:
                    bad[low] = _why(exc)
                else:
                    middle = (low + high) // 2
                    spans += [(middle, high), (low, middle)]
        return bad

    def _probe_table(self, table: str) -> str:
        probe = f"_probe_{table}"
        if probe not in self._probes:
            self._connection.command(f"CREATE TABLE IF NOT EXISTS {self._db}.{probe} AS {self._db}.{table} ENGINE = Null")
            self._probes.add(probe)
        return probe


def is_data_error(exc: BaseException) -> bool:
    """Whether an insert failed because of the values (retrying cannot help) rather than the server.

    >>> is_data_error(ValueError("cannot convert NaN to integer")), is_data_error(ConnectionResetError())
    (True, False)
    """
    if isinstance(exc, (DataError, ValueError, TypeError, OverflowError, struct.error, decimal.InvalidOperation)):
        return True
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        if code is None and (match := _CODE.search(str(exc))):
            code = int(match.group(1))
        return code in _DATA_ERROR_CODES
    return False


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _group(bad: dict[int, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, why in sorted(bad.items()):
        groups.setdefault(why, []).append(index)
    return groups


def _token(table: str, ranges: dict[PositionKey, list[int]], rows: int) -> str | None:
    """A deduplication token naming exactly the offset ranges (and the row count) in the block.

    >>> _token("t", {("cem.touchpoints", 1, 1): [10, 19], ("cem.touchpoints", 0, 1): [5, 9]}, 15)
    't:15:cem.touchpoints/0/1/5-9,cem.touchpoints/1/1/10-19'
    >>> _token("t", {}, 3) is None   # not offset-tracked: nothing names the block
    True
    """
    if not ranges:
        return None
    spans = ",".join(f"{topic}/{p}/{e}/{first}-{last}" for (topic, p, e), (first, last) in sorted(ranges.items()))
    token = f"{table}:{rows}:{spans}"
    return token if len(token) <= 1000 else f"{table}:{rows}:sha1:{hashlib.sha1(spans.encode()).hexdigest()}"


def connect(url: str, user: str = "default", password: str = "", database: str | None = None) -> Connection:
    """A :class:`Connection` (the sink's, the read side's); ``engine://`` names a shared embedded
    engine's socket (``sinks.engine``)."""
    from sinks.engine import SCHEME, EngineConnection

    if url.startswith(SCHEME):
        return EngineConnection(url)
    return Connection(url, user, password, database)


def rows_of(items: Iterable[TableRow], table: str) -> list[Row]:
    """The rows for ``table`` among ``items`` (tests)."""
    return [row for name, row in items if name == table]
