"""Cost and accuracy of PII redaction (:mod:`processors.privacy`) on the labelled customer comments.

    python benchmarks/privacy.py [--data tests/data/pii_comments.tsv] [--passes 9]

* Cost: microseconds per ``redact`` call, the median over ``--passes`` timed passes (after a warm-up
  pass) of each pass's time divided by its number of texts, for: the comments without PII (and
  apart, those the pre-check returns at once -- no "@", fewer than seven digits, no spelled "at" --
  and those with numbers to look at), the comments with PII, and chat transcripts of about 2 KB
  stitched together from the comments (most lines without PII, some with).
* Accuracy: span-level precision and recall per kind and overall (a redacted span counts only if
  the labels have exactly that span, with that kind), and how many comments without PII changed.

Prints one JSON object on stdout and a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import us_per_item

from processors.privacy import PLACEHOLDERS, _passes, redact, redacted_spans

SEED = 0
TRANSCRIPT_CHARS = 2048
AGENT_LINES = (
    "I'm sorry to hear that, let me check.",
    "Thank you for waiting.",
    "Could you confirm the order number, please?",
    "I have raised this with our delivery partner.",
    "Is there anything else I can help with today?",
)


def read_comments(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(text, expected) for text, expected in (line.split("\t") for line in lines)]


def transcripts(rows: list[tuple[str, str]], count: int = 20) -> list[str]:
    """Chats of about 2 KB: customer lines drawn from the comments, agent lines in between."""
    rng = random.Random(SEED)
    chats = []
    for _ in range(count):
        lines: list[str] = []
        minute = 0
        while sum(map(len, lines)) < TRANSCRIPT_CHARS:
            minute += 1
            speaker, said = ("customer", rng.choice(rows)[0]) if minute % 2 else ("agent", rng.choice(AGENT_LINES))
            lines.append(f"[14:{minute:02d}] {speaker}: {said}\n")
        chats.append("".join(lines))
    return chats


def pre_check_only(text: str) -> bool:
    """Whether the pre-check alone decides: the module's own test, so the split is exact."""
    return not _passes(text, raw=False)


def bench_cost(rows: list[tuple[str, str]], passes: int) -> dict[str, Any]:
    without = [text for text, expected in rows if text == expected]
    groups = {
        "no_pii": without,
        "no_pii_pre_check_only": [t for t in without if pre_check_only(t)],
        "no_pii_with_numbers": [t for t in without if not pre_check_only(t)],
        "pii": [text for text, expected in rows if text != expected],
        "transcript_2kb": transcripts(rows),
    }
    result: dict[str, Any] = {}
    for name, texts in groups.items():
        result[f"{name}_us"] = us_per_item(redact, texts, passes)
        result[f"{name}_texts"] = len(texts)
        result[f"{name}_mean_chars"] = sum(map(len, texts)) / len(texts)
    result["no_pii_texts_per_s"] = 1e6 / result["no_pii_us"]
    return result


def bench_accuracy(rows: list[tuple[str, str]]) -> dict[str, Any]:
    hits, predicted, expected = Counter[str](), Counter[str](), Counter[str]()
    changed = 0
    for text, labelled in rows:
        redacted = redact(text)
        changed += text == labelled and redacted != text
        want, got = set(redacted_spans(text, labelled)), set(redacted_spans(text, redacted))
        for spans, counter in ((want & got, hits), (got, predicted), (want, expected)):
            counter.update(kind for _, _, kind in spans)
            counter["overall"] += len(spans)
    result: dict[str, Any] = {
        kind: {
            "precision": hits[kind] / predicted[kind] if predicted[kind] else 1.0,
            "recall": hits[kind] / expected[kind] if expected[kind] else 1.0,
            "spans": expected[kind],
            "predicted": predicted[kind],
        }
        for kind in (*PLACEHOLDERS, "overall")
    }
    result["comments"] = len(rows)
    result["comments_with_pii"] = sum(text != labelled for text, labelled in rows)
    result["comments_without_pii_changed"] = changed
    return result


def markdown(result: dict[str, Any]) -> str:
    cost, accuracy = result["cost"], result["accuracy"]
    lines = ["| texts | count | mean chars | µs per text (median) |", "|---|---:|---:|---:|"]
    for name in ("no_pii", "no_pii_pre_check_only", "no_pii_with_numbers", "pii", "transcript_2kb"):
        lines.append(f"| {name} | {cost[name + '_texts']} | {cost[name + '_mean_chars']:.0f} | {cost[name + '_us']:.1f} |")
    lines += ["", "| kind | labelled spans | redacted spans | precision | recall |", "|---|---:|---:|---:|---:|"]
    for kind in (*PLACEHOLDERS, "overall"):
        s = accuracy[kind]
        lines.append(f"| {kind} | {s['spans']} | {s['predicted']} | {s['precision']:.3f} | {s['recall']:.3f} |")
    lines.append(
        f"\n{accuracy['comments']} comments, {accuracy['comments_with_pii']} with PII; "
        f"{accuracy['comments_without_pii_changed']} without PII changed"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "pii_comments.tsv", help="labelled comments")
    parser.add_argument("--passes", type=int, default=9, help="timed passes per group (the median is reported)")
    args = parser.parse_args(argv)
    rows = read_comments(args.data)
    result = {"cost": bench_cost(rows, args.passes), "accuracy": bench_accuracy(rows)}
    print(json.dumps(result, indent=None))
    print(markdown(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
