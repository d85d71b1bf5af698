"""The ClickHouse sink's protocol without a server: positions written once, poison isolated, retries.

A fake connection records inserts and fails them the way clickhouse-connect and ClickHouse do; one
test runs the real engine (chDB, in a subprocess: one engine per process) to show that a value a
column cannot hold is dead-lettered and the rest of its block stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.app.rows import storage_rejected
from schemas.tables import names
from sinks.clickhouse import STRIPPED, ClickHouseSink, is_data_error

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "cem.touchpoints"


class FakeConnection:
    """Inserts land in ``tables``; a row holding ``POISON`` anywhere fails like a bad value does;
    ``down`` inserts fail like a lost connection."""

    POISON = "poison"

    def __init__(self, down: int = 0):
        self.tables: dict[str, list[tuple]] = {}
        self.inserts: list[str] = []  # table of each successful insert, in order
        self.down = down

    def rows(self, sql: str, settings: Any = None) -> list[tuple]:
        return []  # no marks in a fresh database

    def command(self, sql: str) -> None:
        pass

    def insert(self, table: str, columns: Any, column_names: Any, settings: Any) -> None:
        rows = list(zip(*columns, strict=True))
        if self.down:
            self.down -= 1
            raise ConnectionResetError("connection lost")
        if any(self.POISON in map(str, row) for row in rows):
            raise ValueError("cannot convert NaN to integer")
        name = table.split(".", 1)[1]
        if not name.startswith("_probe_"):
            self.tables.setdefault(name, []).extend(rows)
            self.inserts.append(name)


def enriched(offset: int, epoch: int = 1, partition: int = 0, text: str = "ok") -> tuple[str, tuple]:
    values = dict.fromkeys(names("touchpoints_enriched"))
    values.update(event_id=f"e{offset}", customer_id="c1", text=text, source_topic=TOPIC,
                  source_partition=partition, source_epoch=epoch, source_offset=offset, received_at=0)
    return "touchpoints_enriched", tuple(values.values())


def dead(offset: int, detail: str = "why") -> tuple[str, tuple]:
    values = dict.fromkeys(names("dead_letters"))
    values.update(received_at=0, source_topic=TOPIC, source_partition=0, source_epoch=1, source_offset=offset,
                  reason="undecodable", stage="decode", detail=detail, payload="x", payload_bytes=1,
                  payload_truncated=False)
    return "dead_letters", tuple(values.values())


def offsets(connection: FakeConnection, table: str) -> list[int]:
    column = names(table).index("source_offset")
    return [row[column] for row in connection.tables.get(table, [])]


async def no_sleep(seconds: float) -> None:
    pass


def sink(connection: FakeConnection, **kw: Any) -> ClickHouseSink:
    return ClickHouseSink(connection, "cem", on_rejected=storage_rejected, sleep=no_sleep, **kw)  # type: ignore[arg-type]


async def test_a_position_is_written_once_even_when_added_twice_into_one_buffer():
    """Property: no (topic, partition, epoch, offset) is written twice, in one block or across blocks."""
    connection = FakeConnection()
    s = sink(connection)
    for offset in (1, 2, 3, 2, 3, 1):  # a seek back delivered 1-3 again before the flush
        s.add(enriched(offset))
    await s.flush()
    for offset in (3, 4):  # and again after it
        s.add(enriched(offset))
    await s.flush()
    assert offsets(connection, "touchpoints_enriched") == [1, 2, 3, 4]
    assert s.skipped_replayed == 4


async def test_positions_of_a_log_that_started_over_are_new():
    """Property: offset 1 of epoch 2 is another record than offset 1 of epoch 1."""
    connection = FakeConnection()
    s = sink(connection)
    s.add(enriched(1, epoch=1))
    s.add(enriched(1, epoch=2))
    await s.flush()
    assert offsets(connection, "touchpoints_enriched") == [1, 1]


async def test_a_row_no_column_can_hold_is_dead_lettered_before_the_rest_of_its_block():
    """Property: a storage-rejected row is not lost (it becomes a dead letter, written before the
    good rows of its table, so a crash in between cannot drop it), and the rest is stored."""
    connection = FakeConnection()
    s = sink(connection)
    for offset in range(1, 6):
        s.add(enriched(offset, text="poison" if offset == 3 else "ok"))
    s.add(dead(7))
    await s.flush()
    assert offsets(connection, "touchpoints_enriched") == [1, 2, 4, 5]
    letters = connection.tables["dead_letters"]
    reason, detail = names("dead_letters").index("reason"), names("dead_letters").index("detail")
    assert sorted(offsets(connection, "dead_letters")) == [3, 7]
    assert {row[reason] for row in letters} == {"storage_rejected", "undecodable"}
    assert any("cannot convert NaN" in row[detail] for row in letters)
    assert connection.inserts == ["dead_letters", "touchpoints_enriched"]
    assert s.rejected_rows == 1 and s.pending_rows == 0


async def test_a_dead_letter_that_cannot_be_stored_is_replaced_then_dropped_and_counted():
    connection = FakeConnection()
    s = sink(connection)
    s.add(dead(1, detail="poison"))
    s.add(dead(2))
    await s.flush()
    detail = names("dead_letters").index("detail")
    stored = {o: row[detail] for o, row in zip(offsets(connection, "dead_letters"), connection.tables["dead_letters"], strict=True)}
    assert stored[2] == "why" and stored[1].startswith(STRIPPED)


async def test_transient_failures_are_retried_never_dropped():
    connection = FakeConnection(down=3)
    s = sink(connection)
    s.add(enriched(1))
    await s.flush()
    assert offsets(connection, "touchpoints_enriched") == [1]


def test_data_errors_are_told_from_transient_ones():
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    assert is_data_error(DatabaseError("Code: 407. DB::Exception: Decimal math overflow"))
    assert not is_data_error(DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space"))
    assert not is_data_error(OperationalError("connection refused"))


CHDB_SCRIPT = r"""
import asyncio, json, sys
from pipeline.app.rows import storage_rejected
from schemas.tables import names
from sinks.clickhouse import ClickHouseSink, connect

