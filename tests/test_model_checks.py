"""The checks every online model passes, as River's ``check_estimator`` runs its checks: one list of
models (:data:`CASES`, each an :class:`~processors.models.OnlineModel` with inputs of its own), one
list of checks, and every pair is a test. A new model joins by adding its case."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from processors.churn import ChurnModel
from processors.models import OnlineModel
from processors.sentiment import SentimentModel
from processors.snapshot import SnapshotError, from_snapshot, read_header, to_snapshot
from schemas.contract import MODEL_CHURN, MODEL_SENTIMENT


@dataclass(frozen=True)
class Case:
    """A model and the inputs to check it with."""

    name: str  # the model's one name (schemas.contract)
    fresh: Callable[[], Any]  # a model as the pipeline starts it
    blank: Callable[[], Any]  # the same with nothing learned at all (no seed, no prior help)
    examples: list[tuple[Any, bool]]  # a stream to learn, every example learnable
    probes: list[Any]  # inputs to predict
    odd: list[Any]  # inputs a model must answer without raising, however little they hold
    keyed: bool  # inputs are feature dicts (their key order must not matter)


def _texts() -> list[tuple[str, bool]]:
    rng = random.Random(11)
    good = ["great", "helpful", "quick", "lovely", "friendly", "excellent"]
    bad = ["awful", "rude", "slow", "useless", "broken", "terrible"]
    things = ["agent", "refund", "delivery", "app", "store", "call"]
    out = []
    for _ in range(60):
        positive = rng.random() < 0.5
        word = rng.choice(good if positive else bad)
        out.append((f"The {rng.choice(things)} was {word}, {rng.choice(things)} {rng.choice(good + bad)}", positive))
    return out


def _customers(n: int, seed: int) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {
            "recency_days": float(rng.randint(0, 60)), "open_complaints": float(rng.randint(0, 3)),
            "sentiment_mean": round(rng.uniform(-1, 1), 3), "crm_tenure_months": float(rng.randint(0, 120)),
            "crm_plan": rng.choice(["basic", "plus", "gold"]), "journey_stage": rng.choice(["service", "retention"]),
        }
        risk = x["recency_days"] / 60 + x["open_complaints"] / 3 - x["sentiment_mean"] + rng.uniform(-0.5, 0.5)
        out.append((x, risk > 0.8))
    return out


CASES = [
    Case(
        MODEL_SENTIMENT, SentimentModel.pretrained, SentimentModel, _texts(),
        ["Great agent, quick refund", "Rude and slow", "zorblax widget", "not great", "the the the", ""],
        ["", "   ", "?!...", "😡😡", "x" * 5000, "Обслуживание ужасное", "12345 678"], keyed=False,
    ),
    Case(
        MODEL_CHURN, lambda: ChurnModel(min_labels=10, warmup=30, prior_labels=50),
        lambda: ChurnModel(min_labels=10, warmup=30, prior_labels=0), _customers(150, 1),
        [x for x, _ in _customers(20, 2)] + [{}, {"crm_plan": "platinum"}],
        [{}, {"unknown": 1.0}, {"crm_plan": "never seen"}, {"recency_days": 1e300}, {"recency_days": -5.0},
         {"journey_stage": ""}], keyed=True,
    ),
]
BY_NAME = {case.name: case for case in CASES}
checked = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
keyed = pytest.mark.parametrize("case", [c for c in CASES if c.keyed], ids=[c.name for c in CASES if c.keyed])


def trained(case: Case, n: int | None = None) -> Any:
    model = case.fresh()
    for x, y in case.examples[:n]:
        model.learn_one(x, y)
    return model


def predictions(model: Any, inputs: list[Any]) -> list[float]:
    return [model.predict_proba_one(x) for x in inputs]


@checked
def test_speaks_the_protocol_under_its_one_name(case):
    model = case.fresh()
    assert isinstance(model, OnlineModel)
    assert case.name == model.SNAPSHOT_KIND
    assert model.version == f"{case.name}-v{model.SNAPSHOT_VERSION}+0"
    for x, y in case.examples[:7]:
        model.learn_one(x, y)
    assert model.version == f"{case.name}-v{model.SNAPSHOT_VERSION}+7"


@checked
def test_snapshot_and_pickle_round_trips_predict_the_same(case):
    model = trained(case, 100)
    copies = [from_snapshot(to_snapshot(model), type(model)), pickle.loads(pickle.dumps(model))]
    for restored in copies:
        assert predictions(restored, case.probes) == predictions(model, case.probes)
        assert restored.version == model.version
    for x, y in case.examples[100:]:  # and they carry on learning alike
        for m in (model, *copies):
            m.learn_one(x, y)
    assert all(predictions(m, case.probes) == predictions(model, case.probes) for m in copies)


@checked
def test_snapshot_names_its_kind_and_refuses_another(case):
    model = case.fresh()
    data = to_snapshot(model)
    header = read_header(data)
    assert (header.kind, header.version) == (case.name, model.SNAPSHOT_VERSION)
    for other in CASES:
        if other is not case:
            with pytest.raises(SnapshotError, match=f"a {case.name!r} snapshot, not a {other.name!r} one"):
                from_snapshot(data, type(other.fresh()))


@checked
def test_replaying_the_same_labels_gives_the_same_model(case):
    a, b = trained(case), trained(case)
    assert predictions(a, case.probes) == predictions(b, case.probes) and a.version == b.version
    c, d = case.fresh(), case.fresh()
    scored = [c.predict_then_learn_one(x, y) for x, y in case.examples]
    assert scored == [d.predict_then_learn_one(x, y) for x, y in case.examples]
    assert predictions(c, case.probes) == predictions(a, case.probes)


def _replay_in_a_subprocess(name: str, hash_seed: str) -> list[float]:
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_model_checks as t; "
            f"case = t.BY_NAME[{name!r}]; print(json.dumps(t.predictions(t.trained(case), case.probes)))")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@checked
def test_replay_is_the_same_in_another_process(case):
    """The trainer's state is rebuilt by replaying the training topic, possibly on another worker:
    nothing may depend on string hashing (set or dict order of hashed keys)."""
    here = predictions(trained(case), case.probes)
    assert _replay_in_a_subprocess(case.name, "1") == _replay_in_a_subprocess(case.name, "2") == here


@checked
def test_predict_then_learn_one_is_predict_then_learn(case):
    one_pass, two_steps = case.fresh(), case.fresh()
    for x, y in case.examples:
        p = two_steps.predict_proba_one(x)
        two_steps.learn_one(x, y)
        assert one_pass.predict_then_learn_one(x, y) == p
    assert predictions(one_pass, case.probes) == predictions(two_steps, case.probes)
    assert one_pass.version == two_steps.version


def test_churn_learning_an_observed_example_encodes_it_once_and_learns_the_same():
    """The trainer's way: every example is observed when it arrives, and learned a horizon later
    with ``observe=False``; scoring and learning then share one encoding of the features."""
    case = BY_NAME[MODEL_CHURN]
    one_pass, two_steps = case.fresh(), case.fresh()
    for model in (one_pass, two_steps):
        for x, _ in case.examples:
            model.observe(x)
    for x, y in case.examples:
        p = two_steps.predict_proba_one(x)
        two_steps.learn_one(x, y, observe=False)
        assert one_pass.predict_then_learn_one(x, y, observe=False) == p
    assert predictions(one_pass, case.probes) == predictions(two_steps, case.probes)


@checked
def test_predicting_changes_nothing(case):
    model, twin = trained(case, 100), trained(case, 100)
    for x in case.probes + case.odd:
        before = copy.deepcopy(x)
        assert model.predict_proba_one(x) == model.predict_proba_one(x)
        assert x == before  # the caller's input is not mutated
    assert predictions(model, case.probes) == predictions(twin, case.probes) and model.version == twin.version


@checked
def test_learning_does_not_mutate_the_input(case):
    model = case.fresh()
    for x, y in case.examples + [(x, True) for x in case.odd]:
        before = copy.deepcopy(x)
        model.learn_one(x, y)
        model.predict_then_learn_one(x, y)
        assert x == before


@keyed
def test_feature_order_has_no_effect(case):
    """A feature dict is a set of named values: the same values in another key order predict the
    same, and teach the same. To 1e-12, not exactly: the dot product sums in key order."""
    rng = random.Random(5)

    def shuffled(x: dict) -> dict:
        items = list(x.items())
        rng.shuffle(items)
        return dict(items)

    model, twin = case.fresh(), case.fresh()
    for x, y in case.examples:
        model.learn_one(x, y)
        twin.learn_one(shuffled(x), y)
    for x in case.probes:
        assert twin.predict_proba_one(shuffled(x)) == pytest.approx(model.predict_proba_one(x), abs=1e-12)
        assert model.predict_proba_one(shuffled(x)) == pytest.approx(model.predict_proba_one(x), abs=1e-12)


@checked
@pytest.mark.parametrize("start", ["blank", "fresh", "trained"])
def test_any_model_answers_any_input_with_a_probability(case, start):
    model = {"blank": case.blank, "fresh": case.fresh, "trained": lambda: trained(case)}[start]()
    for x in case.odd + case.probes:
        assert 0.0 <= model.predict_proba_one(x) <= 1.0
    for x in case.odd:
        p = model.predict_then_learn_one(x, False)
        assert p is None or 0.0 <= p <= 1.0
