"""``cem model eval``: replay a labeled file through the live model code and print its metrics.

    cem model eval --model sentiment --input reviews.tsv --text-column text --label-column label
    cem model eval --model sentiment --input yelp_labelled.txt --text-column 0 --label-column 1
    cem model eval --model churn --input customers.csv --label-column Exited --id-column CustomerId

Prints one JSON line and exits 0; on bad input (missing file, unknown column) prints the reason to
stderr and exits 2. Columns given as plain integers are 0-based indices into a file without header.
"""

from __future__ import annotations

import argparse
import json
import sys

from processors.evaluation import MODELS, EvaluationError, evaluate_file


def add_model_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``model eval`` to a CLI's subparsers; its ``handler`` (and ``func``) is :func:`run_model_eval`."""
    model = subparsers.add_parser("model", help="work with the online models")
    commands = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    evaluate = commands.add_parser(
        "eval",
        help="prequential (score, then learn) metrics of a model on a labeled CSV/TSV file",
        description=__doc__.split("\n\n")[0],
    )
    evaluate.add_argument("--model", required=True, choices=MODELS)
    evaluate.add_argument("--input", required=True, metavar="FILE", help="labeled CSV or TSV file")
    evaluate.add_argument("--text-column", type=_column, metavar="C", help="text column (sentiment)")
    evaluate.add_argument("--label-column", required=True, type=_column, metavar="C")
    evaluate.add_argument("--id-column", type=_column, metavar="C", help="identifier column, never a feature")
    evaluate.add_argument("--delimiter", help="field delimiter (default: from the extension or the content)")
    evaluate.add_argument("--shuffle-seed", type=int, metavar="N", help="replay rows in a seeded random order")
    evaluate.set_defaults(func=run_model_eval, handler=run_model_eval)  # pipeline.cli dispatches on handler
    return model


def run_model_eval(args: argparse.Namespace) -> int:
    try:
        result = evaluate_file(
            args.model,
            args.input,
            text_column=args.text_column,
            label_column=args.label_column,
            id_column=args.id_column,
            delimiter=_unescape(args.delimiter),
            shuffle_seed=args.shuffle_seed,
        )
    except EvaluationError as error:
        print(f"cem model eval: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=False))
    return 0


def _column(value: str) -> str | int:
    """A column: a 0-based index when it is a plain non-negative integer, else a header name."""
    return int(value) if value.isdigit() else value


def _unescape(delimiter: str | None) -> str | None:
    # A tab is awkward to type in a shell: accept "\t" and "tab".
    return {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter) if delimiter else None
