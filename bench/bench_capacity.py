"""Capacity of each stage alone on the real broker (`make bench-capacity`): the sequencer
(one active process for the whole deployment) and the settlement processor (scales over
ledger partitions), each draining a backlog, so the figure is the stage's ceiling and not
the publisher's.

1. ``--copies`` renamed copies of the spec sample are published to the input topics with no
   worker running.
2. A worker with only the sequencer stage starts; its rate = input records / (first ledger
   record read → the last one the log gives, read_committed as they arrive).
3. It stops; a worker with only the processor stage starts over the full ledger; its rate
   = ledger records / (first settlement → the last one the log gives).
4. It stops; a worker with only the tier-B audit stage (audit.md "Tier B") reads the
   settlements; its rate = settlement records / (its first group commit → the end), given
   also as the input events/s of settlement it keeps up with.

Each stage's log also gives its records per busy second (step + commit time only).

``--profile`` runs each stage under cProfile (``YIBAO_PROFILE``) and leaves the profiles
beside the worker logs: where the time goes.

Also prints what the sequencer's rate is in settlements a day (one checkout per
``1/checkout_share`` input events, as in the sample) beside the national platform's
28 million transactions a day. Prints figures; asserts nothing; deletes its topics.

    make bench-capacity        # or: .venv/bin/python bench/bench_capacity.py --copies 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_live import SAMPLE, checkout_share, interleaved

from yibao.dev.testing import delete_topics_with_prefixes
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.settings import Settings
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import publish_lines
from yibao.streams.topics import Topics, create_all
from yibao.streams.worker import spawn, terminate

NATIONAL_PER_DAY = 28_000_000


async def arrival_span(settings: Settings, topic: str, target: int, timeout: float
                       ) -> float:
    """Seconds from the first committed record of ``topic`` to the ``target``-th one, read
    as they arrive (read_committed, from the beginning)."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None,
                                isolation_level="read_committed",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, first = 0, 0.0
        deadline = time.monotonic() + timeout
        while n < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} of {target} records in {topic} after {timeout} s")
            got = sum(len(v) for v in (await consumer.getmany(timeout_ms=100)).values())
            if got and not n:
                first = time.monotonic()
            n += got
        return time.monotonic() - first
    finally:
        await consumer.stop()


