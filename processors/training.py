"""The one place the models learn: test-then-train on the examples the scoring workers send.

:class:`ModelTrainer` consumes :class:`~processors.scoring.TrainingBatch` records in the order of the
(single-partition) training topic, so a replay of that topic trains the same models:

* sentiment: each labeled text is scored by the current model, the pair goes to
  :class:`~processors.quality.SentimentQuality`, then the model learns it;
* churn: feature snapshots wait in a :class:`~processors.churn.ChurnLabeler`; a churn event labels
  the customer's snapshots of the preceding horizon positive, and the watermark (the highest event
  time seen, less ``lateness_ms``) releases older ones as negatives. Each label is scored by the
  current model before it is learned (:class:`~processors.quality.BinaryQuality`).

The trainer's whole state (models, labeler, quality, and the offset it has trained through) is one
snapshot; :meth:`apply` skips batches at or below that offset, so a restart that re-reads some of the
topic never learns an example twice.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from processors.churn import MODEL_NAME as CHURN_MODEL, ChurnLabeler, ChurnModel, Features
from processors.quality import BinaryQuality, SentimentQuality
from processors.scoring import TrainingBatch
from processors.sentiment import MODEL_NAME as SENTIMENT_MODEL, SentimentModel
from processors.snapshot import Snapshot
from schemas.contract import HOUR_MS, MINUTE_MS


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One row of ``cem.model_metrics``: a quality figure of a model version as of an event-time minute."""

    minute_s: int  # epoch seconds of the minute start
    model: str
    version: int  # labels learned from the stream
    metric: str
    value: float


class ModelTrainer(Snapshot):
    """Trains both models from training batches; see the module docstring.

    >>> trainer = ModelTrainer(churn=ChurnModel(min_labels=1), labeler=ChurnLabeler(horizon_ms=10 * MINUTE_MS))
    >>> batch = TrainingBatch(texts=[("Awful, never again", False, 0)], snapshots=[("a", 0, {"f": 1.0}), ("b", 0, {"f": 0.0})],
    ...                       churns=[("a", 5 * MINUTE_MS)], watermark_ms=5 * MINUTE_MS)
    >>> trainer.apply(batch, offset=0), trainer.sentiment.n_learned, trainer.churn.n_labels  # churn: a horizon to wait
    (True, 1, 0)
    >>> trainer.apply(batch, offset=0)      # the same record again (a restart): not learned twice
    False
    >>> trainer.apply(TrainingBatch(watermark_ms=3 * HOUR_MS), offset=1), trainer.churn.n_positive, trainer.churn.n_labels
    (True, 1, 2)
    >>> sorted({(r.model, r.metric) for r in trainer.take_metric_rows()})[:3]
    [('churn-v1', 'drifts'), ('churn-v1', 'labels'), ('churn-v1', 'log_loss')]
    """

    # Its bulk, the labeler's pending features, is compressed already: zlib over tens of MB of it
    # would cost a second for nothing.
    compress_on_publish = False

    def __init__(
        self,
        sentiment: SentimentModel | None = None,
        churn: ChurnModel | None = None,
        labeler: ChurnLabeler | None = None,
        lateness_ms: int = HOUR_MS,
    ):
        self.sentiment = sentiment or SentimentModel.pretrained()
        self.churn = churn or ChurnModel()
        self.labeler = labeler or ChurnLabeler()
        self.lateness_ms = lateness_ms
        self.sentiment_quality = SentimentQuality()
        self.churn_quality = BinaryQuality()
        self.watermark_ms = 0
        self.trained_through = -1  # training-topic offset of the last batch applied
        self._minutes: dict[str, int] = {}  # model -> latest event-time minute with new labels (ms)
        self._rows: list[MetricRow] = []

    @classmethod
    def for_horizon(cls, horizon_ms: int) -> "ModelTrainer":
        """A trainer for a churn horizon. The labels' allowed lateness is a tenth of the horizon, at
        most an hour, so a short horizon (tests, demos) still releases its negatives."""
        return cls(labeler=ChurnLabeler(horizon_ms), lateness_ms=min(HOUR_MS, horizon_ms // 10))

    def apply(self, batch: TrainingBatch, offset: int) -> bool:
        """Learn from one batch; False (and nothing learned) if ``offset`` was already applied."""
        if offset <= self.trained_through:
            return False
        for customer_id in batch.erasures:
            self.labeler.forget(customer_id)
        for text, positive, t in batch.texts:
            self._learn_text(text, positive, t)
        self.watermark_ms = max(self.watermark_ms, batch.watermark_ms)
        for customer_id, t, features in batch.snapshots:
            if self.labeler.snapshot(customer_id, t, features):
                self.churn.observe(features)
        for customer_id, t in batch.churns:
            self.labeler.on_churn(customer_id, t)
        self._learn_churn(self.labeler.advance(self.watermark_ms - self.lateness_ms), self.watermark_ms)
        self.trained_through = offset
        return True

    def _learn_text(self, text: str, positive: bool, t: int) -> None:
        p = self.sentiment.learn_scored(text, positive)
        if p is not None:  # None: text without tokens, not learned
            self.sentiment_quality.update(positive, p >= 0.5)
            self._touch(SENTIMENT_MODEL, t)

    def _learn_churn(self, labeled: list[tuple[Features, bool]], t: int) -> None:
        for features, churned in labeled:
            self.churn_quality.update(churned, self.churn.learn_scored(features, churned, observe=False))
        if labeled:
            self._touch(CHURN_MODEL, t)

    def _touch(self, model: str, t: int) -> None:
        minute = t - t % MINUTE_MS
        previous = self._minutes.get(model)
        if previous is not None and previous != minute:
            self._rows.extend(self._rows_for(model, previous))  # the minute is done: keep its figures
        self._minutes[model] = minute

    def _rows_for(self, model: str, minute_ms: int) -> list[MetricRow]:
        if model == SENTIMENT_MODEL:
            version, figures = self.sentiment.n_learned, self.sentiment_quality.snapshot()
        else:
            version, figures = self.churn.n_labels, self.churn_quality.snapshot()
        figures["labels"] = figures.pop("n")
        return [MetricRow(minute_ms // 1000, model, version, metric, value) for metric, value in figures.items()]

    def take_metric_rows(self) -> list[MetricRow]:
        """Quality rows for ``cem.model_metrics`` since the last call (the current minute included,
        as of now: later calls write that minute again with newer figures)."""
        rows, self._rows = self._rows, []
        for model, minute in self._minutes.items():
            rows.extend(self._rows_for(model, minute))
        return rows

    def quality(self) -> dict[str, dict[str, float]]:
        """Current progressive quality per model name."""
        return {SENTIMENT_MODEL: self.sentiment_quality.snapshot(), CHURN_MODEL: self.churn_quality.snapshot()}


def pack(snapshot: Snapshot) -> bytes:
    """A snapshot as published on ``cem.models``: pickled, then zlib (features compress ~5x) unless
    the snapshot says its bulk is compressed already (``compress_on_publish``, the trainer's state).

    >>> unpack(pack(ChurnModel()), ChurnModel).version
    'churn-v1+0'
    >>> unpack(pack(ModelTrainer()), ModelTrainer).trained_through
    -1
    """
    raw = snapshot.to_bytes()
    return zlib.compress(raw, 1) if snapshot.compress_on_publish else raw


def unpack(data: bytes, kind: type[Snapshot]) -> Snapshot:
    """The snapshot from :func:`pack`'s bytes (a pickle starts with 0x80, a zlib stream never does)."""
    return kind.from_bytes(data if data[:1] == b"\x80" else zlib.decompress(data))
