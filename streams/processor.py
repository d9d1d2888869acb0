"""The settlement processor: the ledger in, ``settlements`` out.

Household state lives in two tables partitioned like the ledger, each backed by a compacted
changelog: ``processor-households`` (one msgpack value of ``dict[person_id, Person]`` per
household: persons and the visits being charged, in memory) and ``processor-visits`` (one
record per settled visit or one whose checkout is over, in a local RocksDB store by
default; see :mod:`yibao.streams.stores` for why).
Each polled batch is folded through the pure engine and written — output events, the
changed households and the next ledger offsets (position records in the households
changelog, see :mod:`yibao.streams.kafka.changelog`) — in one Kafka transaction. Output events go to
``settlements`` keyed by household on the *same partition number* as the ledger record, so
every settlements partition has exactly one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from yibao.metrics import ABORTS
from yibao.rules.engine import Engine
from yibao.schemas.codec import Codec
from yibao.schemas.events import InputEvent
from yibao.streams.cores import HOUSEHOLDS_STORE, VISITS_STORE, ProcessorCore, is_replay
from yibao.streams.fused import Write, to_fuse
from yibao.streams.kafka.changelog import (
    Position,
    decode_position,
    encode_position,
    iter_changelog,
    position_key,
    read_changelog,
    resolve_skips,
)
from yibao.streams.kafka.clients import StageConfig
from yibao.streams.kafka.fencing import OWNER_KEY, fence, wait_decided
from yibao.streams.kafka.outbox import Outbox
from yibao.streams.runtime import TxnStage, log
from yibao.streams.stores import KVStore, memory_stores
from yibao.streams.topics import Topics

#: How long a new owner waits for an owner record's transaction to be decided before it
#: fences the owner it names (a clean hand-over's markers take 1-3 ms; this only delays the
#: takeover from a dead owner that left a transaction open).
OWNER_SETTLE_S = 1.0


class Processor(TxnStage):
    name = "processor"

    def __init__(self, cfg: StageConfig, topics: Topics, engine: Engine,
                 store_factory: Callable[[int], KVStore] = memory_stores) -> None:
        super().__init__(cfg, [topics.ledger], RangePartitionAssignor)
        self.t = topics
        self.codec = Codec()
        self.core = ProcessorCore(engine, self.codec, store_factory)
        self.assigned: set[TopicPartition] = set()
        self.changelog = topics.changelog("processor", "households")
        self.visits_changelog = topics.changelog("processor", "visits")
        self.changelogs = {HOUSEHOLDS_STORE: self.changelog, VISITS_STORE: self.visits_changelog}
        self.outbox = Outbox(self.producer)
        # Ledger partitions the local sequencer applies in its own transaction (see
        # :mod:`yibao.streams.fused`): paused here, their positions moved on
        # by the sequencer's transactions.
        self.fused: set[TopicPartition] = set()
        self.progressed = asyncio.Event()  # set by every commit, for :meth:`wait_for`
        self._catch_up_after = 0.0  # see catch_up()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Restore the new partitions, fencing first whoever did not hand them over.

        Each partition's changelog names its owner (:data:`OWNER_KEY`): the owner's
        transactional id, written in a transaction of its own when it got the partition, and
        blanked when it hands it over in a rebalance. A name still there belongs to a worker
        that died or froze (a zombie past its session timeout, which may wake up and commit
        the transaction it was in the middle of): its id is fenced, which aborts that
        transaction, and the state is read again, before anything is processed.
        """
        new = assigned - self.assigned
        self.assigned = set(assigned)
        started = time.monotonic()
        parts = sorted(tp.partition for tp in new)
        stored, restored, stale = await self.restore_fencing_stale(parts)
        async for chunk in iter_changelog(self.cfg.bootstrap, self.visits_changelog, parts):
            for p in {c[0] for c in chunk}:
                self.core.restore_visits(p, ((k, v) for q, k, v in chunk if q == p))
            restored += len(chunk)
        positions = await resolve_skips(self.cfg.bootstrap, stored)
        resumed = await self.seek_to_positions(new, positions)
        self.consumer.resume(*new)
        await self.set_owner(new, self.cfg.transactional_id)
        log.info("processor.assigned", partitions=len(assigned), restored=restored,
                 positions_restored=len(positions), resumed=len(resumed),
                 fenced=sorted(stale), seconds=round(time.monotonic() - started, 3))

    async def restore_fencing_stale(self, parts: list[int]
                                    ) -> tuple[dict[TopicPartition, Position], int, set[str]]:
        """Restore ``parts``; fence the owners still named there that are not this worker
        (returned), then restore again.

        A name may still be there only because its hand-over is committed but its markers
        are not written yet (see :func:`yibao.streams.kafka.fencing.wait_decided`): before fencing, wait
        until every record written so far is decided, and read the names again. Only a dead
        or frozen owner's open transaction keeps them undecided past ``OWNER_SETTLE_S``."""
        stored, owners, restored = await self.restore(parts)
        stale = self.stale_owners(owners)
        if stale:
            pending = sorted(p for p, o in owners.items() if o in stale)
            if await wait_decided(self.cfg.bootstrap, self.changelog, pending,
                                  timeout=OWNER_SETTLE_S):
                stored, owners, restored = await self.restore(parts)
                stale = self.stale_owners(owners)
        if stale:
            await fence(self.cfg, stale)
            stored, owners, restored = await self.restore(parts)
        return stored, restored, stale

    def stale_owners(self, owners: dict[int, str]) -> set[str]:
        return {o for o in owners.values() if o and o != self.cfg.transactional_id}

    async def restore(self, parts: list[int]
                      ) -> tuple[dict[TopicPartition, Position], dict[int, str], int]:
        """Households, positions and owners of ``parts`` from the households changelog."""
        for p in parts:
            self.core.revoke(p)
            self.core.assign(p)
        restored = 0
        stored: dict[TopicPartition, Position] = {}
        owners: dict[int, str] = {}
        for p, key, value in await read_changelog(self.cfg.bootstrap, self.changelog, parts):
            pos = decode_position(key, value)
            if pos is not None:
                stored[TopicPartition(pos.topic, p)] = pos
            elif key == OWNER_KEY:
                owners[p] = (value or b"").decode()
            else:
                self.core.restore(p, key, value)
                restored += 1
        return stored, owners, restored

    async def set_owner(self, tps: set[TopicPartition], owner: str) -> None:
        """Write the owner records of ``tps`` in a transaction of their own (committed
        before any batch of theirs, so a later owner always finds the name)."""
        if not tps:
            return
        await self.producer.begin_transaction()
        for tp in tps:
            self.outbox.add(self.changelog, tp.partition, OWNER_KEY, owner.encode())
        await self.outbox.flush()
        await self.producer.commit_transaction()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= revoked
        for tp in revoked:
            self.core.revoke(tp.partition)
            self.positions.pop(tp, None)
        self.fused -= revoked
        try:
            await self.set_owner(revoked, "")  # handed over: the next owner fences nobody
        except Exception as e:  # fenced already (a zombie): the next owner fenced it
            ABORTS.labels("processor").inc()
            log.warning("processor.release_failed", error=repr(e))
        log.info("processor.revoked", partitions=len(revoked))

    def close(self) -> None:
        self.core.close()

    async def before_leaving(self) -> None:
        """Stopping: blank the owner records (the next owners fence nobody) and drop the
        partitions, so the local sequencer fuses none of them any more."""
        leaving, self.assigned = self.assigned, set()
        self.fused.clear()
        try:
            await self.set_owner(leaving, "")
        except Exception as e:  # fenced: the next owner fences this id again, harmlessly
            log.warning("processor.release_failed", error=repr(e))

    # -- the fused hand-over (yibao.streams.fused.FusedLedger) -----------------------------

    async def catch_up(self, ledger_end: Mapping[int, int]) -> None:
        """Wait (a little, at most once a second) until the committed positions reach what
        the local sequencer wrote, so its partitions can be fused: under a steady load this
        stage is always one transaction behind otherwise, and would never be."""
        targets = {tp: ledger_end[tp.partition] for tp in self.assigned
                   if tp not in self.fused and tp.partition in ledger_end
                   and self.positions.get(tp, 0) < ledger_end[tp.partition]}
        now = time.monotonic()
        if targets and now >= self._catch_up_after:
            self._catch_up_after = now + 1.0
            await self.wait_for(targets, 0.25)

    def fuse(self, ledger_end: Mapping[int, int]) -> tuple[list[int], set[int]]:
        """Hand the partitions whose every ledger record below :attr:`positions` is all
        there is (:func:`~yibao.streams.fused.to_fuse`) to the local sequencer, which holds
        :attr:`lock`: paused here from now on."""
        newly = to_fuse(self.assigned, self.fused, self.positions, ledger_end)
        for tp in newly:
            self.consumer.pause(tp)
            self.fused.add(tp)
        return [tp.partition for tp in newly], {tp.partition for tp in self.fused}

    def apply_fused(self, partition: int, key: bytes, event: InputEvent,
                    replays: Sequence[bytes]) -> list[bytes]:
        core, encode = self.core, self.codec.encode
        for old in replays:
            core.apply(partition, key, old, True)
        return [encode(o) for o in core.apply_event(partition, key, event)]

    def fused_changes(self, applied: Mapping[int, int], ledger_end: Mapping[int, int]
                      ) -> list[Write]:
        changelogs = self.changelogs
        out: list[Write] = [(changelogs[store], p, key, value)
                            for store, p, key, value in self.core.take_changes()]
        # The ledger positions, before the broker has given the records their offsets
        # (waiting for them cost a round trip, 2 ms a transaction): the end of the
        # sequencer's previous write to the partition, then this many records.
        key = position_key(self.t.ledger)
        out.extend((self.changelog, p, key, encode_position(ledger_end[p], n))
                   for p, n in applied.items())
        return out

    def fused_committed(self, ends: Mapping[int, int]) -> None:
        ledger = self.t.ledger
        self.positions.update({TopicPartition(ledger, p): o for p, o in ends.items()})
        self.maybe_commit_group_offsets(time.perf_counter())

    def unfuse_all(self) -> None:
        """Take the fused partitions back (the local sequencer stops writing the ledger):
        consume them again from where the sequencer's transactions left them."""
        for tp in self.fused:
            if tp in self.assigned:
                self.consumer.seek(tp, self.positions.get(tp, 0))
                self.consumer.resume(tp)
        self.fused.clear()

    async def wait_for(self, targets: dict[TopicPartition, int], timeout: float) -> bool:
        """Wait until the committed positions reach ``targets``; whether they did."""
        deadline = time.monotonic() + timeout
        while any(self.positions.get(tp, 0) < o for tp, o in targets.items()
                  if tp in self.assigned):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed.wait(), left)
        return True

    def extra_stats(self) -> dict[str, Any]:
        c = self.core.counts
        return {"visits_loaded": c.visits_loaded, "visits_stored": c.visits_stored,
                "fused_at_stop": len(self.fused)}

    async def step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        batch = self.fresh(batch, self.assigned)
        if not batch:
            return
        await self.producer.begin_transaction()
        outbox = self.outbox
        core, encode, settlements = self.core, self.codec.encode, self.t.settlements
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            p = tp.partition
            for r in records:
                for o in core.apply(p, r.key, r.value, is_replay(r.headers)):
                    outbox.add(settlements, p, r.key, encode(o), r.timestamp)
            offsets[tp] = records[-1].offset + 1
        changelogs = self.changelogs
        for store, p, key, value in core.take_changes():
            outbox.add(changelogs[store], p, key, value)
        self.add_positions(outbox, self.changelog, offsets)
        await self.fault_pause(await outbox.flush())
        await self.commit()
        self.progressed.set()
