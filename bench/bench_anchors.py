"""Anchors beside yibao's live benchmark (`make bench-anchors`), one run, same broker, same bytes.

What a team would pick instead of yibao, doing the smallest stateful job on the events yibao's
live run publishes: consume one input topic (``--partitions``, keyed by ``person_id``, the
lines of bench_live's log, byte for byte) → per person a count and a sum of ``amount_fen``
(decoded from the JSON) → one output per input, keyed by the person, to an output topic.

- **raw**: plain aiokafka, a dict per key, ``acks=all`` idempotent producer, no transactions;
- **quix**: Quix Streams, ``processing_guarantee="exactly-once"``, the state in its State
  store (RocksDB + changelog topic), ``app.run(count=N)``;
- **faust**: faust-streaming tuned: raw key/value serializers, ``stream.noack_take`` batches,
  big buffers, sends straight on the app's producer (a send inside an agent otherwise waits
  for the event's ack), the state in a plain dict (a faust Table cannot be written inside a
  ``take`` buffer; see tests/test_faust_premise.py for the other faust trap).

Each anchor runs in its own child process with a fresh consumer group on the same input
topic. Rate = events / (first record consumed in the child → last output read back,
``read_committed``, by this process). Then yibao's live benchmark (bench/bench_live.py, end
to end, raw ceiling, latency) runs on the same log in the same process.

    .venv/bin/python bench/bench_anchors.py [--events 200000] [--quick]

Last line: ``anchors: raw R ev/s, quix Q ev/s, faust F ev/s, yibao Y ev/s; yibao/raw X,
yibao/quix X, yibao/faust X``. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from yibao.settings import Settings
from yibao.streams.kafka.io import create_topics
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import route
from yibao.streams.worker import terminate

ANCHORS = ("raw", "quix", "faust")
BENCH = Path(__file__).resolve().parent


class Event(msgspec.Struct):
    """The fields an anchor reads from an input line (the rest of the JSON is skipped)."""

    event_id: str
    person_id: str
    amount_fen: int = 0


class Output(msgspec.Struct):
    """One output per input: the person's state after that event."""

    event_id: str
    person_id: str
    count: int
    sum_fen: int


DECODE = msgspec.json.Decoder(Event).decode
ENCODE = msgspec.json.Encoder().encode


def fold_event(count: int, sum_fen: int, value: bytes) -> tuple[int, int, bytes]:
    """The per-event work every anchor does: decode, add to the person's state, encode."""
    ev = DECODE(value)
    count += 1
    sum_fen += ev.amount_fen
    return count, sum_fen, ENCODE(Output(event_id=ev.event_id, person_id=ev.person_id,
                                         count=count, sum_fen=sum_fen))


# ---------------------------------------------------------------- the anchors (child side)


