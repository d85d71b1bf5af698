"""Online models vs offline baselines on the shared reference data, and their scoring cost.

    python benchmarks/models.py [--data ../shared/data]

* Sentiment: prequential macro-F1 of :class:`SentimentModel` (seed-corpus start, score then learn)
  on each UCI and VADER file and on all of them together, beside an offline scikit-learn baseline
  computed in the same run: TF-IDF (1-2 grams, sublinear tf) + LogisticRegression(C=10), 5-fold
  stratified cross-validated macro-F1. C=10 was the best of {1, 3, 10} on these files, so the
  baseline is, if anything, optimistic. Rows are replayed in a seeded shuffled order: the files'
  order is an artefact (VADER's movie snippets are sorted by label); file order is reported too.
* Churn: prequential ROC AUC of :class:`ChurnModel` on bank_churn.csv (file order; and on the
  second half of that replay, once the model has learned from ~5,000 labels), beside
  offline LogisticRegression and GradientBoosting 5-fold CV ROC AUC on the same columns, an
  offline logistic regression on the same binned encoding (the ceiling of an additive model), and
  both offline models under the online protocol (refitted every 250 rows on the rows before,
  each block scored before it is learned: :func:`prequential_offline`).
* Cost: mean microseconds per call of ``SentimentModel.score`` on real review sentences, of
  ``churn_features`` + ``ChurnModel.predict_proba_one`` on realistic customer states, and of
  ``ChurnLabeler.keep`` (the trainer keeping a churn example).

Prints one JSON object on stdout and a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import us_per_item

from processors.churn import ChurnLabeler, ChurnModel, churn_features
from processors.customer import DAY_MS, CustomerState
from processors.evaluation import evaluate_file, read_labeled, replay, roc_auc
from processors.quality import SentimentQuality
from processors.sentiment import SentimentModel
from schemas.contract import CHANNELS

SEED = 0
FOLDS = 5

UCI = ("amazon_cells", "yelp", "imdb")
VADER = ("amazonReviewSnippets", "tweets", "movieReviewSnippets", "nytEditorialSnippets")


def sentiment_files(data: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    files = [(f"uci/{n}", data / "sentiment/uci" / f"{n}_labelled.txt", {"text_column": 0, "label_column": 1}) for n in UCI]
    files += [
        (f"vader/{n}", data / "sentiment/vader" / f"{n}_GroundTruth.txt", {"text_column": 2, "label_column": 1, "id_column": 0})
        for n in VADER
    ]
    return files


# ---------------------------------------------------------------------------------------------------
# Sentiment
# ---------------------------------------------------------------------------------------------------


def online_sentiment(examples: list[tuple[str, bool]], shuffle: bool) -> float:
    if shuffle:
        examples = list(examples)
        random.Random(SEED).shuffle(examples)
    quality = SentimentQuality()
    for y, p in replay(SentimentModel.pretrained(), examples):
        quality.update(y, p >= 0.5)
    return quality.figures()["macro_f1"]


def offline_sentiment(examples: list[tuple[str, bool]]) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    texts = [t for t, _ in examples]
    labels = [y for _, y in examples]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=2000))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
    return float(cross_val_score(model, texts, labels, cv=folds, scoring="f1_macro", n_jobs=-1).mean())


def bench_sentiment(data: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    combined: list[tuple[str, bool]] = []
    for name, path, columns in sentiment_files(data):
        examples = read_labeled("sentiment", path, **columns).examples
        combined += examples
        results[name] = _sentiment_row(examples)
    results["combined"] = _sentiment_row(combined, file_order=False)
    return results


def _sentiment_row(examples: list[tuple[str, bool]], file_order: bool = True) -> dict[str, float]:
    row = {"rows": len(examples), "online": online_sentiment(examples, shuffle=True)}
    if file_order:
        row["online_file_order"] = online_sentiment(examples, shuffle=False)
    row["offline"] = offline_sentiment(examples)
    row["gap"] = row["online"] - row["offline"]
    return row


# ---------------------------------------------------------------------------------------------------
# Churn
# ---------------------------------------------------------------------------------------------------


def bench_churn(data: Path) -> dict[str, Any]:
    path = data / "churn/bank_churn.csv"
    online = evaluate_file("churn", path, label_column="Exited", id_column="CustomerId")
    examples = read_labeled("churn", path, label_column="Exited", id_column="CustomerId").examples
    offline = offline_churn(examples)
    # The same replay, scored on its second half only: how good the model is once it has learned
    # from ~5,000 labels (the offline models train on ~8,000).
    half = len(examples) // 2
    predictions = list(replay(ChurnModel(prior_labels=0), examples))[half:]  # as evaluate_file
    return {
        "rows": online["rows"],
        "features": online["features"],
        "excluded_columns": online["excluded_columns"],
        "online": online["roc_auc"],
        "online_second_half": roc_auc([y for y, _ in predictions], [p for _, p in predictions]),
        "online_log_loss": online["log_loss"],
        **offline,
        "gap_lr": online["roc_auc"] - offline["offline_lr"],
        "gap_gb": online["roc_auc"] - offline["offline_gb"],
        "gap_gb_prequential": online["roc_auc"] - offline["offline_gb_prequential"],
    }


def offline_churn(examples: list[tuple[dict, bool]]) -> dict[str, float]:
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler

    vectoriser = DictVectorizer(sparse=False)  # numbers as they are, strings one-hot
    X = vectoriser.fit_transform([x for x, _ in examples])
    y = np.array([label for _, label in examples])
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)

    def auc(model: Any) -> float:
        return float(cross_val_score(model, X, y, cv=folds, scoring="roc_auc", n_jobs=-1).mean())

    # The online model's encoding, offline: few-valued integer columns one-hot, others binned.
    discrete = [i for i in range(X.shape[1]) if len(np.unique(X[:, i])) <= 10]
    continuous = [i for i in range(X.shape[1]) if i not in discrete]
    binned = ColumnTransformer(
        [
            ("scaled", StandardScaler(), list(range(X.shape[1]))),
            ("onehot", OneHotEncoder(handle_unknown="ignore"), discrete),
            ("bins", KBinsDiscretizer(n_bins=10, encode="onehot", strategy="quantile", quantile_method="averaged_inverted_cdf"), continuous),
        ]
    )
    return {
        "offline_lr": auc(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        "offline_gb": auc(GradientBoostingClassifier(random_state=SEED)),
        "offline_lr_binned": auc(make_pipeline(binned, LogisticRegression(max_iter=5000))),
        "offline_lr_prequential": prequential_offline(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), X, y),
        "offline_gb_prequential": prequential_offline(lambda: GradientBoostingClassifier(random_state=SEED), X, y),
    }


def prequential_offline(make: Callable[[], Any], X: Any, y: Any, block: int = 250) -> float:
    """ROC AUC of an offline model under the online model's protocol: file order, each block of
    ``block`` rows scored by a model fitted (from scratch, all the passes it wants) on every row
    before it; rows before the first fit score 0.5, as an untrained online model does.

    Cross-validation trains on 80% of the file whatever a row's position; this is what the offline
    model would do in the online model's place, so the gap between the two is the cost of learning
    one row at a time, not of starting from nothing.
    """
    scores = [0.5] * len(y)
    for start in range(block, len(y), block):
        if len(set(y[:start])) == 2:
            model = make().fit(X[:start], y[:start])
            scores[start:start + block] = model.predict_proba(X[start:start + block])[:, 1]
    return roc_auc(list(y), scores)


# ---------------------------------------------------------------------------------------------------
# Scoring cost
# ---------------------------------------------------------------------------------------------------


def synthetic_states(n: int, rng: random.Random) -> list[tuple[CustomerState, int]]:
    """Plausible customer states with an event time each (for timing only: no labels here)."""
    states = []
    for i in range(n):
        first = rng.randint(0, 300) * DAY_MS
        last = first + rng.randint(0, 200) * DAY_MS
        channels = rng.sample(CHANNELS, rng.randint(1, 4))
        state = CustomerState(
            f"c{i}",
            first_seen=first,
            last_seen=last,
            events_total=rng.randint(1, 300),
            channel_events={c: rng.randint(1, 50) for c in channels},
            revenue=rng.uniform(0, 2000),
            orders=rng.randint(0, 30),
            refunds=rng.choice([0.0, rng.uniform(0, 200)]),
            last_purchase_at=rng.choice([None, last - rng.randint(0, 60) * DAY_MS]),
            open_cases={f"k{j}": last - rng.randint(0, 20) * DAY_MS for j in range(rng.choice([0, 0, 0, 1, 2]))},
            complaints_opened=rng.randint(0, 4),
            complaints_resolved=(resolved := rng.randint(0, 3)),
            resolve_s_total=resolved * rng.uniform(600, 3 * 86400),
            last_csat=rng.choice([None, 1, 2, 3, 4, 5]),
            last_nps=rng.choice([None, *range(11)]),
            last_ces=rng.choice([None, *range(1, 8)]),
            journey_stage=rng.choice(["awareness", "consideration", "purchase", "retention", "service", "advocacy"]),
            channel_switches=rng.randint(0, 10),
            sentiment_n=(n_sent := rng.choice([0, rng.randint(1, 20)])),
            sentiment_mean=rng.uniform(-1, 1) if n_sent else 0.0,
            sentiment_last=rng.uniform(-1, 1) if n_sent else None,
            profile={"plan": rng.choice(["basic", "plus", "gold"]), "age": str(rng.randint(18, 90)),
                     "region": rng.choice(["north", "south", "east", "west"]), "email": "x@example.com"},
        )
        states.append((state, last + rng.randint(0, 30) * DAY_MS))
    return states


def bench_cost(data: Path) -> dict[str, float]:
    rng = random.Random(SEED)
    sentences = [t for t, _ in read_labeled("sentiment", data / "sentiment/uci/amazon_cells_labelled.txt", 0, 1).examples]
    sentiment = SentimentModel.pretrained()
    for text in sentences[:500]:  # a model that has seen some stream, as in production
        sentiment.learn_one(text, rng.random() < 0.5)
    sentiment_us = us_per_item(sentiment.score, sentences, pick=min)

    states = synthetic_states(2000, rng)
    churn = ChurnModel()
    for state, now in states[:1000]:  # enough labels to freeze the bins and leave the prior
        churn.learn_one(churn_features(state, now), rng.random() < 0.2)
    feature_dicts = [churn_features(s, now) for s, now in states]
    features_us = us_per_item(lambda item: churn_features(*item), states, pick=min)
    predict_us = us_per_item(churn.predict_proba_one, feature_dicts, pick=min)
    labeler = ChurnLabeler()
    # Distinct customers and times, so every call keeps an example (the throttle would make it cheaper).
    stamps = [(f"c{i}", i * 3_600_000) for i in range(len(states) * 9)]
    it = iter(stamps)
    keep_us = us_per_item(lambda _: labeler.keep(*next(it), feature_dicts[0]), states, pick=min)
    return {
        "sentiment_score_us": sentiment_us,
        "sentiment_words_mean": sum(len(s.split()) for s in sentences) / len(sentences),
        "churn_features_us": features_us,
        "churn_predict_us": predict_us,
        "churn_total_us": features_us + predict_us,
        "churn_features_per_dict": sum(map(len, feature_dicts)) / len(feature_dicts),
        "labeler_keep_us": keep_us,
    }


# ---------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| sentiment data | rows | online macro-F1 (shuffled) | online (file order) | offline TF-IDF+LR (5-fold) | gap |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["sentiment"].items():
        file_order = f"{row['online_file_order']:.3f}" if "online_file_order" in row else "-"
        lines.append(f"| {name} | {row['rows']} | {row['online']:.3f} | {file_order} | {row['offline']:.3f} | {row['gap']:+.3f} |")
    c = result["churn"]
    lines += [
        "",
        "| churn (bank_churn.csv) | ROC AUC |",
        "|---|---:|",
        f"| online ChurnModel (prequential, file order) | {c['online']:.3f} |",
        f"| online ChurnModel, second half of the same replay | {c['online_second_half']:.3f} |",
        f"| offline LogisticRegression (5-fold) | {c['offline_lr']:.3f} |",
        f"| offline GradientBoosting (5-fold) | {c['offline_gb']:.3f} |",
        f"| offline LogisticRegression on the binned encoding (5-fold) | {c['offline_lr_binned']:.3f} |",
        f"| offline LogisticRegression, refitted every 250 rows on the rows before (prequential) | {c['offline_lr_prequential']:.3f} |",
        f"| offline GradientBoosting, refitted every 250 rows on the rows before (prequential) | {c['offline_gb_prequential']:.3f} |",
        "",
        "| scoring cost | µs per call |",
        "|---|---:|",
    ]
    lines += [f"| {k.removesuffix('_us')} | {v:.1f} |" for k, v in result["cost"].items() if k.endswith("_us")]
    lines.append(f"\n{result['seconds']:.0f} s in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="reference data directory")
    args = parser.parse_args(argv)
    if not (args.data / "sentiment").is_dir():
        print(f"no reference data under {args.data}", file=sys.stderr)
        return 2
    # Quantile bins of a 11-valued column collapse, and sklearn says so from every worker process.
    os.environ["PYTHONWARNINGS"] = "ignore:Bins whose width:UserWarning,ignore::FutureWarning"
    warnings.filterwarnings("ignore", message="Bins whose width", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "sentiment": bench_sentiment(args.data),
        "churn": bench_churn(args.data),
        "cost": bench_cost(args.data),
    }
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=None))
    print(markdown(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
