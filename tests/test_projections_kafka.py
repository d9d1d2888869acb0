"""Projections on the real broker: the projector SIGKILLed mid-stream and restarted equals a
clean replay (no double counting); snapshots answer queries while it runs; reconcile finds a
planted wrong settlement; a policy what-if replay and its impact report.

The pipeline's output topics are written by :mod:`yibao.projections.simulate` (the worker's own
pure cores, no worker process), so these tests take seconds.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import msgspec
import pytest
from click.testing import CliRunner

from yibao.cli import main as cli
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.simulate import simulate_sync
from yibao.projections.store import snapshot_path
from yibao.schemas.events import ClaimSettled, OutputEvent
from yibao.settings import Settings

pytestmark = pytest.mark.kafka

LEDGER_TABLES = ("registrations", "enrollment_events", "visit_events", "payment_events")
OUTPUT_TABLES = ("claims", "payment_outcomes", "rejections", "audit_flags")


def log_lines(tmp: Path, households: int, seed: int = 3) -> list[bytes]:
    path = tmp / f"log-{households}-{seed}.jsonl"
    generate_to_path(GenerateConfig(households=households, seed=seed, start=dt.date(2025, 3, 1),
                                    end=dt.date(2025, 3, 31)), str(path))
    return path.read_bytes().splitlines()


def env_for(settings: Settings, db: Path) -> dict[str, str]:
    return {"YIBAO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "YIBAO_TOPIC_PREFIX": settings.topic_prefix,
            "YIBAO_PARTITIONS": str(settings.partitions),
            "YIBAO_DUCKDB_PATH": str(db), "YIBAO_PSEUDONYM_KEY": "kafka-test-key",
            "YIBAO_LOG_FORMAT": "json"}


def spawn_projector(settings: Settings, db: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_for(settings, db)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "yibao", "project", "--snapshot-every", "0.2",
             "--max-records", "300", "--max-wait-ms", "50"],
            env=env, stdout=out, stderr=subprocess.STDOUT)


def counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in (*LEDGER_TABLES, *OUTPUT_TABLES, "dead_letters")}
    finally:
        con.close()


def totals(c: dict[str, int]) -> dict[str, int]:
    return {"ledger": sum(c[t] for t in LEDGER_TABLES),
            "settlements": sum(c[t] for t in OUTPUT_TABLES),
            "deadletter": c["dead_letters"]}


def wait_until(pred: object, timeout: float, what: str, proc: subprocess.Popen[bytes] | None,
               log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def snapshot_totals(db: Path) -> dict[str, int] | None:
    snap = snapshot_path(db)
    if not snap.exists():
        return None
    try:
        return totals(counts(snap))
    except duckdb.Error:
        return None


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture(autouse=True)
def _drop_topics(kafka_settings: Settings) -> Iterator[None]:
    """Each test's topics go away after it: a shared dev broker holding every test run's
    partitions runs out of file descriptors."""
    yield
    import asyncio
    import contextlib

    with contextlib.suppress(Exception):
        asyncio.run(_delete_topics(kafka_settings.bootstrap_servers, kafka_settings.topic_prefix))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.timeout(180)
def test_projector_sigkill_mid_stream_equals_clean_replay(
        kafka_settings: Settings, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    lines = log_lines(tmp_path, 1500)
    db, log = tmp_path / "live.duckdb", tmp_path / "projector.log"
    procs.append(spawn_projector(kafka_settings, db, log))
    wait_until(lambda: snapshot_path(db).exists(), 60, "the projector's first snapshot",
               procs[0], log)

    # Kill it (SIGKILL) from a second thread as soon as it has projected something, while
    # the log is still being published.
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = snapshot_totals(db)
            if t and t["settlements"] > 0:
                procs[0].send_signal(signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()

    def slowly() -> Iterator[bytes]:
        for i, line in enumerate(lines):
            if i % 500 == 0:
                time.sleep(0.05)
            yield line

    expected = simulate_sync(kafka_settings, slowly(), chunk=500)
    thread.join()
    assert killed.is_set(), log.read_text()[-2000:]
    assert procs[0].wait(10) == -signal.SIGKILL
    after_kill = totals(counts(db))
    assert after_kill["settlements"] > 0 and after_kill != expected, (after_kill, expected)

    # Restart: it resumes from the offsets stored with the last committed batch.
    procs.append(spawn_projector(kafka_settings, db, log))
    wait_until(lambda: snapshot_totals(db) == expected, 90, f"all of {expected} projected",
               procs[1], log)

    # While it runs, the file itself is locked, and readers get the latest snapshot.
    with pytest.raises(duckdb.Error):
        duckdb.connect(str(db), read_only=True).close()
    runner = CliRunner()
    env = env_for(kafka_settings, db)
    res = runner.invoke(cli, ["sql", "SELECT count(*) AS n FROM claims"], env=env)
    assert res.exit_code == 0, res.output
    assert str(counts(snapshot_path(db))["claims"]) in res.output
    assert "snapshot" in res.output

    procs[1].send_signal(signal.SIGTERM)
    assert procs[1].wait(30) == 0, log.read_text()[-2000:]
    assert totals(counts(db)) == expected  # exactly once: nothing counted twice

    clean = tmp_path / "replay.duckdb"
    res = runner.invoke(cli, ["replay", "--into", str(clean), "--quiet"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["verify", str(db), str(clean)], env=env)
    assert res.exit_code == 0, res.output
    assert "identical" in res.output
    res = runner.invoke(cli, ["reconcile"], env=env)
    assert res.exit_code == 0, res.output
    assert " 0 differences" in res.output


def whatif_policy(tmp: Path) -> Path:
    """National policy with a richer resident outpatient rate in 2025."""
    text = (Path(__file__).resolve().parents[1] / "yibao" / "rules" / "national.toml").read_text()
    marker = "  [version.scheme.resident]\n  outpatient_cap = 50000\n"
    assert marker in text
    text = text.replace(marker, marker + "  outpatient_rate = [8000, 7000, 6000]\n")
    path = tmp / "whatif.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
def test_reconcile_finds_planted_difference_and_policy_whatif(
        kafka_settings: Settings, tmp_path: Path) -> None:
    planted: list[str] = []

    def tamper(o: OutputEvent) -> OutputEvent:
        if not planted and isinstance(o, ClaimSettled) and o.amounts.basic_fund > 0:
            planted.append(o.event_id)
            a = msgspec.structs.replace(o.amounts, basic_fund=o.amounts.basic_fund + 100,
                                        cash_due=o.amounts.cash_due - 100)
            return msgspec.structs.replace(o, amounts=a)
        return o

    simulate_sync(kafka_settings, log_lines(tmp_path, 300, seed=5), tamper=tamper)
    assert planted
    runner = CliRunner()
    env = env_for(kafka_settings, tmp_path / "unused.duckdb")
    res = runner.invoke(cli, ["reconcile", "--jobs", "1"], env=env)
    assert res.exit_code == 1, res.output
    assert gc.get_freeze_count() == 0  # the state it kept out of the collector is back in
    assert f"{planted[0]}: differs" in res.output
    assert "amounts.basic_fund" in res.output and "amounts.cash_due" in res.output
    assert " 1 differences" in res.output
    for jobs in ("3", "0"):  # partition ranges in processes: the same report, line for line
        parallel = runner.invoke(cli, ["reconcile", "--jobs", jobs], env=env)
        assert (parallel.exit_code, parallel.output) == (1, res.output)

    base, whatif = tmp_path / "base.duckdb", tmp_path / "whatif.duckdb"
    res = runner.invoke(cli, ["replay", "--into", str(base), "--quiet"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["replay", "--into", str(whatif), "--quiet", "--policy",
                              str(whatif_policy(tmp_path))], env=env)
    assert res.exit_code == 0, res.output
    csv = tmp_path / "impact.csv"
    res = runner.invoke(cli, ["report", "policy-impact", str(base), str(whatif), "--csv",
                              str(csv)], env=env)
    assert res.exit_code == 0, res.output
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("fund,insured_region,scheme,month,base_fen,whatif_fen,delta_fen")
    resident = [r for r in rows[1:] if r.startswith("basic_pooled_resident,")]
    assert resident and all(int(r.split(",")[6]) > 0 for r in resident)
    assert not [r for r in rows[1:] if r.startswith("basic_pooled_employee,")]

    # --until: only what occurred up to then; the reports read the files given
    early = tmp_path / "early.duckdb"
    res = runner.invoke(cli, ["replay", "--into", str(early), "--quiet", "--until",
                              "2025-03-10"], env=env)
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(early), read_only=True)
    last = con.sql("SELECT max(occurred_at) FROM visit_events").fetchall()[0][0]
    n_early = con.sql("SELECT count(*) FROM claims").fetchall()[0][0]
    region = con.sql("SELECT insured_region FROM claims LIMIT 1").fetchall()[0][0]
    con.close()
    assert last < dt.datetime(2025, 3, 10, 16, tzinfo=dt.UTC)
    assert 0 < n_early < counts(base)["claims"]
    pq, cl = tmp_path / "funds.parquet", tmp_path / "clearing.csv"
    res = runner.invoke(cli, ["report", "funds", "--region", region, "--from", "2025-03-01",
                              "--to", "2025-03-31", "--db", str(base), "--parquet", str(pq)],
                        env=env)
    assert res.exit_code == 0 and "basic_pooled" in res.output, res.output
    assert duckdb.sql(f"SELECT count(*) FROM '{pq}'").fetchall()[0][0] > 0
    res = runner.invoke(cli, ["report", "clearing", "--region", region, "--month", "2025-03",
                              "--db", str(base), "--csv", str(cl)], env=env)
    assert res.exit_code == 0, res.output
    assert cl.read_text().startswith("direction,insured_region,treatment_region")


@pytest.mark.timeout(180)
def test_live_pipeline_projection_equals_replay(
        kafka_settings: Settings, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """The real thing: `yibao publish` → `yibao worker` → `yibao project`, then a replay of
    the same log is identical (verify) and the recorded settlements reconcile."""
    from yibao.rules.engine import Engine
    from yibao.rules.fold import Fold
    from yibao.rules.policy import load_policy
    from yibao.streams.publish import publish_lines
    from yibao.streams.topics import create_all
    from yibao.streams.worker import spawn, terminate

    lines = log_lines(tmp_path, 120, seed=9)
    fold = Fold(Engine(load_policy()))
    for line in lines:
        if line.strip():
            fold.feed(line)
    expected = {"ledger": fold.counts.applied, "settlements": fold.counts.outputs,
                "deadletter": fold.counts.dead_lettered}
    import asyncio

    asyncio.run(create_all(kafka_settings))
    db, log = tmp_path / "live.duckdb", tmp_path / "projector.log"
    procs.append(spawn(kafka_settings, worker_id="p", log_file=tmp_path / "worker.log",
                       env={"YIBAO_TRANSACTION_TIMEOUT_MS": "6000",
                            "YIBAO_MERGE_WAIT_MS": "300"}))
    procs.append(spawn_projector(kafka_settings, db, log))
    asyncio.run(publish_lines(kafka_settings, lines))
    wait_until(lambda: snapshot_totals(db) == expected, 120, f"{expected} projected",
               procs[1], log)
    assert terminate(procs[1]) == 0
    terminate(procs[0])
    runner = CliRunner()
    env = env_for(kafka_settings, db)
    clean = tmp_path / "replay.duckdb"
    res = runner.invoke(cli, ["replay", "--into", str(clean), "--quiet"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["verify", str(db), str(clean)], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["reconcile"], env=env)
    assert res.exit_code == 0 and " 0 differences" in res.output, res.output
