"""Fold a log of raw events through the engine: validation, deduplication, settlement.

This is the batch path shared by ``yibao settle``, replay and reconciliation; the live
sequencer uses the same :class:`Deduplicator` and codec so file mode and Kafka agree.
No I/O here: the caller hands in raw lines and writes what comes out.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from yibao.rules.engine import Engine
from yibao.rules.state import State
from yibao.schemas.codec import Codec
from yibao.schemas.events import InputEvent, OutputEvent
from yibao.schemas.exceptions import SchemaError

DEFAULT_DEDUP_WINDOW = dt.timedelta(days=30)


class Deduplicator:
    """Remembers event ids for a window of event time, so memory tracks the window, not the log.

    An id is forgotten once the newest ``occurred_at`` seen is more than ``window`` past the
    ``occurred_at`` it arrived with; publishers retry within minutes, so 30 days is ample.
    """

    def __init__(self, window: dt.timedelta = DEFAULT_DEDUP_WINDOW) -> None:
        self.window = window
        self._seen: dict[str, dt.datetime] = {}
        self._order: deque[tuple[dt.datetime, str]] = deque()
        self._newest: dt.datetime | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, event_id: str, occurred_at: dt.datetime) -> bool:
        """True if ``event_id`` is a repeat; otherwise remember it and return False."""
        seen = self._seen
        if event_id in seen:
            return True
        seen[event_id] = occurred_at
        order = self._order
        order.append((occurred_at, event_id))
        newest = self._newest
        if newest is None or occurred_at > newest:
            self._newest = occurred_at
        if len(order) & 1023 == 0:  # expire in batches: cheap per event, bounded memory
            self._expire()
        return False

    def _expire(self) -> None:
        assert self._newest is not None
        horizon = self._newest - self.window
        order, seen = self._order, self._seen
        while order and order[0][0] < horizon:
            _, old = order.popleft()
            seen.pop(old, None)


@dataclass(slots=True)
class DeadLetter:
    line: int
    error: str
    path: str | None
    raw: bytes


@dataclass(slots=True)
class Counts:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    outputs: int = 0
    by_output: dict[str, int] = field(default_factory=dict)


class Fold:
    """Stateful driver: raw bytes in, outputs (or a dead letter) out, in order."""

    def __init__(
        self,
        engine: Engine,
        codec: Codec | None = None,
        state: State | None = None,
        dedup: Deduplicator | None = None,
    ) -> None:
        self.engine = engine
        self.codec = codec or Codec()
        self.state = state or State()
        self.dedup = dedup or Deduplicator()
        self.counts = Counts()

    def feed(self, raw: bytes, line: int = 0) -> list[OutputEvent] | DeadLetter:
        c = self.counts
        c.read += 1
        try:
            event = self.codec.decode(raw)
        except SchemaError as exc:
            c.dead_lettered += 1
            return DeadLetter(line, str(exc), exc.path, raw)
        return self.apply(event)

    def apply(self, event: InputEvent) -> list[OutputEvent]:
        c = self.counts
        if self.dedup.seen(event.event_id, event.occurred_at):
            c.duplicates += 1
            return []
        c.applied += 1
        decision = self.engine.decide(self.state, event)
        if decision.changes:
            self.engine.evolve(self.state, decision)
        outputs = decision.outputs
        if outputs:
            c.outputs += len(outputs)
            by = c.by_output
            for o in outputs:
                name = type(o).__name__
                by[name] = by.get(name, 0) + 1
        return outputs

    def run(self, lines: Iterable[bytes]) -> Iterator[list[OutputEvent] | DeadLetter]:
        for n, raw in enumerate(lines, 1):
            yield self.feed(raw, n)