class FirstSeen:
    """Writes the monotonic time of the first record consumed to a file, once (the clock is
    system-wide on Linux, so the parent can subtract it from its own readings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = False

    def mark(self) -> None:
        if not self.done:
            self.done = True
            self.path.write_text(repr(time.monotonic()))


async def raw_anchor(a: argparse.Namespace, first: FirstSeen) -> None:
    consumer = AIOKafkaConsumer(
        a.input, bootstrap_servers=a.bootstrap, group_id=a.group,
        auto_offset_reset="earliest", enable_auto_commit=True, fetch_max_wait_ms=10,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5, max_batch_size=512 * 1024)
    await consumer.start()
    await producer.start()
    state: dict[bytes, tuple[int, int]] = {}
    n = 0
    try:
        while n < a.events:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if batch:
                first.mark()
            for records in batch.values():
                for r in records:
                    count, sum_fen = state.get(r.key, (0, 0))
                    count, sum_fen, out = fold_event(count, sum_fen, r.value)
                    state[r.key] = (count, sum_fen)
                    await producer.send(a.output, out, key=r.key)
                n += len(records)
        await producer.flush()
        await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def quix_anchor(a: argparse.Namespace, first: FirstSeen) -> None:
    from quixstreams import Application
    from quixstreams.state import State

    app = Application(
        broker_address=a.bootstrap, consumer_group=a.group, auto_offset_reset="earliest",
        processing_guarantee="exactly-once", state_dir=str(Path(a.workdir) / "quix-state"),
        loglevel="WARNING",
    )
    source = app.topic(a.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(a.output, key_serializer="bytes", value_serializer="bytes")

    def step(value: bytes, state: State) -> bytes:
        first.mark()
        count, sum_fen = state.get("s", (0, 0))
        count, sum_fen, out = fold_event(count, sum_fen, value)
        state.set("s", (count, sum_fen))
        return out

    app.dataframe(source).apply(step, stateful=True).to_topic(sink)
    app.run(count=a.events, collect=False)


def faust_anchor(a: argparse.Namespace, first: FirstSeen) -> None:
    import faust

    app = faust.App(
        a.group, broker=f"kafka://{a.bootstrap}", store="memory://",
        datadir=str(Path(a.workdir) / "faust-data"), web_enabled=False,
        topic_replication_factor=1, consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=65536, broker_max_poll_records=10_000,
        consumer_max_fetch_size=4 * 1024 * 1024, producer_linger=0.005,
        producer_max_batch_size=512 * 1024, stream_wait_empty=False,
        broker_commit_interval=5.0,
    )
    source = app.topic(a.input, key_serializer="raw", value_serializer="raw")
    state: dict[bytes, tuple[int, int]] = {}

    @app.agent(source)
    async def fold(stream: Any) -> None:
        producer = app.producer
        async for events in stream.noack_take(10_000, within=0.01):
            first.mark()
            for ev in events:
                key = ev.key
                count, sum_fen = state.get(key, (0, 0))
                count, sum_fen, out = fold_event(count, sum_fen, ev.value)
                state[key] = (count, sum_fen)
                await producer.send(a.output, key, out, None, None, None)
            for ev in events:
                await stream.ack(ev)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def run_child(a: argparse.Namespace) -> None:
    first = FirstSeen(Path(a.workdir) / f"{a.anchor}.first")
    if a.anchor == "raw":
        try:
            import uvloop

            uvloop.run(raw_anchor(a, first))
        except ImportError:
            asyncio.run(raw_anchor(a, first))
    elif a.anchor == "quix":
        quix_anchor(a, first)
    else:
        faust_anchor(a, first)


# ---------------------------------------------------------------- the parent side


@dataclass
class AnchorRun:
    anchor: str
    events: int
    seconds: float
    outputs: dict[str, list[Output]] = field(default_factory=dict)  # by person, if collected

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def person_lines(lines: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """(key, value) per line, keyed like yibao's publisher keys them (``person_id``)."""
    out = []
    for ln in lines:
        key = route(ln).key
        if key is None:
            raise ValueError(f"an anchor input line has no person_id: {ln[:80]!r}")
        out.append((key, ln))
    return out


async def publish_input(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_outputs(settings: Settings, topic: str, target: int, timeout: float,
                       proc: subprocess.Popen[bytes], collect: bool) -> tuple[float, dict]:
    """Read ``topic`` (read_committed) from the beginning until ``target`` records; return the
    monotonic time the last arrived and, if ``collect``, the outputs by person in order."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None,
                                isolation_level="read_committed", auto_offset_reset="earliest",
                                fetch_max_wait_ms=10, enable_auto_commit=False)
    await consumer.start()
    by_person: dict[str, list[Output]] = {}
    decode = msgspec.json.Decoder(Output).decode
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while n < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} of {target} outputs in {topic} after {timeout}s")
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"the anchor process exited with code {proc.returncode} "
                                   f"after {n} of {target} outputs")
            batch = await consumer.getmany(timeout_ms=100, max_records=20_000)
            got = 0
            for records in batch.values():
                got += len(records)
                if collect:
                    for r in records:
                        o = decode(r.value)
                        by_person.setdefault(o.person_id, []).append(o)
            if got:
                n += got
                last = time.monotonic()
        if collect:  # anything beyond the target (a duplicate) shows up in the check
            drain_until = time.monotonic() + 1.0
            while time.monotonic() < drain_until:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for r in records:
                        o = decode(r.value)
                        by_person.setdefault(o.person_id, []).append(o)
        return last, by_person
    finally:
        await consumer.stop()


async def run_anchor(settings: Settings, anchor: str, tag: str, source: str, events: int,
                     workdir: Path, *, timeout: float = 300.0, collect: bool = False) -> AnchorRun:
    """One anchor in its own child process, fresh group, own output topic."""
    output, group = f"{tag}{anchor}-out", f"{tag}{anchor}"
    await create_topics(settings, [output], partitions=settings.partitions)
    log = workdir / f"{anchor}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "bench_anchors.py"), "--anchor", anchor,
             "--bootstrap", settings.bootstrap_servers, "--input", source, "--output", output,
             "--group", group, "--events", str(events), "--workdir", str(workdir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        last, outputs = await read_outputs(settings, output, events, timeout, proc, collect)
    except Exception:
        print(f"  {anchor} failed; its log {log}:\n" + log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        terminate(proc)
    first = float((workdir / f"{anchor}.first").read_text())
    return AnchorRun(anchor, events, last - first, outputs)


async def delete_topics_containing(settings: Settings, tag: str) -> int:
    """Every topic of this run, internal ones too (Quix names its changelog
    ``changelog__<group>--<topic>--default``, faust its ``<app>-__assignor-__leader``)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if tag in t]
        if doomed:
            await admin.delete_topics(doomed)
        return len(doomed)
    finally:
        await admin.close()


