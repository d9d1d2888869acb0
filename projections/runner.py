"""The consume loop shared by the live projector (``yibao project``, follows the log) and replay
(``yibao replay``, from offset 0 to the end offsets taken at its start): aiokafka ``getmany``
batches → :class:`~yibao.projections.transform.Transform` → :meth:`Store.write` (rows and the next
offsets in one DuckDB transaction). On start it seeks every (topic, partition) to the offset
stored in the file, so a crash or restart resumes exactly after the last committed batch.

Reads are ``read_committed``: only what the pipeline's Kafka transactions committed. Writes
run in a worker thread while the next batch is fetched and transformed (at most one write
in flight; DuckDB releases the GIL while it inserts).

With a policy (what-if), the ``settlements`` topic is not read: the pure engine re-settles the
ledger, household by household exactly as the live processor does
(:class:`yibao.streams.cores.ProcessorCore`, state per ledger partition and key), and its outputs go
through the same transform.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from yibao.collector import keep_out_of_the_collector, tuned_for_a_fold
from yibao.metrics import PROJECTOR_BATCH_SECONDS, PROJECTOR_LAG, PROJECTOR_RECORDS
from yibao.projections.exceptions import PartsError
from yibao.projections.parts import Span, owner_partition, part_meta
from yibao.projections.sqltransform import raw_table
from yibao.projections.store import Offsets, Store
from yibao.projections.transform import (
    AUDIT,
    DEADLETTER,
    LEDGER,
    ROLES,
    SETTLEMENTS,
    Rec,
    Transform,
)
from yibao.rules.engine import Engine
from yibao.rules.policy import Policy
from yibao.schemas.codec import Codec
from yibao.settings import Settings
from yibao.streams.cores import is_replay
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.options import client_options
from yibao.streams.topics import Topics


@dataclass
class RunOptions:
    follow: bool = False  # projector: keep going; replay: stop at the end offsets
    until_ms: int | None = None  # only records with timestamp <= this
    max_records: int = 50_000  # per write, at most
    #: replay: a write starts as soon as the writer is idle and this many records wait, so
    #: DuckDB starts early and each later write takes what arrived during the one before
    min_records: int = 20_000
    max_wait_ms: int = 300  # follow: write at least this often while records arrive
    snapshot_every: float | None = None  # follow: publish a snapshot every N seconds
    policy: Policy | None = None  # what-if: re-settle the ledger under this policy
    sql: bool = True  # rows made by DuckDB (yibao.projections.sqltransform), else by Transform
    partitions: Span | None = None  # replay: only this range of ledger partitions (parts.py)
    end_offsets: Offsets | None = None  # replay: stop here instead of the end offsets at start
    on_total: Callable[[int], None] | None = None
    on_progress: Callable[[int], None] | None = None
    topic_wait: float = 60.0  # how long to wait for the topics to exist


@dataclass
class RunStats:
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    written_rows: int = 0
    writes: int = 0
    snapshots: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.records.values())

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def consumer_for(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        fetch_max_wait_ms=100,
    )


async def assign(consumer: AIOKafkaConsumer, topics: dict[str, str], wait: float,
                 span: Span | None = None) -> dict[TopicPartition, str]:
    """Assign every partition of ``topics`` (role -> name), or with ``span`` those of its
    part (:func:`yibao.projections.parts.owner_partition`, counted on ``topics[LEDGER]``);
    wait up to ``wait`` s for them."""
    deadline = time.monotonic() + wait
    while True:
        await consumer._client.force_metadata_update()
        parts = {role: consumer.partitions_for_topic(name) for role, name in topics.items()}
        if all(parts.values()):
            break
        if time.monotonic() > deadline:
            missing = [topics[r] for r, p in parts.items() if not p]
            raise TimeoutError(f"topics not found: {', '.join(missing)}")
        await asyncio.sleep(0.5)
    roles = {TopicPartition(topics[r], p): r for r, ps in parts.items() for p in sorted(ps or ())}
    if span is not None:
        n = len(parts[LEDGER] or ())
        if span.last >= n:
            raise PartsError(f"partitions {span} asked for, {topics[LEDGER]} has {n} (0-{n - 1})")
        roles = {tp: r for tp, r in roles.items() if owner_partition(tp.partition, n) in span}
    consumer.assign(list(roles))
    return roles


def topic_roles(settings: Settings, whatif: bool = False) -> dict[str, str]:
    """role -> topic name of what a projection reads (a what-if settles the ledger itself
    instead of reading ``settlements``)."""
    t = Topics.of(settings)
    names = {LEDGER: t.ledger, SETTLEMENTS: t.settlements, DEADLETTER: t.deadletter,
             AUDIT: t.audit}
    if whatif:
        names.pop(SETTLEMENTS)
    return names


async def run(settings: Settings, store: Store, transform: Transform, opts: RunOptions,
              stop: asyncio.Event | None = None) -> RunStats:
    if opts.follow:
        return await _consume_and_write(settings, store, transform, opts, stop)
    # up to max_records consumer records and, for a what-if, the engine's state: see
    # yibao.collector
    with tuned_for_a_fold():
        return await _consume_and_write(settings, store, transform, opts, stop)


async def _consume_and_write(settings: Settings, store: Store, transform: Transform,
                             opts: RunOptions, stop: asyncio.Event | None) -> RunStats:
    names = topic_roles(settings, opts.policy is not None)
    whatif = _WhatIf(opts.policy) if opts.policy is not None else None
    stats = RunStats()
    consumer = consumer_for(settings)
    await start_client(consumer)
    started = time.monotonic()
    try:
        roles = await assign(consumer, names, opts.topic_wait, opts.partitions)
        stored = store.offsets()
        start: dict[TopicPartition, int] = {}
        for tp, role in roles.items():
            o = stored.get((role, tp.partition))
            if o is None:
                await consumer.seek_to_beginning(tp)
                start[tp] = 0
            else:
                consumer.seek(tp, o)
                start[tp] = o
        end = await consumer.end_offsets(list(roles))
        if opts.end_offsets is not None:
            end = {tp: opts.end_offsets.get((role, tp.partition), end[tp])
                   for tp, role in roles.items()}
        if not opts.follow:
            n_ledger = len(consumer.partitions_for_topic(names[LEDGER]) or ())
            store.set_meta({**part_meta(opts.partitions or Span(first=0, last=n_ledger - 1),
                                        n_ledger, {(r, tp.partition): end[tp]
                                                   for tp, r in roles.items()}),
                            "complete": "false"})
        if opts.on_total:
            opts.on_total(sum(max(0, end[tp] - start[tp]) for tp in roles))
        todo = {tp for tp in roles if end[tp] > start[tp]}
        pending: dict[str, list[Any]] = {r: [] for r in ROLES}
        offsets: Offsets = {}
        n_pending = 0
        first_pending = 0.0
        writing: asyncio.Future[None] | None = None
        until = opts.until_ms

        async def flush() -> None:
            nonlocal writing, n_pending, offsets
            if not offsets:
                return
            if whatif is not None:
                pending[SETTLEMENTS] = whatif.settle(pending[LEDGER])
            # a hand-over at registration repeats events already in the ledger: state only
            rows = {**pending, LEDGER: [r for r in pending[LEDGER] if not is_replay(r.headers)]}
            if opts.sql:
                tables: dict[str, Any] = {}
                raw = {r: raw_table(rows[r]) for r in ROLES if rows[r]}
            else:
                tables = transform.batch(rows[LEDGER], rows[SETTLEMENTS], rows[DEADLETTER],
                                         rows[AUDIT])
                raw = {}
            batch_offsets = offsets
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(_timed_write, store, tables,
                                                              batch_offsets, raw))
            stats.writes += 1
            for r in ROLES:
                pending[r] = []
            offsets = {}
            n_pending = 0

        while True:
            if stop is not None and stop.is_set():
                break
            if not opts.follow and not todo:
                break
            data = await consumer.getmany(timeout_ms=opts.max_wait_ms, max_records=(
                opts.max_records if opts.follow else min(opts.max_records, opts.min_records)))
            if not opts.follow:
                keep_out_of_the_collector()
            got = 0
            for tp, recs in data.items():
                if not opts.follow and recs and recs[-1].offset >= end[tp]:
                    # replay: nothing past the end offsets (the log may grow meanwhile)
                    recs = [r for r in recs if r.offset < end[tp]]
                    consumer.pause(tp)
                    todo.discard(tp)
                if not recs:
                    continue
                role = roles[tp]
                got += len(recs)
                stats.records[role] += len(recs)
                next_offset = recs[-1].offset + 1
                if until is not None:
                    recs = [r for r in recs if r.timestamp <= until]
                pending[role].extend(recs)
                offsets[(role, tp.partition)] = next_offset
                PROJECTOR_RECORDS.labels(role).inc(len(recs))
                end_now = consumer.highwater(tp)
                if end_now is not None:
                    PROJECTOR_LAG.labels(tp.topic, str(tp.partition)).set(
                        max(0, end_now - offsets[(role, tp.partition)]))
            if got:
                if not n_pending:
                    first_pending = time.monotonic()
                n_pending += got
                if opts.on_progress:
                    opts.on_progress(got)
            if not opts.follow:
                for tp in list(todo):
                    if await consumer.position(tp) >= end[tp]:
                        todo.discard(tp)
            now = time.monotonic()
            if n_pending and (n_pending >= opts.max_records or (not todo and not opts.follow)
                              or (opts.follow
                                  and now - first_pending >= opts.max_wait_ms / 1000)
                              or (not opts.follow and n_pending >= opts.min_records
                                  and (writing is None or writing.done()))):
                await flush()
            if (opts.snapshot_every is not None
                    and now - store.last_snapshot >= opts.snapshot_every):
                if writing is not None:
                    await writing
                    writing = None
                await asyncio.to_thread(store.snapshot)
                stats.snapshots += 1
        await flush()
        if writing is not None:
            await writing
        if not opts.follow and not todo:
            store.set_meta({"complete": "true"})
            await asyncio.to_thread(store.checkpoint)
        if opts.snapshot_every is not None:
            store.snapshot()
            stats.snapshots += 1
    finally:
        await consumer.stop()
        stats.seconds = time.monotonic() - started
    return stats


def _timed_write(store: Store, tables: Any, offsets: Offsets, raw: Any) -> None:
    with PROJECTOR_BATCH_SECONDS.time():
        store.write(tables, offsets, raw)


class _WhatIf:
    """Re-settle ledger records under another policy, as the live processor would."""

    def __init__(self, policy: Policy) -> None:
        from yibao.streams.cores import ProcessorCore

        self.codec = Codec()
        self.core = ProcessorCore(Engine(policy), self.codec)
        self.next: dict[int, int] = {}

    def settle(self, ledger: list[Any]) -> list[Rec]:
        core, encode = self.core, self.codec.encode
        out: list[Rec] = []
        for r in ledger:
            p = r.partition
            if p not in core.households:
                core.assign(p)
                self.next[p] = 0
            for o in core.apply(p, r.key, r.value, is_replay(r.headers)):
                out.append(Rec(p, self.next[p], r.timestamp, encode(o)))
                self.next[p] += 1
        core.take_changes()
        return out


async def raw_consume(settings: Settings, roles: tuple[str, ...] = ROLES,
                      max_records: int = 50_000) -> tuple[int, float]:
    """Read ``roles``' topics from the beginning to their end offsets, doing nothing with
    the records: (records, seconds) — the benchmark's yardstick."""
    t = Topics.of(settings)
    names = {r: t.name(r) for r in roles}
    consumer = consumer_for(settings)
    await start_client(consumer)
    try:
        tps = await assign(consumer, names, 10.0)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
        end = await consumer.end_offsets(list(tps))
        todo = {tp for tp in tps if end[tp] > 0}
        n = 0
        started = time.monotonic()
        while todo:
            data = await consumer.getmany(timeout_ms=200, max_records=max_records)
            for recs in data.values():
                n += len(recs)
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return n, time.monotonic() - started
    finally:
        await consumer.stop()
