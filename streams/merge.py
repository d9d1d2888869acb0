"""A timestamp-synchronised merge of several Kafka partitions, as Kafka Streams does it.

Every input partition is a FIFO queue; the merge repeatedly releases the head with the
smallest key ``(timestamp_ms, seq)`` — ``seq`` is the publisher's sequence number header,
which breaks ties in event time by publication order (the worked example has 17 events at
one instant). A record may only be released when no assigned partition could still deliver
a smaller one: every partition has a buffered record, or it is *caught up* (its position is
at its high watermark) and the candidate has waited ``max_wait`` seconds for it
(Kafka Streams' ``max.task.idle.ms``).

The wait covers records still in flight from the publisher (in its batches, or appended
to another partition a moment later). yibao's publishers (``yibao publish``, the gateway
SDK) number their records without gaps (headers ``yibao-publisher``, ``yibao-seq``), so the
merge can see when nothing of that publisher can still be in flight: every earlier record of
it has been released or is buffered here (behind it in merge order: a record published
later with an earlier event time, say a backdated correction, fetched with its predecessor).
Such a record goes at once, without the wait — at 1,000 checkouts/s nearly every record,
since some partition is nearly always idle. Records of unknown
publishers (or after a gap, or the first one seen of a publisher) wait as before.

Records leave each partition in offset order, so "committed offset = first unreleased
record" holds and a restart re-reads exactly what was not released.

Pure: no I/O, no clock (``now`` is passed in), so it is tested without a broker.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple


class TP(NamedTuple):
    topic: str
    partition: int


@dataclass(slots=True)
class Record:
    tp: TP
    offset: int
    timestamp: int  # ms
    seq: int
    key: bytes | None
    value: bytes
    arrived: float = 0.0  # monotonic seconds when buffered
    publisher: bytes | None = None  # yibao-publisher header (its seq has no gaps)


#: Publishers remembered (their next seq); the least recently seen is forgotten beyond this.
PUBLISHERS_MAX = 4096
#: Released seqs kept above a publisher's hole; beyond this the hole is taken as lost.
AHEAD_MAX = 1024
#: How far below a record the merge looks for its publisher's earlier seqs among the
#: buffered records; a wider gap waits as before.
BUFFERED_GAP_MAX = 64


@dataclass(slots=True)
class PublisherSeq:
    """What of one publisher's gap-free numbering has been released: everything below
    ``next``, and the seqs in ``ahead`` (released above a hole, e.g. by the wait running out
    or by event time). ``next`` is the lowest seq not released yet — only that record can be
    released knowing nothing earlier of its publisher is still in flight."""

    next: int
    ahead: set[int] = field(default_factory=set)

    def released(self, seq: int) -> None:
        if seq < self.next:
            return
        if seq > self.next:
            self.ahead.add(seq)
            if len(self.ahead) <= AHEAD_MAX:
                return
            # The hole is not coming (a publisher crashed): go on from the lowest seq released
            # above it. (It stays in ``ahead`` no more: a seq below ``next`` left there was
            # picked again by every later overflow, and the walk back up made each release
            # cost thousands of steps, which stalled the sequencer for 30 s in bench-live.)
            self.next = min(self.ahead)
        self.ahead.discard(self.next)
        self.next += 1
        while self.next in self.ahead:
            self.ahead.discard(self.next)
            self.next += 1


@dataclass
class TimestampMerge:
    """The merge state. The heads of the non-empty queues are kept in a heap, and the empty
    queues are counted (still being fetched, or caught up), so releasing a record costs a
    heap operation rather than a scan of every partition (32 for four topics of 8: the scan
    was 8% of the worker's time under cProfile at 1,000 checkouts/s)."""

    max_wait: float = 0.0
    queues: dict[TP, deque[Record]] = field(default_factory=dict)
    caught_up: dict[TP, bool] = field(default_factory=dict)
    #: publisher -> which of its seqs have been released
    publishers: OrderedDict[bytes, PublisherSeq] = field(default_factory=OrderedDict)
    #: publisher -> seqs of its records buffered here, not yet released
    buffered_seqs: dict[bytes, set[int]] = field(default_factory=dict)
    released_at_once: int = 0  # would have waited for an idle partition, but in sequence
    #: (timestamp, seq, queue index, tp) of every non-empty queue's head; the index (order
    #: of assignment) breaks ties as the scan over ``queues`` in insertion order did
    _heads: list[tuple[int, int, int, TP]] = field(default_factory=list)
    _index: dict[TP, int] = field(default_factory=dict)
    _next_index: int = 0
    _empty_fetching: int = 0  # empty queues not caught up: nothing may be released
    _empty_caught_up: int = 0  # empty queues at their end: the wait applies

    def assign(self, tps: set[TP]) -> None:
        """Set the assigned partitions; queues of revoked ones are dropped (re-read later)."""
        for tp in list(self.queues):
            if tp not in tps:
                del self.queues[tp]
                self.caught_up.pop(tp, None)
                self._index.pop(tp, None)
        for tp in tps:
            if tp not in self.queues:
                self.queues[tp] = deque()
                self._index[tp] = self._next_index
                self._next_index += 1
            self.caught_up.setdefault(tp, False)
        self.buffered_seqs.clear()
        for q in self.queues.values():
            for r in q:
                if r.publisher is not None:
                    self.buffered_seqs.setdefault(r.publisher, set()).add(r.seq)
        self._heads = [(q[0].timestamp, q[0].seq, self._index[tp], tp)
                       for tp, q in self.queues.items() if q]
        heapq.heapify(self._heads)
        empty = [tp for tp, q in self.queues.items() if not q]
        self._empty_caught_up = sum(1 for tp in empty if self.caught_up[tp])
        self._empty_fetching = len(empty) - self._empty_caught_up

    def add(self, record: Record) -> None:
        tp = record.tp
        q = self.queues[tp]
        if not q:
            if self.caught_up[tp]:
                self._empty_caught_up -= 1
            else:
                self._empty_fetching -= 1
            heapq.heappush(self._heads, (record.timestamp, record.seq, self._index[tp], tp))
        q.append(record)
        if record.publisher is not None:
            self.buffered_seqs.setdefault(record.publisher, set()).add(record.seq)

    def set_caught_up(self, tp: TP, value: bool) -> None:
        old = self.caught_up.get(tp)
        if old is None or old == value:
            return
        self.caught_up[tp] = value
        if not self.queues[tp]:
            delta = 1 if value else -1
            self._empty_caught_up += delta
            self._empty_fetching -= delta

    def buffered(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def first_unreleased(self) -> dict[TP, int]:
        """Offset of the first buffered record per partition that has one."""
        return {tp: q[0].offset for tp, q in self.queues.items() if q}

    def pop_ready(self, now: float) -> list[Record]:
        """Release, in merge order, every record that can be released now."""
        out: list[Record] = []
        heads, queues = self._heads, self.queues
        while heads and not self._empty_fetching:
            _ts, _seq, index, tp = heads[0]
            q = queues[tp]
            head = q[0]
            if (self._empty_caught_up and self.max_wait > 0
                    and now - head.arrived < self.max_wait):
                if not self._in_sequence(head):
                    return out
                self.released_at_once += 1
            q.popleft()
            if q:
                nxt = q[0]
                heapq.heapreplace(heads, (nxt.timestamp, nxt.seq, index, tp))
            else:
                heapq.heappop(heads)
                if self.caught_up[tp]:
                    self._empty_caught_up += 1
                else:
                    self._empty_fetching += 1
            out.append(head)
            if head.publisher is not None:
                self._released(head)
        return out

    def _in_sequence(self, rec: Record) -> bool:
        """Nothing published before ``rec`` by its publisher can still be in flight: every
        earlier seq is released, or buffered here."""
        if rec.publisher is None:
            return False
        known = self.publishers.get(rec.publisher)
        if known is None:
            return False
        first = known.next
        if first == rec.seq:
            return True
        if not 0 < rec.seq - first <= BUFFERED_GAP_MAX:
            return False
        buffered, ahead = self.buffered_seqs.get(rec.publisher, ()), known.ahead
        return all(s in buffered or s in ahead for s in range(first, rec.seq))

    def _released(self, rec: Record) -> None:
        assert rec.publisher is not None
        buffered = self.buffered_seqs.get(rec.publisher)
        if buffered is not None:
            buffered.discard(rec.seq)
            if not buffered:
                del self.buffered_seqs[rec.publisher]
        pubs = self.publishers
        known = pubs.get(rec.publisher)
        if known is None:  # first seen: what came before it is unknown, so it starts here
            pubs[rec.publisher] = PublisherSeq(rec.seq + 1)
            if len(pubs) > PUBLISHERS_MAX:
                pubs.popitem(last=False)
        else:
            known.released(rec.seq)
            pubs.move_to_end(rec.publisher)

    def next_deadline(self) -> float | None:
        """When a record held back only by idle partitions may go (for the poll timeout)."""
        if self.max_wait <= 0:
            return None
        heads = [q[0].arrived for q in self.queues.values() if q]
        return min(heads) + self.max_wait if heads else None
