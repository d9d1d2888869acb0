"""What every gateway instance knows, built from the topics themselves.

Each instance follows the three input topics and ``settlements`` into a SQLite file on its
own disk: for every input its ``event_id``, the SHA-256 of its canonical form (the
idempotency check), its facility; for every visit the facility that opened it (a hospital
may only act on its own visits); and every output by the input that caused it (the
answers). So any instance behind a load balancer can answer a retry, check a visit that
another instance opened and return an answer given to another instance, and an instance
restarted with its file goes on where it stopped. Memory holds only the requests waiting
now; the index is on disk, and its read positions are written in the same SQLite
transaction as its rows (a crash never indexes a record twice or skips one).

An instance's own publishes are indexed at once as well (read-your-writes), before the
follower sees them come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from yibao.logging import get_logger
from yibao.schemas.codec import Codec
from yibao.schemas.events import InputEvent, VisitOpened
from yibao.schemas.exceptions import SchemaError
from yibao.settings import Settings
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.options import client_options
from yibao.streams.topics import INPUTS, Topics

log = get_logger(__name__)

#: The outputs that answer an input of each type (the first one seen ends the wait).
ANSWERS: dict[str, frozenset[str]] = {
    "VisitClosed": frozenset({"ClaimSettled", "ClaimRejected", "EventRejected"}),
    "PreSettlementRequested": frozenset({"ClaimPreviewed", "PreviewRejected", "EventRejected"}),
    "VisitRefunded": frozenset({"ClaimReversed", "ClaimRejected", "EventRejected"}),
    "PaymentMade": frozenset({"PaymentAccepted", "PaymentRejected", "EventRejected"}),
}
#: Output types that are some input's answer (flags follow an answer, never are one).
ANSWER_TYPES = frozenset().union(*ANSWERS.values())

SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (event_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
    type TEXT NOT NULL, facility_id TEXT, visit_id TEXT);
CREATE TABLE IF NOT EXISTS visits (visit_id TEXT PRIMARY KEY, facility_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (event_id TEXT PRIMARY KEY, caused_by TEXT NOT NULL,
    type TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS outputs_by_cause ON outputs (caused_by);
CREATE TABLE IF NOT EXISTS positions (topic TEXT NOT NULL, part INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, PRIMARY KEY (topic, part));
"""


class _OutHead(msgspec.Struct):
    event_id: str
    caused_by: str
    type: str


_OUT_HEAD = msgspec.json.Decoder(_OutHead)


def canonical(codec: Codec, event: InputEvent) -> bytes:
    """The one encoding of an event: what the gateway publishes and what is hashed, so a
    retry with other whitespace or key order is the same request."""
    return codec.encode(event)


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class KnownInput:
    sha256: str
    type: str
    facility_id: str | None


class Index:
    """The SQLite file (one writer: this process; WAL so reads never wait)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def known_input(self, event_id: str) -> KnownInput | None:
        row = self.db.execute("SELECT sha256, type, facility_id FROM inputs WHERE event_id = ?",
                              (event_id,)).fetchone()
        return None if row is None else KnownInput(row[0], row[1], row[2])

    def facility_of_visit(self, visit_id: str) -> str | None:
        row = self.db.execute("SELECT facility_id FROM visits WHERE visit_id = ?",
                              (visit_id,)).fetchone()
        return None if row is None else str(row[0])

    def outputs_of(self, event_id: str) -> list[tuple[str, bytes]]:
        """The outputs (type, JSON) caused by ``event_id``, in their own order (``<id>/0``,
        ``/1``...)."""
        rows = self.db.execute("SELECT event_id, type, body FROM outputs WHERE caused_by = ?",
                               (event_id,)).fetchall()
        return [(t, bytes(body)) for _eid, t, body in sorted(rows,
                                                            key=lambda r: _output_rank(r[0]))]

    def outputs_of_visit(self, visit_id: str, types: Iterable[str]) -> list[tuple[str, bytes]]:
        """The outputs of the given types caused by any input of the visit (the national
        interface's 2208 checks it names the visit's current settlement)."""
        wanted = list(types)
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            "SELECT o.type, o.body FROM outputs o JOIN inputs i ON o.caused_by = i.event_id "
            f"WHERE i.visit_id = ? AND o.type IN ({marks})", (visit_id, *wanted)).fetchall()
        return [(t, bytes(body)) for t, body in rows]

    def positions(self) -> dict[tuple[str, int], int]:
        return {(t, p): o for t, p, o in self.db.execute(
            "SELECT topic, part, next_offset FROM positions")}

    def add_inputs(self, rows: Iterable[tuple[str, str, str, str | None, str | None]],
                   visits: Iterable[tuple[str, str]]) -> None:
        """Index inputs published here (read-your-writes); the follower's copy is ignored."""
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO inputs VALUES (?, ?, ?, ?, ?)", rows)
            self.db.executemany("INSERT OR IGNORE INTO visits VALUES (?, ?)", visits)

    @contextlib.contextmanager
    def transaction(self) -> Any:
        self.db.execute("BEGIN")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _output_rank(event_id: str) -> tuple[int, str]:
    _, _, n = event_id.rpartition("/")
    return (int(n), event_id) if n.isdigit() else (1 << 30, event_id)


