"""Live benchmark on the real broker (`make bench-live`), one run, three figures:

1. **end to end**: a time-ordered log of ``--copies`` renamed copies of the spec sample is
   published as fast as the publisher goes while a ``yibao worker`` runs; events/s = input
   events / (first publish → last expected output committed in ``settlements``).
2. **raw ceiling**: the same input records consumed from the input topics and produced
   to a sink topic with plain aiokafka (no decoding, no state, no transactions), same
   machine — what Kafka + Python I/O alone allow.
3. **latency**: fresh copies published at an offered 1,000 checkouts/s (``VisitClosed``),
   with the events between them at the sample's mix, by a producer configured like the
   gateway SDK (``linger_ms=0``); latency = send of the checkout → its
   ClaimSettled/ClaimRejected read from ``settlements`` (read_committed) by this process.

Last line: ``live: <E> events/s, raw <R> events/s, ratio <X>, p50 <A> ms, p99 <B> ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from yibao.dev.broker import BrokerConfig, LocalBroker
from yibao.dev.testing import delete_topics_with_prefixes
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.settings import Settings
from yibao.streams.kafka.io import create_topics
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import publish_lines
from yibao.streams.topics import Topics, create_all
from yibao.streams.worker import spawn, terminate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "spec" / "examples" / "sample-events.jsonl"
if not SAMPLE.exists():
    SAMPLE = Path("/work/shared/spec/examples/sample-events.jsonl")


def renamed(lines: list[bytes], tag: str) -> list[bytes]:
    """A copy of the log with every person, household, visit and event id made unique."""
    t = tag.encode()
    out = []
    for ln in lines:
        for a in (b'"P0', b'"H0', b'"V0', b'"E0'):
            ln = ln.replace(a, a[:2] + t + b"-0")
        out.append(ln)
    return out


def interleaved(lines: list[bytes], tags: list[str]) -> list[bytes]:
    """Copies side by side, line by line: still in event-time order."""
    copies = [renamed(lines, t) for t in tags]
    return [c[i] for i in range(len(lines)) for c in copies]


def checkout_share(lines: list[bytes]) -> float:
    """Share of the lines that are checkouts (``VisitClosed``)."""
    return sum(b'"type": "VisitClosed"' in ln for ln in lines) / len(lines)


def expected_outputs(lines: list[bytes]) -> int:
    fold = Fold(Engine(load_policy(None)))
    return sum(len(r) for r in fold.run(lines) if isinstance(r, list))


async def count_until(settings: Settings, topic: str, target: int, timeout: float,
                      on_record: object = None) -> float:
    """Read ``topic`` (read_committed) from the beginning until ``target`` records; return
    the monotonic time when the last one arrived."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=None,
        isolation_level="read_committed", auto_offset_reset="earliest",
        fetch_max_wait_ms=10, enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while n < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} of {target} records in {topic} after {timeout}s")
            batch = await consumer.getmany(timeout_ms=100)
            got = sum(len(v) for v in batch.values())
            if got:
                n += got
                last = time.monotonic()
        return last
    finally:
        await consumer.stop()


