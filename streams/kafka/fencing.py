"""Fencing zombies: bumping a transactional id's epoch, and waiting until what was written to
a partition is decided before trusting its owner record.

A processor's transactional id is ``<prefix>processor-<worker_id>`` (partitions move between
workers); each changelog partition names its owner (:data:`OWNER_KEY`), blanked when the owner
hands it over in a rebalance, so a worker that gets a partition whose owner is still named
(dead, or a zombie) fences that id, which aborts its open transaction at once, before
restoring (:meth:`yibao.streams.processor.Processor.on_assigned`). The sequencer fences by
starting its producer with the id every worker's sequencer shares
(:meth:`yibao.streams.sequencer.Sequencer.take_over`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable

from aiokafka import TopicPartition

from yibao.streams.kafka.clients import StageConfig, log, make_producer, reader, short_lived
from yibao.streams.kafka.options import KafkaTarget

#: Key of the owner record in a processor changelog partition: the transactional id of the
#: worker that owns the partition, or empty once it has handed the partition over cleanly.
OWNER_KEY = b"\x00owner"


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
    async with short_lived(reader(bootstrap, isolation_level="read_uncommitted")) as written:
        high = await written.end_offsets(tps)
    deadline = time.monotonic() + timeout
    async with short_lived(reader(bootstrap, isolation_level="read_committed")) as stable:
        while True:
            lso = await stable.end_offsets(tps)
            if all(lso[tp] >= high[tp] for tp in tps):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
