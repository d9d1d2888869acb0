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

The Kafka edge this loop stands on is :mod:`yibao.streams.kafka`: the clients and the
singleton assignor (``clients``), the changelog reads and input positions (``changelog``),
fencing (``fencing``) and the outbox of a transaction (``outbox``). The input positions are
records in the stage's own changelog, not consumer group offsets (why: ``changelog``); the
group's offsets are still committed, outside the transactions and at most once a second, for
lag monitoring only; nothing reads them back.

Scale-out: stages are consumer groups (``<prefix>sequencer``, ``<prefix>processor``).
Fencing: see :mod:`yibao.streams.kafka.fencing`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from yibao.metrics import COMMIT_SECONDS, LAG, RECORDS_IN, TRANSACTION_SECONDS
from yibao.streams.exceptions import StageStalled
from yibao.streams.kafka.changelog import encode_position, position_key
from yibao.streams.kafka.clients import StageConfig, log, make_consumer, make_producer
from yibao.streams.kafka.outbox import Outbox, Sent

#: How long a stopping stage waits for each step of its shutdown (see TxnStage._close_step).
CLOSE_SECONDS = 10.0

__all__ = ["Listener", "StageConfig", "TxnStage", "log", "percentiles"]


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
        COMMIT_SECONDS.labels(self.name).observe(t1 - t0)
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
        self.record_lag(offsets)
        if offsets:
            self._group_commit = asyncio.ensure_future(self._commit_group(offsets))

    def record_lag(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Records behind each input partition's end (as of the last fetch), for /metrics."""
        for tp, o in offsets.items():
            end = self.consumer.highwater(tp)
            if end is not None:
                LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, end - o))

    async def _commit_group(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except Exception as e:  # monitoring only: a rebalance may refuse it
            log.debug(f"{self.name}.group_commit_failed", error=repr(e))

    def fresh(self, batch: Mapping[TopicPartition, list[Any]], assigned: set[TopicPartition]
              ) -> dict[TopicPartition, list[Any]]:
        """The records of ``batch`` on ``assigned`` partitions not processed yet."""
        positions, unseen = self.positions, self.unseen
        return {tp: fresh for tp, rs in batch.items() if tp in assigned
                and (fresh := unseen(rs, positions.get(tp, 0)))}

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
                    await self.step_within_transaction_life(batch)
                t2 = time.perf_counter()
                timing["poll"] += t1 - t0
                timing["step"] += t2 - t1
                if batch:
                    n = sum(len(v) for v in batch.values())
                    self.records += n
                    self.step_times.append(t2 - t1)
                    RECORDS_IN.labels(self.name).inc(n)
                    TRANSACTION_SECONDS.labels(self.name).observe(t2 - t1)
        finally:
            if self._group_commit is not None:
                await self._close_step("group offsets", self._group_commit)
            await self._close_step("hand-over", self._leave())
            await self._close_step("consumer", self.consumer.stop())
            await self._close_step("producer", self.producer.stop())
            self.close()
            log.info(f"{self.name}.stopped", batches=self.batches, records=self.records,
                     seconds={k: round(v, 3) for k, v in self.timing.items()},
                     step_ms=percentiles(self.step_times), **self.extra_stats())

    async def _leave(self) -> None:
        """Leaving the group hands the partitions over without the revoke hook: hand them over
        first, under the lock (no transaction on them in flight, a fused one holds it too),
        and ignore the rebalance hooks from then on (the consumer's stop waits for a
        rebalance in progress, whose hooks would wait for the lock, or restore)."""
        async with self.lock:
            self.leaving = True
            await self.before_leaving()

    async def _close_step(self, what: str, step: Awaitable[Any]) -> None:
        """One step of a stopping stage, given up after :data:`CLOSE_SECONDS`. A stage stops
        because its Kafka client is stuck (:class:`StageStalled`) as well as on a signal;
        waiting on the stuck client for ever would keep the worker from exiting, and its
        supervisor from starting one that fences it (seen in ``make chaos``: after a broker
        restart, ``consumer.stop()`` waited on a fetch that kept retrying, for minutes).
        Its errors are only logged: the stage is going anyway."""
        try:
            await asyncio.wait_for(step, CLOSE_SECONDS)
        except TimeoutError:
            log.warning(f"{self.name}.close_gave_up", step=what, seconds=CLOSE_SECONDS)
        except Exception as exc:
            log.info(f"{self.name}.close_failed", step=what, error=repr(exc))

    async def step_within_transaction_life(self, batch: dict[TopicPartition, list[Any]]
                                           ) -> None:
        """:meth:`step`, given up after twice the transaction timeout. By then the broker
        has aborted the batch's transaction, so nothing of it can commit; a step still
        waiting is waiting on a Kafka client that will never answer (aiokafka's sender task
        can die on a connection error during a broker restart, leaving the transaction's
        futures unresolved, aio-libs/aiokafka#1151). Exiting lets the supervisor start a
        worker that fences this one and resumes from the last commit."""
        limit = 2 * self.cfg.transaction_timeout_ms / 1000
        try:
            await asyncio.wait_for(self.step(batch), limit)
        except TimeoutError:
            log.error(f"{self.name}.stalled", seconds=limit)
            raise StageStalled(f"{self.name}: a batch took more than {limit:.0f} s, twice the "
                               "transaction timeout; the Kafka client is stuck") from None

    def extra_stats(self) -> dict[str, Any]:
        return {}

    async def before_leaving(self) -> None:
        """Hand the partitions over before the consumer leaves its group (lock held)."""

    def close(self) -> None:
        """Release local resources (state stores) once the loop has stopped."""


class SingletonStage(TxnStage):
    """A stage one worker runs at a time, whatever the number of workers (the sequencer,
    the tier-B audit): every worker's instance shares one transactional id, and the one
    that gets the inputs starts its producer then (:meth:`take_over`), which fences the
    previous owner wherever it runs and aborts its open transaction."""

    def __init__(self, cfg: StageConfig, topics: list[str], assignor: Any) -> None:
        super().__init__(cfg, topics, assignor)
        self.outbox = Outbox(self.producer)
        self.active = False  # holds the inputs, with a started producer (take_over)
        self.took_over = 0

    async def start_producer(self) -> None:
        """Not before the inputs are assigned: see :meth:`take_over`."""

    async def take_over(self) -> None:
        """Start a producer with the id every worker's instance shares: its initialisation
        fences the previous owner, so a worker that lost the inputs without knowing
        (paused past its session timeout: a zombie) commits nothing more, not even the
        batch it was in the middle of (Kafka Streams' first exactly-once design fences
        the same way, a transactional id per task)."""
        if self.took_over:  # a stopped producer cannot start again
            self.producer = make_producer(self.cfg)
            self.outbox.producer = self.producer
        self.took_over += 1
        await self.producer.start()
        self.active = True


def percentiles(xs: Iterable[float]) -> dict[str, float]:
    """p50/p99/max in ms of durations in seconds."""
    s = sorted(xs)
    if not s:
        return {}
    return {"p50": round(s[len(s) // 2] * 1000, 2), "p99": round(s[int(len(s) * 0.99)] * 1000, 2),
            "max": round(s[-1] * 1000, 2)}
