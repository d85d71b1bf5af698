"""``cem publish``: check every line of a JSONL file against the contract before sending anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

from processors.touchpoint import validate
from schemas.contract import Rejected


def check_file(path: Path, reference_ms: int | None = None) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """(good touchpoints, [(line number, reason, detail)]). The reference for far-future is now."""
    reference_ms = int(time.time() * 1000) if reference_ms is None else reference_ms
    good: list[dict] = []
    bad: list[tuple[int, str, str]] = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                bad.append((number, "undecodable", f"not JSON: {exc}"))
                continue
            if not isinstance(record, dict):
                bad.append((number, "undecodable", "not a JSON object"))
                continue
            try:
                touchpoint = validate(record, reference_ms)
            except Rejected as exc:
                bad.append((number, exc.reason.value, exc.detail))
                continue
            good.append(touchpoint.to_record())
    return good, bad
