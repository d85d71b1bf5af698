"""Scoring touchpoints with the online models, test-then-train, inside the stream.

:class:`TextSentiment` scores every touchpoint that carries text and learns from the stream's own
labels (survey comments whose CSAT or NPS says how the customer felt). It scores *before* it learns,
so a label never leaks into its own score.
"""

from __future__ import annotations

from processors.customer import CustomerState, Enriched
from processors.sentiment import SentimentModel, fold_sentiment


class TextSentiment:
    """Sentiment in [-1, 1] for touchpoints with text; folds it into the customer's state.

    >>> from processors.touchpoint import Touchpoint
    >>> from processors.customer import apply
    >>> scorer, state = TextSentiment(), CustomerState("c1")
    >>> tp = Touchpoint("e1", "c1", 0, "survey", "survey_response", text="Terrible service, never again", nps=1)
    >>> _, enriched = apply(state, tp, 0, 1, 0)
    >>> score = scorer.score(enriched, state, new=True)
    >>> score < -0.3, enriched.sentiment == score, state.sentiment_n, scorer.learned
    (True, True, 1, 1)
    """

    def __init__(self, model: SentimentModel | None = None):
        self.model = model or SentimentModel.pretrained()
        self.learned = 0

    def score(self, enriched: Enriched, state: CustomerState, new: bool) -> float | None:
        """Score ``enriched`` in place; ``new`` is False for a replayed record (state already has it)."""
        touchpoint = enriched.touchpoint
        if not touchpoint.text:
            return None
        score = self.model.score(touchpoint.text)
        enriched.sentiment = score
        enriched.model_versions = {"sentiment": self.model.version}
        if new:
            fold_sentiment(state, score)
            label = SentimentModel.label_from_scores(touchpoint.csat, touchpoint.nps)
            if label is not None:
                self.model.learn(touchpoint.text, label)
                self.learned += 1
        return score
