"""The one import root: what a user who installs yibao can import, and what they cannot.

A wheel of four generic top-level packages (``rules`` is also django-rules' import name)
silently overwrites, or is overwritten by, whatever else shares a name; an editable install
that puts the repository on ``sys.path`` makes ``import tests`` work anywhere. These tests
fail if either comes back.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["yibao.schemas", "yibao.rules", "yibao.streams", "yibao.streams.kafka",
               "yibao.projections", "yibao.cli", "yibao.dev"]
NOT_TOP_LEVEL = ["schemas", "rules", "streams", "projections", "kafka", "tests", "bench"]


def _importable(module: str, cwd: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=cwd,
                           capture_output=True, text=True)
    return probe.returncode == 0


def test_the_editable_install_exposes_yibao_alone(tmp_path: Path) -> None:
    for module in SUBPACKAGES:
        assert _importable(module, tmp_path), module
    for module in NOT_TOP_LEVEL:
        assert not _importable(module, tmp_path), f"`import {module}` works outside the checkout"


def test_python_dash_m_yibao_is_the_cli(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "yibao", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "settle" in done.stdout and "worker" in done.stdout


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True)
    if built.returncode != 0 and "hatchling" in built.stderr:
        pytest.skip(f"the build backend could not be fetched: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("yibao-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"yibao", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    # the symlinked design-card folders are carried as real files, with the policy data
    for path in ("yibao/schemas/events.py", "yibao/streams/runtime.py", "yibao/projections/store.py",
                 "yibao/rules/national.toml", "yibao/streams/kafka/options.py"):
        assert path in names, path