sink = ClickHouseSink(connect("chdb://" + sys.argv[1]), "cem", on_rejected=storage_rejected)
sink.create_schema()
def row(offset, amount):
    values = dict.fromkeys(names("touchpoints_enriched"))
    values.update(event_id=f"e{offset}", customer_id="c1", occurred_at=1767225600000, channel="web", type="purchase",
                  amount=amount, journey_stage="purchase", attributes={}, first_seen=1767225600000, events_total=1,
                  channel_events=1, revenue_to_date=0, orders=1, open_complaints=0, channel_switch=False,
                  source_topic="cem.touchpoints", source_partition=0, source_epoch=1, source_offset=offset,
                  received_at=1767225600000)
    return "touchpoints_enriched", tuple(values.values())
for offset, amount in enumerate([1.5, float("nan"), 1e20, 2.5]):
    sink.add(row(offset, amount))
asyncio.run(sink.flush())
rows = sink._connection.rows("SELECT source_offset FROM cem.touchpoints_enriched ORDER BY source_offset")
letters = sink._connection.rows("SELECT source_offset, reason FROM cem.dead_letters ORDER BY source_offset")
print(json.dumps({"stored": [r[0] for r in rows], "dead": [list(r) for r in letters], "rejected": sink.rejected_rows}))
"""


@pytest.mark.integration
def test_the_real_engine_isolates_values_a_column_cannot_hold(tmp_path):
    """Property (chDB): NaN and 1e20 in a Decimal(18, 4) column are dead-lettered as storage_rejected
    and the other rows of the block are stored; nothing is retried forever."""
    proc = subprocess.run([sys.executable, "-c", CHDB_SCRIPT, str(tmp_path / "ch")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"stored": [0, 3], "dead": [[1, "storage_rejected"], [2, "storage_rejected"]], "rejected": 2}


MIGRATE_SCRIPT = r"""
import json, sys
from sinks.clickhouse import ClickHouseSink, connect

