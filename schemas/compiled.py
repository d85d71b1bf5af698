"""The hot path's compiled modules (``deploy/compile.py``), used only where they match the sources.

``deploy/compile.py`` compiles the modules the per-touchpoint path runs (the planner and what it
calls, the codecs, the outputs, the commit) with Cython into ``build/compiled/``, the same code as
C extensions, and records the SHA-256 of each source it compiled. Each compiled package's
``__init__`` then puts that directory before its own on its ``__path__``, through
:func:`search_path`, but only if every one of the package's compiled modules was built from the
source that is here now; one changed source and the whole package runs as plain Python, with a
warning. So an edit is never shadowed by an old build, and ``CEM_PURE_PYTHON=1`` runs everything as
plain Python.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> (root / "pkg").mkdir(); _ = (root / "pkg" / "fast.py").write_text("x = 1\\n")
>>> search_path("pkg", [str(root / "pkg")], root / "build", root) == [str(root / "pkg")]  # nothing built
True
>>> write_manifest(root / "build", {"pkg.fast": digest(root / "pkg" / "fast.py")})
>>> [Path(p).relative_to(root).as_posix() for p in search_path("pkg", [str(root / "pkg")], root / "build", root)]
['build/pkg', 'pkg']
>>> _ = (root / "pkg" / "fast.py").write_text("x = 2\\n")  # edited since: the plain source runs
>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     [Path(p).name for p in search_path("pkg", [str(root / "pkg")], root / "build", root)], str(caught[0].message)[:37]
(['pkg'], 'pkg runs as plain Python: pkg/fast.py')
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the directory holding the packages
BUILD = Path(os.environ.get("CEM_COMPILED_DIR") or ROOT / "build" / "compiled")  # where deploy/compile.py builds
MANIFEST = "manifest.json"
PURE_PYTHON = "CEM_PURE_PYTHON"  # set (non-empty): never use compiled modules


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def search_path(package: str, path: list[str], build: Path = BUILD, root: Path = ROOT) -> list[str]:
    """``package``'s module search path: its compiled modules' directory first, when every module of
    the package that was compiled still has the source it was compiled from; else ``path``."""
    if os.environ.get(PURE_PYTHON):
        return path
    modules = {name: sha for name, sha in _manifest(build).items() if name.rpartition(".")[0] == package}
    if not modules:
        return path
    changed = [name for name, sha in modules.items() if not _matches(root, name, sha)]
    if changed:
        files = ", ".join(name.replace(".", "/") + ".py" for name in sorted(changed))
        warnings.warn(f"{package} runs as plain Python: {files} changed since it was compiled "
                      "(make compile builds it again)", RuntimeWarning, stacklevel=2)
        return path
    return [str(build.joinpath(*package.split("."))), *path]


def compiled(module: object) -> bool:
    """Whether ``module`` is a compiled extension (not a ``.py`` source)."""
    return not str(getattr(module, "__file__", "") or "").endswith(".py")


def built(build: Path = BUILD) -> list[str]:
    """The modules the build holds (none if there is no build for this Python)."""
    return sorted(_manifest(build))


def write_manifest(build: Path, modules: dict[str, str]) -> None:
    """Record what was compiled from which source (the build's last step: until then, nothing is used)."""
    build.mkdir(parents=True, exist_ok=True)
    temporary = build / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps({"python": sys.implementation.cache_tag, "modules": modules}, indent=1))
    temporary.replace(build / MANIFEST)


def _manifest(build: Path) -> dict[str, str]:
    try:
        manifest = json.loads((build / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("python") != sys.implementation.cache_tag:
        return {}  # built for another Python: its extensions would not load
    modules = manifest.get("modules")
    return modules if isinstance(modules, dict) else {}


def _matches(root: Path, module: str, sha: str) -> bool:
    try:
        return digest(root.joinpath(*module.split(".")).with_suffix(".py")) == sha
    except OSError:
        return False
