"""Compile the hot path with Cython: ``python deploy/compile.py`` (``make compile``; ``make run`` and
``make test`` run it first).

The modules every touchpoint passes through (the planner and what it calls, the codecs, the
outputs, the commit and delivery) become C extensions in ``build/compiled/``, the same code with the
interpreter's dispatch compiled away; the flat Avro codecs of the bundled schemas, which are
generated code, are compiled too (``schemas.flat.factory_source``). Nothing changes in the sources:
each compiled package's ``__init__`` uses the build only while it matches them
(``schemas.compiled``). Only what changed is compiled again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["CEM_PURE_PYTHON"] = "1"  # build from the sources, not from an earlier build

from schemas.compiled import BUILD, MANIFEST, digest, write_manifest  # noqa: E402

# The modules of the per-touchpoint path. Not here: the ones that find files next to their own
# source (schemas.contract's schema directory), and the ones that run once a batch or less.
MODULES = [
    "processors.alert_state", "processors.alerts", "processors.churn", "processors.customer",
    "processors.identity", "processors.ingest", "processors.kpi", "processors.plan", "processors.privacy",
    "processors.pseudonym", "processors.scoring", "processors.sentiment", "processors.stitching",
    "processors.text", "processors.touchpoint",
    "schemas.codec", "schemas.flat",
    "sinks.clickhouse", "sinks.engine", "sinks.kafka",
    "pipeline.app.commit", "pipeline.app.delivery", "pipeline.app.metrics", "pipeline.app.models",
    "pipeline.app.outputs", "pipeline.app.rows", "pipeline.app.worker",
]
GENERATED = "schemas.flat_codecs"
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,  # annotations stay hints: a `float` parameter must not become a C double
    "autotestdict": False,  # doctest finds the docstrings itself; a __test__ dict would run them twice
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as exc:
        print(f"compile: {exc.name} is not installed (pip install -e '.[compile]'); cem runs as plain Python",
              file=sys.stderr)
        return 1
    (BUILD / MANIFEST).unlink(missing_ok=True)  # until this build is complete, nothing of it is used
    sources = {name: ROOT.joinpath(*name.split(".")).with_suffix(".py") for name in MODULES}
    sources[GENERATED] = _generated_codecs()
    extensions = [Extension(name, [str(path)], extra_compile_args=["-O2", "-g0", "-w"]) for name, path in sources.items()]
    extensions = cythonize(extensions, compiler_directives=DIRECTIVES, build_dir=str(BUILD / "c"),
                           nthreads=args.jobs, quiet=True)
    build = Distribution({"name": "cem-compiled", "ext_modules": extensions}).get_command_obj("build_ext")
    build.build_lib, build.build_temp, build.parallel = str(BUILD), str(BUILD / "objects"), args.jobs
    build.ensure_finalized()
    build.run()
    write_manifest(BUILD, {name: digest(sources[name]) for name in MODULES})
    print(f"compile: {len(extensions)} modules in {BUILD}")
    return 0


def _generated_codecs() -> Path:
    """The factories of the bundled schemas' flat codecs, as a module (rewritten only if it changed,
    so that an unchanged one is not compiled again; a half-written one is never used, as the
    manifest comes last)."""
    from schemas.codec import flat_codecs
    from schemas.flat import factory_source

    path = BUILD / "generated" / "schemas" / "flat_codecs.py"
    source = factory_source(flat_codecs())
    if not path.exists() or path.read_text() != source:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return path


if __name__ == "__main__":
    sys.exit(main())
