"""The transactional consume → process → produce loop both live stages run on.

Why not faust-streaming's ``processing_guarantee="exactly_once"``: faust picks the
transactional producer by the *output* record's partition number and commits the input
offsets in the transaction of the *input* partition number, so a stage that re-keys (the
sequencer: person → household) writes its output and its offsets in different transactions,
and a transaction whose partition number has no input assigned never commits
(faust-streaming issues #177, #323, #517 report the resulting duplicates after a kill). Its
tables also cannot be written from ``stream.take()`` batches, and per-event acking caps a
2-core worker well below 10k events/s. So each stage here is a small aiokafka loop:

    getmany (read_committed)  →  pure core (yibao.streams.cores)  →  one Kafka transaction with
    the outputs, the state changelog records *and* the input positions

Kafka makes that all-or-nothing: a worker killed at any moment leaves either the whole
batch (outputs + state + positions) or none of it, and the next owner of the partitions
restores the state from the changelog (compacted topics, read_committed) and resumes at
the positions restored with it. That is exactly-once for outputs *and* tables. With both
stages in one worker, one transaction carries a checkout all the way: the sequencer applies
the ledger partitions its own processor owns (:meth:`yibao.streams.sequencer.Sequencer.attach`).

Why the input positions live in the state changelog (a ``POSITION_PREFIX`` record per input
partition, in the changelog partition of the same number) and not in the consumer group
(``send_offsets_to_transaction``): the group route costs two more round trips in every
transaction (AddOffsetsToTxn, then TxnOffsetCommit, each a log append on the broker) on the
path of every checkout, twice (sequencer, processor). Measured side by side at 1,000
checkouts/s, dropping them took the latency p50 from 18-22 ms to 15 ms. State and position
now come from one read, so they cannot disagree. The group's offsets are still committed,
outside the transactions and at most once a second, for lag monitoring only; nothing reads
them back.

Scale-out: stages are consumer groups (``<prefix>sequencer``, ``<prefix>processor``).
Fencing: the sequencer (one active at a time) has one transactional id for every worker,
``<prefix>sequencer``, and starts its producer only when it gets the inputs, so taking
over fences the previous sequencer wherever it runs, dead or a zombie, and aborts its open
transaction before the state is restored (:meth:`yibao.streams.sequencer.Sequencer.take_over`).
A processor's id is ``<prefix>processor-<worker_id>`` (partitions move between workers); each
changelog partition names its owner (:data:`OWNER_KEY`), blanked when the owner hands it
over in a rebalance, so a worker that gets a partition whose owner is still named (dead,
or a zombie) fences that id, which aborts its open transaction at once, before restoring
(:meth:`yibao.streams.processor.Processor.on_assigned`). A restarted worker fences its own
predecessor by starting its producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer import sender as aiokafka_sender

from yibao.logging import get_logger
from yibao.streams.kafka.options import KafkaTarget, client_options

log = get_logger("yibao.streams")


@dataclass(frozen=True)
class StageConfig:
    bootstrap: KafkaTarget  # the Settings (security options), or a PLAINTEXT host:port
    group_id: str
    transactional_id: str
    poll_ms: int = 100
    max_records: int = 5000
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    fetch_max_wait_ms: int = 100


class SingletonAssignor(AbstractPartitionAssignor):
    """Every partition to one member (the smallest member id): a hot-standby singleton.

    The sequencer merges *all* input partitions by event time, which is only a total order
    if one process sees them all; the other workers stand by and take over on failure."""

    name = "yibao-singleton"
    version = 0

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        owner = min(members)
        topics: set[str] = set()
        for meta in members.values():
            topics.update(meta.subscription)
        owned: list[tuple[str, list[int]]] = []
        for topic in sorted(topics):
            parts = cluster.partitions_for_topic(topic)
            if parts:
                owned.append((topic, sorted(parts)))
        return {
            m: ConsumerProtocolMemberAssignment(cls.version, owned if m == owner else [], b"")
            for m in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


def make_consumer(cfg: StageConfig, topics: list[str], assignor: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **client_options(cfg.bootstrap),
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        partition_assignment_strategy=(assignor,),
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )


# The first AddPartitionsToTxn after a commit nearly always gets CONCURRENT_TRANSACTIONS: the
# broker answers EndTxn once PrepareCommit is logged and writes the markers afterwards (1-3 ms
# here). aiokafka retries that case after a fixed 20 ms (``sender.BACKOFF_OVERRIDE``, after
# KAFKA-5477), whatever ``retry_backoff_ms`` says, so back-to-back transactions cost 20+ ms
# each. Measured on the local broker, begin → 2 sends → offsets → commit in a loop: p90 22-26 ms
# with 20 ms, 6-10 ms with 2 ms (p50 2-3 ms either way).
TXN_CONCURRENT_BACKOFF_S = 0.002


def make_producer(cfg: StageConfig) -> AIOKafkaProducer:
    aiokafka_sender.BACKOFF_OVERRIDE = TXN_CONCURRENT_BACKOFF_S
    return AIOKafkaProducer(
        **client_options(cfg.bootstrap),
        transactional_id=cfg.transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        max_batch_size=512 * 1024,
        transaction_timeout_ms=cfg.transaction_timeout_ms,
        # other retriable errors (the CONCURRENT_TRANSACTIONS one is TXN_CONCURRENT_BACKOFF_S):
        # the default 100 ms would dominate the latency of a batch.
        retry_backoff_ms=5,
    )


@functools.lru_cache(maxsize=1 << 16)
def _hash(key: bytes) -> int:
    """aiokafka's murmur2 is pure Python (4 us a key, a tenth of the sequencer's time per
    record); households recur, so a bounded memo saves nearly all of it."""
    return murmur2(key) & 0x7FFFFFFF


#: Key prefix of the input-position records in a stage's changelog (then the input topic's
#: name); the NUL byte keeps them apart from every store key (ids are printable text).
POSITION_PREFIX = b"\x00position:"


#: Key of the owner record in a processor changelog partition: the transactional id of the
#: worker that owns the partition, or empty once it has handed the partition over cleanly.
OWNER_KEY = b"\x00owner"


_closing: set[asyncio.Future[None]] = set()
_Client = TypeVar("_Client", AIOKafkaConsumer, AIOKafkaProducer)


def stop_later(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a short-lived client (a restore read, a fence) without waiting for it.

    Why: over TLS, closing a connection waits for the broker's close_notify, and now and
    then none comes; the event loop then gives up only after its SSL shutdown timeout,
    30 s. Seen with SASL_SSL: a restore inside a rebalance took 30-60 s, past the session
    timeout, and the group threw the worker out. Whatever such a client was for is done
    when this is called (its records read, its epoch bumped), so nothing waits for it."""
    async def stop() -> None:
        try:
            await client.stop()
        except Exception as e:  # nothing depends on it any more
            log.debug("stop_later.failed", error=repr(e))

    task = asyncio.ensure_future(stop())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


