"""Fault campaign (`make chaos`) on a real broker of its own (port ``--kafka-port``, so the
broker restart disturbs nobody else): a generated log of >= 200,000 events is published in
``F`` chunks, one chunk per fault; each fault strikes while its chunk is being processed:

* ``worker``: ``yibao worker`` SIGKILLed at a random moment, then restarted (same worker id);
* ``projector``: ``yibao project`` SIGKILLed at a random moment, then restarted;
* ``broker``: ``yibao kafka down`` then ``yibao kafka up`` (same data dir) mid-chunk; a
  worker or projector that exited meanwhile is restarted (and that is reported).

After each fault, once everything published so far is settled and projected:

* ``settlements`` (read_committed, from the beginning) against ``yibao settle`` of the same
  prefix of the log: outputs missing, duplicated (an event id twice), different;
* the live DuckDB projection against a replay of the same topics into a separate file
  (``yibao replay``, then ``yibao verify``), table by table as multisets: rows missing, rows
  duplicated, rows different.

The chunk is published while the worker is stopped (a complete backlog, as after an
outage); ``yibao publish`` numbers its records, so the sequencer's merge keeps the file's
order (the fault-free reference is ``yibao settle`` over that order). Seeded (``--seed``,
printed). Last line:
``chaos: <F> faults, missing <M>, duplicated <D>, different <X>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
from aiokafka import AIOKafkaConsumer, TopicPartition

from yibao.dev.broker import BrokerConfig, LocalBroker
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.dev.testing import compare_outputs
from yibao.projections.store import snapshot_path
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.settings import Settings
from yibao.streams.publish import publish_lines, read_topic
from yibao.streams.topics import Topics, create_all
from yibao.streams.worker import spawn, terminate

ROOT = Path(__file__).resolve().parents[1]
LEDGER_TABLES = ("registrations", "enrollment_events", "visit_events", "payment_events")
OUTPUT_TABLES = ("claims", "payment_outcomes", "rejections", "audit_flags")
WORKER_ENV = {"YIBAO_TRANSACTION_TIMEOUT_MS": "6000"}


def say(*a: object) -> None:
    print(*a, flush=True)


# -- the reference ----------------------------------------------------------------------------


class Reference:
    """`yibao settle` of the log, with the cumulative counts after each line."""

    def __init__(self, lines: list[bytes]) -> None:
        fold = Fold(Engine(load_policy()))
        codec = Codec()
        self.outputs: list[dict[str, Any]] = []
        self.after: list[tuple[int, int, int]] = []  # (applied, outputs, dead letters)
        for line in lines:
            got = fold.feed(line)
            if isinstance(got, list):
                self.outputs += [json.loads(codec.encode(o)) for o in got]
            c = fold.counts
            self.after.append((c.applied, len(self.outputs), c.dead_lettered))

    def totals(self, n_lines: int) -> dict[str, int]:
        a, o, d = self.after[n_lines - 1]
        return {"ledger": a, "settlements": o, "deadletter": d}


def compare_projection(live: Path, ref: Path) -> tuple[int, int, int]:
    """Multiset difference, base table by base table: (missing, duplicated, different)."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{live}' AS l (READ_ONLY)")
        con.execute(f"ATTACH '{ref}' AS r (READ_ONLY)")
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'r' "
            "AND table_type = 'BASE TABLE' AND NOT starts_with(table_name, '_')").fetchall()]
        missing = duplicated = different = 0
        for t in tables:
            m = con.execute(f"SELECT count(*) FROM (FROM r.{t} EXCEPT ALL FROM l.{t})").fetchone()
            extra = f"(FROM l.{t} EXCEPT ALL FROM r.{t})"
            e = con.execute(f"SELECT count(*) FROM {extra}").fetchone()
            d = con.execute(f"SELECT count(*) FROM ({extra} INTERSECT ALL FROM r.{t})").fetchone()
            assert m and e and d
            missing += m[0]
            duplicated += d[0]
            different += e[0] - d[0]
        return missing, duplicated, different
    finally:
        con.close()


