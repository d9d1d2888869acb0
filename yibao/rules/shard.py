"""Which lines of a log may be folded apart: households are independent, so a log splits
into shards that fold in parallel and give, merged back by line, the one fold's output.

The fold keeps state per person, and a person's state reaches other persons through the
household (shared accounts, family debits), through family aid (``beneficiary_id``) and
through the deduplication window (a repeated ``event_id`` has no effect, whoever's it is).
So lines are grouped by the connected components of persons, households, beneficiaries and
event ids, and a component never spans two shards. Events of a person before their
registration belong to the household the person later joins, which only a pass over the
whole log knows: that is why this router reads the log once before anything is folded.

One thing a component cannot carry: the dedup window forgets an id by the newest event time
of the *whole* log, which a shard does not see. A repeat of an id whose first occurrence
could have left the window by then is therefore reported as :attr:`Router.window_safe`
``False``, and the caller folds in one process. The check is conservative (it reads event
times without validating the rest of the event), never permissive.
"""

from __future__ import annotations

import datetime as dt
from array import array
from zlib import crc32

import msgspec

__all__ = ["Router"]

_MINUTE_MS = 60_000
_MINUTE_BITS = 26  # minutes since 1970 fit in 26 bits until the year 2097


class _Keys(msgspec.Struct, kw_only=True, gc=False):
    """The fields that join persons; everything else of the event is left unread."""

    event_id: str
    person_id: str
    occurred_at: dt.datetime
    household_id: str | None = None
    beneficiary_id: str | None = None


_DECODER = msgspec.json.Decoder(_Keys)


class Router:
    """Reads lines in log order, then says which shard folds each one.

    Line 0 of the component table is the junk unit: lines that are not even JSON with a
    person and an event id, which the fold dead-letters wherever they go.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.window_safe = True
        self._unit_of: dict[str, int] = {}
        self._parent: list[int] = [0]
        self._line_units = array("l")
        self._event_ids: dict[int, int] = {}  # hash(event_id) -> unit << bits | first minute
        self._newest_ms = -(1 << 62)

    def __len__(self) -> int:
        return len(self._line_units)

    def add(self, raw: bytes) -> None:
        """Read one line's keys and join its person to whatever the line names."""
        try:
            keys = _DECODER.decode(raw)
            ts_ms = int(keys.occurred_at.timestamp() * 1000)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError,
                OverflowError):
            self._line_units.append(0)
            return
        unit = self._unit(keys.person_id)
        if keys.household_id is not None:
            unit = self._join(unit, self._unit("\x00h" + keys.household_id))
        if keys.beneficiary_id is not None:
            unit = self._join(unit, self._unit(keys.beneficiary_id))
        unit = self._join_repeat(unit, keys.event_id, ts_ms)
        if ts_ms > self._newest_ms:
            self._newest_ms = ts_ms
        self._line_units.append(unit)

    def shards(self, n: int) -> bytes:
        """One byte per line: the shard (0..n-1) that folds it; a component's lines share
        one, spread by a hash of the component's first person so shards come out even."""
        if not 1 <= n <= 255:
            raise ValueError(f"shards: n must be within 1..255, got {n}")
        names = {u: name for name, u in self._unit_of.items()}
        shard_of_root: dict[int, int] = {0: 0}
        out = bytearray(len(self._line_units))
        for i, unit in enumerate(self._line_units):
            root = self._root(unit)
            s = shard_of_root.get(root)
            if s is None:
                s = crc32(names[root].encode()) % n
                shard_of_root[root] = s
            out[i] = s
        return bytes(out)

    # -- components ----------------------------------------------------------------------

    def _unit(self, name: str) -> int:
        u = self._unit_of.get(name)
        if u is None:
            u = len(self._parent)
            self._unit_of[name] = u
            self._parent.append(u)
        return u

    def _root(self, u: int) -> int:
        parent = self._parent
        root = u
        while parent[root] != root:
            root = parent[root]
        while parent[u] != root:  # path compression
            parent[u], u = root, parent[u]
        return root

    def _join(self, a: int, b: int) -> int:
        ra, rb = self._root(a), self._root(b)
        if ra == rb:
            return ra
        lo, hi = (ra, rb) if ra < rb else (rb, ra)  # the older unit names the component
        self._parent[hi] = lo
        return lo

    def _join_repeat(self, unit: int, event_id: str, ts_ms: int) -> int:
        """Join the lines that share an event id, and check the window could not have
        forgotten the id before this repeat (the newest event time seen so far is an upper
        bound of the fold's newest, and minutes floor the first time: both conservative)."""
        key = hash(event_id)
        minute = max(0, ts_ms // _MINUTE_MS)
        seen = self._event_ids.get(key)
        if seen is None:
            self._event_ids[key] = unit << _MINUTE_BITS | minute
            return unit
        first_unit, first_minute = seen >> _MINUTE_BITS, seen & ((1 << _MINUTE_BITS) - 1)
        earliest = min(first_minute, minute)
        if earliest * _MINUTE_MS < max(self._newest_ms, ts_ms) - self.window_ms:
            self.window_safe = False
        unit = self._join(unit, first_unit)
        self._event_ids[key] = first_unit << _MINUTE_BITS | earliest
        return unit