@contextlib.asynccontextmanager
async def short_lived(client: _Client) -> AsyncIterator[_Client]:
    """Start ``client`` for one read or one fence; :func:`stop_later` it afterwards."""
    await client.start()
    try:
        yield client
    finally:
        stop_later(client)


async def fence(cfg: StageConfig, transactional_ids: Iterable[str]) -> None:
    """Fence every id in ``transactional_ids``: initialising a producer with it bumps its
    epoch, and the broker aborts its open transaction (or finishes one being committed), so
    a zombie holding it can commit nothing more."""
    for tid in sorted(transactional_ids):
        async with short_lived(make_producer(dataclasses.replace(cfg, transactional_id=tid))):
            pass  # starting it is the fence
        log.warning("fenced", transactional_id=tid)


async def wait_decided(bootstrap: KafkaTarget, topic: str, partitions: Iterable[int], *,
                       timeout: float) -> bool:
    """Wait until every record already written to ``partitions`` of ``topic`` is decided
    (committed or aborted: the last stable offset has reached the high watermark of now);
    whether that happened within ``timeout``.

    Why: a transaction's EndTxn is answered once the coordinator has logged PrepareCommit;
    its markers reach the partitions 1-3 ms later. Until then a read_committed reader does
    not see what it wrote. A processor that hands a partition over blanks its owner record in
    such a transaction, and the next owner reads it right after the rebalance: without this
    wait it could see the old name and fence a live worker. A dead owner's open transaction
    never settles by itself (until it is fenced or times out): ``False`` after ``timeout``."""
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return True
    opts = {**client_options(bootstrap), "group_id": None, "enable_auto_commit": False}
    async with short_lived(AIOKafkaConsumer(**opts, isolation_level="read_uncommitted")) as written:
        high = await written.end_offsets(tps)
    deadline = time.monotonic() + timeout
    async with short_lived(AIOKafkaConsumer(**opts, isolation_level="read_committed")) as stable:
        while True:
            lso = await stable.end_offsets(tps)
            if all(lso[tp] >= high[tp] for tp in tps):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)