# -- processes --------------------------------------------------------------------------------


class Campaign:
    def __init__(self, settings: Settings, folder: Path, kafka_port: int) -> None:
        self.s = settings
        self.folder = folder
        self.kafka_env = {**os.environ, "YIBAO_KAFKA_PORT": str(kafka_port)}
        self.kafka_env.pop("YIBAO_BOOTSTRAP_SERVERS", None)
        self.db = folder / "live.duckdb"
        self.worker: subprocess.Popen[bytes] | None = None
        self.projector: subprocess.Popen[bytes] | None = None
        self.wlog = folder / "worker.log"
        self.plog = folder / "projector.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "YIBAO_BOOTSTRAP_SERVERS": self.s.bootstrap_servers,
                "YIBAO_TOPIC_PREFIX": self.s.topic_prefix,
                "YIBAO_PARTITIONS": str(self.s.partitions), "YIBAO_LOG_FORMAT": "json",
                "YIBAO_PSEUDONYM_KEY": "chaos-key"}

    def start_worker(self) -> None:
        self.worker = spawn(self.s, worker_id="c", log_file=self.wlog, env=WORKER_ENV)

    def worker_ready(self, since: int, timeout: float = 60) -> float:
        """Wait for the worker's sequencer to be assigned (log written after ``since``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with self.wlog.open("rb") as f:
                f.seek(since)
                if b'"sequencer.assigned"' in f.read():
                    return time.monotonic() - t0
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"worker exited: {self.wlog.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("worker not ready")

    def start_projector(self) -> None:
        with self.plog.open("ab") as out:
            self.projector = subprocess.Popen(
                [sys.executable, "-m", "yibao", "project", "--db", str(self.db),
                 "--snapshot-every", "0.5", "--max-wait-ms", "100"],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self, which: str) -> None:
        proc = getattr(self, which)
        if proc is not None:
            terminate(proc)
            setattr(self, which, None)

    def kill(self, which: str) -> None:
        proc = getattr(self, which)
        assert proc is not None and proc.poll() is None, f"{which} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def kafka(self, cmd: str) -> None:
        done = subprocess.run([sys.executable, "-m", "yibao", "kafka", cmd], env=self.kafka_env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"yibao kafka {cmd}: {done.stdout}{done.stderr}")

    def end_offsets(self) -> dict[str, int]:
        async def go() -> dict[str, int]:
            c = AIOKafkaConsumer(bootstrap_servers=self.s.bootstrap_servers)
            await c.start()
            try:
                t = Topics.of(self.s)
                names = [*t.inputs, t.ledger, t.settlements, t.deadletter, *t.changelogs]
                tps = [TopicPartition(n, p) for n in names for p in range(self.s.partitions)]
                end = await c.end_offsets(tps)
                return {n: sum(end[tp] for tp in tps if tp.topic == n) for n in names}
            finally:
                await c.stop()
        return asyncio.run(go())

    def settlements(self) -> list[dict[str, Any]]:
        recs = asyncio.run(read_topic(self.s, self.s.topic_prefix + "settlements", timeout=120))
        return [json.loads(v) for _p, _o, _k, v in recs]

    def projected(self) -> dict[str, int] | None:
        snap = snapshot_path(self.db)
        if not snap.exists():
            return None
        try:
            con = duckdb.connect(str(snap), read_only=True)
        except duckdb.Error:
            return None
        try:
            def n(ts: tuple[str, ...]) -> int:
                return sum(con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ts)
            return {"ledger": n(LEDGER_TABLES), "settlements": n(OUTPUT_TABLES),
                    "deadletter": n(("dead_letters",))}
        except duckdb.Error:
            return None
        finally:
            con.close()

    @staticmethod
    def wait_for(pred: Any, timeout: float = 120) -> float:
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("the moment to strike never came")
            time.sleep(0.02)
        return time.monotonic() - t0

    def supervise(self) -> list[str]:
        """Restart a worker or projector that exited; say which."""
        notes = []
        if self.worker is not None and self.worker.poll() is not None:
            notes.append(f"worker exited ({self.worker.returncode}), restarted")
            self.start_worker()
        if self.projector is not None and self.projector.poll() is not None:
            notes.append(f"projector exited ({self.projector.returncode}), restarted")
            self.start_projector()
        return notes

    def wait_settled(self, want: dict[str, int], timeout: float) -> list[str]:
        notes: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            notes += self.supervise()
            got = self.projected()
            if got is not None and got["ledger"] >= want["ledger"] and \
                    got["settlements"] >= want["settlements"] and \
                    got["deadletter"] >= want["deadletter"]:
                time.sleep(1.0)  # anything more (a duplicate) would show now
                return notes
            time.sleep(0.3)
        raise TimeoutError(f"not settled after {timeout}s: {self.projected()} of {want}\n"
                           f"{self.wlog.read_text(errors='replace')[-1500:]}\n"
                           f"{self.plog.read_text(errors='replace')[-1500:]}")

    def replay_and_verify(self, ref: Path) -> bool:
        env = self.env()
        done = subprocess.run([sys.executable, "-m", "yibao", "replay", "--into", str(ref),
                               "--quiet"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"replay: {done.stdout}{done.stderr}")
        done = subprocess.run([sys.executable, "-m", "yibao", "verify", str(self.db), str(ref)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # keep what differed, and both files, for the post-mortem
            ref.with_suffix(".verify.txt").write_text(done.stdout + done.stderr)
            shutil.copy(self.db, ref.with_suffix(".live.duckdb"))
        return done.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    ap.add_argument("--events", type=int, default=200_000, help="at least this many log lines")
    ap.add_argument("--worker-kills", type=int, default=10)
    ap.add_argument("--projector-kills", type=int, default=10)
    ap.add_argument("--broker-restarts", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--kill-window", type=float, default=1.0,
                    help="first guess of a chunk's processing time (s): worker kills fall in it")
    ap.add_argument("--kafka-port", type=int, default=19292)
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "chaos")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    rng = random.Random(seed)
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = args.out / run_id
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"chaos-{uuid.uuid4().hex[:8]}-"

    os.environ.pop("YIBAO_BOOTSTRAP_SERVERS", None)
    os.environ["YIBAO_KAFKA_PORT"] = str(args.kafka_port)
    os.environ.pop("YIBAO_KAFKA_CONTROLLER_PORT", None)
    base = Settings()
    broker = LocalBroker(BrokerConfig.from_settings(base))
    _status, started_broker = broker.up()
    s = Settings(bootstrap_servers=base.bootstrap_servers, topic_prefix=prefix,
                 partitions=args.partitions)

    households = max(1, args.events // 90)
    src = folder / "log.jsonl"
    generate_to_path(GenerateConfig(households=households, seed=seed, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 12, 31)), str(src))
    lines = [ln for ln in src.read_bytes().splitlines() if ln.strip()]
    assert len(lines) >= args.events, (len(lines), args.events)
    faults = (["worker"] * args.worker_kills + ["projector"] * args.projector_kills
              + ["broker"] * args.broker_restarts)
    rng.shuffle(faults)
    say(f"chaos {run_id}: seed {seed}, {len(lines)} events ({households} households, 2025), "
        f"{len(faults)} faults, prefix {prefix}, broker {s.bootstrap_servers}, output {folder}")
    t0 = time.monotonic()
    ref = Reference(lines)
    say(f"reference (yibao settle): {len(ref.outputs)} outputs, {ref.totals(len(lines))} "
        f"({time.monotonic() - t0:.0f} s)")
    asyncio.run(create_all(s))
    c = Campaign(s, folder, args.kafka_port)
    cuts = [round(len(lines) * (i + 1) / len(faults)) for i in range(len(faults))]
    rows: list[tuple[str, str, int, int, int, str]] = []
    header = f"{'#':>2} {'fault':<9} {'when':<58} {'missing':>7} {'duplicated':>10} " \
             f"{'different':>9}  verify"
    say(header)
    c.start_projector()
    try:
        start, est = 0, args.kill_window
        for i, (fault, cut) in enumerate(zip(faults, cuts, strict=True)):
            c.stop("worker")  # the chunk goes in as a backlog (see the docstring)
            asyncio.run(publish_lines(s, lines[start:cut]))
            want = ref.totals(cut)
            before = ref.totals(start) if start else {"settlements": 0}
            since = c.wlog.stat().st_size if c.wlog.exists() else 0
            ledger0 = c.end_offsets()[s.topic_prefix + "ledger"]
            c.start_worker()
            c.worker_ready(since)  # not yet processing: it has just been assigned
            chunk = want["settlements"] - before["settlements"]
            frac = rng.uniform(0.05, 0.7)
            notes: list[str] = []
            if fault == "worker":
                # SIGKILL once the worker is under way (its first transaction is in the
                # ledger), plus a random moment within the chunk's processing time (``est``,
                # learnt from the previous kills: one that came after the chunk was done
                # shortens it)
                ledger = s.topic_prefix + "ledger"
                waited = c.wait_for(lambda t=ledger, b=ledger0: c.end_offsets()[t] > b)
                extra = rng.uniform(0.0, 0.9) * est
                time.sleep(extra)
                waited += extra
                seq_done = c.end_offsets()[ledger] - ledger0
                c.kill("worker")
                done = len(c.settlements()) - before["settlements"]
                when = f"+{waited:.2f}s, ledger +{seq_done}, {done}/{chunk} outputs committed"
                est = est * 0.6 if done >= chunk else est * 1.1
                c.start_worker()
            elif fault == "projector":
                # SIGKILL once its snapshot holds about ``frac`` of the chunk's outputs
                goal = before["settlements"] + frac * chunk
                waited = c.wait_for(lambda g=goal: (c.projected() or {"settlements": 0})[
                    "settlements"] >= g)
                p = c.projected() or {"settlements": 0}
                c.kill("projector")
                when = f"+{waited:.2f}s, >={p['settlements'] - before['settlements']}/{chunk}" \
                       " outputs of the chunk projected"
                c.start_projector()
            else:
                delay = rng.uniform(0.0, 1.0)
                time.sleep(delay)
                before_off = c.end_offsets()
                c.kafka("down")
                time.sleep(rng.uniform(1.0, 4.0))
                c.kafka("up")
                after_off = c.end_offsets()
                kept = all(after_off[n] >= v for n, v in before_off.items())
                when = f"+{delay:.2f}s down, up again; data kept: {'yes' if kept else 'NO'}"
            notes += c.wait_settled(want, timeout=300)
            c.stop("projector")
            live = c.settlements()
            expected = ref.outputs[:want["settlements"]]
            m, d, x = compare_outputs(live, expected)
            refdb = folder / f"replay-{i}.duckdb"
            same = c.replay_and_verify(refdb)
            pm, pd, px = compare_projection(c.db, refdb)
            if same:
                refdb.unlink(missing_ok=True)
            if notes:
                when += "; " + "; ".join(notes)
            rows.append((fault, when, m + pm, d + pd, x + px, "identical" if same else "DIFFERS"))
            say(f"{i + 1:>2} {fault:<9} {when:<58} {m + pm:>7} {d + pd:>10} {x + px:>9}  "
                f"{rows[-1][5]}")
            c.start_projector()
            start = cut
    finally:
        c.stop("worker")
        c.stop("projector")
        if started_broker:
            broker.down()
    missing = sum(r[2] for r in rows)
    duplicated = sum(r[3] for r in rows)
    different = sum(r[4] for r in rows)
    say(f"(settlements vs `yibao settle` + projection vs replay, after each fault; "
        f"{time.monotonic() - t0:.0f} s)")
    say(f"chaos: {len(rows)} faults, missing {missing}, duplicated {duplicated}, "
        f"different {different}")
    if missing or duplicated or different or any(r[5] != "identical" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
