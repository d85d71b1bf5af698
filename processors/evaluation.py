"""Replay a labeled CSV/TSV file through the live model code, test-then-train.

``evaluate_file("sentiment", "reviews.tsv", text_column="text", label_column="label")`` scores each
row with the same :class:`~processors.sentiment.SentimentModel` the pipeline runs (starting from the
seed-corpus model), then learns it, and reports the progressive metrics. ``"churn"`` does the same
with :class:`~processors.churn.ChurnModel`, every non-identifier column being a customer attribute,
coerced exactly like CRM profile attributes in the pipeline.

Columns are header names, or 0-based indices for a file without a header row (all of them then).
Labels: ``0/1``, ``true/false``, ``yes/no``, ``positive/negative`` (any case); ``neutral`` rows are
skipped. A numeric column that is not all 0/1 is a rating (e.g. VADER's -4..+4 means):
``> 0.05`` is positive, ``< -0.05`` negative, in between neutral.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from processors.churn import ChurnModel, is_identifier, profile_features
from processors.models import OnlineModel
from processors.quality import BinaryQuality, SentimentQuality
from processors.sentiment import SentimentModel

MODELS = ("sentiment", "churn")
NEUTRAL_BAND = 0.05  # rating labels within ±0.05 are neutral
RATING_RANGE = (-4.0, 4.0)

_TRUE = frozenset({"1", "true", "yes", "positive", "pos"})
_FALSE = frozenset({"0", "false", "no", "negative", "neg"})

Column = str | int


class EvaluationError(ValueError):
    """Bad input: a missing file, an unknown column, a model that does not exist."""


@dataclass
class Dataset:
    """Labeled examples read from a file: ``(text or feature dict, label)`` and what was skipped."""

    model: str
    examples: list[tuple[Any, bool]] = field(default_factory=list)
    skipped: int = 0
    features: list[str] = field(default_factory=list)  # churn: columns used as attributes
    excluded: list[str] = field(default_factory=list)  # churn: identifier-like columns left out


def evaluate_file(
    model: str,
    path: str | Path,
    text_column: Column | None = None,
    label_column: Column | None = None,
    id_column: Column | None = None,
    delimiter: str | None = None,
    shuffle_seed: int | None = None,
) -> dict[str, Any]:
    """Prequential metrics of ``model`` on a labeled file.

    ``shuffle_seed`` replays the rows in a seeded random order instead of file order (for files
    whose order is an artefact, e.g. sorted by label).
    """
    data = read_labeled(model, path, text_column, label_column, id_column, delimiter)
    examples = data.examples
    if shuffle_seed is not None:
        examples = list(examples)
        random.Random(shuffle_seed).shuffle(examples)
    result: dict[str, Any] = {"model": model, "rows": len(examples), "skipped": data.skipped}
    if model == "sentiment":
        sentiment = SentimentModel.pretrained()
        quality = SentimentQuality()
        for y, p in replay(sentiment, examples):
            quality.update(y, p >= 0.5)
        result.update(quality.figures(), model_version=sentiment.version)
    else:
        churn = ChurnModel(prior_labels=0)  # the CX prior knows the pipeline's features, not a file's columns
        binary = BinaryQuality()
        ys, ps = [], []
        for y, p in replay(churn, examples):
            binary.update(y, p)
            ys.append(y)
            ps.append(p)
        metrics = binary.figures()
        metrics["roc_auc_streaming"] = metrics.pop("roc_auc")  # River's, over 100 thresholds
        result.update(roc_auc=roc_auc(ys, ps), **metrics, model_version=churn.version)
        result.update(features=data.features, excluded_columns=data.excluded)
    result.pop("n", None)  # same as rows
    return result


def replay(model: OnlineModel[Any], examples: Sequence[tuple[Any, bool]]) -> Iterator[tuple[bool, float]]:
    """Test-then-train: yields ``(label, p(positive))`` as predicted *before* learning the label
    (the model has learned it by the time it is yielded)."""
    for x, y in examples:
        p = model.predict_then_learn_one(x, y)
        yield y, 0.5 if p is None else p  # None: nothing to learn from (text without tokens); 0.5, as predicted


def roc_auc(y_true: Sequence[bool], scores: Sequence[float]) -> float:
    """Exact ROC AUC (Mann-Whitney U, ties counted half); 0.5 when one class is missing.

    >>> roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum, positives, i = 0.0, 0, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in order[i : j + 1]:
            if y_true[k]:
                rank_sum += mean_rank
                positives += 1
        i = j + 1
    negatives = len(order) - positives
    if not positives or not negatives:
        return 0.5
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def read_labeled(
    model: str,
    path: str | Path,
    text_column: Column | None = None,
    label_column: Column | None = None,
    id_column: Column | None = None,
    delimiter: str | None = None,
) -> Dataset:
    """The labeled examples of a file, as the model named ``model`` takes them."""
    if model not in MODELS:
        raise EvaluationError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    if label_column is None:
        raise EvaluationError("a label column is required")
    if model == "sentiment" and text_column is None:
        raise EvaluationError("a text column is required for the sentiment model")
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"no such file: {path}")
    columns = [c for c in (text_column, label_column, id_column) if c is not None]
    headerless = any(isinstance(c, int) for c in columns)
    if headerless and not all(isinstance(c, int) for c in columns):
        raise EvaluationError("give all columns as header names, or all as 0-based indices (no header row)")

    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            sample = handle.read(64 * 1024)
            handle.seek(0)
            delimiter = delimiter or sniff_delimiter(path, sample)
            quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV text has stray quotes
            rows = list(csv.reader(handle, delimiter=delimiter, quoting=quoting))
    except (OSError, csv.Error, TypeError) as error:  # TypeError: a delimiter that is not one character
        raise EvaluationError(f"cannot read {path}: {error}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if headerless:
        width = max((len(r) for r in rows), default=0)
        header = [f"col{i}" for i in range(width)]
    else:
        if not rows:
            raise EvaluationError(f"{path} is empty: a header row is required")
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    text_i = _index(header, text_column, headerless)
    label_i = _index(header, label_column, headerless)
    id_i = _index(header, id_column, headerless)

    labels = [_cell(r, label_i) for r in rows]
    rating = _is_rating(labels)
    data = Dataset(model)
    if model == "churn":
        skip = {i for i in (label_i, id_i, text_i) if i is not None}
        data.excluded = [h for i, h in enumerate(header) if i not in skip and is_identifier(h)]
        if id_i is not None:
            data.excluded.insert(0, header[id_i])
        feature_i = [i for i, h in enumerate(header) if i not in skip and not is_identifier(h)]
        data.features = [header[i] for i in feature_i]
    for row, raw in zip(rows, labels, strict=True):
        label = parse_label(raw, rating) if raw is not None else None
        if label is None:
            data.skipped += 1
            continue
        if model == "sentiment":
            text = _cell(row, text_i)
            if not text or not text.strip():
                data.skipped += 1
                continue
            data.examples.append((text, label))
        else:
            # Blank cells left out first, so a blank one never hides an earlier column of the same name.
            attributes = {header[i]: row[i] for i in feature_i if i < len(row) and row[i].strip()}
            data.examples.append((profile_features(attributes, prefix=""), label))
    return data


def sniff_delimiter(path: Path, sample: str) -> str:
    """Tab for ``.tsv``/``.tab`` or a tab in the first line, comma for ``.csv``, else sniffed."""
    suffix = path.suffix.lower()
    first_line = sample.split("\n", 1)[0]
    if suffix in (".tsv", ".tab") or (suffix != ".csv" and "\t" in first_line):
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;|").delimiter
    except csv.Error:
        return ","


def parse_label(raw: str, rating: bool = False) -> bool | None:
    """``True``/``False``, or None for neutral and unreadable labels (both are skipped).

    >>> [parse_label(v) for v in ("1", "0", "Yes", "FALSE", "positive", "neutral", "maybe")]
    [True, False, True, False, True, None, None]
    >>> [parse_label(v, rating=True) for v in ("2.7", "-0.6", "0.03", "1", "0", "9")]
    [True, False, None, True, None, None]
    """
    value = raw.strip().lower()
    number = _number(value)
    if number is None:
        return True if value in _TRUE else False if value in _FALSE else None
    if not rating:  # a 0/1 column
        return {1.0: True, 0.0: False}.get(number)
    if not RATING_RANGE[0] <= number <= RATING_RANGE[1]:
        return None
    if number > NEUTRAL_BAND:
        return True
    if number < -NEUTRAL_BAND:
        return False
    return None


def _is_rating(labels: list[str | None]) -> bool:
    """Whether the label column holds ratings: some number other than 0 and 1 in it."""
    for raw in labels:
        number = _number(raw.strip()) if raw is not None else None
        if number is not None and number not in (0.0, 1.0):
            return True
    return False


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number else None  # NaN is no label


def _index(header: list[str], column: Column | None, headerless: bool) -> int | None:
    if column is None:
        return None
    if headerless:
        if not 0 <= int(column) < len(header):
            raise EvaluationError(f"column index {column} is out of range: rows have {len(header)} columns")
        return int(column)
    if column in header:
        return header.index(column)
    folded = [h.lower() for h in header]
    if str(column).lower() in folded and folded.count(str(column).lower()) == 1:
        return folded.index(str(column).lower())
    raise EvaluationError(f"unknown column {column!r}: the header has {', '.join(map(repr, header))}")


def _cell(row: list[str], i: int | None) -> str | None:
    return row[i] if i is not None and i < len(row) else None
