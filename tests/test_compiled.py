"""The mypyc-compiled rules core against the pure-Python one: the same bytes out.

Each build runs ``yibao settle`` in its own subprocess from its own copy of the package
(``PYTHONPATH`` ahead of the editable install), so one process never mixes the two. The
compiled copy is this checkout's build when ``make compile`` made one, else it is built
here (about a minute); without a C compiler or mypyc the comparison is skipped. The rest
of the suite runs whichever core the checkout holds, which is the pure one unless compiled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import yibao
import yibao.rules

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "spec" / "examples" / "sample-events.jsonl"
BUILD_TIMEOUT_S = 300


def _copy_package(dest: Path, *, with_build: bool) -> Path:
    """The checkout's ``yibao`` (symlinked folders copied as folders) under ``dest``."""
    build = ("*.so", "*.pyd", yibao.rules.BUILD_RECORD)
    shutil.copytree(Path(yibao.__file__).parent, dest / "yibao",
                    ignore=shutil.ignore_patterns("__pycache__", *(() if with_build else build)))
    return dest


def _run(root: Path, *args: str, stdout: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m yibao ARGS`` from the copy at ``root``; stdout to a file when given."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "yibao", *args]
    if stdout is None:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    else:
        with stdout.open("wb") as out:
            done = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.PIPE,
                                  text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def _core(root: Path) -> str:
    return _run(root, "--version").stdout.strip()


def _no_compiler() -> str | None:
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) to build the compiled core"
    return None


@pytest.fixture(scope="module")
def compiled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package with the compiled core: the checkout's build, or one made here."""
    dest = tmp_path_factory.mktemp("compiled")
    if yibao.rules.COMPILED:
        return _copy_package(dest, with_build=True)
    reason = _no_compiler()
    if reason is not None:
        pytest.skip(reason)
    _copy_package(dest, with_build=False)
    done = subprocess.run([sys.executable, str(REPO / "tools" / "compile_core.py"), str(dest)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dest


@pytest.fixture(scope="module")
def pure_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_package(tmp_path_factory.mktemp("pure"), with_build=False)


@pytest.fixture(scope="module")
def generated(pure_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("logs") / "gen-300-11.jsonl"
    _run(pure_root, "generate", "--households", "300", "--seed", "11", "--bad-rate", "0.01",
         "-o", str(log))
    return log


def _settled(root: Path, log: Path, out_dir: Path) -> tuple[str, str, int, int]:
    """sha256 of the outputs and of the dead letters, and their sizes."""
    out_dir.mkdir()
    out, dead = out_dir / "out.jsonl", out_dir / "dead.jsonl"
    _run(root, "settle", str(log), "--deadletter", str(dead), stdout=out)
    return (hashlib.sha256(out.read_bytes()).hexdigest(), hashlib.sha256(dead.read_bytes()).hexdigest(),
            out.stat().st_size, dead.stat().st_size)


def test_each_copy_runs_the_core_it_claims(compiled_root: Path, pure_root: Path) -> None:
    assert _core(compiled_root).endswith("rules core: compiled with mypyc")
    assert _core(pure_root).endswith("rules core: pure Python")


@pytest.mark.parametrize("which", ["sample", "generated"])
def test_compiled_and_pure_settle_byte_identical(
    which: str, compiled_root: Path, pure_root: Path, generated: Path, tmp_path: Path
) -> None:
    log = generated if which == "generated" else SAMPLE
    if not log.exists():
        pytest.skip(f"{log} is not here (the spec folder beside the checkout)")
    compiled = _settled(compiled_root, log, tmp_path / "compiled")
    pure = _settled(pure_root, log, tmp_path / "pure")
    assert compiled[2] > 0  # settled something: equal empty outputs would prove nothing
    if which == "generated":
        assert compiled[3] > 0  # --bad-rate 0.01 dead-letters some lines: compared too
    assert compiled == pure


STATE_ROUND_TRIP = """
import sys
import msgspec
from yibao.rules import COMPILED
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.streams.cores import _STATE_DECODER, _STATE_ENCODER, _VISIT_DECODER
fold = Fold(Engine(load_policy(None)))
for _ in fold.run(open(sys.argv[1], "rb")):
    pass
persons = fold.state.persons
visits = [v for p in persons.values() for v in p.visits.values()]
assert persons and visits
assert _STATE_DECODER.decode(_STATE_ENCODER.encode(persons)) == persons
assert all(_VISIT_DECODER.decode(_STATE_ENCODER.encode(v)) == v for v in visits)
print(COMPILED, len(persons), len(visits))
"""


def test_the_live_stages_state_codec_round_trips_with_the_compiled_core(
        compiled_root: Path) -> None:
    """The processor writes households and visits to its changelogs with msgspec, which
    needs the state classes' field types: a compiled dataclass would have lost them."""
    env = {**os.environ, "PYTHONPATH": str(compiled_root)}
    done = subprocess.run([sys.executable, "-c", STATE_ROUND_TRIP, str(SAMPLE)], cwd=compiled_root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("True ")


def test_a_build_older_than_its_sources_falls_back_to_them(compiled_root: Path, tmp_path: Path) -> None:
    """An edited source must run as edited: the stale extension modules are passed over."""
    stale = shutil.copytree(compiled_root / "yibao", tmp_path / "yibao")
    engine = stale / "rules" / "engine.py"
    engine.write_text(engine.read_text(encoding="utf-8") + "\n# edited after the build\n",
                      encoding="utf-8")
    done = _run(tmp_path, "--version")
    assert done.stdout.strip().endswith("rules core: pure Python")
    assert "engine.py changed since the build" in done.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import yibao.rules.engine as e, yibao.rules.fold as f; "
         "print(e.__file__); print(f.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
        text=True, check=True)
    assert probe.stdout.split() == [str(stale / "rules" / "engine.py"), str(stale / "rules" / "fold.py")]


def test_no_build_means_pure_without_a_warning(pure_root: Path) -> None:
    done = _run(pure_root, "--version")
    assert done.stdout.strip().endswith("rules core: pure Python")
    assert "RuntimeWarning" not in done.stderr