def position_key(topic: str) -> bytes:
    return POSITION_PREFIX + topic.encode()


@dataclass(frozen=True)
class Position:
    """Where a stage resumes in an input partition: at ``offset``, after skipping ``skip``
    committed records from there. ``skip`` is 0 except in the positions the sequencer writes
    for the processor (:meth:`yibao.streams.sequencer.Sequencer.attach`), which are written before
    the broker has given offsets to the ledger records they count: "the end of the
    sequencer's previous write, then this many records"."""

    topic: str
    offset: int
    skip: int = 0


def encode_position(offset: int, skip: int = 0) -> bytes:
    return offset.to_bytes(8, "big") + (skip.to_bytes(8, "big") if skip else b"")


def decode_position(key: bytes, value: bytes | None) -> Position | None:
    """The position if ``key`` is a position record, else ``None``."""
    if not key.startswith(POSITION_PREFIX) or value is None:
        return None
    return Position(key[len(POSITION_PREFIX):].decode(), int.from_bytes(value[:8], "big"),
                    int.from_bytes(value[8:16], "big"))


async def resolve_skips(bootstrap: KafkaTarget, positions: Mapping[TopicPartition, Position],
                        *, timeout: float = 60.0) -> dict[TopicPartition, int]:
    """The offset of every position: for one with a ``skip``, the offset after the
    ``skip``-th committed record from its ``offset`` on (read_committed, so aborted records
    and transaction markers do not count)."""
    out = {tp: pos.offset for tp, pos in positions.items()}
    todo = {tp: pos for tp, pos in positions.items() if pos.skip}
    if not todo:
        return out
    async with short_lived(AIOKafkaConsumer(
        **client_options(bootstrap), group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", fetch_max_wait_ms=50,
    )) as consumer:
        consumer.assign(list(todo))
        left = {}
        for tp, pos in todo.items():
            consumer.seek(tp, pos.offset)
            left[tp] = pos.skip
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"resolving the positions of {sorted(left)} took more "
                                   f"than {timeout}s")
            batch = await consumer.getmany(*left, timeout_ms=200)
            for tp, records in batch.items():
                if tp not in left:
                    continue
                records = [r for r in records if r.offset >= todo[tp].offset]
                n = left[tp]
                if len(records) >= n:
                    out[tp] = records[n - 1].offset + 1
                    del left[tp]
                    consumer.pause(tp)
                else:
                    left[tp] = n - len(records)
    return out


class Outbox:
    """Records of one transaction, sent as one batch per partition (``send_batch``): a
    per-record ``producer.send`` costs tens of microseconds, which at 10k events/s and two
    or three records per event would be most of a core."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, int | None,
                                                      list[tuple[str, bytes]]]]] = {}
        self._partitions: dict[str, int] = {}

    async def partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = len(await self.producer.partitions_for(topic))
            self._partitions[topic] = n
        return n

    async def partition_for(self, topic: str, key: bytes) -> int:
        """The default partitioner's choice (murmur2, as the Java client)."""
        return _hash(key) % await self.partitions(topic)

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
            timestamp_ms: int | None = None, headers: list[tuple[str, bytes]] | None = None
            ) -> None:
        self.records.setdefault((topic, partition), []).append(
            (key, value, timestamp_ms, headers or []))

    async def flush(self) -> dict[tuple[str, int], Sent]:
        """Send every record added; per partition, where its last record will land."""
        producer = self.producer
        sent: dict[tuple[str, int], Sent] = {}
        for (topic, partition), recs in self.records.items():
            batch = producer.create_batch()
            for key, value, ts, headers in recs:
                if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=ts, headers=headers)
            sent[topic, partition] = Sent(
                await producer.send_batch(batch, topic, partition=partition),
                batch.record_count())
        self.records.clear()
        return sent


@dataclass(frozen=True)
class Sent:
    """The last batch sent to a partition: its delivery future and its record count."""

    delivered: asyncio.Future[Any]
    count: int

    async def end(self) -> int:
        """The offset after the last record (once the broker has acknowledged the batch)."""
        meta = await self.delivered
        return int(meta.offset) + self.count


