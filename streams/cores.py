"""The logic of the two live stages, without any I/O: what the Kafka loops call per record.

* :class:`SequencerCore` — validate with the file-mode :class:`~yibao.schemas.codec.Codec`,
  dead-letter malformed input, drop a repeated ``event_id`` within an event-time window
  (:class:`~yibao.rules.dedup.DedupWindow`, the one rule file mode uses too), resolve
  person → household, and say what to append to the ledger. Its state is partitioned by
  the murmur2 hash of the ``person_id`` (:meth:`SequencerCore.state_partition`: the input
  partition of a producer that partitions as Kafka's Java client does, so a person's
  registration, visits and retries share it whatever topic or producer they came from) and
  its books by input partition; every change is reported as a changelog record, so the
  Kafka loop can write it in the same transaction as the ledger record and a restart
  restores exactly the state that goes with the committed input positions.
* :class:`ProcessorCore` — the household state (``dict[person_id, Person]``, stored as one
  msgpack value per household) and the pure engine: ledger record in, output events out.

Keeping these pure is what lets ``tests/test_streams_cores.py`` check, without a broker,
that sharding the state by household gives exactly the outputs of ``yibao settle``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
from aiokafka.partitioner import murmur2

from yibao.rules.dedup import DEFAULT_WINDOW, DedupWindow, event_ms
from yibao.rules.engine import Engine
from yibao.rules.state import Person, State, Visit
from yibao.schemas.codec import Codec
from yibao.schemas.events import (
    InputEvent,
    OutputEvent,
    PaymentMade,
    PersonRegistered,
    VisitClosed,
    VisitRefunded,
)
from yibao.schemas.exceptions import SchemaError
from yibao.streams.merge import Record
from yibao.streams.stores import KVStore, memory_stores

# A changelog change: (store name, partition, key, value or None for a tombstone).
Change = tuple[str, int, bytes, bytes | None]

DEDUP_STORE = "dedup"
PERSONS_STORE = "persons"
HOUSEHOLDS_STORE = "households"
VISITS_STORE = "visits"
COUNTS_STORE = "counts"
COUNTS_KEY = b"counts"
STASH_STORE = "stash"

#: Ledger header of a record appended again under a person's household at registration
#: (see :class:`SequencerCore`): the processor applies it to the state without outputs,
#: projections do not count it, and file mode skips it as a repeated ``event_id``.
REPLAY_HEADER = "yibao-replay"

#: At most this many events of a not-yet-registered person are kept for the hand-over to
#: the household; older ones are dropped (with a warning count in the books).
STASH_MAX = 256


@functools.lru_cache(maxsize=1 << 16)
def _murmur2(key: bytes) -> int:
    """Kafka's default key hash (aiokafka's is pure Python, 4 us a key: memoised)."""
    return murmur2(key) & 0x7FFFFFFF


def is_replay(headers: object) -> bool:
    """Whether a ledger record's headers (aiokafka's sequence of pairs) mark a replay."""
    return bool(headers) and any(k == REPLAY_HEADER for k, _ in headers)  # type: ignore[attr-defined]


@dataclass(slots=True)
class LedgerAppend:
    key: bytes  # household_id (person_id for a person not registered yet)
    value: bytes  # the original bytes of the event, validated
    timestamp: int  # occurred_at, ms
    event: InputEvent
    #: (timestamp, bytes) of the person's events before registration, to append first under
    #: the household with the :data:`REPLAY_HEADER` (only on a PersonRegistered)
    replays: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class DeadLetterAppend:
    key: bytes | None
    value: bytes  # JSON: origin, error, path, raw / raw_base64
    timestamp: int


@dataclass
class SequencerCounts:
    """The sequencer's books: every record read is sequenced (appended to the ledger), a
    duplicate, or dead-lettered. Kept per input partition number in the ``counts`` changelog,
    written in the transaction that commits the offsets, so they are exact across crashes and
    an auditor can check them against the topics (``yibao books``)."""

    read: int = 0
    sequenced: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    replayed: int = 0  # extra ledger records: hand-overs at registration (not read)
    stash_dropped: int = 0  # pre-registration events beyond STASH_MAX (not handed over)

    def add(self, other: SequencerCounts) -> None:
        self.read += other.read
        self.sequenced += other.sequenced
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.replayed += other.replayed
        self.stash_dropped += other.stash_dropped


_STASH_ENCODER = msgspec.msgpack.Encoder()
_STASH_DECODER = msgspec.msgpack.Decoder(list[tuple[int, bytes]])
_COUNTS_ENCODER = msgspec.json.Encoder()
_COUNTS_DECODER = msgspec.json.Decoder(SequencerCounts)


def decode_counts(value: bytes) -> SequencerCounts:
    return _COUNTS_DECODER.decode(value)


#: At most this many bytes of a rejected record are kept in its dead letter. JSON escaping
#: (``\u0001`` for a control byte) and ``raw_base64`` can make a dead letter several times
#: its input, and one above the broker's ``message.max.bytes`` (1 MB) would fail the whole
#: transaction on every retry: a poison pill.
DEAD_LETTER_RAW_MAX = 64 * 1024


def dead_letter_value(rec: Record, error: str, path: str | None) -> bytes:
    raw = (rec.value or b"").rstrip(b"\r\n")
    doc: dict[str, object] = {
        "origin": {"topic": rec.tp.topic, "partition": rec.tp.partition, "offset": rec.offset},
        "error": error,
        "path": path,
    }
    if len(raw) > DEAD_LETTER_RAW_MAX:
        doc["raw_bytes"] = len(raw)
        doc["raw_sha256"] = hashlib.sha256(raw).hexdigest()
        doc["raw_truncated"] = True
        raw = raw[:DEAD_LETTER_RAW_MAX]
    try:
        doc["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        doc["raw"] = raw.decode("utf-8", errors="replace")
        doc["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return json.dumps(doc, ensure_ascii=False).encode()


class SequencerCore:
    """Per-record decisions of the sequencer; state partitioned by input partition.

    The hand-over at registration: the ledger is keyed by household, but a person's events
    before the registration (a newborn treated before being enrolled, in the generated logs)
    can only be keyed by the person's own id, so the processor keeps them in a state the
    household never sees, and a later charge or checkout of that visit under the household
    found no visit (a claim rejected in live mode that file mode settles). So those events
    are stashed, and the registration is preceded in the ledger by the stash, re-appended
    under the household with :data:`REPLAY_HEADER`: the processor folds them into the
    household's state without outputs (their outputs were given the first time), and the
    state is file mode's. Before registration a person's events touch only that person.
    """

    def __init__(self, codec: Codec | None = None,
                 window: dt.timedelta = DEFAULT_WINDOW,
                 accepts: Mapping[str, frozenset[str]] | None = None,
                 partitions: int | None = None) -> None:
        self.codec = codec or Codec()
        #: how many partitions the state has (its changelogs'); see state_partition()
        self.partitions = partitions
        #: input topic -> the event types it accepts (events.md, "Topics and order"); a
        #: topic not named here accepts every type
        self.accepts: Mapping[str, frozenset[str]] = accepts or {}
        self.window_ms = int(window.total_seconds() * 1000)
        self.dedup: dict[int, DedupWindow] = {}
        self.persons: dict[int, dict[str, str]] = {}
        #: events sequenced under a person's own id before the person was registered, kept
        #: for the window after the person's last such event (then forgotten: the person
        #: may never register, e.g. a mistyped id)
        self.stash: dict[int, dict[str, list[tuple[int, bytes]]]] = {}
        self._stash_order: dict[int, deque[tuple[int, str]]] = {}
        self.counts = SequencerCounts()  # this process's, for its logs
        self.books: dict[int, SequencerCounts] = {}  # per input partition, since the start
        self._books_dirty: set[int] = set()

    # -- partitions ------------------------------------------------------------------------

    def assign(self, partition: int) -> None:
        self.dedup.setdefault(partition, DedupWindow(self.window_ms))
        self.persons.setdefault(partition, {})
        self.stash.setdefault(partition, {})
        self._stash_order.setdefault(partition, deque())
        self.books.setdefault(partition, SequencerCounts())

    def revoke(self, partition: int) -> None:
        self.dedup.pop(partition, None)
        self.persons.pop(partition, None)
        self.stash.pop(partition, None)
        self._stash_order.pop(partition, None)
        self.books.pop(partition, None)
        self._books_dirty.discard(partition)

    def restore(self, store: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.assign(partition)
        k = key.decode()
        if store == DEDUP_STORE:
            self.dedup[partition].restore(k, int(value) if value is not None else None)
        elif store == PERSONS_STORE:
            if value is None:
                self.persons[partition].pop(k, None)
            else:
                self.persons[partition][k] = value.decode()
        elif store == COUNTS_STORE and value is not None:
            self.books[partition] = decode_counts(value)
        elif store == STASH_STORE:
            if value is None:
                self.stash[partition].pop(k, None)
            else:
                self.stash[partition][k] = _STASH_DECODER.decode(value)

    def restored(self, partition: int) -> None:
        self.dedup[partition].restored()
        self._stash_order[partition] = deque(sorted(
            (events[-1][0], pid) for pid, events in self.stash[partition].items() if events))

    def _expire_stash(self, p: int, now_ms: int, changes: list[Change]) -> None:
        horizon = now_ms - self.window_ms
        order, stash = self._stash_order[p], self.stash[p]
        while order and order[0][0] < horizon:
            ts, pid = order.popleft()
            events = stash.get(pid)
            if events and events[-1][0] <= ts:  # nothing of this person's since
                del stash[pid]
                changes.append((STASH_STORE, p, pid.encode(), None))

    # -- records ---------------------------------------------------------------------------

    def process(self, rec: Record, changes: list[Change]
                ) -> LedgerAppend | DeadLetterAppend | None:
        """Decide one released record; append its state changes to ``changes``.

        Returns what to write (ledger or dead letter), or ``None`` for a duplicate.
        """
        c = self.counts
        b = self.books[rec.tp.partition]
        self._books_dirty.add(rec.tp.partition)
        c.read += 1
        b.read += 1
        raw = rec.value
        try:
            if raw is None:  # a null value (tombstone) on an input topic
                raise SchemaError("not valid JSON: null record value", "$")
            event = self.codec.decode(raw)
            self.check_topic(rec.tp.topic, type(event).__name__)
        except SchemaError as exc:
            c.dead_lettered += 1
            b.dead_lettered += 1
            return DeadLetterAppend(rec.key, dead_letter_value(rec, str(exc), exc.path),
                                    rec.timestamp)
        p = self.state_partition(event.person_id, rec.tp.partition)
        dedup = self.dedup[p]
        eid = event.event_id
        if eid in dedup:
            c.duplicates += 1
            b.duplicates += 1
            return None
        ts = event_ms(event.occurred_at)
        changes.append((DEDUP_STORE, p, eid.encode(), str(ts).encode()))
        for old in dedup.add(eid, ts):
            changes.append((DEDUP_STORE, p, old.encode(), None))
        persons = self.persons[p]
        raw = raw.rstrip(b"\r\n")
        pid = event.person_id
        household = persons.get(pid)
        replays: list[tuple[int, bytes]] = []
        if household is None:
            if isinstance(event, PersonRegistered):
                household = event.household_id
                persons[pid] = household
                changes.append((PERSONS_STORE, p, pid.encode(), household.encode()))
                replays = self.stash[p].pop(pid, [])
                if replays:
                    changes.append((STASH_STORE, p, pid.encode(), None))
                    c.replayed += len(replays)
                    b.replayed += len(replays)
            else:
                household = pid
                stash = self.stash[p].setdefault(pid, [])
                stash.append((ts, raw))
                self._stash_order[p].append((ts, pid))
                if len(stash) > STASH_MAX:
                    del stash[0]
                    c.stash_dropped += 1
                    b.stash_dropped += 1
                changes.append((STASH_STORE, p, pid.encode(), _STASH_ENCODER.encode(stash)))
        if self._stash_order[p]:
            self._expire_stash(p, ts, changes)
        c.sequenced += 1
        b.sequenced += 1
        return LedgerAppend(household.encode(), raw, ts, event, replays)

    def state_partition(self, person_id: str, record_partition: int) -> int:
        """The partition of a person's sequencer state: murmur2 of the ``person_id``, as
        the Java client and aiokafka partition by key, whatever partitioner the producer
        used (librdkafka's default hashes keys with CRC32, so a person's registration and
        care events could reach different partition numbers, and the care events would not
        find the person). Without ``partitions`` (tests of one partition): the record's."""
        if self.partitions is None:
            return record_partition
        return _murmur2(person_id.encode()) % self.partitions

    def check_topic(self, topic: str, type_name: str) -> None:
        """An event on a topic that does not accept its type is malformed: a hospital
        credential that may write ``care`` can never register a person, credit an account or
        grant a credit line."""
        allowed = self.accepts.get(topic)
        if allowed is None or type_name in allowed:
            return
        home = next((t for t, types in self.accepts.items() if type_name in types), None)
        raise SchemaError(f"topic {topic} does not accept {type_name}"
                          + (f" (it goes to {home})" if home else "") + " - at `$.type`",
                          "$.type")

    def take_books(self, changes: list[Change]) -> None:
        """Append the books of every partition read since the last call to ``changes``."""
        for p in self._books_dirty:
            changes.append((COUNTS_STORE, p, COUNTS_KEY, _COUNTS_ENCODER.encode(self.books[p])))
        self._books_dirty.clear()


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(dict[str, Person])
_VISIT_DECODER = msgspec.msgpack.Decoder(Visit)