async def run_anchors(settings: Settings, lines: list[bytes], anchors: Iterable[str] = ANCHORS,
                      *, collect: bool = False, timeout: float = 300.0) -> dict[str, AnchorRun]:
    """Publish ``lines`` to a fresh input topic keyed by person, run each anchor on it, delete
    every topic of the run."""
    tag = f"anchors-{uuid.uuid4().hex[:8]}-"
    source = f"{tag}in"
    workdir = Path(tempfile.mkdtemp(prefix=tag))
    runs: dict[str, AnchorRun] = {}
    try:
        await create_topics(settings, [source], partitions=settings.partitions)
        await publish_input(settings, source, person_lines(lines))
        for anchor in anchors:
            runs[anchor] = await run_anchor(settings, anchor, tag, source, len(lines), workdir,
                                            timeout=timeout, collect=collect)
            print(f"  {anchor}: {len(lines):,} events in {runs[anchor].seconds:.2f} s = "
                  f"{runs[anchor].rate:,.0f} events/s", file=sys.stderr)
    finally:
        await delete_topics_containing(settings, tag)
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def live_figures(line: str) -> tuple[float, float]:
    """(end-to-end events/s, raw ceiling events/s) from bench_live's last line."""
    m = re.match(r"live: ([\d.]+) events/s, raw ([\d.]+) events/s", line)
    if m is None:
        raise ValueError(f"unexpected bench_live line: {line!r}")
    return float(m.group(1)), float(m.group(2))


async def main_async(args: argparse.Namespace) -> str:
    import bench_live

    sample = [ln for ln in bench_live.SAMPLE.read_bytes().splitlines() if ln.strip()]
    copies = 1 if args.quick else max(1, round(args.events / len(sample)))
    # bench_live's end-to-end log, byte for byte (same copies, same renaming)
    log = bench_live.interleaved(sample, [f"c{i}" for i in range(copies)])
    settings = Settings(partitions=args.partitions)
    print(f"bench-anchors: {len(log):,} events ({copies} copies of the sample), "
          f"{args.partitions} partitions, broker {settings.bootstrap_servers}", file=sys.stderr)
    runs = await run_anchors(settings, log)
    live_args = bench_live.parser().parse_args([
        "--copies", str(copies), "--partitions", str(args.partitions),
        "--seconds", "3" if args.quick else "15"])
    live_line = await bench_live.main_async(live_args)
    print(live_line, file=sys.stderr)
    yibao, live_raw = live_figures(live_line)
    print("\n  system                                      events/s   yibao / it", file=sys.stderr)
    for name, rate in (("raw aiokafka consume -> dict -> produce", runs["raw"].rate),
                       ("Quix Streams, exactly-once, State store", runs["quix"].rate),
                       ("faust-streaming, tuned (noack_take, raw)", runs["faust"].rate),
                       ("bench_live raw ceiling (no decode/state)", live_raw),
                       ("yibao live, end to end", yibao)):
        print(f"  {name:<42} {rate:>9,.0f}   {yibao / rate:.2f}", file=sys.stderr)
    r, q, f = runs["raw"].rate, runs["quix"].rate, runs["faust"].rate
    return (f"anchors: raw {r:.0f} ev/s, quix {q:.0f} ev/s, faust {f:.0f} ev/s, "
            f"yibao {yibao:.0f} ev/s; yibao/raw {yibao / r:.2f}, yibao/quix {yibao / q:.2f}, "
            f"yibao/faust {yibao / f:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000,
                    help="events (rounded to whole copies of the 14,008-line sample)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke: one copy of the sample, a 3 s latency phase")
    ap.add_argument("--partitions", type=int, default=8)
    # a child process running one anchor (internal)
    ap.add_argument("--anchor", choices=ANCHORS, help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--input", "--output", "--group", "--workdir"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.anchor:
        with contextlib.suppress(KeyboardInterrupt):
            run_child(args)
        return
    import bench_live

    print(bench_live.run_fast(main_async(args)))


if __name__ == "__main__":
    main()
