"""Soak (`make soak`): a steady input rate through worker + projector for a long time, with
the resident memory (RSS) of every process sampled, to show it stays bounded.

A generated log (``yibao generate``, cached under the output folder) is published in file
order at ``--rate`` events/s (the paced publisher of ``yibao publish``) onto a fresh topic
prefix, while one ``yibao worker`` and one ``yibao project`` run as subprocesses. Every
``--sample`` seconds the RSS of the worker, the projector, this publisher and the broker is
read from ``/proc/<pid>/status`` into ``rss.csv``. At the end: min / median / max RSS per
process per ``--window`` minutes, and the least-squares slope (MB/min) over the whole run and
over its second half (after warm-up: state tables filled, caches sized). Output under
``var/soak/<run>/`` (``rss.csv``, ``report.txt``, the processes' logs).

Last line: ``soak: <N> events in <T> min at <R> events/s; RSS slope 2nd half: worker <a>
MB/min, projector <b> MB/min``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import msgspec

from yibao.dev.broker import BrokerConfig, LocalBroker
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.store import snapshot_path
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.settings import Settings
from yibao.streams.publish import publish_lines, read_topic
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PER_HOUSEHOLD_YEAR = 95


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def broker_pid(settings: Settings) -> int | None:
    """The local broker's pid, if it is the one on ``settings.bootstrap_servers``."""
    config = BrokerConfig.from_settings(settings)
    if config.bootstrap != settings.bootstrap_servers:
        return None
    try:
        pid = int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if rss_kb(pid) is not None else None


