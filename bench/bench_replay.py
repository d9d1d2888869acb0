"""Benchmark `yibao replay`: events/s rebuilding the DuckDB projections from offset 0, beside
the raw consume rate of the same topics (ledger, settlements, deadletter) in the same run, in
one process and in ``--jobs`` processes over partition ranges merged into one file.

The topics are filled once per log size (generated log → the pipeline's outputs via
yibao.projections.simulate, under the prefix ``bench-replay-h<households>-``) and reused by later
runs. Raw rate: the best of two plain getmany drains (before and after the replay), from
after partition assignment. Replay rate: everything, from consumer start to the last
commit of the DuckDB file; parallel: from reading the end offsets to the merged file's
checkpoint (process start-up and merge included), then ``verify`` compares the two files
(not timed). Prints figures; asserts nothing. The last line reads

    replay: <E> events/s, raw <R> events/s, ratio <X>; parallel(jobs=<N>): <P> events/s, ratio <Y>

    make bench-replay          # or: .venv/bin/python bench/bench_replay.py --households 40000 --jobs 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.audit import verify
from yibao.projections.parallel import PartJob, cores, replay_parallel
from yibao.projections.runner import RunOptions, raw_consume, run
from yibao.projections.simulate import simulate
from yibao.projections.store import Store
from yibao.projections.transform import Transform
from yibao.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


async def ledger_size(settings: Settings) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await c.start()
    try:
        parts = c.partitions_for_topic(settings.topic_prefix + "ledger")
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(settings.topic_prefix + "ledger")
        if not parts:
            return 0
        tps = [TopicPartition(settings.topic_prefix + "ledger", p) for p in parts]
        return sum((await c.end_offsets(tps)).values())
    finally:
        await c.stop()


def cpu_seconds() -> float:
    """This process's CPU time so far, every thread (DuckDB's included): a steadier measure
    of work than wall time on a shared box."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--households", type=int, default=40_000)
    ap.add_argument("--days", type=int, default=31, help="log length from 2025-03-01")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=cores(), help="processes of the parallel replay")
    args = ap.parse_args()
    base = Settings()
    settings = base.model_copy(update={
        "topic_prefix": f"bench-replay-h{args.households}-d{args.days}-s{args.seed}-",
        "partitions": args.partitions})
    out = ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    if asyncio.run(ledger_size(settings)) == 0:
        log = out / f"replay-log-h{args.households}-d{args.days}-s{args.seed}.jsonl"
        start = dt.date(2025, 3, 1)
        if not log.exists():
            t = time.perf_counter()
            generate_to_path(GenerateConfig(households=args.households, seed=args.seed,
                                            start=start,
                                            end=start + dt.timedelta(days=args.days - 1)),
                             str(log))
            print(f"generated {log.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t = time.perf_counter()
        with log.open("rb") as f:
            counts = asyncio.run(simulate(settings, f))
        print(f"published the pipeline's outputs {counts} in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
    cpu = cpu_seconds()
    n1, s1 = asyncio.run(raw_consume(settings))
    raw_cpu, cpu = cpu_seconds() - cpu, cpu_seconds()
    db = out / "replay.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    with Store(db, pseudonym_key=settings.pseudonym_key, bulk=True,
               memory_limit=settings.duckdb_memory_limit) as store:
        stats = asyncio.run(run(settings, store, Transform(settings.pseudonym_key),
                                RunOptions(max_records=200_000)))
        rows = sum(store.counts().values())
    replay_cpu = cpu_seconds() - cpu
    db2 = out / "replay-parallel.duckdb"
    par = replay_parallel(settings, PartJob(path=str(db2), max_records=200_000), args.jobs)
    n2, s2 = asyncio.run(raw_consume(settings))
    raw = max(n1 / s1, n2 / s2)
    print(f"topics {settings.topic_prefix}{{ledger,settlements,deadletter}}: "
          f"{stats.events:,} records {stats.records}", file=sys.stderr)
    print(f"raw consume: {n1:,} in {s1:.2f} s, {n2:,} in {s2:.2f} s", file=sys.stderr)
    print(f"replay: {stats.events:,} records -> {rows:,} rows in {stats.writes} transactions, "
          f"{stats.seconds:.2f} s, file {db} ({db.stat().st_size / 2**20:.0f} MiB)",
          file=sys.stderr)
    print(f"CPU seconds (user + system, this process's threads): raw consume {raw_cpu:.2f}, "
          f"replay {replay_cpu:.2f} ({replay_cpu / raw_cpu:.1f}x)", file=sys.stderr)
    print(f"parallel: {par.events:,} records, {len(par.spans)} processes over partitions "
          f"{', '.join(map(str, par.spans))} ("
          + ", ".join(f"{p.seconds:.2f} s" for p in par.parts)
          + f"), merge {par.merge_seconds:.2f} s, total {par.seconds:.2f} s", file=sys.stderr)
    same = verify(db, db2, positions=True)
    print(f"verify --positions single vs parallel: "
          f"{'identical' if same.identical else 'DIFFERENT: ' + str([d.name for d in same.diffs])}"
          f" ({len(same.compared)} tables and views)", file=sys.stderr)
    print(f"replay: {stats.rate:,.0f} events/s, raw {raw:,.0f} events/s, "
          f"ratio {stats.rate / raw:.2f}; parallel(jobs={args.jobs}): {par.rate:,.0f} events/s, "
          f"ratio {par.rate / raw:.2f}")


if __name__ == "__main__":
    main()
