"""The settlement rules: the pure core every mode folds events through.

The modules of ``CORE`` may be compiled with mypyc (``make compile``), the extension modules
next to their sources; ``make pure`` removes them, and without them the same sources run as
plain Python. Python imports an extension module before the ``.py`` beside it, so a build
left behind by an edit would run the old rules unnoticed: the build records the sha256 of
the sources it compiled (``BUILD_RECORD``), and when a source no longer matches (or the
record is missing) the sources are imported instead, with a warning. ``COMPILED`` says
which of the two this process runs.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["BUILD_RECORD", "COMPILED", "CORE", "core_build", "source_digests"]

#: The hot path of ``yibao settle`` (and of the live stages), in dependency order. Not
#: ``state``: compiled dataclasses lose their field types (mypyc leaves ``type`` in their
#: annotations), and the live stages write the state to changelogs with msgspec, which
#: reads those types to decode it.
CORE = ("changes", "dedup", "steps", "audit", "engine", "fold")
#: Written by ``make compile`` beside the extension modules: ``<sha256>  <module>.py`` lines.
BUILD_RECORD = "compiled.sha256"

_HERE = Path(__file__).parent


def source_digests(root: Path = _HERE) -> dict[str, str]:
    """The sha256 of each core source, as the build record keeps them."""
    return {f"{m}.py": hashlib.sha256((root / f"{m}.py").read_bytes()).hexdigest() for m in CORE}


def _record(root: Path) -> dict[str, str] | None:
    try:
        text = (root / BUILD_RECORD).read_text(encoding="utf-8")
    except OSError:
        return None
    return {name: digest for digest, _, name in (line.partition("  ") for line in text.splitlines())}


def _stale(root: Path) -> str | None:
    """Why the extension modules in ``root`` must not be imported, or None if they may."""
    record = _record(root)
    if record is None:
        return f"no {BUILD_RECORD} beside them"
    changed = [name for name, digest in source_digests(root).items() if record.get(name) != digest]
    return f"{', '.join(changed)} changed since the build" if changed else None


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the core's ``.py`` files ahead of the extension modules beside them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in CORE:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


def _extension_built(root: Path) -> bool:
    return any((root / f"{m}{suffix}").exists()
               for m in CORE for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _compiled() -> bool:
    if not _extension_built(_HERE):
        return False
    reason = _stale(_HERE)
    if reason is not None:
        warnings.warn(f"yibao.rules: the mypyc build is not used ({reason}); running the pure-Python "
                      "sources. `make compile` rebuilds it, `make pure` removes it.",
                      RuntimeWarning, stacklevel=3)
        sys.meta_path.insert(0, _SourcesFirst())
        return False
    specs = [importlib.util.find_spec(f"{__name__}.{m}") for m in CORE]
    return all(s is not None and isinstance(s.loader, importlib.machinery.ExtensionFileLoader)
               for s in specs)


#: True when the core runs as mypyc-compiled extension modules, False when as Python sources.
COMPILED: bool = _compiled()


def core_build() -> str:
    """How the core runs, for ``yibao --version``."""
    return "compiled with mypyc" if COMPILED else "pure Python"
