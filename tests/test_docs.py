"""The code and the docs point only at what exists.

Property: every dotted reference to a cem module or attribute (``processors.snapshot.to_snapshot``)
and every repository path (``pipeline/app/commit.py``) written in the packages' source or in the two
READMEs names a module, attribute or file that is there. Docstrings that name a moved module are how
a newcomer gets lost.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "processors", "schemas", "sinks")
DOTTED = re.compile(r"\b((?:pipeline|processors|schemas|sinks)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(r"\b((?:pipeline|processors|schemas|sinks|benchmarks|tests|deploy)/[\w/.-]+\.(?:py|avsc|sh|md|ya?ml|tsv))")
# Words that look like references but are attribute chains on objects (``self.pipeline.steps``).
NOT_REFERENCES = {"pipeline.steps"}


def sources() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return files + [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


def resolves(reference: str) -> bool:
    parts = reference.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("source", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_names_something_that_exists(source: Path) -> None:
    text = source.read_text()
    dotted = {m.group(1) for m in DOTTED.finditer(text)} - NOT_REFERENCES
    missing = sorted(r for r in dotted if not resolves(r))
    missing += sorted({m.group(1) for m in PATH.finditer(text) if not (ROOT / m.group(1)).exists()})
    assert not missing, f"{source.relative_to(ROOT)} names what is not there: {missing}"