@dataclass
class Follower:
    """Reads the inputs and ``settlements`` into the index and wakes the requests waiting
    for an answer."""

    settings: Settings
    index: Index
    codec: Codec = field(default_factory=Codec)
    #: event_id -> future set when an answer to it is indexed
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    consumer: AIOKafkaConsumer | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _advanced: asyncio.Event = field(default_factory=asyncio.Event)
    _next: dict[TopicPartition, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self, partitions_for: Callable[[str], Awaitable[set[int]]]) -> None:
        """Assign every partition (``partitions_for``: the producer's metadata lookup, which
        waits for the topic's metadata) and go on from the positions in the index."""
        topics = Topics.of(self.settings)
        names = [topics.name(t) for t in INPUTS] + [topics.settlements]
        tps = []
        for name in names:
            parts = await partitions_for(name)
            if not parts:
                raise LookupError(f"no topic {name}: run `yibao topics create` first")
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        consumer = AIOKafkaConsumer(**client_options(self.settings), group_id=None,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    auto_offset_reset="earliest", fetch_max_wait_ms=5)
        await start_client(consumer)
        try:
            consumer.assign(tps)
            known = self.index.positions()
            for tp in tps:
                at = known.get((tp.topic, tp.partition))
                if at is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, at)
                self._next[tp] = at or 0
        except BaseException:
            await consumer.stop()
            raise
        self.consumer = consumer
        self._settlements = topics.settlements
        self._task = asyncio.create_task(self._run(), name="gateway-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        await self.catch_up(timeout=None)
        self.ready.set()
        while True:
            await self.step(200)

    async def step(self, timeout_ms: int) -> None:
        """Fetch once and index what came, with the positions after it (past transaction
        markers, which a record's offset + 1 would not be)."""
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        moved = {}
        for tp in self._next:
            at = await self.consumer.position(tp)
            if at != self._next[tp]:
                moved[tp] = at
        if batch or moved:
            self.apply(batch, moved)

    def apply(self, batch: dict[TopicPartition, list[Any]], moved: dict[TopicPartition, int]
              ) -> None:
        """Index one fetched batch and the positions after it in one transaction; then
        wake the requests it answers."""
        inputs: list[tuple[str, str, str, str | None, str | None]] = []
        visits: list[tuple[str, str]] = []
        outputs: list[tuple[str, str, str, bytes]] = []
        answered: list[str] = []
        for tp, records in batch.items():
            if not records:
                continue
            if tp.topic == self._settlements:
                for r in records:
                    try:
                        head = _OUT_HEAD.decode(r.value)
                    except msgspec.DecodeError:
                        continue
                    outputs.append((head.event_id, head.caused_by, head.type, r.value))
                    if head.type in ANSWER_TYPES and head.caused_by in self.waiters:
                        answered.append(head.caused_by)
            else:
                for r in records:
                    try:
                        event = self.codec.decode(r.value)
                    except SchemaError:
                        continue  # the sequencer dead-letters it; no answer will come
                    inputs.append(self.describe(event, visits))
        with self.index.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO visits VALUES (?, ?)", visits)
            db.executemany("INSERT OR IGNORE INTO inputs VALUES (?, ?, ?, ?, ?)", inputs)
            db.executemany("INSERT OR IGNORE INTO outputs VALUES (?, ?, ?, ?)", outputs)
            db.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                           [(tp.topic, tp.partition, o) for tp, o in moved.items()])
        self._next.update(moved)
        for eid in answered:
            fut = self.waiters.get(eid)
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._advanced.set()

    def describe(self, event: InputEvent, visits: list[tuple[str, str]]
                 ) -> tuple[str, str, str, str | None, str | None]:
        """The index row of an input (and its visit's, for an opening)."""
        visit_id = getattr(event, "visit_id", None)
        if isinstance(event, VisitOpened):
            facility: str | None = event.facility_id
            visits.append((event.visit_id, event.facility_id))
        elif visit_id is not None:
            facility = self.index.facility_of_visit(visit_id)
            if facility is None:
                facility = next((f for v, f in visits if v == visit_id), None)
        else:
            facility = None
        return (event.event_id, sha256(canonical(self.codec, event)), type(event).__name__,
                facility, visit_id)

    async def catch_up(self, timeout: float | None = 5.0) -> bool:
        """Wait until everything on the topics now is indexed (another instance's publish
        included); False if ``timeout`` ran out first."""
        assert self.consumer is not None
        tps = list(self._next)
        end = await self.consumer.end_offsets(tps)

        async def reached() -> None:
            while any(self._next[tp] < end[tp] for tp in tps):
                self._advanced.clear()
                await self._advanced.wait()

        if self._task is None or asyncio.current_task() is self._task:
            # at start: read up to the end here, before serving
            while any(self._next[tp] < end[tp] for tp in tps):
                await self.step(500)
            return True
        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return True
