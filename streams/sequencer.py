"""The sequencer: the input topics in (``registrations``, ``care``, ``reviews``), the ledger
(and dead letters) out.

Per released record (see :mod:`yibao.streams.merge` for the merge in broker order and
:class:`yibao.streams.cores.SequencerCore` for the decisions): validate with the file-mode
codec, dead-letter malformed input with its origin (an event on a topic that does not accept
its type is malformed too), drop a repeated ``event_id`` (window in event time, default 30
days, state in the ``sequencer-dedup`` changelog), resolve person → household
(``sequencer-persons`` changelog) and append the original bytes to the ledger, keyed by
household, record timestamp = ``occurred_at`` (the business time), header ``yibao-origin``
(topic:partition:offset).

Ordering: the merge is a total order over every input partition this worker owns, by the
broker's append time; the sequencer group uses
:class:`~yibao.streams.kafka.clients.SingletonAssignor`, so one worker owns them all and the
ledger order per household is what the broker saw, whatever the number of workers (the
others stand by; the settlement processors, where the work is, scale out). From then on the
ledger fixes the order for every replay.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from typing import Any

from aiokafka import TopicPartition

from yibao.metrics import ABORTS, DEAD_LETTERS
from yibao.rules.dedup import DEFAULT_WINDOW
from yibao.settings import Settings
from yibao.streams.cores import (
    COUNTS_KEY,
    COUNTS_STORE,
    DEDUP_STORE,
    PERSONS_STORE,
    REPLAY_HEADER,
    STASH_STORE,
    Change,
    DeadLetterAppend,
    SequencerCore,
    SequencerCounts,
    decode_counts,
)
from yibao.streams.fused import FusedLedger
from yibao.streams.kafka.changelog import decode_position, read_changelog
from yibao.streams.kafka.clients import SingletonAssignor, StageConfig, stop_later
from yibao.streams.merge import TP, Record, TimestampMerge
from yibao.streams.publish import order_of
from yibao.streams.runtime import SingletonStage, log, percentiles
from yibao.streams.topics import Topics

ORIGIN_HEADER = "yibao-origin"
#: ConsumerRecord.timestamp_type of a broker-stamped record (Kafka's TimestampType).
LOG_APPEND_TIME = 1


class Sequencer(SingletonStage):
    name = "sequencer"

    def __init__(self, cfg: StageConfig, topics: Topics, *, max_wait: float = 0.0,
                 window: dt.timedelta = DEFAULT_WINDOW) -> None:
        super().__init__(cfg, topics.inputs, SingletonAssignor)
        self.t = topics
        self.core = SequencerCore(window=window, accepts=topics.accepts)
        # Appended in the same millisecond: the bureau's facts (enrollment, then reviews)
        # before the hospitals' care events of that instant.
        self.merge = TimestampMerge(max_wait=max_wait, rank={
            topics.name("registrations"): 0, topics.name("reviews"): 1, topics.name("care"): 2})
        self._create_time_seen: set[str] = set()  # see record_time()
        self.next_offset: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()
        # how long released records sat in the merge (s): the cost of the merge wait
        self.held_times: deque[float] = deque(maxlen=100_000)
        self.processor: FusedLedger | None = None  # see attach()
        # Per ledger partition this stage has written since it got the inputs, the offset
        # after its last record (from the broker's acknowledgement).
        self.ledger_end: dict[int, int] = {}
        self.fused_records = 0
        self.stores = {
            DEDUP_STORE: topics.changelog("sequencer", "dedup"),
            PERSONS_STORE: topics.changelog("sequencer", "persons"),
            COUNTS_STORE: topics.changelog("sequencer", "counts"),
            STASH_STORE: topics.changelog("sequencer", "stash"),
        }

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        new = assigned - self.assigned
        self.assigned = set(assigned)
        if assigned and not self.active:
            await self.take_over()
        self.merge.assign({TP(tp.topic, tp.partition) for tp in assigned})
        if assigned and self.core.partitions is None:
            self.core.partitions = await self.outbox.partitions(self.stores[DEDUP_STORE])
        parts = sorted({tp.partition for tp in new} - set(self.core.dedup))
        started = time.monotonic()
        restored = 0
        for p in parts:
            self.core.assign(p)
        positions: dict[TopicPartition, int] = {}
        position_parts = sorted({tp.partition for tp in new})
        for store, topic in self.stores.items():
            wanted = position_parts if store == COUNTS_STORE else parts
            for p, key, value in await read_changelog(self.cfg.bootstrap, topic, wanted):
                pos = decode_position(key, value) if store == COUNTS_STORE else None
                if pos is not None:
                    positions[TopicPartition(pos.topic, p)] = pos.offset
                elif p in parts:
                    self.core.restore(store, p, key, value)
                    restored += 1
        for p in parts:
            self.core.restored(p)
        # where consumption resumes (retention may have removed older records)
        self.next_offset.update(await self.seek_to_positions(new, positions))
        log.info("sequencer.assigned", partitions=len(assigned), restored=restored,
                 seconds=round(time.monotonic() - started, 3))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= revoked
        self.merge.assign({TP(tp.topic, tp.partition) for tp in self.assigned})
        for tp in revoked:
            self.next_offset.pop(tp, None)
            self.positions.pop(tp, None)
        for p in {tp.partition for tp in revoked} - {tp.partition for tp in self.assigned}:
            self.core.revoke(p)
        if not self.assigned and self.active:
            self.active = False
            ABORTS.labels("sequencer").inc()
            stop_later(self.producer)  # fenced already, if a zombie; a new one takes over
        if self.processor is not None:
            # another worker's sequencer may write the ledger next: the processor reads it
            async with self.processor.lock:
                self.processor.unfuse_all()
            self.ledger_end.clear()
        log.info("sequencer.revoked", partitions=len(revoked))

    def extra_stats(self) -> dict[str, Any]:
        return {"merge_held_ms": percentiles(self.held_times),
                "released_in_sequence": self.merge.released_at_once,
                "fused_records": self.fused_records}

    def record_time(self, topic: str, wall_ms: int) -> int:
        """The merge time of a record whose topic stamps the producer's time (CreateTime: a
        topic created without ``yibao topics create``): when it was fetched, not the
        producer's clock, which must never decide the order."""
        if topic not in self._create_time_seen:
            self._create_time_seen.add(topic)
            log.warning("sequencer.create_time_topic", topic=topic,
                        fix="yibao topics create sets message.timestamp.type=LogAppendTime")
        return wall_ms

    def poll_timeout_ms(self) -> int:
        deadline = self.merge.next_deadline()
        if deadline is None:
            return self.cfg.poll_ms
        # Never 0: aiokafka's getmany(timeout_ms=0) returns at once without yielding to the
        # event loop when nothing is buffered, so a record held for an idle partition while
        # another partition's fetch is still due would spin here for ever, starving the
        # fetcher (and the heartbeat, the other stage and the SIGTERM handler) of the loop.
        return max(1, min(self.cfg.poll_ms, int((deadline - time.monotonic()) * 1000) + 1))

    def attach(self, processor: FusedLedger) -> None:
        """Apply the ledger records of partitions ``processor`` (in this worker) owns in this
        stage's own transaction, with their settlements, household changes and ledger
        positions: one Kafka transaction per checkout instead of two, and no trip through
        the ledger topic to the processor. The ledger still gets every record first, so it
        stays the audit record and the input of every other processor. Why this is
        exactly-once: :mod:`yibao.streams.fused`.
        """
        self.processor = processor

    async def step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        now = time.monotonic()
        merge = self.merge
        for tp, records in batch.items():
            if tp not in self.assigned:
                continue
            records = self.unseen(records, self.next_offset.get(tp, 0))
            if not records:
                continue
            mtp = TP(tp.topic, tp.partition)
            wall_ms = time.time_ns() // 1_000_000
            for r in records:
                seq, publisher = order_of(r.headers)
                ts = r.timestamp if r.timestamp_type == LOG_APPEND_TIME else self.record_time(
                    tp.topic, wall_ms)
                merge.add(Record(mtp, r.offset, ts, seq, r.key, r.value, now, publisher))
            self.next_offset[tp] = records[-1].offset + 1
        consumer = self.consumer
        for tp in self.assigned:
            lso = consumer.last_stable_offset(tp)
            if lso is None:
                lso = consumer.highwater(tp)
            if lso is None:
                merge.set_caught_up(TP(tp.topic, tp.partition), False)
                continue
            # Only records actually seen count: consumer.position() can run ahead of what
            # getmany has returned, and committing such an offset would skip records.
            pos = self.next_offset.get(tp, 0)
            merge.set_caught_up(TP(tp.topic, tp.partition), pos >= lso,
                                consumer.last_poll_timestamp(tp) or 0)
        released = merge.pop_ready(now)
        if released:
            self.held_times.extend(now - r.arrived for r in released)
        first = merge.first_unreleased()
        offsets = {tp: first.get(TP(tp.topic, tp.partition), self.next_offset.get(tp, 0))
                   for tp in self.assigned}
        offsets = {tp: o for tp, o in offsets.items() if o != self.positions.get(tp)}
        if not released and not offsets:
            return
        proc = self.processor
        if proc is None or not released:
            await self.write(released, offsets, None)
            return
        await proc.catch_up(self.ledger_end)
        async with proc.lock:
            await self.write(released, offsets, proc)

    def fusable(self, proc: FusedLedger) -> set[int]:
        """The ledger partitions to apply in this transaction (caller holds ``proc.lock``)."""
        newly, fused = proc.fuse(self.ledger_end)
        if newly:
            log.info("sequencer.fused", partitions=len(newly), fused=len(fused))
        return fused

    async def write(self, released: list[Record], offsets: dict[TopicPartition, int],
                    proc: FusedLedger | None) -> None:
        """One transaction: the released records' ledger and dead-letter appends, the
        sequencer's changes and input positions and, for fused partitions (see
        :meth:`attach`), the processor's outputs, changes and ledger positions."""
        fused = self.fusable(proc) if proc is not None else set()
        await self.producer.begin_transaction()
        outbox = self.outbox
        changes: list[Change] = []
        core = self.core
        ledger, deadletter, settlements = self.t.ledger, self.t.deadletter, self.t.settlements
        applied: dict[int, int] = {}  # fused ledger partition -> records appended to it
        for rec in released:
            out = core.process(rec, changes)
            if out is None:
                continue
            if isinstance(out, DeadLetterAppend):
                DEAD_LETTERS.inc()
                p = rec.tp.partition % await outbox.partitions(deadletter)
                outbox.add(deadletter, p, out.key, out.value, out.timestamp or None)
                continue
            headers = [
                (ORIGIN_HEADER, f"{rec.tp.topic}:{rec.tp.partition}:{rec.offset}".encode()),
            ]
            lp = await outbox.partition_for(ledger, out.key)
            for ts, old in out.replays:  # the hand-over at registration, before it
                outbox.add(ledger, lp, out.key, old, ts, [(REPLAY_HEADER, b"1")])
            outbox.add(ledger, lp, out.key, out.value, out.timestamp, headers)
            if lp in fused:
                assert proc is not None
                for encoded in proc.apply_fused(lp, out.key, out.event,
                                                [old for _ts, old in out.replays]):
                    outbox.add(settlements, lp, out.key, encoded, out.timestamp)
                applied[lp] = applied.get(lp, 0) + 1 + len(out.replays)
                self.fused_records += 1
        core.take_books(changes)
        stores = self.stores
        for store, p, key, value in changes:
            outbox.add(stores[store], p, key, value)
        self.add_positions(outbox, stores[COUNTS_STORE], offsets)
        if applied:
            assert proc is not None
            for topic, p, key, value in proc.fused_changes(applied, self.ledger_end):
                outbox.add(topic, p, key, value)
        sent = await outbox.flush()
        await self.fault_pause(sent)
        await self.commit()
        for (topic, p), s in sent.items():
            if topic == ledger:
                self.ledger_end[p] = await s.end()
        if applied:
            assert proc is not None
            proc.fused_committed({p: self.ledger_end[p] for p in applied})


async def read_books(settings: Settings) -> dict[int, SequencerCounts]:
    """The sequencer's committed books per input partition number (``counts`` changelog)."""
    topic = Topics.of(settings).changelog("sequencer", "counts")
    books: dict[int, SequencerCounts] = {}
    for p, key, value in await read_changelog(settings, topic, range(settings.partitions)):
        if key == COUNTS_KEY and value is not None:
            books[p] = decode_counts(value)
    return books
