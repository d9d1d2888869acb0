"""Write what the live pipeline would write for a JSONL log — ``ledger``, ``settlements`` and
``deadletter`` records — straight onto the broker, without running the worker.

For tests and the replay benchmark: they need those topics filled quickly and
deterministically. The decisions are the worker's own pure cores
(:class:`yibao.streams.cores.SequencerCore` validates, dead-letters, deduplicates and keys by
household; :class:`yibao.streams.cores.ProcessorCore` settles per ledger partition and key), and
outputs go to the settlements partition of their ledger record, as in the worker. Only the
partitioner differs (crc32 of the key), which no consumer depends on.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from yibao.rules.engine import Engine
from yibao.rules.policy import Policy, load_policy
from yibao.schemas.codec import Codec
from yibao.schemas.events import OutputEvent
from yibao.settings import Settings
from yibao.streams.cores import REPLAY_HEADER, DeadLetterAppend, ProcessorCore, SequencerCore
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.io import SendWindow
from yibao.streams.kafka.options import client_options
from yibao.streams.merge import TP, Record
from yibao.streams.topics import create_all

Tamper = Callable[[OutputEvent], OutputEvent | None]


async def simulate(settings: Settings, lines: Iterable[bytes], *, policy: Policy | None = None,
                   tamper: Tamper | None = None,
                   on_progress: Callable[[int], None] | None = None,
                   chunk: int = 20_000) -> dict[str, int]:
    """Publish the pipeline's output topics for ``lines``; ``tamper`` may replace (or drop,
    with None) output events before they are written. Returns record counts per topic."""
    await create_all(settings)
    t_ledger = settings.topic_prefix + "ledger"
    t_settle = settings.topic_prefix + "settlements"
    t_dead = settings.topic_prefix + "deadletter"
    n = settings.partitions
    codec = Codec()
    seq = SequencerCore(codec)
    proc = ProcessorCore(Engine(policy or load_policy()), codec)
    for p in range(n):
        seq.assign(p)
        proc.assign(p)
    producer = AIOKafkaProducer(**client_options(settings), acks="all",
                                linger_ms=20, max_batch_size=1024 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await start_client(producer)
    counts = {"ledger": 0, "settlements": 0, "deadletter": 0}
    window = SendWindow(producer, chunk, on_progress)
    now = time.monotonic()
    try:
        for i, raw in enumerate(lines):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            rec = Record(TP(settings.topic_prefix + "registrations", 0), i, 0, i, None, raw, now)
            out = seq.process(rec, [])
            if out is None:
                continue
            if isinstance(out, DeadLetterAppend):
                await window.send(t_dead, out.value, key=out.key, partition=0)
                counts["deadletter"] += 1
                continue
            p = zlib.crc32(out.key) % n
            for ts, old in out.replays:  # the hand-over at registration (see SequencerCore)
                await window.send(t_ledger, old, key=out.key, partition=p, timestamp_ms=ts,
                                  headers=[(REPLAY_HEADER, b"1")])
                proc.apply(p, out.key, old, replay=True)
                counts["ledger"] += 1
            await window.send(t_ledger, out.value, key=out.key, partition=p, timestamp_ms=out.timestamp)
            counts["ledger"] += 1
            for o in proc.apply(p, out.key, out.value):
                o2 = tamper(o) if tamper is not None else o
                if o2 is None:
                    continue
                await window.send(t_settle, codec.encode(o2), key=out.key, partition=p,
                                  timestamp_ms=out.timestamp)
                counts["settlements"] += 1
            proc.take_changes()
        await window.drain()
    finally:
        await producer.stop()
    return counts


def simulate_sync(settings: Settings, lines: Iterable[bytes], **kw: Any) -> dict[str, int]:
    return asyncio.run(simulate(settings, lines, **kw))
