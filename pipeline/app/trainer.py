"""The model trainer in a process of its own (``cem trainer``), off the touchpoint workers' loops.

By default the worker that holds ``cem.model.training`` also runs the trainer, on the event loop that
plans touchpoints: at half the sustained rate the trainer took 14% of that loop, and every training
record held it for the examples of a whole batch. With ``CEM_TRAINER=process`` the workers leave the
topic alone and ``cem trainer`` runs the same :class:`~pipeline.app.models.TrainerRuntime` (the same
checkpoints and acks) in a Faust app of its own consumer group, ``<app_id>-trainer``. It publishes
snapshots to ``cem.models``, which every worker hot-swaps as before, and its quality rows to
ClickHouse: a server, or the embedded engine shared through ``cem engine`` (a worker's in-process
engine is that worker's alone).

Its health is judged as the worker's is (:mod:`pipeline.app.health`): its agent is supervised (a
crash is not live, and the watchdog ends the process); input waits while applied training records
await the checkpoint that acks them, or while it lags behind ``cem.model.training``, and a checkpoint
that acks records is its progress. Records wait up to ``CEM_TRAINER_CHECKPOINT_INTERVAL_S`` for it
in the normal course, so the trainer is stalled once nothing was acked for that plus
``CEM_STALL_TIMEOUT_S``. Ready: started (sinks connected, the last checkpoint read) and holding
``cem.model.training``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import faust

from pipeline.app.faust_app import app_options, observe_health, update_lag
from pipeline.app.health import Health, supervised
from pipeline.app.kafka_security import client_options
from pipeline.app.metrics import KafkaObserver, Metrics
from pipeline.app.models import ModelFeed, TrainerRuntime
from pipeline.app.rows import storage_rejected
from pipeline.settings import Settings
from schemas.contract import TOPIC_TRAINING
from sinks.clickhouse import ClickHouseSink, connect
from sinks.kafka import KafkaSink

log = logging.getLogger("cem.trainer")


class TrainerProcess:
    """The trainer's sinks, its model feed and its runtime; started before the first record."""

    def __init__(self, settings: Settings, metrics: Metrics):
        options = client_options(settings)
        self.kafka = KafkaSink(settings.kafka_bootstrap, KafkaObserver(metrics), client_id=f"{settings.app_id}-trainer",
                               client_options=options)
        self.clickhouse = ClickHouseSink(
            connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password),
            settings.clickhouse_database, metrics, settings.sink_flush_rows, settings.sink_flush_interval_s,
            on_rejected=storage_rejected,
        )
        self.models = ModelFeed(settings.kafka_bootstrap, lambda key, model: None, options)  # its checkpoint only
        self.runtime = TrainerRuntime.configured(settings, self.models, self.kafka, self.clickhouse, metrics)
        self.health = Health(settings.stall_timeout_s + settings.trainer_checkpoint_interval_s)
        self._create_schema = settings.clickhouse_migrate
        self._starting = asyncio.Lock()
        self.started = False

    async def start(self) -> None:
        async with self._starting:
            if not self.started:
                await self.kafka.start()
                await self.clickhouse.start(create_schema=self._create_schema)
                await self.models.start()  # the last checkpoint, before the first record
                self.started = self.health.started = True

    async def close(self) -> None:
        if self.started:
            await self.runtime.release()
            await self.kafka.close()
            await self.models.stop()
            self.started = self.health.started = False

    def status(self) -> dict[str, Any]:
        trainer = self.runtime.trainer
        return {"pid": os.getpid(), "started": self.started, "live": self.health.live()[1],
                "assigned": self.health.assigned, "snapshots_published": self.runtime.published,
                "acked_records": self.runtime.acked,
                "trained_through": trainer.trained_through if trainer is not None else None}


def create_trainer_app(settings: Settings, metrics: Metrics | None = None) -> tuple[faust.App, TrainerProcess]:
    metrics = metrics or Metrics()
    app = faust.App(f"{settings.app_id}-trainer", datadir=str(Path(settings.data_dir) / "faust-trainer"),
                    **app_options(settings))
    trainer = TrainerProcess(settings, metrics)
    training = app.topic(TOPIC_TRAINING, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                         partitions=1)

    @app.agent(training, name="training")
    async def train_models(stream: faust.StreamT) -> None:
        async def run() -> None:
            await trainer.start()
            async for events in stream.noack_take(200, 0.2):  # type: ignore[attr-defined]  # on faust.Stream, not StreamT
                await trainer.runtime.process(list(events))

        await supervised(trainer.health, "training", run(), lambda: metrics.live.set(0))

    @app.timer(interval=settings.model_publish_interval_s)
    async def publish_models() -> None:
        if trainer.started:
            await trainer.runtime.publish()

    @app.timer(interval=1.0)
    async def observe() -> None:
        lagging = await update_lag(app, metrics, TOPIC_TRAINING)
        runtime = trainer.runtime  # progress: a checkpoint that acked training records
        observe_health(trainer.health, metrics, waiting=runtime.waiting, lagging=lagging, acked=runtime.acked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types handlers as (sender, *args, signal, **kw)
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        trainer.health.assigned = any(tp.topic == TOPIC_TRAINING for tp in assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # as above
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        if trainer.started and any(tp.topic == TOPIC_TRAINING for tp in revoked):
            await trainer.runtime.release()  # checkpoint: the next owner resumes from it

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # as above
    async def on_shutdown(sender: Any, **_: Any) -> None:
        await trainer.close()

    return app, trainer
