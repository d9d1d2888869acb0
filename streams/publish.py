"""`yibao publish` and `yibao export`: a JSONL log onto the input topics, a topic into JSONL.

Publishing routes each line by its ``type`` to the topic of events.md, keyed by
``person_id``, with record timestamp = ``occurred_at`` (ms) and a ``yibao-seq`` header
(publication order; it breaks ties in event time in the sequencer's merge), in file order.

A line that cannot be routed by type (not JSON, no or unknown ``type``) is still published,
to ``registrations``: the sequencer is the only place that judges input, so it dead-letters
the line *with its origin* (topic, partition, offset) and the books balance (read = applied
+ duplicates + dead-lettered). Sending it straight to ``deadletter`` would skip that count
and leave a dead letter without an origin. Its timestamp is the previous line's, so it does
not disturb the event-time merge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from yibao.schemas.events import TOPIC_OF
from yibao.settings import Settings
from yibao.streams.kafka.io import SendWindow
from yibao.streams.kafka.options import client_options
from yibao.streams.topics import Topics

SEQ_HEADER = "yibao-seq"
PUBLISHER_HEADER = "yibao-publisher"
TOPICS_ORDER = ("registrations", "visits", "prescriptions", "payments")
FALLBACK_TOPIC = "registrations"


class _Envelope(msgspec.Struct):
    type: Any = None
    person_id: Any = None
    occurred_at: Any = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True, slots=True)
class Routed:
    topic: str  # short name (no prefix)
    key: bytes | None
    timestamp: int  # ms


def route(raw: bytes, last_ts: int = 0) -> Routed:
    """Where a raw line goes: its type's topic (or registrations), key, timestamp ms."""
    try:
        env = _ENVELOPE.decode(raw)
    except msgspec.DecodeError:
        return Routed(FALLBACK_TOPIC, None, last_ts)
    topic = TOPIC_OF.get(env.type, FALLBACK_TOPIC) if isinstance(env.type, str) else (
        FALLBACK_TOPIC)
    key = env.person_id.encode() if isinstance(env.person_id, str) else None
    ts = last_ts
    if isinstance(env.occurred_at, str):
        try:
            when = dt.datetime.fromisoformat(env.occurred_at)
            if when.tzinfo is not None:
                ts = int(when.timestamp() * 1000)
        except ValueError:
            pass
    return Routed(topic, key, ts)


def seq_header(seq: int) -> tuple[str, bytes]:
    return (SEQ_HEADER, seq.to_bytes(8, "big", signed=True))


def order_headers(publisher: bytes, seq: int) -> list[tuple[str, bytes]]:
    """``yibao-seq`` and ``yibao-publisher``: a publisher numbers its records without gaps,
    so the sequencer's merge can tell that nothing it published earlier is still in flight
    and need not wait for it (see :mod:`yibao.streams.merge`)."""
    return [seq_header(seq), (PUBLISHER_HEADER, publisher)]


def new_publisher_id() -> bytes:
    return os.urandom(8)


def seq_of(headers: Iterable[tuple[str, bytes]] | None) -> int:
    for k, v in headers or ():
        if k == SEQ_HEADER:
            return int.from_bytes(v, "big", signed=True)
    return 0


def order_of(headers: Iterable[tuple[str, bytes]] | None) -> tuple[int, bytes | None]:
    """(seq, publisher) from a record's headers: (0, None) when absent."""
    seq, publisher = 0, None
    for k, v in headers or ():
        if k == SEQ_HEADER:
            seq = int.from_bytes(v, "big", signed=True)
        elif k == PUBLISHER_HEADER:
            publisher = bytes(v)
    return seq, publisher


def new_seq_base() -> int:
    """Sequence numbers are microseconds of wall time at publication (+ line number), so
    several publishers' ties in event time still sort roughly by when they were sent."""
    return time.time_ns() // 1000


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
    }


async def publish_lines(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    on_progress: Callable[[int], None] | None = None,
    rate: float | None = None,
    on_send: Callable[[bytes], None] | None = None,
    linger_ms: int | None = None,
) -> dict[str, int]:
    """Publish raw lines in order (at most ``rate`` lines/s if given, paced every 10 lines);
    return how many went to each topic. ``linger_ms`` overrides the bulk default (5 ms): the
    latency benchmark publishes like the gateway SDK, with 0."""
    topics = Topics.of(settings)
    config = producer_config(settings)
    if linger_ms is not None:
        config["linger_ms"] = linger_ms
    producer = AIOKafkaProducer(**config)
    await producer.start()
    for short in TOPICS_ORDER:  # metadata first, so no topic's first batch lags the others
        await producer.partitions_for(topics.name(short))
    counts: dict[str, int] = {}
    base = new_seq_base()
    publisher = new_publisher_id()
    sent = 0  # numbered without gaps (blank lines are not sent)
    last_ts = 0
    window = SendWindow(producer, 5000, on_progress)
    started = time.monotonic()
    try:
        for i, line in enumerate(lines):
            if rate and i % 10 == 0:
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            r = route(raw, last_ts)
            last_ts = r.timestamp
            name = topics.name(r.topic)
            if on_send is not None:
                on_send(raw)
            await window.send(
                # 0, not None, for a malformed first line (no previous timestamp): None
                # means the producer's wall clock, far ahead of any event time, and the
                # merge would hold everything behind it in its partition until the rest
                # of the input is drained (a reordered settlement).
                name, raw, key=r.key, timestamp_ms=r.timestamp,
                headers=order_headers(publisher, base + sent),
            )
            sent += 1
            counts[name] = counts.get(name, 0) + 1
        await window.drain()
    finally:
        await producer.stop()
    return counts


def publish_file(settings: Settings, path: Path,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, int]:
    with path.open("rb") as f:
        return asyncio.run(publish_lines(settings, f, on_progress=on_progress))


async def read_topic(settings: Settings, topic: str, *, timeout: float = 60.0
                     ) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every committed record of ``topic`` from the beginning to its current end offsets, as
    (partition, offset, key, value), partition by partition in offset order."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ValueError(f"no topic {topic!r} on {settings.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, int, bytes | None, bytes]]] = {p.partition: [] for p in tps}
        deadline = time.monotonic() + timeout
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"export of {topic} did not reach the end in {timeout}s")
            batch = await consumer.getmany(*todo, timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < end[tp]:
                        out[tp.partition].append((tp.partition, r.offset, r.key, r.value))
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return [rec for p in sorted(out) for rec in out[p]]
    finally:
        await consumer.stop()


def export_topic(settings: Settings, topic: str, out: IO[bytes], *, timeout: float = 60.0
                 ) -> int:
    """Write ``topic``'s values (one JSON document each) to ``out`` as JSONL."""
    records = asyncio.run(read_topic(settings, topic, timeout=timeout))
    buf = bytearray()
    for _p, _o, _k, v in records:
        buf += v.rstrip(b"\r\n")
        buf += b"\n"
    out.write(buf)
    return len(records)
