"""The benchmark scripts' diagnostics, on a small stream: they run, and they measure what they say."""

from __future__ import annotations

import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import stream_models  # noqa: E402


@pytest.fixture(scope="module")
def diagnosed() -> tuple[dict, list]:
    """A 45-day, 300-customer stream with the diagnostics that tag each churn example with its customer;
    the result, and the trainer's churn model (caught on its way to ``top_weights``)."""
    models = []
    top_weights = stream_models.top_weights

    def keep(model, k=12):  # type: ignore[no-untyped-def]
        models.append(model)
        return top_weights(model, k)

    out = StringIO()
    stream_models.top_weights = keep
    try:
        with redirect_stdout(out), redirect_stderr(StringIO()):
            argv = ["--customers", "300", "--days", "45", "--seed", "3", "--ceiling", "--drop-features", "crm_region"]
            assert stream_models.main(argv) == 0
    finally:
        stream_models.top_weights = top_weights
    return json.loads(out.getvalue()), models


def test_the_customer_tag_and_dropped_features_never_reach_the_model(diagnosed):
    """--ceiling and --holdout send each churn example's customer id along to the trainer; a model that
    took it for a feature learns customers by name (the trainer's AUC rose to 0.91 when it did)."""
    _, (model,) = diagnosed
    columns = set(model.pipeline.steps["LogisticRegression"].weights)
    assert len(columns) > 50
    assert not [c for c in columns if c.startswith((stream_models.CID, "crm_region"))]


def test_ceiling_scores_early_tenths_of_unseen_customers(diagnosed):
    result, _ = diagnosed
    ceiling = result["churn"]["ceiling"]
    tenths = ceiling["by_tenth_customers_a"]
    assert len(tenths) == 5
    assert all(t["labels"] > 0 and all(0.0 <= t[k] <= 1.0 for k in ("online", "same_tenth", "later")) for t in tenths)
