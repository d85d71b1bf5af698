"""Scoring touchpoints with the online models inside the stream, and what they send to training.

Scoring and training live in different places. Every worker *scores* with the latest published
models (:class:`TextSentiment`, :class:`ChurnScorer`); the single trainer (:mod:`processors.training`)
*learns*, from the examples the scorers collect in a :class:`TrainingBatch`:

* sentiment: texts whose survey score says how the customer felt (test-then-train happens in the
  trainer, which scores each example with its own model before learning it);
* churn: the features customers were scored with (churn examples) and the churn events that will
  label them, plus the event-time watermark that turns old examples into negatives
  (:class:`processors.churn.ChurnLabeler`).

Nothing here reads the wall clock: a replay of the same input gives the same scores and examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.alert_state import CustomerAlertState
from processors.alerts import Alert, AlertEngine, top_contributions
from processors.churn import ChurnModel, Features, churn_features
from processors.customer import CHURN_TYPES, CustomerState, Enriched
from processors.sentiment import SentimentModel, fold_sentiment
from processors.stitching import is_subject
from schemas.contract import HOUR_MS, MODEL_CHURN, MODEL_SENTIMENT

# Types that move what the churn model looks at beyond counts and channel mix: rescored at once.
# Browsing (page views, searches, logins, e-mail opens, ~80% of traffic) rescores at most every
# ``rescore_after_ms`` of the customer's event time: its effect on the features is gradual.
SIGNAL_TYPES = frozenset({
    "purchase", "refund", "support_contact", "complaint_opened", "complaint_resolved", "survey_response",
    "feedback", "chat_message", "call",
})


@dataclass(slots=True)
class TrainingBatch:
    """What one batch of touchpoints contributes to training; one record on the training topic.

    >>> batch = TrainingBatch()
    >>> batch.texts.append(("Great help", True, 0)); batch.watermark_ms = 5
    >>> TrainingBatch.from_record(batch.to_record()) == batch, bool(TrainingBatch())
    (True, False)
    >>> TrainingBatch.from_record({"snapshots": [["c1", 7, {"f": 1.0}]]}).churn_examples  # an older record
    [('c1', 7, {'f': 1.0})]
    """

    texts: list[tuple[str, bool, int]] = field(default_factory=list)  # (text, positive, occurred_at)
    # (customer, scored at, features): what the labeler labels once the horizon tells
    churn_examples: list[tuple[str, int, Features]] = field(default_factory=list)
    churns: list[tuple[str, int]] = field(default_factory=list)  # (customer, churned at)
    watermark_ms: int = 0  # highest event time the sender has seen
    erasures: list[str] = field(default_factory=list)  # customers erased: forget their pending examples

    def __bool__(self) -> bool:
        return bool(self.texts or self.churn_examples or self.churns or self.erasures)

    def to_record(self) -> dict[str, Any]:
        return {"texts": self.texts, "churn_examples": self.churn_examples, "churns": self.churns,
                "watermark": self.watermark_ms, "erasures": self.erasures}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainingBatch:
        # Records written before the churn examples had their name carry them as "snapshots".
        examples = record.get("churn_examples", record.get("snapshots", ()))
        return cls(
            [(str(t), bool(y), int(at)) for t, y, at in record.get("texts", ())],
            [(str(c), int(t), dict(x)) for c, t, x in examples],
            [(str(c), int(t)) for c, t in record.get("churns", ())],
            int(record.get("watermark", 0)),
            [str(c) for c in record.get("erasures", ())],
        )


class TextSentiment:
    """Sentiment in [-1, 1] for touchpoints with text; folds it into the customer's state.

    >>> from processors.touchpoint import Touchpoint
    >>> from processors.customer import apply
    >>> scorer, state, batch = TextSentiment(), CustomerState("c1"), TrainingBatch()
    >>> tp = Touchpoint("e1", "c1", 0, "survey", "survey_response", text="Terrible service, never again", nps=1)
    >>> _, enriched = apply(state, tp, 0, 1, 0)
    >>> score = scorer.score(enriched, state, new=True, batch=batch)
    >>> score < -0.3, enriched.sentiment == score, state.sentiment_n, batch.texts
    (True, True, 1, [('Terrible service, never again', False, 0)])
    """

    def __init__(self, model: SentimentModel | None = None):
        self.model = model or SentimentModel.pretrained()  # replaced whole by each published model

    def score(self, enriched: Enriched, state: CustomerState, new: bool, batch: TrainingBatch) -> float | None:
        """Score ``enriched`` in place; ``new`` is False for a replayed record (state already has it)."""
        touchpoint = enriched.touchpoint
        if not touchpoint.text:
            return None
        model = self.model
        score = model.score(touchpoint.text)
        enriched.sentiment = score
        enriched.model_versions[MODEL_SENTIMENT] = model.version
        if new:
            fold_sentiment(state, score)
            label = SentimentModel.label_from_scores(touchpoint.csat, touchpoint.nps)
            if label is not None:
                batch.texts.append((touchpoint.text, label, touchpoint.occurred_at))
        return score


class ChurnScorer:
    """Every customer's current churn risk, rescored as their touchpoints arrive.

    The features are the customer's state *after* the touchpoint (:func:`churn_features`). They go
    to training as a churn example at most once per ``example_gap_ms`` of the customer's event time;
    a churn event goes too, to label the examples before it. A churned customer is no longer scored:
    there is nothing left to predict.

    >>> from processors.touchpoint import Touchpoint
    >>> from processors.customer import apply
    >>> scorer, state, batch = ChurnScorer(ChurnModel(min_labels=1)), CustomerState("c1"), TrainingBatch()
    >>> _, enriched = apply(state, Touchpoint("e1", "c1", 0, "web", "purchase", amount=5.0), 0, 1, 0)
    >>> risk = scorer.score(enriched, state, new=True, batch=batch)
    >>> round(risk, 3), state.churn_risk == risk == enriched.churn_risk, len(batch.churn_examples)
    (0.039, True, 1)
    >>> _, enriched = apply(state, Touchpoint("e2", "c1", 1000, "web", "account_closed"), 0, 2, 0)
    >>> scorer.score(enriched, state, new=True, batch=batch), batch.churns
    (None, [('c1', 1000)])
    """

    def __init__(self, model: ChurnModel | None = None, rescore_after_ms: int = 6 * HOUR_MS, example_gap_ms: int = HOUR_MS):
        self.model = model or ChurnModel()  # replaced whole by each published model
        self.rescore_after_ms = rescore_after_ms
        self.example_gap_ms = example_gap_ms

    def score(self, enriched: Enriched, state: CustomerState, new: bool, batch: TrainingBatch) -> float | None:
        """Rescore the customer if this touchpoint calls for it; returns the new risk, else None."""
        tp = enriched.touchpoint
        t = tp.occurred_at
        if tp.type in CHURN_TYPES:
            if new:
                batch.churns.append((tp.customer_id, t))
            return None
        if state.churned_at is not None or not new or is_subject(tp.customer_id):
            # Churned; a replay, whose risk the state already holds; or an identifier's own history,
            # which nothing labels (its customer's churn labels the customer's examples, and the
            # history joins the customer's state on the link).
            return None
        last = state.churn_scored_at
        if last is not None and tp.type not in SIGNAL_TYPES and t - last < self.rescore_after_ms:
            return None
        model = self.model
        features = churn_features(state, t)
        risk = model.predict_proba_one(features)
        state.churn_risk = enriched.churn_risk = risk
        state.churn_scored_at = t if last is None else max(last, t)
        enriched.model_versions[MODEL_CHURN] = model.version
        sent = state.churn_example_at
        if sent is None or abs(t - sent) >= self.example_gap_ms:
            state.churn_example_at = t
            batch.churn_examples.append((tp.customer_id, t, features))
        return risk

    def explain(self, state: CustomerState, top: int = 5) -> dict[str, Any] | None:
        """The customer's risk as of their latest touchpoint, by the current model, with its ``top``
        drivers (the largest contributions, signed); None for a churned or never-seen customer.

        >>> from processors.touchpoint import Touchpoint
        >>> from processors.customer import apply
        >>> state = CustomerState("c1")
        >>> _ = apply(state, Touchpoint("e1", "c1", 0, "web", "complaint_opened", case_id="k1"), 0, 1, 0)
        >>> why = ChurnScorer(ChurnModel()).explain(state, top=2)
        >>> sorted(why), why["drivers"][0]["feature"]
        (['as_of', 'drivers', 'model_version', 'risk'], 'open_complaints')
        """
        if state.churned_at is not None or not state.events_total:
            return None
        features = churn_features(state, state.last_seen)
        model = self.model
        return {
            "risk": round(model.predict_proba_one(features), 4), "as_of": state.last_seen, "model_version": model.version,
            "drivers": [{"feature": name, "contribution": round(value, 4)}
                        for name, value in top_contributions(model.contributions(features), top)],
        }

    def contributions(self, state: CustomerState, t_ms: int) -> LazyContributions:
        """What drove the customer's risk (computed only if an alert asks for it)."""
        return LazyContributions(self.model, state, t_ms)