#: After these events a visit leaves the household even if it is not settled: a claim
#: rejected at checkout (most often ENROLLMENT_SUSPENDED or NOT_YET_ENROLLED) or a refund
#: leaves an open visit that is seldom touched again — in the soak log, 2 of every 3 open
#: visits after a year. Charges or a new checkout page it back in.
_PAGE_OUT_AFTER = (VisitClosed, VisitRefunded, PaymentMade)


def visit_key(household: str, person_id: str, visit_id: str) -> bytes:
    """Key of a settled visit in the ``visits`` store and changelog (NUL cannot occur in
    an id: the schema forbids control characters)."""
    return f"{household}\x00{person_id}\x00{visit_id}".encode()


@dataclass
class ProcessorCounts:
    applied: int = 0
    outputs: int = 0
    visits_loaded: int = 0
    visits_stored: int = 0


@dataclass
class ProcessorCore:
    """Household state per ledger partition and the engine that folds it.

    Two tables per partition: ``households`` (persons with the visits being charged,
    decoded, in memory) and ``visits`` (settled visits and those whose checkout is over, one
    record each, in a :class:`KVStore` — RocksDB in a worker). The engine sees one state:
    before an event that names a visit the visit is paged in from the store if the
    household does not hold it, and after it a settled visit (or one whose checkout is over)
    is paged out again. The engine stays pure and unaware of the split.
    """

    engine: Engine
    codec: Codec = field(default_factory=Codec)
    store_factory: Callable[[int], KVStore] = memory_stores
    households: dict[int, dict[str, dict[str, Person]]] = field(default_factory=dict)
    visits: dict[int, KVStore] = field(default_factory=dict)
    dirty: dict[int, set[str]] = field(default_factory=dict)
    visit_changes: list[Change] = field(default_factory=list)
    counts: ProcessorCounts = field(default_factory=ProcessorCounts)

    def assign(self, partition: int) -> None:
        self.households.setdefault(partition, {})
        self.dirty.setdefault(partition, set())
        if partition not in self.visits:
            self.visits[partition] = self.store_factory(partition)

    def revoke(self, partition: int) -> None:
        self.households.pop(partition, None)
        self.dirty.pop(partition, None)
        store = self.visits.pop(partition, None)
        if store is not None:
            store.close()

    def close(self) -> None:
        for p in list(self.visits):
            self.revoke(p)

    def restore(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.assign(partition)
        if value is None:
            self.households[partition].pop(key.decode(), None)
        else:
            self.households[partition][key.decode()] = _STATE_DECODER.decode(value)

    def restore_visits(self, partition: int, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        self.assign(partition)
        self.visits[partition].restore(records)

    def apply(self, partition: int, key: bytes, value: bytes, replay: bool = False
              ) -> list[OutputEvent]:
        """Fold one ledger record (already validated and deduplicated) into its household;
        a replay (see :class:`SequencerCore`) changes the state only."""
        return self.apply_event(partition, key, self.codec.decode(value), replay)

    def apply_event(self, partition: int, key: bytes, event: InputEvent, replay: bool = False
                    ) -> list[OutputEvent]:
        """:meth:`apply` of a record the caller has decoded already (the sequencer has, when
        it applies the ledger records of a partition its own worker processes)."""
        hh = key.decode()
        table = self.households[partition]
        persons = table.get(hh)
        state = State(persons if persons is not None else {})
        vid: str | None = getattr(event, "visit_id", None)
        pid = event.person_id
        paged_in: bytes | None = None
        if vid is not None:
            p = state.persons.get(pid)
            if p is not None and vid not in p.visits:
                k = visit_key(hh, pid, vid)
                raw = self.visits[partition].get(k)
                if raw is not None:
                    p.visits[vid] = _VISIT_DECODER.decode(raw)
                    paged_in = k
                    self.counts.visits_loaded += 1
        decision = self.engine.decide(state, event)
        if decision.changes:
            self.engine.evolve(state, decision)
            table[hh] = state.persons
            self.dirty[partition].add(hh)
        if vid is not None:
            p = state.persons.get(pid)
            visit = p.visits.get(vid) if p is not None else None
            if p is not None and visit is not None and (
                    visit.current is not None or isinstance(event, _PAGE_OUT_AFTER)):
                # settled, or its checkout is over (a rejected claim, a refund): its place is
                # the store (re-written only if this event changed it)
                if decision.changes or paged_in is None:
                    k = paged_in or visit_key(hh, pid, vid)
                    raw = _STATE_ENCODER.encode(visit)
                    self.visits[partition].put(k, raw)
                    self.visit_changes.append((VISITS_STORE, partition, k, raw))
                    self.counts.visits_stored += 1
                    if paged_in is None:
                        self.dirty[partition].add(hh)  # the household no longer holds it
                del p.visits[vid]
            elif paged_in is not None:
                # charged again: back in the household, out of the store
                self.visits[partition].delete(paged_in)
                self.visit_changes.append((VISITS_STORE, partition, paged_in, None))
        if replay:
            return []
        outputs = decision.outputs
        self.counts.applied += 1
        self.counts.outputs += len(outputs)
        return outputs

    def take_changes(self) -> list[Change]:
        """Changelog records for every visit and household changed since the last call."""
        out = self.visit_changes
        self.visit_changes = []
        for p, keys in self.dirty.items():
            table = self.households[p]
            for hh in keys:
                out.append((HOUSEHOLDS_STORE, p, hh.encode(), _STATE_ENCODER.encode(table[hh])))
            keys.clear()
        return out
