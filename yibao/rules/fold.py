"""Fold a log of raw events through the engine: validation, deduplication, settlement.

This is the batch path shared by ``yibao settle``, replay and reconciliation; the live
sequencer uses the same :class:`~yibao.rules.dedup.DedupWindow` and codec so file mode and
Kafka agree. No I/O here: the caller hands in raw lines and writes what comes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from yibao.rules.dedup import DedupWindow
from yibao.rules.engine import Engine
from yibao.rules.state import State
from yibao.schemas.codec import Codec
from yibao.schemas.events import InputEvent, OutputEvent
from yibao.schemas.exceptions import SchemaError


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
        dedup: DedupWindow | None = None,
    ) -> None:
        self.engine = engine
        self.codec = codec or Codec()
        self.state = state or State()
        self.dedup = dedup if dedup is not None else DedupWindow()
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