connection = connect("chdb://" + sys.argv[1])
sink = ClickHouseSink(connection, "cem")
sink.create_schema()
# A database as layout 3 left it: without the identity columns, its version recorded as 3.
connection.command("ALTER TABLE cem.touchpoints_enriched DROP COLUMN identified_by")
connection.command("ALTER TABLE cem.customer_state DROP COLUMN identifiers")
connection.command("TRUNCATE TABLE cem.schema_version")
connection.command("INSERT INTO cem.schema_version VALUES (3)")
sink.create_schema()
columns = connection.rows("SELECT table, name FROM system.columns WHERE database = 'cem' AND name IN ('identified_by', 'identifiers')")
version = connection.rows("SELECT max(version) FROM cem.schema_version")[0][0]
print(json.dumps({"columns": sorted(map(list, columns)), "version": int(version)}))
"""


@pytest.mark.integration
def test_a_database_of_the_previous_layout_is_migrated_in_place(tmp_path):
    """Property (chDB): a data directory written by the layout before identity stitching gets its new
    columns when a worker starts on it, instead of being refused."""
    proc = subprocess.run([sys.executable, "-c", MIGRATE_SCRIPT, str(tmp_path / "ch")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"columns": [["customer_state", "identifiers"], ["touchpoints_enriched", "identified_by"]], "version": 4}


def test_each_sink_implements_the_protocols_its_callers_name() -> None:
    """Callers type their sinks by protocol (sinks.base), never by class: each sink must keep them."""
    from sinks.base import BufferedSink, PrioritySink, ReplayGuard, Sink
    from sinks.clickhouse import ClickHouseSink
    from sinks.kafka import KafkaSink

    clickhouse = ClickHouseSink(connection=None, database="cem")  # type: ignore[arg-type]  # no I/O until start()
    kafka = KafkaSink("127.0.0.1:9")
    assert isinstance(clickhouse, Sink) and isinstance(clickhouse, BufferedSink) and isinstance(clickhouse, ReplayGuard)
    assert isinstance(kafka, Sink) and isinstance(kafka, PrioritySink)
    assert not isinstance(kafka, ReplayGuard) and not isinstance(clickhouse, PrioritySink)


# -- the Kafka sink: a refused batch is sent again ------------------------------------------------

class FakeBatch:
    def __init__(self, capacity: int):
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.capacity = capacity

    def append(self, key: bytes | None, value: bytes | None, timestamp: int | None, headers: list) -> object | None:
        if len(self.records) >= self.capacity:
            return None  # full, as aiokafka's BatchBuilder answers
        self.records.append((key, value))
        return object()


class FakeProducer:
    """Refuses the first ``refusals`` batches it is sent, the way a broker that restarts empty did
    (``UnknownError``); keeps what it accepted, in order."""

    def __init__(self, refusals: int, capacity: int = 3):
        self.refusals, self.capacity = refusals, capacity
        self.accepted: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        self.client = self

    async def add_topic(self, topic: str) -> None:
        pass

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        import asyncio

        from aiokafka.errors import UnknownError

        future = asyncio.get_running_loop().create_future()
        if self.refusals > 0:
            self.refusals -= 1
            future.set_exception(UnknownError())
        else:
            self.accepted.setdefault((topic, partition), []).extend(batch.records)
            future.set_result(None)
        return future


def kafka_sink(producer: FakeProducer, attempts: int) -> Any:
    from sinks.kafka import KafkaSink

    sink = KafkaSink("127.0.0.1:9", send_attempts=attempts, retry_backoff_s=0.0)
    sink._producer = sink._priority = producer  # type: ignore[assignment]  # started, as far as it knows
    return sink


async def test_a_batch_the_broker_refuses_is_sent_again_in_order_and_whole():
    """Found in CI: a worker's revocation flush met a broker restarting empty, the broker refused a
    batch (UnknownError), and the worker crashed. Property: refused batches are sent again (with the
    later batches of their partition) until the broker takes them, so every record arrives and the
    last of them are in the order sent; after the last attempt the flush raises, and nothing is
    dropped silently."""
    from aiokafka.errors import UnknownError

    from sinks.kafka import KafkaRecord

    records = [KafkaRecord("cem.touchpoints.enriched", f"c{i % 3}".encode(), str(i).encode(), i % 2) for i in range(10)]
    producer = FakeProducer(refusals=3)
    sink = kafka_sink(producer, attempts=4)
    for record in records:
        sink.add(record)
    await sink.flush()
    for partition in (0, 1):
        sent = [(r.key, r.value) for r in records if r.partition == partition]
        accepted = producer.accepted[("cem.touchpoints.enriched", partition)]
        assert set(accepted) == set(sent) and accepted[-len(sent):] == sent, accepted  # all, last in order

    failing = kafka_sink(FakeProducer(refusals=100), attempts=3)
    failing.add(records[0])
    with pytest.raises(UnknownError):
        await failing.flush()
