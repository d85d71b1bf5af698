"""The Faust app: topics, the customer-state table, the agents, timers and rebalance hooks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from faust.sensors import Monitor
from mode.utils.queues import FlowControlEvent

from pipeline.app.delivery import CemApp
from pipeline.app.health import Health
from pipeline.app.health import supervised as health_supervised
from pipeline.app.kafka_security import faust_credentials
from pipeline.app.metrics import Metrics
from pipeline.app.worker import CustomerStates, TouchpointWorker
from pipeline.settings import Settings
from schemas.contract import (
    STATE_TABLE,
    TOPIC_CUSTOMERS,
    TOPIC_ERASURES,
    TOPIC_IDENTITY,
    TOPIC_TOUCHPOINTS,
    TOPIC_TRAINING,
)

log = logging.getLogger("cem.app")

class QuietMonitor(Monitor):
    """Faust's monitor keeps per-message statistics on hooks per record that nothing here reads
    (the pipeline's metrics are its own); skipping them is a few percent of throughput."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass


class KeepQueuedOnResume(FlowControlEvent):
    """Faust's flow control, minus emptying the queues on resume.

    After table recovery Faust resumes partitions, seeks them to the committed offsets (a dozen
    broker round trips), then calls ``flow_control.resume()``, which in ``mode`` also clears every
    queue. Records fetched during the seeks are in a queue and the consumer's position is already
    past them, so the ones still queued at that moment were lost: never processed, never fetched
    again, and skipped for good by the next commit. Revocation still clears the queues explicitly
    (``suspend`` + ``clear``).
    """

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


def app_options(settings: Settings) -> dict[str, Any]:
    """What every cem Faust app (the worker's, ``cem trainer``'s) is configured with alike."""
    return dict(
        monitor=QuietMonitor(),
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        web_enabled=False,
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        # Records are acked once what they made is durable (a commit, a trainer checkpoint), which a
        # stop or a revocation brings about itself: waiting for the acks first would wait for ever.
        stream_wait_empty=False,
    )


def create_app(settings: Settings, metrics: Metrics | None = None) -> tuple[faust.App, TouchpointWorker]:
    """The Faust app and its worker runtime, wired together (uvloop, if wanted, is installed before)."""
    if settings.trainer not in ("worker", "process"):
        raise ValueError(f"CEM_TRAINER must be worker or process, not {settings.trainer!r}")
    metrics = metrics or Metrics()
    app = CemApp(
        settings.app_id,
        batch_topics=(TOPIC_TOUCHPOINTS, TOPIC_IDENTITY),
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        datadir=str(Path(settings.data_dir) / "faust"),  # not Faust's default ./<app_id>-data in the cwd
        topic_partitions=settings.partitions,
        producer_linger=0.005,
        broker_commit_every=None,
        broker_max_poll_records=settings.take_max,
        stream_buffer_maxsize=8192,
        consumer_group_instance_id=settings.group_instance_id or None,
        table_cleanup_interval=3600.0,
        **app_options(settings),
    )
    app.flow_control = KeepQueuedOnResume(loop=app.loop)  # before any stream or channel is created
    touchpoints = app.topic(  # and identity stitching's records between partitions, co-partitioned
        TOPIC_TOUCHPOINTS, TOPIC_IDENTITY, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    customers = app.topic(
        TOPIC_CUSTOMERS, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    erasures = app.topic(
        TOPIC_ERASURES, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    training = app.topic(TOPIC_TRAINING, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=1)
    # bytes keys use the raw codec; values use the app default (json): the CustomerState record
    table = app.Table(STATE_TABLE, partitions=settings.partitions, key_type=bytes)
    worker = TouchpointWorker(settings, metrics, CustomerStates(table), app.delivery)
    app.delivery.log_ends = worker.probe.ends
    starting = asyncio.Lock()

    async def started() -> None:
        async with starting:  # three agents, one start
            if not worker.started:
                assigned = app.consumer.assignment()
                await worker.start(tp.partition for tp in assigned if tp.topic == TOPIC_TOUCHPOINTS)

    async def supervised(name: str, body: Any) -> None:
        await health_supervised(worker.health, name, body, lambda: metrics.live.set(0))

    @app.agent(touchpoints, name="touchpoints")
    async def process_touchpoints(stream: faust.StreamT) -> None:
        aiter(stream.channel)  # subscribes the topic; its records arrive by fetch (pipeline.app.delivery)

        async def run() -> None:
            await started()
            async for fetch in app.delivery.fetches():
                await worker.process(fetch)

        await supervised("touchpoints", run())

    @app.agent(customers, name="customers")
    async def process_profiles(stream: faust.StreamT) -> None:
        async def run() -> None:
            await started()
            async for events in stream.noack_take(settings.take_max, settings.take_within_s):  # type: ignore[attr-defined]  # faust.Stream's
                await worker.process_profiles(list(events))

        await supervised("customers", run())

    @app.agent(erasures, name="erasures")
    async def erase_customers(stream: faust.StreamT) -> None:
        async def run() -> None:
            await started()
            async for events in stream.noack_take(100, 0.2):  # type: ignore[attr-defined]  # on faust.Stream, not StreamT
                await worker.process_erasures(list(events))

        await supervised("erasures", run())

    if settings.trainer == "worker":  # else `cem trainer` (pipeline.app.trainer) runs it
        @app.agent(training, name="training")
        async def train_models(stream: faust.StreamT) -> None:
            async def run() -> None:
                await started()
                async for events in stream.noack_take(200, 0.2):  # type: ignore[attr-defined]  # as above
                    await worker.trainer.process(list(events))

            await supervised("training", run())

        @app.timer(interval=settings.model_publish_interval_s)
        async def publish_models() -> None:
            if worker.started:
                await worker.trainer.publish()

    @app.timer(interval=max(0.05, settings.sink_flush_interval_s / 8))  # finds a quiet input soon (Commit.due)
    async def flush_sinks() -> None:
        if worker.started:
            await worker.flush_if_due()

    @app.timer(interval=1.0)
    async def observe() -> None:
        if worker.started and not app.rebalancing:  # after a rebalance's seeks, which would undo ours
            try:
                await worker.verify_positions()
            except Exception as exc:  # a broker that does not answer now: check again in a second
                log.warning("verifying the source logs failed: %s", exc)
        lagging = await update_lag(app, metrics, TOPIC_TOUCHPOINTS)
        observe_health(worker.health, metrics, waiting=worker.commit.waiting, lagging=lagging)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types handlers as (sender, *args, signal, **kw)
    async def on_assigned(sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        metrics.rebalances.inc()
        app.delivery.rebalanced()
        worker.health.assigned = any(tp.topic == TOPIC_TOUCHPOINTS for tp in assigned)
        if worker.started:
            await worker.clickhouse.load_marks()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # as above
    async def on_revoked(sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        app.delivery.rebalanced()
        worker.logs.forget((tp.topic, tp.partition) for tp in revoked)
        if worker.started:  # the next owner reads our marks and our changelog: write everything first
            if any(tp.topic == TOPIC_TRAINING for tp in revoked):
                await worker.trainer.release()
            async with worker._processing:  # a fetch being planned is staged before the flush
                pass
            await worker.flush()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # as above
    async def on_shutdown(sender: Any, **_: Any) -> None:
        await worker.close()
        try:
            await app.consumer.commit()
        except Exception as exc:  # the group may already be gone; replays are idempotent
            log.info("final commit skipped: %s", exc)

    return app, worker


def observe_health(health: Health, metrics: Metrics, waiting: bool, lagging: bool | None,
                   acked: int | None = None) -> None:
    """One look at the process's input (each second): its health, and the gauges that show it."""
    health.observe(waiting=waiting, lagging=lagging, acked=acked)
    live, _ = health.live()
    metrics.live.set(1 if live else 0)
    metrics.stalled.set(health.stalled_for())


async def update_lag(app: faust.App, metrics: Metrics, topic: str) -> bool | None:
    """Export the consumer lag per partition of ``topic``; whether any partition lags (None: unknown)."""
    try:
        consumer = app.consumer
        lagging = False
        held = [tp for tp in consumer.assignment() if tp.topic == topic]
        metrics.keep_lag_of(topic, {str(tp.partition) for tp in held})  # another worker's now: not ours to report
        for tp in held:
            # From Faust's own bookkeeping, never consumer.position(): that call queues on the
            # consumer thread and waits until the partition has a position, which during a group
            # rejoin stalled the thread's other calls, and the rebalance with them, for good.
            read, committed = consumer._read_offset.get(tp), consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
            if read is None and committed is None:
                continue
            position = max(read + 1 if read is not None else 0, committed or 0)
            lag = max(0, (consumer.highwater(tp) or 0) - position)
            metrics.lag.labels(tp.topic, str(tp.partition)).set(lag)
            lagging = lagging or lag > 0
        return lagging
    except Exception as exc:  # lag is best-effort observability; never stop the worker for it
        log.debug("lag update failed: %s", exc)
        return None


def tables_recovered(app: faust.App) -> bool:
    """Whether Faust's table recovery has read the changelogs (safe from any thread: the recovery
    service is created by Faust's own loop, never here)."""
    recovery = app.tables._recovery  # type: ignore[attr-defined]
    return recovery is not None and recovery.completed.is_set()
