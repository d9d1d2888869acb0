"""A merge of several Kafka partitions in the order the broker appended their records.

Every input partition is a FIFO queue: a person's events on one topic apply in partition
order (one key, one partition). Across partitions the merge releases the head with the
smallest key ``(timestamp_ms, seq)``; the timestamp is the broker's append time (the input
topics are ``message.timestamp.type=LogAppendTime``), so no producer's clock decides the
order and a record stamped a year ahead holds back no one. A record may only be released
when no assigned partition could still deliver an earlier one: every partition has a
buffered record, or it is *caught up* (its position is at its last stable offset) and the
candidate has waited ``max_wait`` seconds for records still in flight (Kafka Streams'
``max.task.idle.ms``). "Caught up" is only as new as the fetch response that said so: a
partition left out of the last fetches (the consumer still held records of it) may have
received records since, so an idle partition vouches only for candidates appended before
its last poll (``polled_at``); a later candidate waits for a newer fetch. Without this a
checkout could overtake registrations appended before it, whenever the consumer was slow
to fetch their partition again.

yibao's own publishers (``yibao publish``, the gateway SDK) number their records from 0
without gaps (headers ``yibao-publisher``, ``yibao-seq``). The numbering earns its place twice:

* **A publisher's records go in its own order.** The broker stamps a whole batch with one
  append time, and a producer's batches to different partitions land in whatever order its
  requests do, so append time alone cannot keep a file's order across partitions (a
  household's persons, a visit's opening on one topic and its charges on another), and
  ``yibao publish`` of a log must give exactly ``yibao settle``'s outputs over the file's
  order. So a record whose publisher's next record is buffered behind another record
  waits until that one has gone (the one in front of it goes first), and one whose
  predecessor is not buffered yet waits for it (with no gaps in the numbering it is in
  flight), at most ``hole_wait`` (a publisher that died with a batch unsent).
* **No wait for what is in sequence.** A record whose publisher's earlier records have all
  been released goes at once, without ``max_wait``: nothing of its publisher can still be in
  flight before it — at 1,000 checkouts/s nearly every record, since some partition is
  nearly always idle.

Records of any other producer (no headers) are merged by append time and the wait alone.
A header is only a hint among one publisher's own records: a forged one can hold the merge
back by ``hole_wait`` at most, and never reorders a person's events on one topic.

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
    timestamp: int  # ms: the broker's append time
    seq: int  # yibao-seq header (0 without one)
    key: bytes | None
    value: bytes
    arrived: float = 0.0  # monotonic seconds when buffered
    publisher: bytes | None = None  # yibao-publisher header (its seq has no gaps)


#: Publishers remembered (their next seq); the least recently seen is forgotten beyond this.
PUBLISHERS_MAX = 4096
#: Released seqs kept above a publisher's hole; beyond this the hole is taken as lost.
AHEAD_MAX = 1024
#: How long a publisher's record waits for an earlier one of the same publisher that is not
#: here yet (in flight: a batch appended after a later one). A hole that outlasts this is
#: taken as lost (a publisher that died with a batch unsent) and the merge goes on.
HOLE_WAIT_S = 1.0
#: How soon a candidate held for a newer fetch of an idle partition is looked at again (the
#: sequencer's fetch wait is 5 ms, so a fresh response is never far).
REFETCH_S = 0.005
#: ``polled_at`` of a partition whose poll time is not known: fresh (pure tests).
ALWAYS = 2**62


@dataclass(slots=True)
class PublisherSeq:
    """What of one publisher's gap-free numbering has been released: everything below
    ``next``, and the seqs in ``ahead`` (released above a hole, when the hole wait ran out).
    ``next`` is the lowest seq not released yet — only that record can be released knowing
    nothing earlier of its publisher is still in flight."""

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


_GO = True
_WAIT = False


@dataclass
class TimestampMerge:
    """The merge state. The heads of the non-empty queues are kept in a heap, and the empty
    queues are counted (still being fetched, or caught up), so releasing a record costs a
    heap operation rather than a scan of every partition (the scan was 8% of the worker's
    time under cProfile at 1,000 checkouts/s). A record released from a queue that is not
    the heap's top leaves that queue's entry behind; such stale entries are dropped when
    they come up."""

    max_wait: float = 0.0
    hole_wait: float = HOLE_WAIT_S
    #: topic -> rank among records appended in the same millisecond (lower first; then by
    #: topic name and partition): LogAppendTime has millisecond resolution, and a tie must
    #: be broken the same way on every run and after every restart
    rank: dict[str, int] = field(default_factory=dict)
    queues: dict[TP, deque[Record]] = field(default_factory=dict)
    caught_up: dict[TP, bool] = field(default_factory=dict)
    #: tp -> when (ms, the consumer's wall clock) its position and last stable offset were
    #: last fetched: an idle partition vouches for records appended before that only
    polled_at: dict[TP, int] = field(default_factory=dict)
    #: publisher -> which of its seqs have been released
    publishers: OrderedDict[bytes, PublisherSeq] = field(default_factory=OrderedDict)
    #: publisher -> seq -> the partition where that record is buffered, not yet released
    buffered_seqs: dict[bytes, dict[int, TP]] = field(default_factory=dict)
    released_at_once: int = 0  # would have waited for an idle partition, but in sequence
    #: (timestamp, seq, queue index, offset, tp) of every non-empty queue's head (and stale
    #: entries); the index (order of assignment, by ``rank``) breaks ties
    _heads: list[tuple[int, int, int, int, TP]] = field(default_factory=list)
    _index: dict[TP, int] = field(default_factory=dict)
    _next_index: int = 0
    _empty_fetching: int = 0  # empty queues not caught up: nothing may be released
    _empty_caught_up: int = 0  # empty queues at their end: the wait applies
    #: the oldest ``polled_at`` of the empty caught-up queues: candidates appended after it
    #: wait for a newer fetch
    _horizon: int = ALWAYS
    #: publishers not remembered -> their lowest buffered seq
    _lowest_unknown: dict[bytes, int] = field(default_factory=dict)
    #: when the record the last pop_ready stopped at may go (None: nothing waits on time)
    _wake_at: float | None = None

    def assign(self, tps: set[TP]) -> None:
        """Set the assigned partitions; queues of revoked ones are dropped (re-read later)."""
        for tp in list(self.queues):
            if tp not in tps:
                del self.queues[tp]
                self.caught_up.pop(tp, None)
                self.polled_at.pop(tp, None)
                self._index.pop(tp, None)
        for tp in sorted(tps, key=lambda tp: (self.rank.get(tp.topic, len(self.rank)), tp)):
            if tp not in self.queues:
                self.queues[tp] = deque()
                self._index[tp] = self._next_index
                self._next_index += 1
            self.caught_up.setdefault(tp, False)
        self.buffered_seqs.clear()
        for tp, q in self.queues.items():
            for r in q:
                if r.publisher is not None:
                    self.buffered_seqs.setdefault(r.publisher, {})[r.seq] = tp
        self._lowest_unknown = {p: min(seqs) for p, seqs in self.buffered_seqs.items()
                                if p not in self.publishers}
        self._heads = [(q[0].timestamp, q[0].seq, self._index[tp], q[0].offset, tp)
                       for tp, q in self.queues.items() if q]
        heapq.heapify(self._heads)
        empty = [tp for tp, q in self.queues.items() if not q]
        self._empty_caught_up = sum(1 for tp in empty if self.caught_up[tp])
        self._empty_fetching = len(empty) - self._empty_caught_up
        self._wake_at = None

    def add(self, record: Record) -> None:
        tp = record.tp
        q = self.queues[tp]
        if not q:
            if self.caught_up[tp]:
                self._empty_caught_up -= 1
            else:
                self._empty_fetching -= 1
            heapq.heappush(self._heads, (record.timestamp, record.seq, self._index[tp],
                                         record.offset, tp))
        q.append(record)
        pub = record.publisher
        if pub is not None:
            self.buffered_seqs.setdefault(pub, {})[record.seq] = tp
            if pub not in self.publishers:
                low = self._lowest_unknown.get(pub)
                if low is None or record.seq < low:
                    self._lowest_unknown[pub] = record.seq

    def set_caught_up(self, tp: TP, value: bool, polled_at: int = ALWAYS) -> None:
        """Whether ``tp`` is at its end, as of the fetch at ``polled_at`` (ms)."""
        old = self.caught_up.get(tp)
        if old is None:
            return
        self.polled_at[tp] = polled_at
        if old == value:
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
        self._wake_at = None
        self._horizon = min((self.polled_at.get(tp, ALWAYS) for tp, q in self.queues.items()
                             if not q and self.caught_up[tp]), default=ALWAYS)
        while not self._empty_fetching:
            top = self._top()
            if top is None:
                break
            tp = self._choose(top, now)
            if tp is None:
                break
            out.append(self._pop(tp))
        return out

    def next_deadline(self) -> float | None:
        """When the record the merge is waiting on may go (for the poll timeout)."""
        return self._wake_at

    # -- choosing ----------------------------------------------------------------------------

    def _top(self) -> TP | None:
        """The partition whose head is first in append-time order (stale entries dropped)."""
        heads, queues = self._heads, self.queues
        while heads:
            entry = heads[0]
            q = queues.get(entry[4])
            if q and q[0].offset == entry[3]:
                return entry[4]
            heapq.heappop(heads)
        return None

    def _choose(self, top: TP, now: float) -> TP | None:
        """The partition to release from now, starting at ``top``: its head, or the record
        that must go before it (see the module docstring); ``None`` to wait."""
        tp, seen = top, {top}
        while True:
            verdict = self._judge(self.queues[tp][0], now)
            if verdict is _GO:
                return tp
            if verdict is _WAIT:
                return None
            assert isinstance(verdict, TP)
            if verdict in seen:  # two publishers waiting on each other: append time decides
                return top
            seen.add(verdict)
            tp = verdict

    def _judge(self, head: Record, now: float) -> bool | TP:
        """Whether ``head`` may go now (``_GO``), must wait (``_WAIT``), or must let the
        record in front of its publisher's earlier one go first (that record's partition)."""
        if head.timestamp > self._horizon and self._empty_caught_up:
            return self._wait_until(now + REFETCH_S)  # an idle partition's news is older
        idle_wait = (self._empty_caught_up > 0 and self.max_wait > 0
                     and now - head.arrived < self.max_wait)
        pub = head.publisher
        if pub is None:
            return self._wait_until(head.arrived + self.max_wait) if idle_wait else _GO
        known = self.publishers.get(pub)
        if known is None:
            low = self._lowest_unknown.get(pub, head.seq)
            if low < head.seq:
                return self.buffered_seqs[pub][low]
            if head.seq == 0:  # its first record: nothing of it can be in flight before
                self.released_at_once += idle_wait
                return _GO
            # first seen after a restart (or its first records are still in flight)
            if now - head.arrived < self.max_wait:
                return self._wait_until(head.arrived + self.max_wait)
            return _GO
        if head.seq <= known.next:  # in sequence (or late, below a hole given up on)
            self.released_at_once += idle_wait
            return _GO
        where = self.buffered_seqs.get(pub, {}).get(known.next)
        if where is not None:
            return where
        if now - head.arrived < self.hole_wait:  # the hole is in flight
            return self._wait_until(head.arrived + self.hole_wait)
        return _GO

    def _wait_until(self, when: float) -> bool:
        self._wake_at = when
        return _WAIT

    # -- releasing ---------------------------------------------------------------------------

    def _pop(self, tp: TP) -> Record:
        q = self.queues[tp]
        rec = q.popleft()
        heads = self._heads
        on_top = heads[0][4] == tp and heads[0][3] == rec.offset
        if q:
            nxt = q[0]
            entry = (nxt.timestamp, nxt.seq, self._index[tp], nxt.offset, tp)
            if on_top:
                heapq.heapreplace(heads, entry)
            else:  # its old entry is stale now
                heapq.heappush(heads, entry)
        else:
            if on_top:
                heapq.heappop(heads)
            if self.caught_up[tp]:
                self._empty_caught_up += 1
                self._horizon = min(self._horizon, self.polled_at.get(tp, ALWAYS))
            else:
                self._empty_fetching += 1
        if rec.publisher is not None:
            self._released(rec)
        return rec

    def _released(self, rec: Record) -> None:
        pub = rec.publisher
        assert pub is not None
        buffered = self.buffered_seqs.get(pub)
        if buffered is not None:
            buffered.pop(rec.seq, None)
            if not buffered:
                del self.buffered_seqs[pub]
        pubs = self.publishers
        known = pubs.get(pub)
        if known is None:  # first seen: what came before it is unknown, so it starts here
            pubs[pub] = PublisherSeq(rec.seq + 1)
            self._lowest_unknown.pop(pub, None)
            if len(pubs) > PUBLISHERS_MAX:
                old, _ = pubs.popitem(last=False)
                left = self.buffered_seqs.get(old)
                if left:
                    self._lowest_unknown[old] = min(left)
        else:
            known.released(rec.seq)
            pubs.move_to_end(pub)
