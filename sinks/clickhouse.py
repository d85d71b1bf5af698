"""ClickHouse sink: batched, retried, idempotent inserts through clickhouse-connect.

The same code talks to a server (``http(s)://host:8123``) and to the embedded engine
(``chdb:///abs/dir``, clickhouse-connect's chDB backend).

Exactness under at-least-once processing rests on three things, in this order:

1. **Source offsets.** Every offset-tracked row carries the Kafka (topic, partition, offset) it came
   from; a projection stored inside each part keeps ``max(offset)`` per partition, so the mark can
   never disagree with the rows (or the KPI projection) after a crash. After a restart the sink loads
   those high-water marks and drops replayed rows at or below them, so a batch re-processed after a
   crash is never counted twice.
2. **Deduplication tokens.** Each insert carries ``insert_deduplication_token`` built from the offset
   ranges it holds, and the tables keep a deduplication window, so a retried insert (timeout after
   the server committed) is dropped by ClickHouse, including in the materialized views.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import clickhouse_connect

from sinks.base import NullObserver, SinkObserver, SourcePosition
from sinks.clickhouse_ddl import OFFSET_TRACKED, statements

log = logging.getLogger(__name__)

INSERT_SETTINGS = {
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


@dataclass(slots=True)
class TableRow:
    """One row for ``table``, in the column order of :data:`pipeline.app.rows.COLUMNS`."""

    table: str
    values: list[Any]
    position: SourcePosition | None = None


@dataclass
class _Buffer:
    rows: list[list[Any]] = field(default_factory=list)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (topic, partition) -> [first, last]


def connect(url: str, user: str = "default", password: str = "", database: str | None = None) -> Any:
    """A clickhouse-connect client for a server URL or an embedded ``chdb://`` path."""
    if url.startswith("chdb://"):
        # clickhouse-connect reads chdb://./dir as host "." and database "dir": make the path absolute.
        return clickhouse_connect.get_client(dsn=f"chdb://{Path(url.removeprefix('chdb://')).resolve()}")
    return clickhouse_connect.get_client(dsn=url, username=user, password=password, database=database or "default")


class ClickHouseSink:
    """Buffers rows per table and inserts them in large, idempotent batches."""

    def __init__(
        self,
        client: Any,
        database: str,
        columns: dict[str, Sequence[str]],
        observer: SinkObserver | None = None,
        flush_rows: int = 20_000,
        flush_interval_s: float = 1.0,
        max_retry_delay_s: float = 10.0,
    ):
        self._client = client
        self._db = database
        self._columns = columns
        self._observer = observer or NullObserver()
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._max_retry_delay_s = max_retry_delay_s
        self._buffers: dict[str, _Buffer] = {table: _Buffer() for table in columns}
        self._high_water: dict[tuple[str, str, int], int] | None = None
        self._last_flush = time.monotonic()
        self._pending_rows = 0
        self._lock = threading.Lock()  # one statement at a time on the shared client (chDB session)
        self.skipped_replayed = 0
        self.in_flight_rows = 0  # detached from the buffers, insert not yet returned

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.create_schema)
        await self.load_high_water()

    def create_schema(self) -> None:
        for sql in statements(self._db):
            self._run(self._client.command, sql)

    async def load_high_water(self) -> None:
        """(Re)load the per-partition high-water marks, e.g. after a partition assignment."""
        sql = " UNION ALL ".join(
            f"SELECT '{table}', source_topic, source_partition, max(source_offset) FROM {self._db}.{table} "
            f"GROUP BY source_topic, source_partition"  # answered by the `offsets` projection
            for table in OFFSET_TRACKED
        )
        rows = await asyncio.to_thread(self.query, sql)
        self._high_water = {(table, topic, int(p)): int(offset) for table, topic, p, offset in rows}

    async def close(self) -> None:
        await self.flush()

    # -- the Sink protocol ----------------------------------------------------------------------
    async def write(self, rows: Sequence[TableRow]) -> None:
        high_water = self._high_water or {}
        for row in rows:
            buffer = self._buffers[row.table]
            position = row.position
            if position is not None:
                key = (row.table, position.topic, position.partition)
                if position.offset <= high_water.get(key, -1):
                    self.skipped_replayed += 1  # already in ClickHouse before the restart
                    continue
                span = buffer.ranges.get((position.topic, position.partition))
                if span is None:
                    buffer.ranges[(position.topic, position.partition)] = [position.offset, position.offset]
                else:
                    span[0] = min(span[0], position.offset)
                    span[1] = max(span[1], position.offset)
            buffer.rows.append(row.values)
            self._pending_rows += 1

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
        """Insert every buffered table; retries (same token) until ClickHouse takes it.

        The buffers are detached first, so writes that arrive while the insert runs go to the
        next flush (the worker keeps processing during an insert).
        """
        buffers = self._buffers
        self._buffers = {table: _Buffer() for table in self._columns}
        self.in_flight_rows += self._pending_rows
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        for table, buffer in buffers.items():
            if not buffer.rows:
                continue
            token = _token(table, buffer.ranges) if table in OFFSET_TRACKED else None
            await self._insert_with_retry(table, buffer.rows, token)
            self.in_flight_rows -= len(buffer.rows)
            for (topic, partition), (_, last) in buffer.ranges.items():
                key = (table, topic, partition)
                if self._high_water is not None:
                    self._high_water[key] = max(self._high_water.get(key, -1), last)

    # -- queries (cem query, /query endpoint, tests) --------------------------------------------
    def query(self, sql: str) -> list[tuple]:
        return self._run(lambda: self._client.query(sql).result_rows)

    def query_with_columns(self, sql: str) -> tuple[list[str], list[tuple]]:
        result = self._run(lambda: self._client.query(sql))
        return list(result.column_names), list(result.result_rows)

    # -- internals --------------------------------------------------------------------------------
    async def _insert_with_retry(self, table: str, rows: list[list[Any]], token: str | None) -> None:
        settings = dict(INSERT_SETTINGS)
        if token is not None:
            settings["insert_deduplication_token"] = token
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._insert, table, rows, settings)
            except Exception as exc:  # network, server overload: retry with the same token
                self._observer.on_write(table, len(rows), time.perf_counter() - started, exc)
                log.warning("ClickHouse insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay_s)
                continue
            self._observer.on_write(table, len(rows), time.perf_counter() - started, None)
            return

    def _insert(self, table: str, rows: list[list[Any]], settings: dict[str, Any]) -> None:
        self._run(
            self._client.insert,
            f"{self._db}.{table}",
            rows,
            column_names=list(self._columns[table]),
            settings=settings,
        )

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)


def _token(table: str, ranges: dict[tuple[str, int], list[int]]) -> str:
    """A deduplication token naming exactly the offset ranges in the block.

    >>> _token("t", {("cem.touchpoints", 1): [10, 19], ("cem.touchpoints", 0): [5, 9]})
    't:cem.touchpoints/0/5-9,cem.touchpoints/1/10-19'
    """
    spans = ",".join(f"{topic}/{p}/{first}-{last}" for (topic, p), (first, last) in sorted(ranges.items()))
    token = f"{table}:{spans}"
    return token if len(token) <= 1000 else f"{table}:sha1:{hashlib.sha1(spans.encode()).hexdigest()}"
