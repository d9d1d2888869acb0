"""Compile yibao's rules core (``yibao.rules.CORE``) with mypyc, in place: ``make compile``.

The extension modules land next to their sources, where the editable install imports them
ahead of the ``.py`` files, and one shared library (``yibao/rules/_core__mypyc*.so``) holds
the code of all of them, so calls between core modules stay native. The sources' sha256 are
recorded last: until the record is written (or after a source changes) ``yibao.rules``
imports the sources instead, so a failed or interrupted build leaves a working, pure tree.

Usage: python tools/compile_core.py [ROOT]   (ROOT: a checkout, by default this one)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def remove_build(rules: Path, record: str) -> None:
    """Delete an earlier build and its record, so a failed build leaves the pure core."""
    (rules / record).unlink(missing_ok=True)
    for path in rules.iterdir():
        if path.suffix in (".so", ".pyd"):
            path.unlink()


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    os.chdir(root)
    sys.path.insert(0, str(root))  # this checkout's yibao, not the one the venv maps
    from mypyc.build import mypycify  # build-time dependencies only
    from setuptools import setup

    import yibao.rules as rules  # after the path is set

    here = root / "yibao" / "rules"
    remove_build(here, rules.BUILD_RECORD)
    digests = rules.source_digests(here)  # what is compiled, read before compiling it
    start = time.monotonic()
    sys.argv = [sys.argv[0], "-q", "build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1),
                "--build-temp", "build/mypyc/temp"]
    setup(name="yibao-rules-core", packages=[], py_modules=[],
          ext_modules=mypycify([f"yibao/rules/{m}.py" for m in rules.CORE],
                               group_name="yibao.rules._core", opt_level="3",
                               target_dir="build/mypyc"))
    (here / rules.BUILD_RECORD).write_text(
        "".join(f"{digest}  {name}\n" for name, digest in digests.items()), encoding="utf-8")
    print(f"compiled {len(rules.CORE)} modules of yibao/rules in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
