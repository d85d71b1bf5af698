"""Model lifecycle across workers: one trainer, every worker scoring with the latest snapshot.

* :class:`ModelFeed` follows the compacted ``cem.models`` topic from its start with a plain aiokafka
  consumer (no group: every worker reads every snapshot) and hot-swaps the scorers' models. On start
  it reads up to the topic's end before the worker takes input, so a restarted worker resumes with
  the last published models, and with the last checkpoint of its alert engine (the channel anomaly
  detectors and the value quantile are models too: of each channel's and of the customers' normal).
* :class:`TrainerRuntime` hosts the :class:`processors.training.ModelTrainer` in whichever worker owns
  the single partition of ``cem.model.training``. It resumes from the last ``trainer`` checkpoint,
  publishes the models often and its own state less often, and acks training records only once a
  checkpoint that includes them is durable, so a crash never loses or repeats a training example.

Every value on ``cem.models`` is a snapshot (:mod:`processors.snapshot`) of the kind its key names.
One of another format version is not loaded: a scorer keeps its current model, the trainer starts
afresh, an alert engine warms up again (``pipeline.app.worker``); each says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from pipeline.app.logs import TopicFollower
from pipeline.app.metrics import Metrics
from pipeline.app.rows import model_metric_row
from pipeline.settings import Settings
from processors.alerts import AlertEngine
from processors.churn import ChurnModel
from processors.scoring import TrainingBatch
from processors.sentiment import SentimentModel
from processors.snapshot import SnapshotError, Snapshottable, from_snapshot, to_snapshot
from processors.training import ModelTrainer
from schemas.contract import MODEL_CHURN, MODEL_MAX_BYTES, MODEL_SENTIMENT, TOPIC_MODELS, TOPIC_TRAINING
from sinks.base import Sink
from sinks.clickhouse import TableRow
from sinks.kafka import KafkaRecord

log = logging.getLogger("cem.models")

Swap = Callable[[str, Any], None]
# cem.models keys are the kinds of the snapshots under them: the models' names, the trainer's own state,
TRAINER = ModelTrainer.SNAPSHOT_KIND
# and, + a worker's touchpoint partitions, that worker's alert engine (channel detectors, ...).
ALERT_ENGINE = AlertEngine.SNAPSHOT_KIND + "/"


def alert_engine_key(partitions: Iterable[int]) -> str:
    """The cem.models key of the alert engine of the worker that reads ``partitions``.

    >>> alert_engine_key([3, 0, 1])
    'alerts/0,1,3'
    """
    return ALERT_ENGINE + ",".join(str(p) for p in sorted(partitions))


class ModelFeed(TopicFollower):
    """The latest published snapshot per key, loaded and handed to ``on_model(key, model)``."""

    KINDS: dict[str, type[Snapshottable]] = {kind.SNAPSHOT_KIND: kind for kind in (SentimentModel, ChurnModel, ModelTrainer)}
    topic = TOPIC_MODELS
    what = "model feed"  # a bad snapshot must not stop scoring with the current model

    def __init__(self, bootstrap: str, on_model: Swap, client_options: Mapping[str, Any] | None = None):
        super().__init__(bootstrap, client_options, max_partition_fetch_bytes=MODEL_MAX_BYTES, fetch_max_bytes=MODEL_MAX_BYTES)
        self._on_model = on_model
        self.latest: dict[str, bytes] = {}  # key -> its snapshot (the trainer's is loaded on demand)
        self.loaded = 0

    def _take(self, records: list[Any]) -> None:
        """Keep the newest snapshot per key; hand the scorers' models over (the newest only)."""
        for record in records:
            key = (record.key or b"").decode()
            if (key in self.KINDS or key.startswith(ALERT_ENGINE)) and record.value:
                self.latest[key] = record.value
        arrived = {r.key for r in records}
        for key in (MODEL_SENTIMENT, MODEL_CHURN):
            if key.encode() in arrived and key in self.latest:
                try:
                    model = from_snapshot(self.latest[key], self.KINDS[key])
                except SnapshotError as exc:  # another version's: score on with the current model
                    log.warning("model feed: %s not loaded: %s", key, exc)
                    continue
                self._on_model(key, model)
                self.loaded += 1

    def alert_engine(self, key: str) -> bytes | None:
        """The last alert-engine checkpoint published under ``key`` (see :func:`alert_engine_key`)."""
        return self.latest.get(key)

    def trainer(self) -> ModelTrainer | None:
        """The last published trainer state; None if none was ever published, or if it cannot be
        resumed (another version's: the training then starts afresh, and says so)."""
        value = self.latest.get(TRAINER)
        if value is None:
            return None
        try:
            return from_snapshot(value, ModelTrainer)
        except SnapshotError as exc:
            log.error("trainer state not resumed (%s): training starts afresh", exc)
            return None



