"""The one dedup rule: file mode (Fold, ``yibao settle``) and the live sequencer share it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from yibao.cli import main as cli
from yibao.dev.events import opened, registered
from yibao.rules.dedup import DEFAULT_WINDOW, DEFAULT_WINDOW_DAYS, DedupWindow
from yibao.settings import Settings
from yibao.streams.cores import SequencerCore

DAY_MS = 86_400_000


def test_one_default_from_the_setting() -> None:
    days = Settings.model_fields["dedup_window_days"].default
    assert (days, dt.timedelta(days=days)) == (DEFAULT_WINDOW_DAYS, DEFAULT_WINDOW)
    assert DedupWindow().window_ms == days * DAY_MS == SequencerCore().window_ms


def test_a_repeat_is_forgotten_only_after_the_newest_event_passes_the_window() -> None:
    w = DedupWindow(2 * DAY_MS)
    t0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    assert not w.seen("a", t0)
    assert w.seen("a", t0)
    assert not w.seen("b", t0 + dt.timedelta(days=2))  # exactly the window: "a" still kept
    assert w.seen("a", t0)
    assert not w.seen("c", t0 + dt.timedelta(days=2, milliseconds=1))
    assert "a" not in w and not w.seen("a", t0)  # past the window: a new event again


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 10 * DAY_MS)), max_size=60),
       st.integers(1, 4 * DAY_MS))
def test_restoring_the_reported_changes_gives_the_same_window(
        events: list[tuple[str, int]], window_ms: int) -> None:
    """What the live sequencer writes to its changelog (each new id, each forgotten one as a
    tombstone) restores a window that decides every later event as the original does."""
    live, changelog = DedupWindow(window_ms), []
    for eid, ts in events:
        if eid in live:
            continue
        changelog.append((eid, ts))
        changelog.extend((old, None) for old in live.add(eid, ts))
    restored = DedupWindow(window_ms)
    for eid, value in changelog:
        restored.restore(eid, value)
    restored.restored()
    assert set(restored._seen) == set(live._seen)
    later = max((ts for _, ts in events), default=0) + 1
    for eid in "abcdefgh":
        assert (eid in restored) == (eid in live)
        assert restored.add(eid, later) == live.add(eid, later)


def test_settle_uses_the_window_option(tmp_path: Path) -> None:
    """A retry later than the window is a new event (here a duplicate visit, rejected)."""
    visit = opened("P1", "V1")
    later = {**registered("P2", household="H2"), "occurred_at": "2025-03-05T09:00:00+08:00"}
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in (registered("P1"), visit, later, visit)))

    def settle(*opts: str) -> tuple[str, str]:
        r = CliRunner().invoke(cli, ["settle", str(log), *opts])
        assert r.exit_code == 0, r.output
        return r.stdout, r.stderr

    out30, err30 = settle()
    out1, err1 = settle("--dedup-window-days", "1")
    assert "DUPLICATE_VISIT" not in out30 and "duplicates 1," in err30
    assert "DUPLICATE_VISIT" in out1 and "duplicates 0," in err1
