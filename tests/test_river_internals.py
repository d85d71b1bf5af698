"""Pins of what the models take from River beyond its public methods (``processors.river_internals``
and the fast naive Bayes): a River upgrade that changes them fails here, by name."""

from __future__ import annotations

import math
import random

import pytest
from river import linear_model, naive_bayes, optim

from processors.river_internals import logistic_log_odds
from processors.sentiment import BinaryMultinomialNB


def _examples(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {f"f{j}": rng.uniform(-2, 2) for j in rng.sample(range(12), 5)}
        out.append((x, x.get("f0", 0.0) + x.get("f1", 0.0) - x.get("f2", 0.0) + rng.gauss(0, 0.5) > 0))
    return out


def test_logistic_log_odds_are_what_predict_proba_one_passes_through_the_sigmoid():
    """ChurnModel blends these log-odds with its prior's; if River's private ``_raw_dot_one`` ever
    stops being the pre-sigmoid value of ``predict_proba_one``, churn scores would shift silently."""
    regression = linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.1))
    examples = _examples(400, 1)
    for x, y in examples:
        regression.learn_one(x, y)
    assert regression.intercept != 0.0  # the intercept is part of the log-odds, so test with one
    probes = [x for x, _ in _examples(50, 2)] + [{}, {"unseen": 3.0}]
    for x in probes:
        z = logistic_log_odds(regression, x)
        assert abs(z) < 30  # inside the range where River's sigmoid is not clamped
        assert 1.0 / (1.0 + math.exp(-z)) == pytest.approx(regression.predict_proba_one(x)[True], abs=1e-12)


def test_fast_naive_bayes_matches_rivers_posterior():
    """BinaryMultinomialNB learns with River's code and scores from River's counts with River's
    formula (additive smoothing), in one pass: it must keep agreeing with River's own scoring."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(30)]
    fast, reference = BinaryMultinomialNB(alpha=1.0), naive_bayes.MultinomialNB(alpha=1.0)
    for _ in range(300):
        x = {w: rng.randint(1, 3) for w in rng.sample(words, 4)}
        y = rng.random() < 0.5
        fast.learn_one(x, y)
        reference.learn_one(x, y)
    for _ in range(50):
        x = {w: rng.randint(1, 3) for w in rng.sample(words + ["unseen"], 5)}
        assert fast.predict_proba_one(x)[True] == pytest.approx(reference.predict_proba_one(x)[True], abs=1e-9)
