"""Other online learners than ChurnModel's, prequentially on bank_churn.csv: can one pass close the gap
to offline gradient boosting?

    python benchmarks/churn_learners.py [--data ../shared/data]

``benchmarks/models.py`` puts ChurnModel (binned + one-hot logistic regression, AdaGrad) at ~0.83 ROC
AUC against 5-fold gradient boosting at ~0.87. Each candidate here is replayed test-then-train in
file order, as ``cem model eval`` does, on the same rows:

* ``churn_model``: ChurnModel itself (no prior), the reference;
* ``pair_crosses``: ChurnModel's encoding plus every pair of its bin and one-hot columns (what
  gradient boosting's depth-3 trees can express), AdaGrad at 0.1 and 0.03, FTRL-Proximal;
* ``factorization``: River's factorization machine on the same encoding (learned low-rank pairs);
* ``trees``: River's Hoeffding tree, Hoeffding adaptive tree and adaptive random forest (10 trees);
* ``replay``: ChurnModel's regression relearning 3 random past rows (reservoir of 5,000) per row,
  a batch learner's second pass, online.

Prints one JSON object: ROC AUC over all rows and on the second half, and microseconds per row
(score + learn).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from river import facto, forest, linear_model, optim, tree

from processors.churn import ChurnModel, TabularEncoder
from processors.evaluation import read_labeled, roc_auc

Rows = list[tuple[dict, bool]]


def prequential(rows: Rows, score_then_learn: Callable[[dict, bool], float]) -> dict[str, float]:
    start = time.perf_counter()
    scores = [score_then_learn(x, y) for x, y in rows]
    us = (time.perf_counter() - start) / len(rows) * 1e6
    labels = [y for _, y in rows]
    half = len(rows) // 2
    return {"roc_auc": round(roc_auc(labels, scores), 4),
            "second_half": round(roc_auc(labels[half:], scores[half:]), 4), "us_per_row": round(us)}


def encoded_regression(regression: Any, crosses: bool = False, replay: int = 0) -> Callable[[dict, bool], float]:
    """ChurnModel's encoder into ``regression`` (a River linear or factorization model); with
    ``replay``, that many past rows (a uniform reservoir of 5,000) relearned after each row."""
    encoder, rng, memory, rows_seen = TabularEncoder(), random.Random(0), [], itertools.count(1)

    def encode(x: dict) -> dict:
        columns = encoder.transform_one(x)
        if crosses:
            onehots = sorted(k for k in columns if "#" in k or "=" in k)
            columns.update({f"{a}&{b}": 1.0 for a, b in itertools.combinations(onehots, 2)})
        return columns

    def remember(x: dict, y: bool) -> None:
        seen = next(rows_seen)
        if len(memory) < 5000:
            memory.append((x, y))
        elif (j := rng.randrange(seen)) < 5000:
            memory[j] = (x, y)

    def step(x: dict, y: bool) -> float:
        encoder.learn_one(x)
        columns = encode(x)
        p = regression.predict_proba_one(columns).get(True, 0.0)
        regression.learn_one(columns, y)
        if replay:
            remember(x, y)
            for _ in range(replay):
                past_x, past_y = memory[rng.randrange(len(memory))]
                regression.learn_one(encode(past_x), past_y)
        return p

    return step


def river_model(model: Any) -> Callable[[dict, bool], float]:
    def step(x: dict, y: bool) -> float:
        p = model.predict_proba_one(x).get(True, 0.0)
        model.learn_one(x, y)
        return p
    return step


def churn_model() -> Callable[[dict, bool], float]:
    return ChurnModel(prior_labels=0).predict_then_learn_one


def candidates(nominal: list[str]) -> dict[str, Callable[[], Callable[[dict, bool], float]]]:
    lr = linear_model.LogisticRegression
    return {
        "churn_model": churn_model,
        "pair_crosses_adagrad_0.1": lambda: encoded_regression(lr(optimizer=optim.AdaGrad(0.1)), crosses=True),
        "pair_crosses_adagrad_0.03": lambda: encoded_regression(lr(optimizer=optim.AdaGrad(0.03)), crosses=True),
        "pair_crosses_ftrl": lambda: encoded_regression(lr(optimizer=optim.FTRLProximal(alpha=0.05, beta=1, l1=0, l2=1)), crosses=True),
        "factorization_k4": lambda: encoded_regression(facto.FMClassifier(
            n_factors=4, weight_optimizer=optim.AdaGrad(0.1), latent_optimizer=optim.AdaGrad(0.05),
            sample_normalization=False, seed=0)),
        "hoeffding_tree": lambda: river_model(tree.HoeffdingTreeClassifier(grace_period=50, nominal_attributes=nominal)),
        "hoeffding_adaptive_tree": lambda: river_model(tree.HoeffdingAdaptiveTreeClassifier(seed=0, nominal_attributes=nominal)),
        "adaptive_random_forest_10": lambda: river_model(forest.ARFClassifier(n_models=10, seed=0, nominal_attributes=nominal)),
        "replay_3": lambda: encoded_regression(lr(optimizer=optim.AdaGrad(0.1)), replay=3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data")
    args = parser.parse_args(argv)
    rows = read_labeled("churn", args.data / "churn/bank_churn.csv", label_column="Exited", id_column="CustomerId").examples
    nominal = sorted({k for x, _ in rows[:100] for k, v in x.items() if isinstance(v, str)})
    result = {name: prequential(rows, make()) for name, make in candidates(nominal).items()}
    print(json.dumps({"rows": len(rows), **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