class TrainerRuntime:
    """Applies training records, publishes snapshots, acks what a durable snapshot covers.

    Two cadences: the scorers' models (tens of KB) every ``publish_interval_s``, so workers score
    with fresh weights; the trainer's own state (the labeler holds a horizon of churn examples,
    tens of MB) every ``checkpoint_interval_s``, and only then are the training records it covers
    acked. A restart resumes from the checkpoint and re-learns the records after it, exactly as
    before (the trainer skips offsets it has applied, and learning is deterministic). Snapshots are
    pickled in a thread, so the event loop keeps serving touchpoints and alerts meanwhile.
    """

    def __init__(self, feed: ModelFeed, kafka: Sink[KafkaRecord], clickhouse: Sink[TableRow], metrics: Metrics,
                 publish_interval_s: float, new_trainer: Callable[[], ModelTrainer] = ModelTrainer,
                 checkpoint_interval_s: float = 60.0):
        self._feed = feed
        self._kafka = kafka
        self._clickhouse = clickhouse
        self._metrics = metrics
        self._interval = publish_interval_s
        self._checkpoint_interval = max(publish_interval_s, checkpoint_interval_s)
        self._new_trainer = new_trainer  # when nothing was ever published
        self._lock = asyncio.Lock()
        self.trainer: ModelTrainer | None = None
        self._unacked: list[Any] = []  # Faust events applied but not yet in a durable checkpoint
        self._unpublished = False  # records applied since the models were last published
        self._last_publish = self._last_checkpoint = time.monotonic()
        self._drifts: dict[str, float] = {}
        self.published = 0
        self.acked = 0  # training records acked so far: the trainer's progress (its health)

    @property
    def waiting(self) -> bool:
        """Whether applied training records await the checkpoint that acks them."""
        return bool(self._unacked)

    async def process(self, events: list[Any]) -> None:
        async with self._lock:
            if self.trainer is None:
                self.trainer = self._feed.trainer() or self._new_trainer()
                self._drifts = {m: q["drifts"] for m, q in self.trainer.quality().items()}
            for event in events:
                message = event.message
                try:
                    batch = TrainingBatch.from_record(orjson.loads(message.value))
                except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                    log.error("training record %s/%s skipped: %s", message.partition, message.offset, exc)
                else:
                    self.trainer.apply(batch, message.offset)
                self._unacked.append(event)
                self._unpublished = True
                # The trainer shares the touchpoint worker's loop: between records, let alerts and
                # fetches through (a take of 200 records at once held the loop for their whole work).
                await asyncio.sleep(0)
        if time.monotonic() - self._last_publish >= self._interval:
            await self.publish()

    async def publish(self, checkpoint: bool = False) -> None:
        """Publish the models; with ``checkpoint`` (or when one is due) the trainer's state too,
        then ack the training records it includes."""
        async with self._lock:
            trainer = self.trainer
            now = time.monotonic()
            # A due checkpoint is taken even with nothing new to publish: else the records applied
            # before the input went quiet would stay unacked until more came.
            checkpoint = checkpoint or now - self._last_checkpoint >= self._checkpoint_interval
            if trainer is None or not (self._unpublished or checkpoint and self._unacked):
                return
            keys: list[tuple[str, Any]] = list(trainer.models().items())
            if checkpoint:
                keys.append((TRAINER, trainer))
            records = await asyncio.to_thread(_snapshot_all, keys)  # the lock keeps the trainer still meanwhile
            rows = [model_metric_row(r) for r in trainer.take_metric_rows()]
            self._export(trainer)
            events: list[Any] = []
            if checkpoint:
                events, self._unacked = self._unacked, []
                self._last_checkpoint = now
            self._unpublished = False
            self._last_publish = now
        await self._kafka.write(records)
        await self._clickhouse.write(rows)
        for event in events:
            event.ack()
        self.acked += len(events)
        self.published += 1

    def _export(self, trainer: ModelTrainer) -> None:
        # The version label is the model's format version (the "1" of churn-v1+5210), not its label
        # count: one series per model and metric, not one per publish.
        models = trainer.models()
        for model, figures in trainer.quality().items():
            version = str(models[model].SNAPSHOT_VERSION)
            for metric, value in figures.items():
                if metric != "drifts":
                    self._metrics.model_quality.labels(model, metric, version).set(value)
            new = figures["drifts"] - self._drifts.get(model, 0.0)
            if new > 0:
                self._metrics.model_drift.labels(model).inc(new)
            self._drifts[model] = figures["drifts"]

    async def release(self) -> None:
        """The training partition was revoked (or the worker stops): checkpoint, then forget the state."""
        await self.publish(checkpoint=True)
        self.trainer = None

    @classmethod
    def configured(cls, settings: Settings, feed: ModelFeed, kafka: Sink[KafkaRecord], clickhouse: Sink[TableRow],
                   metrics: Metrics) -> TrainerRuntime:
        """The runtime as ``settings`` say (a worker's, or ``cem trainer``'s)."""
        horizon_ms = int(settings.churn_horizon_s * 1000)
        return cls(feed, kafka, clickhouse, metrics, settings.model_publish_interval_s,
                   lambda: ModelTrainer.for_horizon(horizon_ms), settings.trainer_checkpoint_interval_s)


def model_record(key: str, value: bytes) -> KafkaRecord:
    """One record of the compacted, single-partition ``cem.models``: the latest value per key wins."""
    return KafkaRecord(TOPIC_MODELS, key.encode(), value, 0)


def _snapshot_all(keyed: list[tuple[str, Any]]) -> list[KafkaRecord]:
    return [model_record(key, to_snapshot(obj)) for key, obj in keyed]


def training_record(batch: TrainingBatch) -> KafkaRecord:
    return KafkaRecord(TOPIC_TRAINING, None, orjson.dumps(batch.to_record()), 0)
