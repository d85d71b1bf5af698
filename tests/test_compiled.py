"""The compiled hot path (deploy/compile.py, schemas.compiled) is what runs, and it does exactly what
the Python sources do."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.codec import flat_codecs
from schemas.compiled import PURE_PYTHON, built, compiled
from schemas.flat import FlatRecordReader, FlatRecordWriter

ROOT = Path(__file__).resolve().parent.parent
needs_build = pytest.mark.skipif(not built() or bool(os.environ.get(PURE_PYTHON)),
                                 reason="no compiled build (make compile) or CEM_PURE_PYTHON set")
DIGEST = ("from processors.synthetic import JourneyGenerator; from pipeline.runtime.stages import output_digest; "
          "print(output_digest(list(JourneyGenerator(customers=2000, seed=11).events(20000)), damaged_every=7))")


@needs_build
def test_every_module_of_the_build_is_the_one_imported():
    """Property: the suite (and a worker) run the compiled modules, not their sources, when built; a
    stale build would silently test the plain Python instead."""
    modules = built()
    assert {"processors.plan", "processors.ingest", "schemas.flat", "pipeline.app.worker"} <= set(modules)
    plain = [name for name in modules if not compiled(importlib.import_module(name))]
    assert plain == [], f"imported from source though compiled: {plain} (make compile)"


@needs_build
def test_the_bundled_schemas_flat_codecs_are_precompiled_and_a_new_schema_still_works():
    """Property: the codecs of the bundled schemas come compiled; a schema the build never saw
    (a writer schema registered at run time) is compiled at run time, and reads the same."""
    for codec in flat_codecs():
        function = codec.read if isinstance(codec, FlatRecordReader) else codec.write
        assert "cython" in type(function).__name__
    fields = [{"name": "n", "type": "long"}, {"name": "s", "type": ["null", "string"]}]
    reader, writer = FlatRecordReader(fields), FlatRecordWriter(fields)
    assert "cython" not in type(reader.read).__name__
    assert reader.read(writer.write([-7, "é"])) == {"n": -7, "s": "é"}


@needs_build
def test_compiled_and_plain_python_ship_the_same_bytes():
    """Property: the build changes nothing but speed. Every output of 20,000 touchpoints and 3,000
    damaged records (records, rows, states, alerts, training examples, tallies) hashes the same
    compiled and as plain Python."""
    def digest(pure: bool) -> str:
        env = {**os.environ, PURE_PYTHON: "1" if pure else ""}
        done = subprocess.run([sys.executable, "-c", DIGEST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert digest(pure=False) == digest(pure=True)