async def raw_ceiling(settings: Settings, n_records: int) -> float:
    """Plain aiokafka consume (the input topics) → produce (a sink topic); records/s."""
    t = Topics.of(settings)
    sink = t.name("bench-raw-sink")
    await create_topics(settings, [sink], partitions=settings.partitions)
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=10,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(**client_options(settings), acks="all",
                                enable_idempotence=True, linger_ms=5,
                                max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for topic in t.inputs
               for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        started = time.monotonic()
        while n < n_records:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for r in records:
                    await producer.send(sink, r.value, key=r.key, timestamp_ms=r.timestamp)
                n += len(records)
        await producer.flush()
        return n / (time.monotonic() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def _reader_at_end(settings: Settings, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=None,
        isolation_level="read_committed", fetch_max_wait_ms=100, enable_auto_commit=False,
    )
    await consumer.start()
    await consumer._client.force_metadata_update()
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


@dataclass
class Latencies:
    total: list[float]  # send of the checkout -> its settlement read (ms)
    sequencer: list[float]  # send -> the checkout read from the ledger (committed)
    processor: list[float]  # ledger -> settlement


async def latency(settings: Settings, lines: list[bytes], checkouts_per_s: float,
                  seconds: float) -> Latencies:
    """Publish ``lines`` at the rate that makes 1,000 checkouts/s; return latencies (ms),
    end to end and split at the ledger (where the sequencer hands over to the processor)."""
    closed = [b'"type": "VisitClosed"' in ln for ln in lines]
    rate = checkouts_per_s / checkout_share(lines)
    lines = lines[: int(rate * seconds)]
    closed = closed[: len(lines)]
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    ledgered: dict[str, float] = {}
    t = Topics.of(settings)
    consumer = await _reader_at_end(settings, t.settlements)
    ledger = await _reader_at_end(settings, t.ledger)
    want = {_event_id(ln) for ln, c in zip(lines, closed, strict=True) if c}

    async def first_seen(reader: AIOKafkaConsumer, seen: dict[str, float],
                         match: Callable[[bytes], str | None]) -> None:
        """When each wanted checkout first shows up on ``reader``'s topic."""
        while len(seen) < len(want):
            batch = await reader.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    eid = match(r.value)
                    if eid in want:
                        seen.setdefault(eid, now)

    def settled(value: bytes) -> str | None:
        cause, kind = _caused_by_type(value)
        return cause if kind in ("ClaimSettled", "ClaimRejected") else None

    def closed_in_ledger(value: bytes) -> str | None:
        return _event_id(value) if b'"type": "VisitClosed"' in value else None

    def on_send(line: bytes) -> None:
        if b'"type": "VisitClosed"' in line:
            sent[_event_id(line)] = time.perf_counter()

    readers = [asyncio.create_task(first_seen(consumer, got, settled)),
               asyncio.create_task(first_seen(ledger, ledgered, closed_in_ledger))]
    await publish_lines(settings, lines, rate=rate, on_send=on_send, linger_ms=0)
    try:
        await asyncio.wait_for(asyncio.gather(*readers), 60)
    finally:
        await consumer.stop()
        await ledger.stop()
    both = [e for e in want if e in got and e in sent and e in ledgered]
    return Latencies(
        total=[(got[e] - sent[e]) * 1000 for e in want if e in got and e in sent],
        sequencer=[(ledgered[e] - sent[e]) * 1000 for e in both],
        processor=[(got[e] - ledgered[e]) * 1000 for e in both],
    )


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (a JVM's threads are tasks of their own)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task.name), cpus)


def pin_apart(workers: list[int], broker: int | None) -> tuple[set[int], set[int]]:
    """The workers on the last core; this process and the broker on the others."""
    every = sorted(os.sched_getaffinity(0))
    if len(every) < 2:
        raise SystemExit("--pin needs at least two cores")
    mine, rest = {every[-1]}, set(every[:-1])
    for pid in workers:
        _set_affinity(pid, mine)
    for pid in [os.getpid()] + ([broker] if broker is not None else []):
        _set_affinity(pid, rest)
    return mine, rest


def unpin(pids: list[int]) -> None:
    every = set(range(os.cpu_count() or 1))
    for pid in pids:
        _set_affinity(pid, every)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (Linux /proc; missing ones left out)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / hz
    return out


def p50_p99(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    return statistics.median(s), s[min(len(s) - 1, int(len(s) * 0.99))]


def stage_report(logdir: Path) -> None:
    """Where the time went (whole run: warm-up, end to end and latency phases), from the
    workers' stop logs: per stage the batches, records per
    batch, step (process + transaction) p50/p99, and how long records sat in the merge."""
    for f in sorted(logdir.glob("*.log")):
        for line in f.read_text().splitlines():
            if '"worker.gc"' in line:
                d = json.loads(line)
                print("  gc pauses (ms): " + "; ".join(
                    f"{g} {d[g]}" for g in ("gen0", "gen1", "gen2"))
                    + f"; full collections (s after start, ms): {d.get('last_full')}",
                    file=sys.stderr)
                continue
            if '.stopped"' not in line:
                continue
            d = json.loads(line)
            n = max(1, d["batches"])
            per = ", ".join(f"{k} {v * 1000 / n:.1f}" for k, v in d["seconds"].items())
            held = d.get("merge_held_ms")
            print(f"  {d['event']}: {d['batches']} batches, {d.get('records', 0) / n:.0f} "
                  f"records/batch; ms/batch: {per}; step p50/p99 {d.get('step_ms')}"
                  + (f"; merge held {held}" if held else ""), file=sys.stderr)


def _caused_by_type(value: bytes) -> tuple[str, str]:
    def field(name: bytes) -> str:
        i = value.find(name)
        if i < 0:
            return ""
        start = value.index(b'"', i + len(name))
        return value[start + 1: value.index(b'"', start + 1)].decode()

    return field(b'"caused_by":'), field(b'"type":')


def _event_id(line: bytes) -> str:
    i = line.index(b'"event_id": "') + 13
    return line[i: line.index(b'"', i)].decode()


async def main_async(args: argparse.Namespace) -> str:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    settings = Settings(topic_prefix=prefix, partitions=args.partitions)
    await create_all(settings)
    sample = [ln for ln in SAMPLE.read_bytes().splitlines() if ln.strip()]
    warm = renamed(sample[:400], "w")
    log = interleaved(sample, [f"c{i}" for i in range(args.copies)])
    lat_copies = math.ceil(args.checkouts / checkout_share(sample) * args.seconds / len(sample))
    lat_log = interleaved(sample, [f"l{i}" for i in range(lat_copies)])
    n_warm, n_log = expected_outputs(warm), expected_outputs(log)
    print(f"bench-live: prefix {prefix}, {args.partitions} partitions; log {len(log):,} events "
          f"({args.copies} copies of the sample) -> {n_log:,} outputs", file=sys.stderr)
    logdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    env = {"YIBAO_LOG_LEVEL": "info"}
    if args.merge_wait_ms is not None:
        env["YIBAO_MERGE_WAIT_MS"] = str(args.merge_wait_ms)
    if args.split:  # one process per stage: each gets its own core (and GIL)
        procs = [spawn(settings, worker_id=f"bench-{st}", log_file=logdir / f"{st}.log",
                       env={**env, "YIBAO_STAGES": st})
                 for st in ("sequencer", "processor")]
    else:
        procs = [spawn(settings, worker_id="bench", log_file=logdir / "worker.log", env=env)]
    print(f"  workers: {len(procs)} process(es), logs in {logdir}", file=sys.stderr)
    broker_pid = LocalBroker(BrokerConfig.from_settings(settings)).status().pid
    if args.pin:
        pinned = pin_apart([p.pid for p in procs], broker_pid)
        print(f"  pinned: worker(s) on cpu {pinned[0]}, benchmark and broker on {pinned[1]}",
              file=sys.stderr)
    try:
        await publish_lines(settings, warm)
        await count_until(settings, Topics.of(settings).settlements, n_warm, 60)
        # 1. end to end
        started = time.monotonic()
        counting = asyncio.create_task(count_until(
            settings, Topics.of(settings).settlements, n_warm + n_log, args.timeout))
        await publish_lines(settings, log)
        published = time.monotonic() - started
        last = await counting
        e2e = len(log) / (last - started)
        print(f"  end to end: {len(log):,} events in {last - started:.2f} s "
              f"(publishing took {published:.2f} s) = {e2e:,.0f} events/s", file=sys.stderr)
        # 3. latency at 1,000 checkouts/s (before the raw run, on a quiet machine)
        # This process is the instrument (publisher and readers at once): its own garbage
        # collections (the 112k-line log above is live) would show up as pipeline latency.
        # A hospital's gateway process holds no such heap.
        gc.collect()
        gc.freeze()
        gc.disable()
        pids = {f"worker {i}": p.pid for i, p in enumerate(procs)} | {"benchmark": os.getpid()}
        if broker_pid is not None:  # our local broker (not one in Docker or elsewhere)
            pids["broker"] = broker_pid
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        try:
            lat = await latency(settings, lat_log, args.checkouts, args.seconds)
        finally:
            gc.enable()
            gc.unfreeze()
        cpu1, elapsed = cpu_seconds(pids), time.monotonic() - t0
        p50, p99 = p50_p99(lat.total)
        print(f"  latency: {len(lat.total):,} checkouts at {args.checkouts:,.0f}/s offered: "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lat.total):.1f} ms", file=sys.stderr)
        for name, xs in (("publish -> ledger (sequencer)", lat.sequencer),
                         ("ledger -> settlement (processor)", lat.processor)):
            a, b = p50_p99(xs)
            print(f"    {name}: p50 {a:.1f} ms, p99 {b:.1f} ms", file=sys.stderr)
        print("    CPU in the latency phase, % of one core: " + ", ".join(
            f"{k} {100 * (cpu1[k] - cpu0[k]) / elapsed:.0f}%" for k in cpu1 if k in cpu0)
            + f" (of {100 * (os.cpu_count() or 1)}%)", file=sys.stderr)
    finally:
        for proc in procs:
            terminate(proc)
        if args.pin:
            unpin([os.getpid()] + ([broker_pid] if broker_pid is not None else []))
        stage_report(logdir)
    # 2. raw ceiling on the same input records
    raw = await raw_ceiling(settings, len(warm) + len(log))
    print(f"  raw aiokafka consume->produce: {raw:,.0f} events/s", file=sys.stderr)
    # a developer's broker outlives the run: leave no partitions behind
    await delete_topics_with_prefixes(settings.bootstrap_servers, [prefix])
    return (f"live: {e2e:.0f} events/s, raw {raw:.0f} events/s, ratio {e2e / raw:.2f}, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def parser() -> argparse.ArgumentParser:
    """The options (bench-anchors runs this benchmark with them too)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8, help="copies of the sample (14k each)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--checkouts", type=float, default=1000.0, help="offered checkouts/s")
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="latency phase length (15 s: 15,000 checkouts, p99 = the 150th worst)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--split", action=argparse.BooleanOptionalAction, default=False,
                    help="run the sequencer and the processor in separate processes")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=False,
                    help="give the worker(s) the last core and this process and the local "
                         "broker the others, as if the broker and the hospitals were on "
                         "other machines (Linux; the broker's affinity is restored after)")
    ap.add_argument("--merge-wait-ms", type=int, default=None,
                    help="the workers' YIBAO_MERGE_WAIT_MS (default: the worker's default)")
    return ap


def main() -> None:
    print(run_fast(main_async(parser().parse_args())))


def run_fast(coro: Coroutine[Any, Any, str]) -> str:
    """Run a benchmark's main coroutine on uvloop where it is installed (as the worker does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    main()