async def committed_span(settings: Settings, group: str, topic: str, timeout: float
                         ) -> float:
    """Seconds from the group's first committed offset on ``topic`` to its last change,
    once unchanged for 3 s (the stages commit group offsets at most once a second, after a
    batch: about a second coarse; the busy rate is the finer figure)."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        first = last = None
        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = 0
            for tp in tps:
                done += await consumer.committed(tp) or 0
            now = time.monotonic()
            if done != seen:
                seen = done
                first = first or now
                last = now
            elif first is not None and last is not None and now - last > 3.0:
                return last - first
            await asyncio.sleep(0.1)
        raise TimeoutError(f"group {group} still committing on {topic} after {timeout} s")
    finally:
        await consumer.stop()


def busy_rate(log: Path, stage: str) -> str:
    """Records per second of the stage's own step and commit time (its ``<stage>.stopped``
    line): what it does when it never waits for input."""
    for line in reversed(log.read_text().splitlines()):
        if f'"{stage}.stopped"' in line:
            d = json.loads(line)
            busy = d["seconds"]["step"] + d["seconds"]["commit"]
            return (f"{d['records'] / busy:,.0f} records per busy second ({d['records']:,} "
                    f"records, {d['batches']} batches, step {d['seconds']['step']:.2f} s, "
                    f"commit {d['seconds']['commit']:.2f} s)")
    return "no stopped line"


def busy_records_per_s(log: Path, stage: str) -> float:
    for line in reversed(log.read_text().splitlines()):
        if f'"{stage}.stopped"' in line:
            d = json.loads(line)
            return float(d["records"] / (d["seconds"]["step"] + d["seconds"]["commit"]))
    return 0.0


async def stage_rate(settings: Settings, stage: str, topic: str, target: int, logdir: Path,
                     profile: bool, timeout: float) -> float:
    """Run one stage alone until ``topic`` holds ``target`` records; their arrival span."""
    env = {"YIBAO_STAGES": stage, "YIBAO_LOG_LEVEL": "info"}
    if profile:
        env["YIBAO_PROFILE"] = str(logdir / f"{stage}.prof")
    proc = spawn(settings, worker_id=f"cap-{stage}", log_file=logdir / f"{stage}.log", env=env)
    try:
        if stage == "audit":
            return await committed_span(settings, Topics.of(settings).group(stage), topic,
                                        timeout)
        return await arrival_span(settings, topic, target, timeout)
    finally:
        terminate(proc)
        print(f"  {stage}: {busy_rate(logdir / f'{stage}.log', stage)}", file=sys.stderr)


async def main_async(args: argparse.Namespace) -> str:
    prefix = f"bench-cap-{uuid.uuid4().hex[:8]}-"
    settings = Settings(topic_prefix=prefix, partitions=args.partitions)
    topics = Topics.of(settings)
    await create_all(settings)
    logdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    try:
        sample = [ln for ln in SAMPLE.read_bytes().splitlines() if ln.strip()]
        log = interleaved(sample, [f"k{i}" for i in range(args.copies)])
        print(f"bench-capacity: prefix {prefix}, {args.partitions} partitions, "
              f"{len(log):,} input events, logs in {logdir}", file=sys.stderr)
        await publish_lines(settings, log)
        fold = Fold(Engine(load_policy(None)))
        outputs = sum(len(r) for r in fold.run(log) if isinstance(r, list))
        seq_s = await stage_rate(settings, "sequencer", topics.ledger, fold.counts.applied,
                                 logdir, args.profile, args.timeout)
        seq = len(log) / seq_s
        print(f"  sequencer alone: {len(log):,} events in {seq_s:.2f} s = {seq:,.0f} events/s",
              file=sys.stderr)
        proc_s = await stage_rate(settings, "processor", topics.settlements, outputs, logdir,
                                  args.profile, args.timeout)
        proc = len(log) / proc_s
        print(f"  processor alone: {len(log):,} ledger events in {proc_s:.2f} s = "
              f"{proc:,.0f} events/s", file=sys.stderr)
        audit_s = await stage_rate(settings, "audit", topics.settlements, outputs, logdir,
                                   args.profile, args.timeout)
        busy = busy_records_per_s(logdir / "audit.log", "audit")
        audit = outputs / audit_s if audit_s > 1.0 else busy
        print(f"  tier-B audit alone: {outputs:,} settlement outputs, "
              + (f"{audit_s:.2f} s from its first group commit to its last = "
                 if audit_s > 1.0 else "too few group commits to time it; busy rate: ")
              + f"{audit:,.0f} records/s (= {audit * len(log) / outputs:,.0f} input events/s "
              f"of settlement)", file=sys.stderr)
        share = checkout_share(sample)
        per_day = seq * share * 86_400
        print(f"  sequencer ceiling as settlements a day (1 checkout per {1 / share:.1f} "
              f"events): {per_day / 1e6:,.0f} million; national platform "
              f"{NATIONAL_PER_DAY / 1e6:.0f} million a day = {NATIONAL_PER_DAY / 86_400:,.0f}/s "
              f"on average", file=sys.stderr)
        return (f"capacity: sequencer {seq:,.0f} events/s, processor {proc:,.0f} events/s, "
                f"tier-B audit {audit * len(log) / outputs:,.0f} input events/s "
                f"(one process each); sequencer = {per_day / 1e6:,.0f} M settlements/day "
                f"vs national {NATIONAL_PER_DAY / 1e6:.0f} M")
    finally:
        await delete_topics_with_prefixes(settings.bootstrap_servers, [prefix])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8, help="copies of the sample")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--profile", action="store_true",
                    help="run each stage under cProfile (YIBAO_PROFILE): <logs>/<stage>.prof")
    args = ap.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
