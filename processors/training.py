"""The one place the models learn: test-then-train on the examples the scoring workers send.

:class:`ModelTrainer` consumes :class:`~processors.scoring.TrainingBatch` records in the order of the
(single-partition) training topic, so a replay of that topic trains the same models:

* sentiment: each labeled text is scored by the current model, the pair goes to
  :class:`~processors.quality.SentimentQuality`, then the model learns it;
* churn: churn examples (the features a customer was scored with) wait in a
  :class:`~processors.churn.ChurnLabeler`; a churn event labels the customer's examples of the
  preceding horizon positive, and the watermark (the highest event time seen, less ``lateness_ms``)
  releases older ones as negatives. Each label is scored by the current model before it is learned
  (:class:`~processors.quality.BinaryQuality`).

The trainer's whole state (models, labeler, quality, and the offset it has trained through) is one
snapshot (:mod:`processors.snapshot`); :meth:`apply` skips batches at or below that offset, so a
restart that re-reads some of the topic never learns an example twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processors.churn import ChurnLabeler, ChurnModel, Features
from processors.quality import BinaryQuality, SentimentQuality
from processors.scoring import TrainingBatch
from processors.sentiment import SentimentModel
from processors.snapshot import SnapshotError
from schemas.contract import HOUR_MS, MINUTE_MS, MODEL_CHURN, MODEL_SENTIMENT


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One row of ``cem.model_metrics``: a quality figure of a model version as of an event-time minute."""

    minute_s: int  # epoch seconds of the minute start
    model: str
    version: int  # labels learned from the stream
    metric: str
    value: float


class ModelTrainer:
    """Trains both models from training batches; see the module docstring.

    >>> trainer = ModelTrainer(churn=ChurnModel(min_labels=1), labeler=ChurnLabeler(horizon_ms=10 * MINUTE_MS))
    >>> batch = TrainingBatch(texts=[("Awful, never again", False, 0)],
    ...                       churn_examples=[("a", 0, {"f": 1.0}), ("b", 0, {"f": 0.0})],
    ...                       churns=[("a", 5 * MINUTE_MS)], watermark_ms=5 * MINUTE_MS)
    >>> trainer.apply(batch, offset=0), trainer.sentiment.n_learned, trainer.churn.n_labels  # churn: a horizon to wait
    (True, 1, 0)
    >>> trainer.apply(batch, offset=0)      # the same record again (a restart): not learned twice
    False
    >>> trainer.apply(TrainingBatch(watermark_ms=3 * HOUR_MS), offset=1), trainer.churn.n_positive, trainer.churn.n_labels
    (True, 1, 2)
    >>> sorted({(r.model, r.metric) for r in trainer.take_metric_rows()})[:3]
    [('churn', 'drifts'), ('churn', 'labels'), ('churn', 'log_loss')]
    >>> from processors.snapshot import from_snapshot, to_snapshot
    >>> from_snapshot(to_snapshot(trainer), ModelTrainer).trained_through   # a restart resumes here
    1
    """

    SNAPSHOT_KIND = "trainer"
    SNAPSHOT_VERSION = 1
    # Its bulk, the labeler's pending examples, is compressed already: zlib over tens of MB of it
    # would cost a second for nothing.
    SNAPSHOT_COMPRESSED = False

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
    def for_horizon(cls, horizon_ms: int) -> ModelTrainer:
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
        for customer_id, t, features in batch.churn_examples:
            if self.labeler.keep(customer_id, t, features):
                self.churn.observe(features)
        for customer_id, t in batch.churns:
            self.labeler.on_churn(customer_id, t)
        self._learn_churn(self.labeler.advance(self.watermark_ms - self.lateness_ms), self.watermark_ms)
        self.trained_through = offset
        return True

    def _learn_text(self, text: str, positive: bool, t: int) -> None:
        p = self.sentiment.predict_then_learn_one(text, positive)
        if p is not None:  # None: text without tokens, not learned
            self.sentiment_quality.update(positive, p >= 0.5)
            self._touch(MODEL_SENTIMENT, t)

    def _learn_churn(self, labeled: list[tuple[Features, bool]], t: int) -> None:
        for features, churned in labeled:
            # observe=False: the encoder saw these features when the example arrived (see apply).
            p = self.churn.predict_then_learn_one(features, churned, observe=False)
            self.churn_quality.update(churned, p)
        if labeled:
            self._touch(MODEL_CHURN, t)

    def _touch(self, model: str, t: int) -> None:
        minute = t - t % MINUTE_MS
        previous = self._minutes.get(model)
        if previous is not None and previous != minute:
            self._rows.extend(self._rows_for(model, previous))  # the minute is done: keep its figures
        self._minutes[model] = minute

    def _rows_for(self, model: str, minute_ms: int) -> list[MetricRow]:
        if model == MODEL_SENTIMENT:
            version, figures = self.sentiment.n_learned, self.sentiment_quality.figures()
        else:
            version, figures = self.churn.n_labels, self.churn_quality.figures()
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
        return {MODEL_SENTIMENT: self.sentiment_quality.figures(), MODEL_CHURN: self.churn_quality.figures()}

    def models(self) -> dict[str, SentimentModel | ChurnModel]:
        """The models the scorers use, by name (their keys on ``cem.models``)."""
        return {MODEL_SENTIMENT: self.sentiment, MODEL_CHURN: self.churn}

    def __getstate__(self) -> dict[str, Any]:
        # The models and the labeler travel inside the trainer's pickle, not in snapshots of their
        # own: their format versions go along, so that a trainer snapshot holding an older one is
        # refused like any snapshot of another version.
        return {**self.__dict__, _PART_VERSIONS: _part_versions()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop(_PART_VERSIONS, None)
        if saved != _part_versions():
            raise SnapshotError(f"trainer snapshot with parts of versions {saved}: this code reads {_part_versions()}")
        self.__dict__.update(state)


_PART_VERSIONS = "_part_versions"


def _part_versions() -> dict[str, int]:
    """The format version of each part of a trainer, by kind.

    >>> _part_versions()
    {'sentiment': 1, 'churn': 1, 'labeler': 1}
    """
    return {part.SNAPSHOT_KIND: part.SNAPSHOT_VERSION for part in (SentimentModel, ChurnModel, ChurnLabeler)}