def spawn_projector(settings: Settings, db: Path, log: Path, snapshot_every: float
                    ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "YIBAO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "YIBAO_TOPIC_PREFIX": settings.topic_prefix,
           "YIBAO_PARTITIONS": str(settings.partitions), "YIBAO_DUCKDB_PATH": str(db),
           "YIBAO_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "yibao", "project", "--snapshot-every",
             str(snapshot_every)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def log_for(folder: Path, events: int, seed: int) -> Path:
    """A generated log of at least ``events`` lines over two years (cached)."""
    households = math.ceil(events * 1.05 / (2 * EVENTS_PER_HOUSEHOLD_YEAR))
    path = folder / f"log-{households}h-2y-s{seed}.jsonl"
    if not path.exists():
        print(f"generating {households} households x 2 years -> {path}", flush=True)
        tmp = path.with_suffix(".tmp")
        generate_to_path(GenerateConfig(households=households, seed=seed,
                                        start=dt.date(2025, 1, 1), end=dt.date(2026, 12, 31)),
                         str(tmp))
        tmp.rename(path)
    return path


def lines_of(path: Path, n: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        for i, line in enumerate(f):
            if i >= n:
                return
            yield line


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def report(rows: list[dict[str, float]], procs: list[str], window_min: float) -> list[str]:
    out = [f"{'process':<10} {'window (min)':>13} {'samples':>7} {'min MB':>8} {'median MB':>9} "
           f"{'max MB':>8}"]
    slopes: dict[str, tuple[float, float]] = {}
    for name in procs:
        pts = [(r["t"] / 60, r[name] / 1024) for r in rows if r.get(name)]
        if not pts:
            continue
        end = pts[-1][0]
        w = 0.0
        while w <= end:
            vals = [v for t, v in pts if w <= t < w + window_min]
            if vals:
                out.append(f"{name:<10} {f'{w:.0f}-{w + window_min:.0f}':>13} {len(vals):>7} "
                           f"{min(vals):>8.1f} {statistics.median(vals):>9.1f} {max(vals):>8.1f}")
            w += window_min
        second = [p for p in pts if p[0] >= end / 2]
        slopes[name] = (slope(pts), slope(second))
    out.append("")
    out.append(f"{'process':<10} {'slope all (MB/min)':>19} {'slope 2nd half (MB/min)':>24}")
    for name, (a, b) in slopes.items():
        out.append(f"{name:<10} {a:>19.3f} {b:>24.3f}")
    return out


def projected(db: Path) -> dict[str, int] | None:
    snap = snapshot_path(db)
    if not snap.exists():
        return None
    try:
        con = duckdb.connect(str(snap), read_only=True)
        try:
            rows = con.sql("SELECT topic, sum(next_offset) FROM _offsets GROUP BY ALL").fetchall()
            return {str(r): int(n) for r, n in rows}
        finally:
            con.close()
    except duckdb.Error:
        return None


LEDGER_TABLES = ("registrations", "enrollment_events", "visit_events", "payment_events")
OUTPUT_TABLES = ("claims", "payment_outcomes", "rejections", "audit_flags")


def table_counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        def n(tables: tuple[str, ...]) -> int:
            return sum(con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables)
        return {"ledger": n(LEDGER_TABLES), "settlements": n(OUTPUT_TABLES),
                "deadletter": n(("dead_letters",))}
    finally:
        con.close()


def expected(lines: Iterator[bytes]) -> tuple[dict[str, int], dict[str, bytes]]:
    """File mode (`yibao settle`) of the published lines: counts, and every output event
    encoded as the worker encodes it, by event id."""
    fold = Fold(Engine(load_policy()))
    encode = Codec().encode
    outputs: dict[str, bytes] = {}
    for line in lines:
        if line.strip():
            res = fold.feed(line)
            if isinstance(res, list):
                for o in res:
                    outputs[o.event_id] = encode(o)
    return ({"ledger": fold.counts.applied, "settlements": fold.counts.outputs,
             "deadletter": fold.counts.dead_lettered}, outputs)


def compare(live: list[tuple[int, int, bytes | None, bytes]], want: dict[str, bytes]
            ) -> tuple[int, int, int]:
    """(missing, duplicated, different) of the live settlements against file mode."""
    seen: dict[str, bytes] = {}
    duplicated = 0
    for _p, _o, _k, value in live:
        eid = msgspec.json.decode(value, type=_EventId).event_id
        if eid in seen:
            duplicated += 1
        seen[eid] = value
    missing = sum(1 for e in want if e not in seen)
    different = sum(1 for e, v in seen.items() if want.get(e) != v)
    return missing, duplicated, different


class _EventId(msgspec.Struct):
    event_id: str


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s offered")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--window", type=float, default=5.0, help="report window, minutes")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--merge-wait-ms", type=int, default=None,
                    help="the worker's YIBAO_MERGE_WAIT_MS (default: the worker's default; yibao "
                         "publish numbers its records, so the file's order holds at any wait)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--snapshot-every", type=float, default=30.0)
    ap.add_argument("--kafka-port", type=int, default=19192,
                    help="port of the soak's own local broker (unless YIBAO_BOOTSTRAP_SERVERS)")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "soak")
    args = ap.parse_args()

    broker = None
    if not Settings().bootstrap_given:
        # a broker of its own (port --kafka-port): others' test sessions start and stop the
        # dev broker on 9092, which a 30-minute run must not depend on
        os.environ["YIBAO_KAFKA_PORT"] = str(args.kafka_port)
        os.environ.pop("YIBAO_KAFKA_CONTROLLER_PORT", None)
        broker = LocalBroker(BrokerConfig.from_settings(Settings()))
        _status, started_broker = broker.up()
        if not started_broker:
            broker = None
    base = Settings()
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = args.out / run_id
    folder.mkdir(parents=True, exist_ok=True)
    total = int(args.rate * args.minutes * 60)
    source = log_for(args.out, total, args.seed)
    prefix = f"soak-{uuid.uuid4().hex[:8]}-"
    s = Settings(bootstrap_servers=base.bootstrap_servers, topic_prefix=prefix,
                 partitions=args.partitions)
    asyncio.run(create_all(s))
    db = folder / "soak.duckdb"
    env = {"YIBAO_LOG_LEVEL": "info"}
    if args.merge_wait_ms is not None:
        env["YIBAO_MERGE_WAIT_MS"] = str(args.merge_wait_ms)
    worker = spawn(s, worker_id="soak", log_file=folder / "worker.log", env=env)
    projector = spawn_projector(s, db, folder / "projector.log", args.snapshot_every)
    pids = {"worker": worker.pid, "projector": projector.pid, "publisher": os.getpid()}
    bpid = broker_pid(base)
    if bpid is not None:
        pids["broker"] = bpid
    names = list(pids)
    print(f"soak {run_id}: {total} events at {args.rate:.0f}/s for {args.minutes} min, prefix "
          f"{prefix}, source {source.name}, pids {pids}, output {folder}", flush=True)

    rows: list[dict[str, float]] = []
    stop = threading.Event()
    started = time.monotonic()
    sent = [0]
    csv_path = folder / "rss.csv"

    def sampler() -> None:
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "published", *[f"{n}_rss_kb" for n in names]])
            while True:
                t = time.monotonic() - started
                row: dict[str, float] = {"t": t}
                vals = []
                for n in names:
                    kb = rss_kb(pids[n])
                    vals.append("" if kb is None else kb)
                    if kb is not None:
                        row[n] = kb
                rows.append(row)
                w.writerow([round(t, 1), sent[0], *vals])
                f.flush()
                if len(rows) % 6 == 0:
                    print(f"  t={t / 60:5.1f} min published={sent[0]} "
                          + " ".join(f"{n}={row.get(n, 0) / 1024:.0f}MB" for n in names),
                          flush=True)
                if stop.wait(args.sample):
                    return

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()

    def on_progress(n: int) -> None:
        sent[0] += n

    try:
        time.sleep(3)  # the worker and projector join their groups
        t0 = time.monotonic()
        asyncio.run(publish_lines(s, lines_of(source, total), rate=args.rate,
                                  on_progress=on_progress))
        pub_s = time.monotonic() - t0
        # drain: the projection's ledger offsets stop moving
        last, still = None, 0.0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(5)
            now = projected(db)
            if now == last and now is not None:
                still += 5
                if still >= 3 * args.snapshot_every:
                    break
            else:
                still = 0.0
            last = now
        stop.set()
        thread.join()
        crashed = [n for n, p in (("worker", worker), ("projector", projector))
                   if p.poll() is not None]
    finally:
        stop.set()
        terminate(worker)
        terminate(projector)
        try:
            live = asyncio.run(read_topic(s, s.topic_prefix + "settlements", timeout=600))
        finally:
            if broker is not None:
                broker.down()
    got = table_counts(db)
    want, outputs = expected(lines_of(source, sent[0]))
    missing, duplicated, different = compare(live, outputs)
    del live, outputs
    lines = [f"soak {run_id}: prefix {prefix}, {sent[0]} events published in {pub_s / 60:.1f} min "
             f"({sent[0] / pub_s:.0f} events/s offered {args.rate:.0f}), samples every "
             f"{args.sample:.0f} s: {len(rows)}; crashed: {crashed or 'none'}",
             f"projected rows {got}, file mode (yibao settle) {want}: "
             f"{'equal' if got == want else 'DIFFERENT'}",
             f"settlements against file mode, every field: missing {missing}, duplicated "
             f"{duplicated}, different {different}", "",
             *report(rows, names, args.window)]
    slopes = {n: slope([(r["t"] / 60, r[n] / 1024) for r in rows
                        if r.get(n) and r["t"] >= rows[-1]["t"] / 2]) for n in names}
    lines += ["", f"soak: {sent[0]} events in {pub_s / 60:.1f} min at {sent[0] / pub_s:.0f} "
              f"events/s; RSS slope 2nd half: worker {slopes['worker']:.2f} MB/min, "
              f"projector {slopes['projector']:.2f} MB/min"]
    text = "\n".join(lines)
    (folder / "report.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
