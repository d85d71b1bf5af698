"""The pipeline's own model code over the synthetic stream, in-process: churn quality and scoring cost.

    python benchmarks/stream_models.py [--customers 3000] [--days 90] [--seed 0]

No Kafka, no ClickHouse: :class:`processors.synthetic.JourneyGenerator` events are encoded to JSON
bytes and go, in event-time order, through what ``pipeline/worker.py`` does per touchpoint
(``TouchpointWorker.process`` / ``_route``), with the worker's own :class:`TouchpointScoring`:

    Ingestor.handle -> TouchpointScoring.score (TextSentiment -> ChurnScorer -> AlertEngine.on_event)

and per batch of ``--batch`` events: ``TouchpointScoring.sweep`` to the watermark, the batch's
:class:`TrainingBatch` (watermark = the engine's) to one :class:`ModelTrainer` (offset = batch
number). The worker hot-swaps the scorers' models with the trainer's latest published snapshot every
few seconds; here every ``--swap-every`` batches both scorers get a snapshot round trip of the
trainer's models (``from_snapshot(to_snapshot(...))``, what ``cem.models`` carries). CRM profiles
join each customer's state before its first event, like ``cem.customers`` does.

* Churn quality: the trainer's progressive (test-then-train) ROC AUC over every label it learned.
  Labels arrive in event time: a churn labels the customer's churn examples of the 30 days before it
  positive; an example becomes a negative only once the watermark is 30 days (+1 h lateness) past
  it, so the run must be well over 30 days of event time. The (p, y) pairs the trainer scores are
  recorded (a :class:`BinaryQuality` that keeps them), for the exact AUC (Mann-Whitney), the AUC of
  the second half of the labels (the model once it has learned from the first half), and per tenth.
  Churners are spread over ``[0.25, 1] x --churn-within-days`` (default: the whole run), so labels
  of both classes keep coming; the generator's own default (28 days) puts every churn in the first
  month, before the first negative exists.
* The trainer's figure flatters the model, so three checks sit beside it. (1) ``deployed``: the
  risk each scorer gave at each churn example (hot-swapped model, at scoring time) against the
  generator's ground truth (churned within 30 days after it?), pooled and "time matched" (only
  examples of the same event-time day ranked against each other, as a live ranking of customers
  is), also from day 31 on (scorers trained on both classes). (2) ``leak_checks``: the trainer's
  labels of the same example day only (what drifts with time cannot separate them). (3) diagnostics, off by default: ``--ceiling`` (:func:`feature_ceiling`: are
  the early tenths hard for any linear model on these features?), ``--holdout`` (a share of customers whose
  labels the trainer scores but never learns: by the time a churner's example is labeled, the
  trainer has learned the customer's earlier ones, positives included, and this measures what that
  knowledge adds) and ``--drop-features`` (the model ignores them).
* Cost: ``time.perf_counter_ns`` around each stage call, summed and divided by ALL events (not only
  the scored ones): sentiment (events with text) and churn (rescoring is throttled: signal events and
  browsing at most every 6 h) timed inside their ``score`` (:class:`TimedSentiment`,
  :class:`TimedChurn`), alerts = the whole ``TouchpointScoring.score`` minus those two (``on_event``
  plus the lazy churn-contribution wrapper and the alert-state lookup; the per-batch sweep reported
  beside it). Ingest, training and the model swap are
  reported for context; they are not scoring cost (training runs in the trainer, once per label).
  Timings include what a stream pays: cold caches, GC pauses (under the worker's GC settings,
  ``pipeline.app.main.tune_gc``); the timer's own overhead is reported.

Prints one JSON object on stdout and a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson

from pipeline.app.main import tune_gc
from processors.churn import ChurnModel
from processors.customer import DAY_MS, CustomerState
from processors.evaluation import roc_auc
from processors.ingest import Ingestor, Kind, SourceRecord
from processors.quality import BinaryQuality
from processors.scoring import ChurnScorer, TextSentiment, TouchpointScoring, TrainingBatch
from processors.sentiment import SentimentModel
from processors.snapshot import from_snapshot, to_snapshot
from processors.synthetic import DEFAULT_START_MS, JourneyGenerator
from processors.training import ModelTrainer
from schemas.codec import AvroCodec
from schemas.contract import (
    MODEL_CHURN,
    TOPIC_TOUCHPOINTS,
)

ISSUE_AUC = 0.85
ISSUE_US = 30.0


class Timed:
    """Mixin for a pipeline scorer: adds the time of each ``score`` call to ``ns[stage]``."""

    stage = ""

    def __init__(self, ns: dict[str, int], model: object = None):
        super().__init__(model)  # type: ignore[call-arg]
        self.ns = ns

    def score(self, enriched, state, new, batch):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter_ns()
        result = super().score(enriched, state, new, batch)  # type: ignore[misc]
        self.ns[self.stage] += time.perf_counter_ns() - t0
        return result


class TimedSentiment(Timed, TextSentiment):
    stage = "sentiment"


class TimedChurn(Timed, ChurnScorer):
    stage = "churn"


class RecordingQuality(BinaryQuality):
    """The trainer's churn quality tracker, also keeping every (y, p, batch) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[bool, float, int]] = []
        self.batch = 0  # set by the driver before each trainer.apply

    def update(self, y_true: bool, p_true: float) -> bool:
        self.pairs.append((bool(y_true), p_true, self.batch))
        return super().update(y_true, p_true)


