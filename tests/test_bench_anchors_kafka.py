"""The benchmark anchors (bench/bench_anchors.py) do the job they are timed on: on the first
2,000 lines of the spec sample, raw aiokafka, Quix Streams (exactly-once) and faust-streaming
each produce exactly one output per input, with the person's running count and amount sum
after that event, in the person's input order. A fast anchor that dropped, repeated or
mis-keyed events would make yibao's ratio to it meaningless."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from yibao.settings import Settings

pytestmark = pytest.mark.kafka

BENCH = Path(__file__).resolve().parents[1] / "bench"


def expected_by_person(lines: list[bytes]) -> dict[str, list[tuple[str, int, int]]]:
    """(event_id, count, sum of amount_fen) after each event, per person, read with the
    standard json module (not the anchors' decoder)."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for ln in lines:
        doc = json.loads(ln)
        mine = out.setdefault(doc["person_id"], [])
        total = (mine[-1][2] if mine else 0) + doc.get("amount_fen", 0)
        mine.append((doc["event_id"], len(mine) + 1, total))
    return out


@pytest.mark.timeout(90)
def test_each_anchor_emits_one_output_per_input_with_the_persons_state(
        kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "bench_anchors", raising=False)
    import bench_anchors
    import bench_live

    sample = [ln for ln in bench_live.SAMPLE.read_bytes().splitlines() if ln.strip()]
    lines = bench_live.renamed(sample[:2000], "a")
    want = expected_by_person(lines)
    assert sum(len(v) for v in want.values()) == 2000
    assert any(total for v in want.values() for _, _, total in v)  # amounts are summed

    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=4)
    runs = asyncio.run(bench_anchors.run_anchors(settings, lines, collect=True, timeout=60))

    assert set(runs) == {"raw", "quix", "faust"}
    for name, run in runs.items():
        got = {person: [(o.event_id, o.count, o.sum_fen) for o in outs]
               for person, outs in run.outputs.items()}
        assert got == want, name
        assert run.rate > 0, name
