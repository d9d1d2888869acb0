"""`yibao publish` and `yibao export`: a JSONL log onto the input topics, a topic into JSONL.

Publishing routes each line by its ``type`` to its authority's topic (events.md, "Topics and
order": ``registrations``, ``care``, ``reviews``), keyed by ``person_id``, in file order. The
record timestamp is left to the broker (the inputs are ``LogAppendTime``).

The lines are numbered from 0 without gaps (headers ``yibao-publisher``: this run's random
id, ``yibao-seq``: the number): the sequencer's merge releases one publisher's records in
that order (see :mod:`yibao.streams.merge`), so a household whose persons hash to different
partitions, or a visit whose opening and charges go to different topics, still applies in
the file's order, and the live outputs are exactly ``yibao settle``'s over the file. Append
time alone would not do that: the broker stamps a whole batch with one time, and one
producer's batches to different partitions are appended in whatever order they arrive.

A line that cannot be routed by type (not JSON, no or unknown ``type``) is still published,
to ``registrations``: the sequencer is the only place that judges input, so it dead-letters
the line *with its origin* (topic, partition, offset) and the books balance (read = applied
+ duplicates + dead-lettered). Sending it straight to ``deadletter`` would skip that count
and leave a dead letter without an origin.
"""

from __future__ import annotations

import asyncio
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
from yibao.streams.exceptions import NoSuchTopic
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.exceptions import ReadTimeout
from yibao.streams.kafka.io import SendWindow
from yibao.streams.kafka.options import client_options
from yibao.streams.topics import INPUTS, Topics

SEQ_HEADER = "yibao-seq"
PUBLISHER_HEADER = "yibao-publisher"
FALLBACK_TOPIC = "registrations"


class _Envelope(msgspec.Struct):
    type: Any = None
    person_id: Any = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True, slots=True)
class Routed:
    topic: str  # short name (no prefix)
    key: bytes | None


def route(raw: bytes) -> Routed:
    """Where a raw line goes: its type's topic (or registrations), and its key."""
    try:
        env = _ENVELOPE.decode(raw)
    except msgspec.DecodeError:
        return Routed(FALLBACK_TOPIC, None)
    topic = TOPIC_OF.get(env.type, FALLBACK_TOPIC) if isinstance(env.type, str) else (
        FALLBACK_TOPIC)
    key = env.person_id.encode() if isinstance(env.person_id, str) else None
    return Routed(topic, key)


def seq_header(seq: int) -> tuple[str, bytes]:
    return (SEQ_HEADER, seq.to_bytes(8, "big", signed=True))


def order_headers(publisher: bytes, seq: int) -> list[tuple[str, bytes]]:
    """``yibao-seq`` and ``yibao-publisher``: a publisher numbers its records from 0 without
    gaps, so the sequencer's merge keeps its order across partitions and can tell that nothing
    it published earlier is still in flight (see :mod:`yibao.streams.merge`)."""
    return [seq_header(seq), (PUBLISHER_HEADER, publisher)]


def new_publisher_id() -> bytes:
    """A publisher's id: random, so two publishers (or two runs of one) never share a
    numbering, which starts at 0 for each."""
    return os.urandom(8)


def order_of(headers: Iterable[tuple[str, bytes]] | None) -> tuple[int, bytes | None]:
    """(seq, publisher) from a record's headers: (0, None) when absent."""
    seq, publisher = 0, None
    for k, v in headers or ():
        if k == SEQ_HEADER:
            seq = int.from_bytes(v, "big", signed=True)
        elif k == PUBLISHER_HEADER:
            publisher = bytes(v)
    return seq, publisher


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
    await start_client(producer)
    for short in INPUTS:  # metadata first, so no topic's first batch lags the others
        await producer.partitions_for(topics.name(short))
    counts: dict[str, int] = {}
    publisher = new_publisher_id()
    sent = 0  # numbered from 0 without gaps (blank lines are not sent)
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
            r = route(raw)
            name = topics.name(r.topic)
            if on_send is not None:
                on_send(raw)
            await window.send(name, raw, key=r.key, headers=order_headers(publisher, sent))
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
    await start_client(consumer)
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise NoSuchTopic(f"no topic {topic!r} on {settings.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, int, bytes | None, bytes]]] = {p.partition: [] for p in tps}
        deadline = time.monotonic() + timeout
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise ReadTimeout(f"export of {topic} did not reach the end in {timeout}s")
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
