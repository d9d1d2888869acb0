"""The tier-B audit stage: ``settlements`` in, ``FacilityFlagRaised`` on ``audit`` out.

Keyed by facility: :class:`~yibao.rules.facility_audit.FacilityWindows` keeps one state per
facility, re-keyed from the settlements' households in this process, and writes each
facility's flags to ``audit`` keyed by ``facility_id``. Why one process reads every
settlements partition (a hot-standby singleton, :class:`SingletonAssignor`, like the
sequencer): a window closes on event time, the smallest of the partitions' latest service
dates, which only a reader of them all knows; the work per claim is a few dict operations,
far below what settling it costs.

It runs on the project's own transactional loop (:mod:`yibao.streams.runtime`) and not on
faust-streaming's windowed tables: docs/architecture.md says why. Each batch's flags, the
changed facility states and the input positions go out in one transaction, and the state
is a compacted changelog (``audit-facilities-changelog``), so a restart or a SIGKILL
resumes with exactly the state of the last committed positions and gives the same flags.
The flags' ids derive from rule, facility and window, so even a delivery repeated by some
other route is a duplicate a projection drops.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from yibao.metrics import ABORTS
from yibao.rules.facility_audit import FacilityWindows
from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimReversed, ClaimSettled
from yibao.streams.kafka.changelog import decode_position, read_changelog
from yibao.streams.kafka.clients import SingletonAssignor, StageConfig, stop_later
from yibao.streams.runtime import SingletonStage, log
from yibao.streams.topics import Topics

#: Changelog keys: the marks (one record), and one record per facility (this prefix, then
#: its id). The NUL byte keeps them apart from the position records.
MARKS_KEY = b"\x00marks"
FACILITY_PREFIX = b"f:"
#: Only these types count; the others are skipped without decoding.
_COUNTED = (b'"type":"ClaimSettled"', b'"type":"ClaimReversed"')


def key_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2): a settlement's
    partition is its household's, so file mode can read a file as the stage reads the topic."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class FacilityAudit(SingletonStage):
    name = "audit"

    def __init__(self, cfg: StageConfig, topics: Topics) -> None:
        super().__init__(cfg, [topics.settlements], SingletonAssignor)
        self.t = topics
        self.codec = Codec()
        self.core = FacilityWindows(1)
        self.changelog = topics.changelog("audit", "facilities")
        self.assigned: set[TopicPartition] = set()
        self.flags = 0

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        new = assigned - self.assigned
        self.assigned = set(assigned)
        if not new:
            return
        if not self.active:
            await self.take_over()
        started = time.monotonic()
        n = await self.outbox.partitions(self.t.settlements)
        core = self.core = FacilityWindows(n)
        changelog_parts = range(await self.outbox.partitions(self.changelog))
        stored: dict[TopicPartition, int] = {}
        restored = 0
        for _p, key, value in await read_changelog(self.cfg.bootstrap, self.changelog,
                                                   changelog_parts):
            pos = decode_position(key, value)
            if pos is not None:
                stored[TopicPartition(pos.topic, _p)] = pos.offset
            elif key == MARKS_KEY and value is not None:
                core.restore_marks(msgspec.msgpack.decode(value, type=list[int]))
            elif key.startswith(FACILITY_PREFIX):
                core.restore_facility(key[len(FACILITY_PREFIX):].decode(), value)
                restored += 1
        core.restored()
        # every partition again: the state goes with the positions of all of them
        await self.seek_to_positions(set(assigned), stored)
        log.info("audit.assigned", partitions=len(assigned), restored=restored,
                 seconds=round(time.monotonic() - started, 3))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= revoked
        for tp in revoked:
            self.positions.pop(tp, None)
        if not self.assigned and self.active:
            self.active = False
            ABORTS.labels("audit").inc()
            stop_later(self.producer)
        log.info("audit.revoked", partitions=len(revoked))

    def extra_stats(self) -> dict[str, Any]:
        return {"flags": self.flags, "facilities": len(self.core.facilities)}

    async def step(self, batch: dict[TopicPartition, list[Any]]) -> None:
        batch = self.fresh(batch, self.assigned)
        if not batch:
            return
        await self.producer.begin_transaction()
        outbox, core, codec, audit = self.outbox, self.core, self.codec, self.t.audit
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for r in records:
                head = r.value[:40]
                if not any(t in head for t in _COUNTED):
                    continue
                out = codec.decode_output(r.value)
                if isinstance(out, ClaimSettled | ClaimReversed):
                    for flag in core.feed(out, tp.partition):
                        key = flag.facility_id.encode()
                        outbox.add(audit, await outbox.partition_for(audit, key), key,
                                   codec.encode(flag))
                        self.flags += 1
            offsets[tp] = records[-1].offset + 1
        facilities, marks = core.take_changes()
        n = await outbox.partitions(self.changelog)
        for facility, value in facilities.items():
            key = FACILITY_PREFIX + facility.encode()
            outbox.add(self.changelog, key_partition(facility, n), key, value)
        if marks is not None:
            outbox.add(self.changelog, 0, MARKS_KEY, msgspec.msgpack.encode(marks))
        self.add_positions(outbox, self.changelog, offsets)
        await self.fault_pause(await outbox.flush())
        await self.commit()