class DiagnosticTrainer(ModelTrainer):
    """The pipeline's trainer, also keeping, per churn label it learns (in the order its quality
    tracker sees them), a few feature values and the example's day. Learns exactly what
    :class:`ModelTrainer` learns (``--holdout`` aside)."""

    COLUMNS = ("events_per_day_7d", "activity_trend", "sentiment_mean", "purchases_28d", "crm_tenure_months")

    def __init__(self, churn: ChurnModel | None = None, holdout: float = 0.0, keep_labels: bool = False) -> None:
        super().__init__(churn=churn)
        # --ceiling: every label, in order, with its customer
        self.kept: list[tuple[dict, bool, str | None]] | None = [] if keep_labels else None
        self.values: dict[str, list[float]] = {c: [] for c in self.COLUMNS}
        self.example_days: list[int | None] = []  # event-time day of each label's example
        self.holdout = holdout
        self.held: list[tuple[bool, float]] = []  # (y, p) of held-out customers' labels: scored, never learned

    def _learn_churn(self, labeled, t):  # type: ignore[no-untyped-def]
        # The run loop tags each example with its time and, for --holdout and --ceiling, its
        # customer (the labels come back without either); the tags stop here, before any model.
        rows = [({k: v for k, v in x.items() if k not in TAGS}, y, x.get(EXAMPLE_T), x.get(CID)) for x, y in labeled]
        if self.kept is not None:
            self.kept.extend((features, y, customer) for features, y, _, customer in rows)
        if self.holdout:
            learn = []
            for row in rows:
                if held_out(str(row[3]), self.holdout):
                    self.held.append((row[1], self.churn.predict_proba_one(row[0])))
                else:
                    learn.append(row)
            rows = learn
        self.example_days.extend(-1 if s is None else int(s // DAY_MS) for _, _, s, _ in rows)
        labeled = [(x, y) for x, y, _, _ in rows]
        for features, _ in labeled:
            for column, values in self.values.items():
                value = features.get(column)
                values.append(value if isinstance(value, float) else math.nan)
        super()._learn_churn(labeled, t)


CID = "__customer"  # --holdout, --ceiling: the example's customer, for the trainer to route it
EXAMPLE_T = "__t"  # the example's event time, for the leak checks
TAGS = frozenset({CID, EXAMPLE_T})  # stripped by DiagnosticTrainer before the model sees a label


def held_out(customer_id: str, share: float) -> bool:
    return zlib.crc32(customer_id.encode()) % 1000 < share * 1000


class DroppingChurnModel(ChurnModel):
    """Diagnostic only (``--drop-features``): :class:`ChurnModel` blind to some features, in the
    scorers and in the trainer alike (a snapshot round trip keeps the class); every method that takes
    features drops them."""

    DROP: frozenset[str] = frozenset()

    def _kept(self, features):  # type: ignore[no-untyped-def]
        return {k: v for k, v in features.items() if k not in self.DROP}

    def predict_proba_one(self, features):  # type: ignore[no-untyped-def]
        return super().predict_proba_one(self._kept(features))

    def observe(self, features):  # type: ignore[no-untyped-def]
        super().observe(self._kept(features))

    def learn_one(self, features, churned, *, observe=True):  # type: ignore[no-untyped-def]
        super().learn_one(self._kept(features), churned, observe=observe)

    def predict_then_learn_one(self, features, churned, *, observe=True):  # type: ignore[no-untyped-def]
        return super().predict_then_learn_one(self._kept(features), churned, observe=observe)

    def contributions(self, features):  # type: ignore[no-untyped-def]
        return super().contributions(self._kept(features))


def _matched_auc(rows: list[tuple[int, bool, float]]) -> float:
    """ROC AUC within groups (``rows`` are ``(group, y, score)``), pooled over the groups'
    positive x negative pairs: ranks only customers scored on the same day against each other."""
    groups: dict[int, tuple[list[bool], list[float]]] = {}
    for g, y, p in rows:
        ys, ps = groups.setdefault(g, ([], []))
        ys.append(y)
        ps.append(p)
    total = weight = 0.0
    for ys, ps in groups.values():
        pos = sum(ys)
        pairs = pos * (len(ys) - pos)
        if pairs:
            total += roc_auc(ys, ps) * pairs
            weight += pairs
    return total / weight if weight else 0.5


def _auc(pairs: list[tuple[bool, float, int]]) -> dict[str, float]:
    return {
        "labels": len(pairs),
        "positives": sum(y for y, _, _ in pairs),
        "roc_auc": roc_auc([y for y, _, _ in pairs], [p for _, p, _ in pairs]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen = JourneyGenerator(
        customers=args.customers, seed=args.seed, start_ms=args.start_ms,
        churn_rate=args.churn_rate, churn_within_days=args.churn_within_days or args.days,
    )
    profiles = {p["customer_id"]: p["attributes"] for p in gen.profiles()}
    end_ms = args.start_ms + int(args.days * DAY_MS)

    clock = time.perf_counter_ns
    ns = dict.fromkeys(("ingest", "sentiment", "churn", "alerts", "sweep", "train", "swap"), 0)
    ingestor = Ingestor(AvroCodec())
    tag_customer = bool(args.holdout or args.ceiling)
    DroppingChurnModel.DROP = frozenset(filter(None, args.drop_features.split(",")))
    model = DroppingChurnModel if DroppingChurnModel.DROP else ChurnModel
    churn = TimedChurn(ns, model())
    trainer = DiagnosticTrainer(model(), args.holdout, keep_labels=args.ceiling)
    scoring = TouchpointScoring(TimedSentiment(ns), churn)
    engine = scoring.alerts
    quality = trainer.churn_quality = RecordingQuality()
    states: dict[str, CustomerState] = {}

    def state_for(customer_id: str) -> CustomerState:
        state = states.get(customer_id)
        if state is None:  # the CRM profile is joined before the customer's first event
            state = states[customer_id] = CustomerState(customer_id)
            state.profile = dict(profiles.get(customer_id, {}))
        return state

    counts = dict.fromkeys(("events", "processed", "text", "sentiment_scored", "churn_scored", "alerts",
                            "sweep_alerts", "swaps", "batches", "training_texts", "training_churn_examples",
                            "training_churns"), 0)
    kinds: dict[str, int] = {}
    scored: list[tuple[str, int, float]] = []  # (customer, t, risk) of every churn example sent to training
    events = gen.events(args.events)
    offset = 0
    last_t = args.start_ms
    tune_gc()  # the worker's settings: the pauses measured are the ones a worker would have
    started = time.perf_counter()
    while last_t < end_ms:
        records = []
        for event in events:
            last_t = event["occurred_at"]
            if last_t >= end_ms:
                break
            records.append(SourceRecord(TOPIC_TOUCHPOINTS, 0, offset, last_t, event["customer_id"].encode(), orjson.dumps(event)))
            offset += 1
            if len(records) >= args.batch:
                break
        else:
            last_t = end_ms  # --events reached (or everyone churned)
        if not records:
            break
        training = TrainingBatch()
        for record in records:
            t0 = clock()
            result = ingestor.handle(record, state_for)
            t1 = clock()
            ns["ingest"] += t1 - t0
            kinds[result.kind.value] = kinds.get(result.kind.value, 0) + 1
            if result.kind is not Kind.PROCESSED and result.kind is not Kind.REPLAYED:
                continue
            enriched, state = result.enriched, result.state
            new = result.kind is Kind.PROCESSED
            before = ns["sentiment"] + ns["churn"]
            t0 = clock()
            fired = scoring.score(enriched, state, new, training)
            ns["alerts"] += clock() - t0 - (ns["sentiment"] + ns["churn"] - before)  # the rest of score()
            rescored = MODEL_CHURN in enriched.model_versions  # as pipeline/worker.py tells a churn rescore
            customer_id = enriched.touchpoint.customer_id
            counts["processed"] += 1
            counts["text"] += bool(enriched.touchpoint.text)
            counts["sentiment_scored"] += enriched.sentiment is not None
            counts["churn_scored"] += rescored
            counts["alerts"] += len(fired)
            examples = training.churn_examples
            if rescored and examples and examples[-1][1] == enriched.touchpoint.occurred_at and examples[-1][0] == customer_id:
                scored.append((customer_id, examples[-1][1], enriched.churn_risk))
        counts["events"] += len(records)
        training.churn_examples = [(c, t, {**x, EXAMPLE_T: t, **({CID: c} if tag_customer else {})})
                                   for c, t, x in training.churn_examples]
        t0 = clock()
        counts["sweep_alerts"] += len(scoring.sweep(states.get))
        t1 = clock()
        training.watermark_ms = engine.watermark_ms
        counts["training_texts"] += len(training.texts)
        counts["training_churn_examples"] += len(training.churn_examples)
        counts["training_churns"] += len(training.churns)
        quality.batch = counts["batches"]
        if training:
            trainer.apply(training, counts["batches"])
        t2 = clock()
        ns["sweep"] += t1 - t0
        ns["train"] += t2 - t1
        counts["batches"] += 1
        if counts["batches"] % args.swap_every == 0:
            t0 = clock()
            scoring.sentiment.model = from_snapshot(to_snapshot(trainer.sentiment), SentimentModel)
            scoring.churn.model = from_snapshot(to_snapshot(trainer.churn), ChurnModel)
            ns["swap"] += clock() - t0
            counts["swaps"] += 1
    seconds = time.perf_counter() - started
    t0 = clock()
    labeler_blob = to_snapshot(trainer.labeler)  # the bulk of the trainer's checkpoint on cem.models
    snapshots = {"labeler_bytes": len(labeler_blob), "labeler_pickle_ms": (clock() - t0) / 1e6,
                 "labeler_bytes_per_pending": len(labeler_blob) / max(1, trainer.labeler.size),
                 "churn_bytes": len(to_snapshot(trainer.churn)), "sentiment_bytes": len(to_snapshot(trainer.sentiment))}

    n = max(1, counts["events"])
    per_event = {f"{stage}_us": ns[stage] / n / 1000 for stage in ("ingest", "sentiment", "churn", "alerts", "sweep")}
    per_event["alerts_with_sweep_us"] = per_event["alerts_us"] + per_event["sweep_us"]
    per_event["scoring_total_us"] = per_event["sentiment_us"] + per_event["churn_us"] + per_event["alerts_with_sweep_us"]
    pairs = quality.pairs
    half = len(pairs) // 2
    tenths = [_auc(pairs[i * len(pairs) // 10:(i + 1) * len(pairs) // 10]) for i in range(10)] if len(pairs) >= 10 else []
    labeler = trainer.labeler
    truth = gen.ground_truth()["churned"]
    diagnostics: dict[str, Any] = {}
    leak: dict[str, Any] = {}
    if len(trainer.example_days) == len(pairs) and all(len(v) == len(pairs) for v in trainer.values.values()):
        ys = [y for y, _, _ in pairs]
        for column, values in trainer.values.items():
            kept = [(y, v) for y, v in zip(ys, values, strict=True) if not math.isnan(v)]
            diagnostics[column] = roc_auc([y for y, _ in kept], [v for _, v in kept]) if kept else None
        # Only labels of examples scored on the same event-time day compared.
        days = trainer.example_days
        leak["same_example_day_roc_auc"] = _matched_auc([(d, y, p) for d, (y, p, _) in zip(days, pairs, strict=True)])
    return {
        "settings": {k: v for k, v in vars(args).items()},
        "stream": {
            "events": counts["events"],
            "event_days": (last_t - args.start_ms) / DAY_MS,
            "customers_seen": len(states),
            "churned": sum(s.churned_at is not None for s in states.values()),
            "kinds": kinds,
            "batches": counts["batches"],
            "model_swaps": counts["swaps"],
            "alerts": counts["alerts"],
            "sweep_alerts": counts["sweep_alerts"],
            "training_texts": counts["training_texts"],
            "training_churn_examples": counts["training_churn_examples"],
            "training_churns": counts["training_churns"],
            "labeler_pending": labeler.size,
            "labeler_evicted": labeler.evicted,
            "labeler_refused": labeler.refused,
            "snapshots": snapshots,
        },
        "churn": {
            "trainer_quality": trainer.churn_quality.figures(),
            "prequential": _auc(pairs),
            "second_half": _auc(pairs[half:]),
            "by_tenth": tenths,
            "deployed": deployed_auc(scored, truth, labeler.horizon_ms, trainer.lateness_ms, engine.watermark_ms, args.start_ms),
            "holdout": {
                "share": args.holdout,
                "prequential": _auc([(y, p, 0) for y, p in trainer.held]),
                "second_half": _auc([(y, p, 0) for y, p in trainer.held[len(trainer.held) // 2:]]),
                "deployed": deployed_auc([r for r in scored if held_out(r[0], args.holdout)], truth, labeler.horizon_ms,
                                         trainer.lateness_ms, engine.watermark_ms, args.start_ms),
            } if args.holdout else None,
            "leak_checks": leak,
            "ceiling": feature_ceiling(trainer.kept, pairs) if trainer.kept else None,
            "feature_auc_on_labels": diagnostics,
            "model_version": trainer.churn.version,
            "top_weights": top_weights(trainer.churn),
            "target_roc_auc": ISSUE_AUC,
        },
        "sentiment": trainer.sentiment_quality.figures(),
        "cost": {
            **per_event,
            "sentiment_per_scored_us": ns["sentiment"] / max(1, counts["sentiment_scored"]) / 1000,
            "churn_per_scored_us": ns["churn"] / max(1, counts["churn_scored"]) / 1000,
            "share_text": counts["text"] / n,
            "share_sentiment_scored": counts["sentiment_scored"] / n,
            "share_churn_scored": counts["churn_scored"] / n,
            "train_per_event_us": ns["train"] / n / 1000,
            "swap_ms": ns["swap"] / max(1, counts["swaps"]) / 1e6,
            "timer_overhead_us": _timer_overhead_us(),
            "target_us": ISSUE_US,
        },
        "seconds": seconds,
    }


def feature_ceiling(kept: list[tuple[dict, bool, str | None]], pairs: list[tuple[bool, float, int]]) -> dict[str, Any]:
    """``--ceiling``: how well a logistic regression on these features can rank each early tenth of
    the labels, beside what the online model did on the same rows.

    Customers are split in two halves by a hash of their id. Offline logistic regressions (all the
    passes they want, scaled features, categories one-hot) are fitted on half B's labels and score
    half A's: customers they never saw, so nothing is remembered. ``same_tenth`` is fitted on B's
    labels of the same tenth (examples of the same days: what those days' features can tell, in
    hindsight), ``later`` on B's labels of the run's second half. When neither does better than the
    online model did at the time, an early tenth is as hard as the features make it, not a model
    still learning.
    """
    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    in_a = np.array([held_out(str(customer), 0.5) for _, _, customer in kept])
    X = DictVectorizer(sparse=False).fit_transform([x for x, _, _ in kept])
    y = np.array([label for _, label, _ in kept])
    n, index = len(kept), np.arange(len(kept))

    def fitted_scores(train: Any) -> Any:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(X[train], y[train])
        return model.predict_proba(X)[:, 1]

    later = fitted_scores(~in_a & (index >= n // 2))
    tenths = []
    for i in range(5):
        tenth = (index >= i * n // 10) & (index < (i + 1) * n // 10)
        same = fitted_scores(~in_a & tenth)
        rows = np.flatnonzero(in_a & tenth)
        truth = [bool(y[r]) for r in rows]
        tenths.append({"labels": len(rows), "online": roc_auc([pairs[r][0] for r in rows], [pairs[r][1] for r in rows]),
                       "same_tenth": roc_auc(truth, [same[r] for r in rows]),
                       "later": roc_auc(truth, [later[r] for r in rows])})
    return {"by_tenth_customers_a": tenths}


def deployed_auc(scored: list[tuple[str, int, float]], churned: dict[str, int], horizon_ms: int, lateness_ms: int,
                 watermark_ms: int, start_ms: int) -> dict[str, float]:
    """The scorers' own risks (the hot-swapped models, at scoring time) against the truth: did the
    customer churn within the horizon after the example? Only examples whose horizon has passed.
    ``time_matched`` compares only examples of the same event-time day."""
    rows, near = [], []  # near: only positives within 14 days of their churn (the generator's decline)
    for customer_id, t, risk in scored:
        at = churned.get(customer_id)
        if at is not None and t <= at <= t + horizon_ms:
            rows.append(((t - start_ms) // DAY_MS, True, risk))
            if at - t <= 14 * DAY_MS:
                near.append(rows[-1])
        elif (at is None or at > t + horizon_ms) and t + horizon_ms + lateness_ms < watermark_ms:
            rows.append(((t - start_ms) // DAY_MS, False, risk))
            near.append(rows[-1])
    span = max(1, horizon_ms // DAY_MS)  # days in a horizon
    first_negatives = horizon_ms // DAY_MS + 1  # the first day whose scorers had learned from negatives
    later = [r for r in rows if r[0] >= first_negatives]
    return {
        "labels": len(rows),
        "positives": sum(y for _, y, _ in rows),
        "roc_auc": roc_auc([y for _, y, _ in rows], [p for _, _, p in rows]),
        "time_matched_roc_auc": _matched_auc(rows),
        "from_day": first_negatives,
        "from_day_labels": len(later),
        "from_day_positives": sum(y for _, y, _ in later),
        "from_day_time_matched_roc_auc": _matched_auc(later),
        "from_day_within_14d_time_matched_roc_auc": _matched_auc([r for r in near if r[0] >= first_negatives]),
        "time_matched_by_horizon": {  # example days [0, h), [h, 2h), ...: how the scorers improve
            f"days_{k * span}_{(k + 1) * span}": round(_matched_auc([r for r in rows if r[0] // span == k]), 4)
            for k in range(int(max((r[0] for r in rows), default=0)) // span + 1)
        },
    }


def _timer_overhead_us() -> float:
    """What one ``clock(); clock()`` pair around nothing measures (included in each stage's mean)."""
    clock, total, n = time.perf_counter_ns, 0, 200_000
    for _ in range(n):
        t0 = clock()
        total += clock() - t0
    return total / n / 1000


def top_weights(model: ChurnModel, k: int = 12) -> list[tuple[str, float]]:
    """The largest learned weights of the trainer's churn model (encoded columns)."""
    regression = list(model.pipeline.steps.values())[-1]
    weights = dict(regression.weights)
    return [(name, round(w, 3)) for name, w in sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:k]]


def markdown(result: dict[str, Any]) -> str:
    s, c, cost = result["stream"], result["churn"], result["cost"]
    lines = [
        f"{s['events']:,} events, {s['customers_seen']:,} customers, {s['event_days']:.0f} days of event time, "
        f"{s['churned']} churned; {s['batches']} batches, {s['model_swaps']} model swaps",
        "",
        f"| churn (prequential, trainer's labels) | labels | positives | ROC AUC (target >= {c['target_roc_auc']}) |",
        "|---|---:|---:|---:|",
        f"| trainer's BinaryQuality (binned) | {c['trainer_quality']['n']:.0f} | {c['trainer_quality']['positives']:.0f} "
        f"| {c['trainer_quality']['roc_auc']:.3f} |",
        f"| all labels, exact | {c['prequential']['labels']} | {c['prequential']['positives']} | {c['prequential']['roc_auc']:.3f} |",
        f"| second half of the labels | {c['second_half']['labels']} | {c['second_half']['positives']} | {c['second_half']['roc_auc']:.3f} |",
        f"| scorers' risks vs truth at the 30-day horizon | {c['deployed']['labels']} | {c['deployed']['positives']} "
        f"| {c['deployed']['roc_auc']:.3f} |",
        f"| same, only same-day examples compared | | | {c['deployed']['time_matched_roc_auc']:.3f} |",
        f"| same, examples from day {c['deployed']['from_day']} on (trained scorers) | {c['deployed']['from_day_labels']} "
        f"| {c['deployed']['from_day_positives']} | {c['deployed']['from_day_time_matched_roc_auc']:.3f} |",
        f"| same, positives only those within 14 days of their churn | | | {c['deployed']['from_day_within_14d_time_matched_roc_auc']:.3f} |",
    ]
    leak = c["leak_checks"]
    if leak:
        lines += [
            f"| trainer's labels, same example day only | | | {leak['same_example_day_roc_auc']:.3f} |",
        ]
    lines += [f"| tenth {i + 1} | {t['labels']} | {t['positives']} | {t['roc_auc']:.3f} |" for i, t in enumerate(c["by_tenth"])]
    h = c["holdout"]
    if h:
        lines += [
            f"| held-out customers ({h['share']:.0%}; labels scored by the trainer, never learned) | {h['prequential']['labels']} "
            f"| {h['prequential']['positives']} | {h['prequential']['roc_auc']:.3f} |",
            f"| same, second half | | | {h['second_half']['roc_auc']:.3f} |",
            f"| held-out customers, scorers' risks vs truth, same day, from day {h['deployed']['from_day']} | "
            f"{h['deployed']['from_day_labels']} | {h['deployed']['from_day_positives']} | {h['deployed']['from_day_time_matched_roc_auc']:.3f} |",
        ]
    if c["ceiling"]:
        lines += [f"| tenth {i + 1}, half A's customers: online / offline LR on half B's same tenth / on B's later labels "
                  f"| {t['labels']} | | {t['online']:.3f} / {t['same_tenth']:.3f} / {t['later']:.3f} |"
                  for i, t in enumerate(c["ceiling"]["by_tenth_customers_a"])]
    auc = ", ".join(f"{k} {v:.3f}" for k, v in c["feature_auc_on_labels"].items() if v is not None)
    lines += ["", f"one feature alone as the score, on the trainer's labels: {auc}"]
    lines += [
        "",
        f"| cost per event, all events (target < {cost['target_us']:.0f} µs) | µs |",
        "|---|---:|",
        f"| sentiment ({cost['share_sentiment_scored']:.1%} of events scored; {cost['sentiment_per_scored_us']:.1f} µs each) | {cost['sentiment_us']:.2f} |",
        f"| churn ({cost['share_churn_scored']:.1%} of events scored; {cost['churn_per_scored_us']:.1f} µs each) | {cost['churn_us']:.2f} |",
        f"| alerts (on_event) | {cost['alerts_us']:.2f} |",
        f"| alerts sweep (per batch, amortised) | {cost['sweep_us']:.2f} |",
        f"| **scoring total** | **{cost['scoring_total_us']:.2f}** |",
        f"| ingest (context) | {cost['ingest_us']:.2f} |",
        f"| training (context: trainer, not scoring) | {cost['train_per_event_us']:.2f} |",
        f"| timer overhead per measured stage | {cost['timer_overhead_us']:.3f} |",
        "",
        f"model swap (snapshot round trip of both models): {cost['swap_ms']:.1f} ms; {result['seconds']:.0f} s in all",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=float, default=90.0, help="days of event time to stream")
    parser.add_argument("--events", type=int, default=None, help="stop after this many events (default: --days decides)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--churn-rate", type=float, default=0.15)
    parser.add_argument("--churn-within-days", type=float, default=None,
                        help="churners churn in [0.25, 1] x this many days (default: --days)")
    parser.add_argument("--start-ms", type=int, default=DEFAULT_START_MS)
    parser.add_argument("--batch", type=int, default=1000, help="events per worker batch")
    parser.add_argument("--swap-every", type=int, default=10, help="batches between model hot-swaps")
    parser.add_argument("--drop-features", default="", help="diagnostic: comma-separated churn features the model ignores")
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="diagnostic: share of customers whose churn labels the trainer scores but never learns")
    parser.add_argument("--ceiling", action="store_true",
                        help="diagnostic: an offline logistic regression on other customers' later labels, on each early tenth")
    args = parser.parse_args(argv)
    if args.ceiling and args.holdout:
        parser.error("--ceiling compares the online model on every customer: use it without --holdout")
    if args.days <= 30:
        print("warning: churn labels need more than 30 days of event time", file=sys.stderr)
    result = run(args)
    print(json.dumps(result, indent=None, default=str))
    print(markdown(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
