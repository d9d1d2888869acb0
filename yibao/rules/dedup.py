"""The one deduplication rule: a repeated ``event_id`` within an event-time window.

events.md: "a repeated ``event_id`` is a duplicate and has no effect". Remembering every id
for ever would make memory (and the sequencer's changelog) grow with the log, so an id is
remembered for a window of *event time* (``occurred_at``, never the wall clock: a replay
decides as the first run did). Publishers retry within minutes, so the default window is
ample. ``yibao settle`` (:class:`yibao.rules.fold.Fold`) and the live sequencer
(:class:`yibao.streams.cores.SequencerCore`, one window per state partition, its changes
written to a changelog) use this same class, so file mode and Kafka agree on every repeat.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import deque

from yibao.settings import Settings

__all__ = ["DEFAULT_WINDOW", "DEFAULT_WINDOW_DAYS", "DedupWindow", "event_ms"]

DEFAULT_WINDOW_DAYS: int = Settings.model_fields["dedup_window_days"].default
"""The default window, from its one definition: the ``YIBAO_DEDUP_WINDOW_DAYS`` setting."""
DEFAULT_WINDOW = dt.timedelta(days=DEFAULT_WINDOW_DAYS)


def event_ms(ts: dt.datetime) -> int:
    """An event time as epoch milliseconds, the unit the window (and its changelog) keeps."""
    return int(ts.timestamp() * 1000)


class DedupWindow:
    """Event ids seen within ``window_ms`` of event time.

    An id is forgotten once the newest ``occurred_at`` seen is more than the window past
    the ``occurred_at`` it arrived with, whatever the order the ids arrived in: the ids wait
    in a heap by event time, so a window restored from its changelog (which knows no arrival
    order) forgets exactly what the uninterrupted window forgets. :meth:`add` reports what it
    forgot, so the live sequencer writes a tombstone and its changelog stays bounded too.
    Ids arriving in event-time order (nearly all) wait in a queue, which costs no
    comparisons; only a late arrival goes to the heap, and expiry takes the older head.
    """

    __slots__ = ("_in_order", "_newest", "_order", "_seen", "window_ms")

    def __init__(self, window_ms: int = DEFAULT_WINDOW_DAYS * 86_400_000) -> None:
        self.window_ms = window_ms
        self._seen: dict[str, int] = {}
        self._in_order: deque[tuple[int, str]] = deque()  # arrivals in event-time order
        self._order: list[tuple[int, str]] = []  # a heap of the others: the oldest first
        self._newest: int | None = None

    @classmethod
    def of(cls, window: dt.timedelta) -> DedupWindow:
        """A window given as a ``timedelta`` (whole milliseconds)."""
        return cls(int(window.total_seconds() * 1000))

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def seen(self, event_id: str, occurred_at: dt.datetime) -> bool:
        """True if ``event_id`` is a repeat; otherwise remember it and return False."""
        if event_id in self._seen:
            return True
        self.add(event_id, event_ms(occurred_at))
        return False

    def add(self, event_id: str, ts_ms: int) -> list[str]:
        """Remember ``event_id``; return the ids that fell out of the window."""
        self._seen[event_id] = ts_ms
        queue = self._in_order
        if not queue or ts_ms >= queue[-1][0]:
            queue.append((ts_ms, event_id))
        else:
            heapq.heappush(self._order, (ts_ms, event_id))
        expired: list[str] = []
        if self._newest is None or ts_ms > self._newest:
            self._newest = ts_ms
            horizon = ts_ms - self.window_ms
            order, seen = self._order, self._seen
            while True:
                if queue and queue[0][0] < horizon and not (order and order[0] < queue[0]):
                    ts, old = queue.popleft()
                elif order and order[0][0] < horizon:
                    ts, old = heapq.heappop(order)
                else:
                    break
                if seen.get(old) == ts:  # not a stale entry of a tombstoned, re-added id
                    del seen[old]
                    expired.append(old)
        return expired

    def restore(self, event_id: str, ts_ms: int | None) -> None:
        """Replay one changelog record (``None`` = tombstone)."""
        if ts_ms is None:
            self._seen.pop(event_id, None)
            return
        self._seen[event_id] = ts_ms
        if self._newest is None or ts_ms > self._newest:
            self._newest = ts_ms

    def restored(self) -> None:
        """Call after a restore: order the remembered ids by event time."""
        self._order = [(t, e) for e, t in self._seen.items()]
        heapq.heapify(self._order)
        self._in_order.clear()
