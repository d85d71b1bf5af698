"""Every use of River's private API, in one place; each is pinned by ``tests/test_river_internals.py``.

The models build on River's public classes and reach past their public methods only here, where a
River upgrade that changes an internal fails a named test instead of shifting scores silently.
"""

from __future__ import annotations

from river import linear_model


def logistic_log_odds(regression: linear_model.LogisticRegression, x: dict[str, float]) -> float:
    """The regression's log-odds for ``x``: its weights dot ``x`` plus its intercept, the value its
    ``predict_proba_one`` passes through the sigmoid.

    Churn scoring blends these log-odds with the prior's. The public API would hand back a
    probability dict, to be turned back into log-odds: a sigmoid and a logit per score for nothing,
    and precision lost where the probability nears 0 or 1.

    >>> lr = linear_model.LogisticRegression()
    >>> lr.learn_one({"complaints": 2.0}, True)
    >>> logistic_log_odds(lr, {"complaints": 2.0}) > 0
    True
    """
    return regression._raw_dot_one(x)
