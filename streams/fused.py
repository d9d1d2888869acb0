"""The fused hand-over: the sequencer settles the ledger partitions its own worker's processor
owns, in its own transaction (one Kafka transaction per checkout instead of two).

:class:`FusedLedger` is all the sequencer knows of that processor; the processor implements
it (:class:`yibao.streams.processor.Processor`), and the sequencer never imports the processor.

Exactly-once holds because a partition is only applied in the sequencer's transaction
("fused") once the processor has committed everything before it. The sequencer is the only
live writer of the ledger while it holds the inputs, and after it takes them over its first
write to a partition always goes through the ledger; the partition is fused once the
processor's committed position has reached the end of the sequencer's last write (so also
everything any predecessor wrote before: :func:`to_fuse`). The processor pauses a fused
partition and takes it back, from the position the sequencer's transactions left, when the
sequencer loses the inputs or the processor the partition. The processor's lock is held for
the whole transaction, so a rebalance of the processor never lands inside one, and its state
changes are all the sequencer's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from aiokafka import TopicPartition

from yibao.schemas.events import InputEvent

#: A record for the sequencer's transaction: (topic, partition, key, value or None).
Write = tuple[str, int, bytes, bytes | None]


class FusedLedger(Protocol):
    """The local processor as the sequencer's transaction sees it (ledger partitions by
    number; ``ledger_end``: per ledger partition, the offset after the sequencer's last
    committed write to it)."""

    #: held by the sequencer around each fused transaction and while it takes partitions back
    lock: asyncio.Lock

    async def catch_up(self, ledger_end: Mapping[int, int]) -> None:
        """Wait briefly for the processor to commit what the sequencer wrote to its
        partitions, so they can be fused (under a steady load it would never be)."""

    def fuse(self, ledger_end: Mapping[int, int]) -> tuple[list[int], set[int]]:
        """Fuse the partitions that may be fused now; (newly fused, all fused)."""

    def apply_fused(self, partition: int, key: bytes, event: InputEvent,
                    replays: Sequence[bytes]) -> list[bytes]:
        """Fold one ledger record (after the person's hand-over ``replays``, if any) into the
        household state; the encoded output events, for ``settlements``."""

    def fused_changes(self, applied: Mapping[int, int], ledger_end: Mapping[int, int]
                      ) -> list[Write]:
        """The processor's changelog records of this transaction: its state changes, and its
        ledger positions as "``ledger_end``, then ``applied`` records" (written before the
        broker has given the records their offsets)."""

    def fused_committed(self, ends: Mapping[int, int]) -> None:
        """The transaction committed: the processor's positions in ``ends``' partitions are
        now these offsets."""

    def unfuse_all(self) -> None:
        """Take every fused partition back (the sequencer stops writing the ledger); the
        caller holds :attr:`lock`."""


def to_fuse(assigned: Collection[TopicPartition], fused: Collection[TopicPartition],
            positions: Mapping[TopicPartition, int], ledger_end: Mapping[int, int]
            ) -> list[TopicPartition]:
    """The processor's partitions that may be fused now: those whose committed position
    has reached the end of this sequencer's last write to them. One it has not written
    since it took the inputs over may still hold a predecessor's records the processor has
    not read (and the ledger's end offsets cannot tell: a commit's markers are written
    after the commit returns), so it waits for this sequencer's first write."""
    return [tp for tp in assigned if tp not in fused and tp.partition in ledger_end
            and positions.get(tp, 0) >= ledger_end[tp.partition]]
