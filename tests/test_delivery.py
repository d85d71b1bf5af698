"""Where the worker meets Faust's internals: the consumer it builds, and what other threads read."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from pipeline.settings import Settings


async def test_the_worker_consumer_waits_for_records_as_configured_not_faust_s_fixed_1500_ms(tmp_path: Path) -> None:
    """Property: the Kafka consumer Faust creates for the worker uses ``CEM_FETCH_MAX_WAIT_MS``.

    Faust fixes the fetch wait at 1,500 ms; a broker that holds fetches that long (Tansu does, even
    with records waiting) made every fetch ~0.75 s of records, and an alert waited for all of it:
    alert latency p50 250 ms at 2,000 touchpoints/s, 14 ms with a 100 ms wait.
    """
    import pipeline.app.worker
    from pipeline.app.faust_app import create_app

    settings = Settings(data_dir=str(tmp_path), clickhouse_url=f"chdb://{tmp_path / 'ch'}", fetch_max_wait_ms=123)
    with mock.patch.object(pipeline.app.worker, "connect", mock.MagicMock()):  # the ClickHouse connection: no I/O
        app, _ = create_app(settings)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 123
    finally:
        await consumer.stop()  # never started: releases what its constructor opened


async def test_the_lag_gauge_never_waits_on_the_consumer_thread() -> None:
    """Property: the lag is read from Faust's bookkeeping, without ``consumer.position()``.

    ``position()`` queues on Faust's consumer thread and waits until the partition has a position;
    called by the 1 s lag timer while the group rejoined after a broker restart, it held up the
    thread's other calls and the rebalance with them: the worker stayed up and processed nothing.
    """
    import asyncio

    from faust.types import TP

    from pipeline.app.faust_app import update_lag
    from pipeline.app.metrics import Metrics
    from schemas.contract import TOPIC_TOUCHPOINTS

    tp, other = TP(TOPIC_TOUCHPOINTS, 0), TP(TOPIC_TOUCHPOINTS, 1)

    class RejoiningConsumer:
        _read_offset = {tp: 41, other: None}
        _committed_offset = {tp: 30, other: None}

        def assignment(self) -> set:
            return {tp, other}

        def highwater(self, partition: TP) -> int:
            return 50

        async def position(self, partition: TP) -> int:
            await asyncio.Event().wait()  # what a partition without a position does during a rejoin
            raise AssertionError("unreachable")

    app = mock.Mock(consumer=RejoiningConsumer())
    metrics = Metrics()
    assert await asyncio.wait_for(update_lag(app, metrics, TOPIC_TOUCHPOINTS), 2) is True
    assert metrics.registry.get_sample_value("cem_consumer_lag", {"topic": TOPIC_TOUCHPOINTS, "partition": "0"}) == 8


def test_counting_customer_states_from_the_status_thread_never_creates_the_store() -> None:
    """Property: ``len(CustomerStates)`` (``/status``, polled from the HTTP thread from the first
    second) reads the table's store only if Faust has created it. ``table.data`` creates it on
    first use, and a store created in the HTTP thread is a mode service bound to the wrong thread."""
    from pipeline.app.worker import CustomerStates

    class NotStartedTable:
        _data = None

        @property
        def data(self) -> dict:
            raise AssertionError("the store must be created by Faust's own loop")

    assert len(CustomerStates(NotStartedTable())) == 0
    started = NotStartedTable()
    started._data = {b"c1": {}, b"c2": {}}
    assert len(CustomerStates(started)) == 2


async def test_a_broker_going_away_under_the_worker_consumer_is_an_interruption(tmp_path: Path) -> None:
    """Property: when the broker goes away (a restart, which may lose its log), the consumer Faust
    builds for the worker counts an interruption, though its polls never came back empty (a
    backlog keeps them full). Every partition's log is then checked again at its next fetch; a
    backlog alone no longer causes a check per fetch (each one a broker round trip: a quarter of
    the worker's time under ``cem bench``)."""
    import asyncio

    import pipeline.app.worker
    from pipeline.app.faust_app import create_app
    from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
    from schemas.contract import TOPIC_TOUCHPOINTS

    with EmbeddedBroker(free_port()) as broker:
        await asyncio.to_thread(ensure_topics, broker.bootstrap, 1)  # it runs a loop of its own
        settings = Settings(data_dir=str(tmp_path), clickhouse_url=f"chdb://{tmp_path / 'ch'}", kafka_bootstrap=broker.bootstrap)
        with mock.patch.object(pipeline.app.worker, "connect", mock.MagicMock()):  # the ClickHouse connection: no I/O
            app, _ = create_app(settings)
        delivery = app.delivery  # type: ignore[attr-defined]
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await consumer.start()
        try:
            from aiokafka import TopicPartition

            consumer.assign([TopicPartition(TOPIC_TOUCHPOINTS, 0)])
            await consumer.getmany(timeout_ms=200)  # connected, fetching
            assert delivery.interruptions == 0
            broker.stop()
            async with asyncio.timeout(30):
                while delivery.interruptions == 0:
                    await consumer.getmany(timeout_ms=100)  # the fetcher finds the connection gone
        finally:
            broker.start()  # the restart's second half: the consumer can leave its group
            await consumer.stop()


async def test_records_drained_before_a_seek_are_stale_and_come_again_after_it(tmp_path: Path) -> None:
    """Property: records the worker's consumer thread handed out before a seek of their partition
    are not current any more (:meth:`BatchDelivery.current`), and the records read after the seek
    are, from the sought offset.

    Fetches wait in the delivery queue while the worker seeks a partition back (a log that started
    over, a probe that got no answer, an assignment's seek to the committed offsets). Processed as
    well, those records were processed twice and out of order: the rows read again below the
    partition's mark were dropped as stored, and a broker restart lost a partition's new log up to
    the offset of the stale fetch (2,631 of 3,000 touchpoints stored)."""
    import asyncio

    from faust.types import TP

    import pipeline.app.worker
    from pipeline.app.delivery import Drained
    from pipeline.app.faust_app import create_app
    from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
    from pipeline.runtime.embedded import publish_raw
    from schemas.contract import TOPIC_TOUCHPOINTS

    with EmbeddedBroker(free_port()) as broker:
        await asyncio.to_thread(ensure_topics, broker.bootstrap, 1)  # it runs a loop of its own
        await publish_raw(broker.bootstrap, [(b"k", b"%d" % i) for i in range(20)], timestamp_ms=1)
        settings = Settings(data_dir=str(tmp_path), clickhouse_url=f"chdb://{tmp_path / 'ch'}", kafka_bootstrap=broker.bootstrap)
        with mock.patch.object(pipeline.app.worker, "connect", mock.MagicMock()):  # the ClickHouse connection: no I/O
            app, _ = create_app(settings)
        consumer, delivery = app.consumer, app.delivery  # type: ignore[attr-defined]
        thread = consumer._thread
        await thread.start()
        try:
            tp = TP(TOPIC_TOUCHPOINTS, 0)

            async def assign() -> None:  # on the thread's loop, as every call of its consumer
                thread._ensure_consumer().assign([tp])

            await thread.call_thread(assign)

            async def poll() -> Drained:
                async with asyncio.timeout(30):
                    while not (records := await thread.getmany({tp}, timeout=0.5)):
                        pass
                return records

            before = await poll()
            assert isinstance(before, Drained) and delivery.current(tp, before.seeks[tp])
            await consumer.seek_in_thread(tp, 0)
            assert not delivery.current(tp, before.seeks[tp]), "drained before the seek: stale"
            after = await poll()
            assert delivery.current(tp, after.seeks[tp]) and after[tp][0].offset == 0
        finally:
            await thread.stop()