class LazyContributions(Mapping[str, float]):
    """Per-feature contributions to a churn score, computed on first access: alerts are rare."""

    def __init__(self, model: ChurnModel, state: CustomerState, t_ms: int):
        self._args = (model, state, t_ms)
        self._values: dict[str, float] | None = None

    def _get(self) -> dict[str, float]:
        if self._values is None:
            model, state, t = self._args
            self._values = model.contributions(churn_features(state, t))
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def alert_state(state: CustomerState) -> CustomerAlertState:
    """The alert rules' memory of a customer, kept inside the customer's state (one changelog);
    created on the customer's first scored touchpoint."""
    alerting = state.alerting
    if alerting is None:
        alerting = state.alerting = CustomerAlertState(state.customer_id)
    return alerting


class TouchpointScoring:
    """The per-touchpoint model and rule steps, in the worker's order: sentiment, churn, alerts.

    One object serves the worker, the tests and the benchmarks, so they all run the same steps.

    >>> from processors.touchpoint import Touchpoint
    >>> from processors.customer import apply
    >>> scoring, state, batch = TouchpointScoring(), CustomerState("c1"), TrainingBatch()
    >>> tp = Touchpoint("e1", "c1", 0, "survey", "survey_response", nps=2, text="Rude and useless")
    >>> _, enriched = apply(state, tp, 0, 1, 0)
    >>> [a.type for a in scoring.score(enriched, state, True, batch)], enriched.sentiment < 0, len(batch.texts)
    (['detractor'], True, 1)
    """

    def __init__(self, sentiment: TextSentiment | None = None, churn: ChurnScorer | None = None,
                 alerts: AlertEngine | None = None):
        self.sentiment = sentiment or TextSentiment()
        self.churn = churn or ChurnScorer()
        self.alerts = alerts or AlertEngine()

    def score(self, enriched: Enriched, state: CustomerState, new: bool, batch: TrainingBatch) -> list[Alert]:
        """Score ``enriched`` in place (sentiment, churn risk) and return the alerts it triggers."""
        self.sentiment.score(enriched, state, new, batch)
        risk = self.churn.score(enriched, state, new, batch)
        drivers = self.churn.contributions(state, enriched.touchpoint.occurred_at) if risk is not None else None
        return self.alerts.on_event(enriched, alert_state(state), drivers, replay=not new)

    def sweep(self, state_of: Callable[[str], CustomerState | None]) -> list[Alert]:
        """The alert rules' event-time timers up to the watermark; ``state_of`` never creates a state."""
        def lookup(customer_id: str) -> CustomerAlertState | None:
            state = state_of(customer_id)
            return alert_state(state) if state is not None else None

        return self.alerts.sweep(self.alerts.watermark_ms, lookup)
