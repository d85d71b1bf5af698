"""Progressive (test-then-train) validation of the online models, with drift detection.

Each label is scored by the model *before* the model learns it, and the pair goes into one of
these trackers: the metrics are then an honest estimate of live quality, with no hold-out set.
An ADWIN detector watches the error stream and counts the changes it finds (a rising count is the
cue to look at the data, not an automatic retrain: the models adapt online anyway).
"""

from __future__ import annotations

from river import drift, metrics


class _DriftCount:
    """What both trackers keep: how many predictions they saw, and an ADWIN detector on the error
    stream with the number of drifts it found."""

    def __init__(self, delta: float):
        self.detector = drift.ADWIN(delta=delta)
        self.n = 0
        self.drifts = 0

    def _count(self, error: float) -> bool:
        """One more prediction with this error; True if a drift was detected."""
        self.n += 1
        self.detector.update(error)
        self.drifts += self.detector.drift_detected
        return self.detector.drift_detected


class BinaryQuality(_DriftCount):
    """ROC AUC and log loss of probabilistic binary predictions (churn), plus drift count.

    The error fed to ADWIN is ``|y - p|``, so both ranking and calibration changes show.

    >>> q = BinaryQuality()
    >>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.7), (False, 0.4)]:
    ...     _ = q.update(y, p)
    >>> s = q.figures()
    >>> s["n"], s["positives"], s["roc_auc"], round(s["log_loss"], 3), s["drifts"]
    (4.0, 2.0, 1.0, 0.299, 0.0)
    """

    def __init__(self, n_thresholds: int = 100, delta: float = 0.002):
        # River's ROC AUC counts a confusion matrix per threshold: 100 keeps it within ~0.005.
        super().__init__(delta)
        self.roc_auc = metrics.ROCAUC(n_thresholds=n_thresholds)
        self.log_loss = metrics.LogLoss()
        self.positives = 0

    def update(self, y_true: bool, p_true: float) -> bool:
        """Record one prediction made before its label was learned; True if a drift was detected."""
        y_true = bool(y_true)
        self.roc_auc.update(y_true, p_true)
        self.log_loss.update(y_true, p_true)
        self.positives += y_true
        return self._count(abs(y_true - p_true))

    def figures(self) -> dict[str, float]:
        """The current figures by metric name (``n``: predictions recorded)."""
        return {
            "n": float(self.n),
            "positives": float(self.positives),
            "roc_auc": float(self.roc_auc.get()),
            "log_loss": float(self.log_loss.get()),
            "drifts": float(self.drifts),
        }


class SentimentQuality(_DriftCount):
    """Accuracy and macro-F1 of positive/negative predictions, plus drift count.

    >>> q = SentimentQuality()
    >>> for y, pred in [(True, True), (False, False), (True, False), (False, False)]:
    ...     _ = q.update(y, pred)
    >>> s = q.figures()
    >>> s["n"], s["accuracy"], round(s["macro_f1"], 3), s["drifts"]
    (4.0, 0.75, 0.733, 0.0)
    """

    def __init__(self, delta: float = 0.002):
        super().__init__(delta)
        self.accuracy = metrics.Accuracy()
        self.macro_f1 = metrics.MacroF1()

    def update(self, y_true: bool, y_pred: bool) -> bool:
        """Record one prediction made before its label was learned; True if a drift was detected."""
        y_true, y_pred = bool(y_true), bool(y_pred)
        self.accuracy.update(y_true, y_pred)
        self.macro_f1.update(y_true, y_pred)
        return self._count(float(y_true != y_pred))

    def figures(self) -> dict[str, float]:
        """The current figures by metric name (``n``: predictions recorded)."""
        return {
            "n": float(self.n),
            "accuracy": float(self.accuracy.get()),
            "macro_f1": float(self.macro_f1.get()),
            "drifts": float(self.drifts),
        }