async def read_changelog(
    bootstrap: KafkaTarget, topic: str, partitions: Iterable[int], *, timeout: float = 120.0
) -> list[tuple[int, bytes, bytes | None]]:
    """(partition, key, value) of every committed record of ``topic``'s ``partitions``, in
    offset order per partition, up to the current last stable offset."""
    out: list[tuple[int, bytes, bytes | None]] = []
    async for chunk in iter_changelog(bootstrap, topic, partitions, timeout=timeout):
        out.extend(chunk)
    return out


async def iter_changelog(
    bootstrap: KafkaTarget, topic: str, partitions: Iterable[int], *, timeout: float = 120.0
) -> AsyncIterator[list[tuple[int, bytes, bytes | None]]]:
    """:func:`read_changelog` in fetched chunks, for a store larger than memory."""
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return
    async with short_lived(AIOKafkaConsumer(
        **client_options(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )) as consumer:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} took more than {timeout}s")
            batch = await consumer.getmany(*todo, timeout_ms=200)
            chunk = [(tp.partition, r.key, r.value) for tp, records in batch.items()
                     for r in records if r.offset < end[tp] and r.key is not None]
            if chunk:
                yield chunk
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs a stage's revoke/assign hooks under its processing lock, so a rebalance never
    lands between a batch's processing and its commit."""

    def __init__(self, stage: TxnStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.stage.lock:
            if not self.stage.leaving:
                await self.stage.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.stage.lock:
            if not self.stage.leaving:
                await self.stage.on_assigned(set(assigned))


class TxnStage:
    """Base class: subclasses implement ``on_assigned``, ``on_revoked`` and ``step``."""

    name = "stage"

    def __init__(self, cfg: StageConfig, topics: list[str], assignor: Any) -> None:
        self.cfg = cfg
        self.topics = topics
        self.consumer = make_consumer(cfg, topics, assignor)
        self.producer = make_producer(cfg)
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.leaving = False  # stopped: partitions handed over, rebalance hooks ignored
        self.batches = 0
        self.records = 0
        self.timing: dict[str, float] = {"poll": 0.0, "step": 0.0, "commit": 0.0}
        # next input offset per partition, as committed (restored, then each transaction)
        self.positions: dict[TopicPartition, int] = {}
        self._group_committed_at = 0.0
        self._group_commit: asyncio.Future[None] | None = None
        # YIBAO_FAULT_PAUSE_IN_TRANSACTION, from the worker's Settings (cfg.bootstrap)
        fault = getattr(cfg.bootstrap, "fault_pause_in_transaction", "")
        stage, _, n = fault.partition(":")
        self._fault_at = int(n) if stage == self.name and n else 0  # see fault_pause()
        # durations (s) of the last steps that did something, for the p50/p99 in the stop log
        self.step_times: deque[float] = deque(maxlen=20_000)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        raise NotImplementedError

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        raise NotImplementedError

    async def step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Process one polled batch; open/commit a transaction if anything changed."""
        raise NotImplementedError

    def poll_timeout_ms(self) -> int:
        return self.cfg.poll_ms

    async def fault_pause(self, sent: Mapping[tuple[str, int], Sent]) -> None:
        """Fault injection for the fencing tests, ``YIBAO_FAULT_PAUSE_IN_TRANSACTION=
        <stage>:<n>``: stop this process (SIGSTOP) in the stage's n-th transaction, its
        records on the broker and the commit not sent, as a long GC pause or a frozen VM
        would. Costs one comparison per transaction otherwise."""
        if self.batches + 1 != self._fault_at:
            return
        for s in sent.values():
            await s.delivered
        log.warning(f"{self.name}.fault_pause", transaction=self.batches + 1)
        os.kill(os.getpid(), signal.SIGSTOP)

    def add_positions(self, outbox: Outbox, topic: str,
                      offsets: Mapping[TopicPartition, int]) -> None:
        """Put the next input offsets in this transaction, in ``topic`` (a changelog of the
        stage) at the input partition's number: committed with the outputs and the state."""
        for tp, offset in offsets.items():
            outbox.add(topic, tp.partition, position_key(tp.topic), encode_position(offset))
        self.positions.update(offsets)

    async def commit(self) -> None:
        t0 = time.perf_counter()
        await self.producer.commit_transaction()
        t1 = time.perf_counter()
        self.batches += 1
        self.timing["commit"] += t1 - t0
        self.maybe_commit_group_offsets(t1)

    def maybe_commit_group_offsets(self, now: float) -> None:
        """Lag monitoring only (``kafka-consumer-groups.sh``): once a second, in the background,
        never on a batch's path. A failure (a rebalance) is harmless: nothing reads them."""
        if now - self._group_committed_at < 1.0 or not self.positions or (
                self._group_commit is not None and not self._group_commit.done()):
            return
        self._group_committed_at = now
        offsets = {tp: o for tp, o in self.positions.items()
                   if tp in self.consumer.assignment()}
        if offsets:
            self._group_commit = asyncio.ensure_future(self._commit_group(offsets))

    async def _commit_group(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except Exception as e:  # monitoring only: a rebalance may refuse it
            log.debug(f"{self.name}.group_commit_failed", error=repr(e))

    @staticmethod
    def unseen(records: list[Any], position: int) -> list[Any]:
        """``records`` from ``position`` on. aiokafka can deliver a partition's first records
        twice when it is seeked while its first fetch is in flight (the seek to the restored
        position in ``on_assigned``); below the position is already processed, so a
        redelivery is dropped here and never processed twice."""
        if records and records[0].offset < position:
            return [r for r in records if r.offset >= position]
        return records

    async def seek_to_positions(self, new: set[TopicPartition],
                                positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Point the consumer of newly assigned partitions at their restored positions (or
        the log start when a partition has none, or retention removed it); return them."""
        if not new:
            return {}
        first = await self.consumer.beginning_offsets(list(new))
        out = {}
        for tp in new:
            offset = max(positions.get(tp, 0), first.get(tp, 0))
            self.consumer.seek(tp, offset)
            out[tp] = offset
        self.positions.update(out)
        return out

    async def start_producer(self) -> None:
        """At the start of :meth:`run`; a stage whose producer must only exist while it owns
        its inputs starts it on assignment instead."""
        await self.producer.start()

    async def run(self) -> None:
        await self.start_producer()
        self.consumer.subscribe(self.topics, listener=Listener(self))
        await self.consumer.start()
        log.info(f"{self.name}.started", group=self.cfg.group_id,
                 transactional_id=self.cfg.transactional_id)
        try:
            timing = self.timing
            while not self.stopping.is_set():
                t0 = time.perf_counter()
                batch = await self.consumer.getmany(
                    timeout_ms=self.poll_timeout_ms(), max_records=self.cfg.max_records
                )
                t1 = time.perf_counter()
                async with self.lock:
                    await self.step(batch)
                t2 = time.perf_counter()
                timing["poll"] += t1 - t0
                timing["step"] += t2 - t1
                if batch:
                    self.records += sum(len(v) for v in batch.values())
                    self.step_times.append(t2 - t1)
        finally:
            if self._group_commit is not None:
                with contextlib.suppress(Exception):
                    await self._group_commit
            # Leaving the group hands the partitions over without the revoke hook: hand them
            # over first, under the lock (no transaction on them in flight, a fused one holds
            # it too), and ignore the rebalance hooks from then on (the consumer's stop waits
            # for a rebalance in progress, whose hooks would wait for the lock, or restore).
            async with self.lock:
                self.leaving = True
                with contextlib.suppress(Exception):
                    await self.before_leaving()
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.close()
            log.info(f"{self.name}.stopped", batches=self.batches, records=self.records,
                     seconds={k: round(v, 3) for k, v in self.timing.items()},
                     step_ms=percentiles(self.step_times), **self.extra_stats())

    def extra_stats(self) -> dict[str, Any]:
        return {}

    async def before_leaving(self) -> None:
        """Hand the partitions over before the consumer leaves its group (lock held)."""

    def close(self) -> None:
        """Release local resources (state stores) once the loop has stopped."""


def percentiles(xs: Iterable[float]) -> dict[str, float]:
    """p50/p99/max in ms of durations in seconds."""
    s = sorted(xs)
    if not s:
        return {}
    return {"p50": round(s[len(s) // 2] * 1000, 2), "p99": round(s[int(len(s) * 0.99)] * 1000, 2),
            "max": round(s[-1] * 1000, 2)}
