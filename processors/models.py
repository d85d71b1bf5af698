"""The protocol both online models speak: River's verbs, for one binary label.

:class:`~processors.sentiment.SentimentModel` (``x`` is a text, ``y`` whether the customer was
positive) and :class:`~processors.churn.ChurnModel` (``x`` is a feature dict, ``y`` whether the
customer churned) both are an :class:`OnlineModel`. Unlike River's ``predict_proba_one``, which
returns a distribution over the classes, this one returns ``p(y = True | x)`` alone: every caller
wants that number. ``tests/test_model_checks.py`` runs the same checks against every model.
"""

from __future__ import annotations

import functools
from typing import Protocol, TypeVar, runtime_checkable

X = TypeVar("X", contravariant=True)


@runtime_checkable
class OnlineModel(Protocol[X]):
    """A binary online classifier that learns one labeled example at a time."""

    @property
    def version(self) -> str:
        """The model's name, format version and labels learned (:func:`model_version`)."""
        ...

    def predict_proba_one(self, x: X) -> float:
        """``p(y = True | x)`` in ``[0, 1]``; never raises, whatever ``x`` holds (a cold model answers too)."""
        ...

    def learn_one(self, x: X, y: bool) -> None:
        """Learn one labeled example."""
        ...

    def predict_then_learn_one(self, x: X, y: bool) -> float | None:
        """Test-then-train: :meth:`predict_proba_one` as of *before* learning ``(x, y)``, then
        :meth:`learn_one`, with ``x`` encoded once where the model can; None (and nothing learned)
        when ``x`` has nothing to learn from (a text without a single token)."""
        ...


@functools.lru_cache(maxsize=256)  # asked at every score; changes only as a model learns
def model_version(name: str, format_version: int, labels: int) -> str:
    """What ``version`` says: which model, which format of it, how many stream labels it learned.

    >>> model_version("churn", 1, 5210)
    'churn-v1+5210'
    """
    return f"{name}-v{format_version}+{labels}"
