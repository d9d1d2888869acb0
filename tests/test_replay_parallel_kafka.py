"""Replay by partition range on the real broker: one process, three processes, and parts built
one by one (as on other machines) then merged give identical projection files, tracking
positions included — for a replay and for a policy what-if; merging refuses overlapping,
missing and mismatched parts, naming them.

The pipeline's output topics are written by :mod:`yibao.projections.simulate`, over 4
partitions, with a few malformed inputs so that dead letters exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from test_projections_kafka import _delete_topics, env_for, log_lines, whatif_policy

from yibao.cli import main as cli
from yibao.projections.audit import verify
from yibao.projections.exceptions import PartsError
from yibao.projections.parts import Part, Span, check_parts, split_span
from yibao.projections.runner import RunOptions, run
from yibao.projections.simulate import simulate_sync
from yibao.projections.store import Store
from yibao.projections.transform import Transform
from yibao.settings import Settings

PARTITIONS = 4


@pytest.fixture
def settings(kafka_settings: Settings) -> Iterator[Settings]:
    s = kafka_settings.model_copy(update={"partitions": PARTITIONS})
    yield s
    with contextlib.suppress(Exception):
        asyncio.run(_delete_topics(s.bootstrap_servers, s.topic_prefix))


def invoke(env: dict[str, str], *args: str) -> str:
    res = CliRunner().invoke(cli, list(args), env=env)
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.exception!r}"
    return res.output


def refused(env: dict[str, str], *args: str) -> str:
    res = CliRunner().invoke(cli, list(args), env=env)
    assert res.exit_code != 0, f"{args} was accepted: {res.output}"
    return res.output


def table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def three_ways(env: dict[str, str], tmp: Path, name: str, *extra: str) -> list[Path]:
    """The same replay with --jobs 1, with --jobs 3, and as parts merged; all identical to
    the first (verify --positions). Returns the paths: one, three, merged, and the parts."""
    one, three, merged = (tmp / f"{name}-{k}.duckdb" for k in ("one", "three", "merged"))
    invoke(env, "replay", "--into", str(one), "--jobs", "1", "--quiet", *extra)
    out = invoke(env, "replay", "--into", str(three), "--jobs", "3", "--quiet", *extra)
    assert "with 3 processes (partitions 0-1, 2, 3;" in out
    parts = [tmp / f"{name}-part-{s}.duckdb" for s in ("0-1", "2", "3")]
    for p, s in zip(parts, ("0-1", "2", "3"), strict=True):
        invoke(env, "replay", "--into", str(p), "--partitions", s, "--jobs", "1", "--quiet",
               *extra)
    invoke(env, "merge-parts", "--into", str(merged), *map(str, parts))
    for other in (three, merged):
        out = invoke(env, "verify", "--positions", str(one), str(other))
        assert "identical" in out and "same  _offsets" in out, out
    return [one, three, merged, *parts]


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_parallel_and_merged_replays_equal_one_process(settings: Settings, tmp_path: Path) -> None:
    lines = log_lines(tmp_path, 160, seed=7)
    lines[10:10] = [b"not json", b'{"type": "VisitOpened"}', b"{}"]  # dead letters
    counts = simulate_sync(settings, lines)
    assert counts["deadletter"] >= 3
    env = env_for(settings, tmp_path / "unused.duckdb")

    one, _three, merged, p01, p2, p3 = three_ways(env, tmp_path, "replay")
    n = dict(table(one, "SELECT 'claims', count(*) FROM claims UNION ALL "
                        "SELECT 'dead', count(*) FROM dead_letters"))
    assert n["claims"] > 0 and n["dead"] == counts["deadletter"]
    # a part holds its partitions only: its positions and its rows
    assert table(p2, "SELECT DISTINCT \"partition\" FROM _offsets") == [(2,)]
    assert table(p2, "SELECT DISTINCT src_partition FROM claims") == [(2,)]
    assert table(p01, "SELECT count(*) FROM dead_letters")[0][0] == counts["deadletter"]
    assert table(p3, "SELECT count(*) FROM dead_letters")[0][0] == 0
    meta = dict(table(merged, "SELECT key, value FROM _meta"))
    assert meta["partitions"] == f"0-{PARTITIONS - 1}" and meta["complete"] == "true"
    assert meta["merged_from"] == f"{p01.name}, {p2.name}, {p3.name}"

    # what-if: the same three ways, and it did re-settle
    w_one, *_rest, _w01, w2, _w3 = three_ways(env, tmp_path, "whatif", "--policy",
                                            str(whatif_policy(tmp_path)))
    res = CliRunner().invoke(cli, ["verify", str(one), str(w_one)], env=env)
    assert res.exit_code == 1 and "DIFF  claims" in res.output, res.output

    # refusals, each naming the partitions and files
    out = refused(env, "merge-parts", "--into", str(tmp_path / "bad.duckdb"), str(p01), str(p2))
    assert "missing: partitions 3 are in no part" in out, out
    out = refused(env, "merge-parts", "--into", str(tmp_path / "bad.duckdb"), str(p01), str(p2),
                  str(p3), str(merged))
    assert f"overlap: partitions 0-1 are in both {p01} (0-1) and {merged} (0-3)" in out, out
    out = refused(env, "merge-parts", "--into", str(tmp_path / "bad.duckdb"), str(p01), str(w2),
                  str(p3))
    assert f"{w2} and {p01} differ in source: 'whatif' vs 'replay'" in out, out
    assert not (tmp_path / "bad.duckdb").exists()
    out = refused(env, "replay", "--into", str(tmp_path / "x.duckdb"), "--partitions", "2-9")
    assert "partitions 2-9 asked for" in out and f"has {PARTITIONS} (0-3)" in out, out
    out = refused(env, "replay", "--into", str(tmp_path / "x.duckdb"), "--partitions", "x")
    assert "--partitions must be a range such as 0-3" in out, out


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_replay_writing_while_it_reads_equals_one_write(settings: Settings, tmp_path: Path
                                                        ) -> None:
    """A replay starts writing as soon as ``min_records`` wait and the writer is idle (each
    later write takes what arrived meanwhile); the file equals one written in a single
    batch, positions included, and what the replay kept out of the cyclic collector is back
    in it."""
    simulate_sync(settings, log_lines(tmp_path, 120, seed=5))

    def replay(path: Path, opts: RunOptions) -> int:
        with Store(path, pseudonym_key=settings.pseudonym_key, bulk=True) as store:
            stats = asyncio.run(run(settings, store, Transform(settings.pseudonym_key), opts))
        return stats.writes

    assert gc.get_freeze_count() == 0
    eager = replay(tmp_path / "eager.duckdb", RunOptions(max_records=10**6, min_records=40))
    once = replay(tmp_path / "once.duckdb", RunOptions(max_records=10**6, min_records=10**6))
    assert gc.get_freeze_count() == 0
    assert once == 1 and eager >= 2, (once, eager)  # eager: the first write began early
    same = verify(tmp_path / "eager.duckdb", tmp_path / "once.duckdb", positions=True)
    assert same.identical, [d.name for d in same.diffs]


def _part(path: str, first: int, last: int, **meta: str) -> Part:
    return Part(path=path, span=Span(first=first, last=last), ledger_partitions=8,
                meta={"source": "replay", **meta}, end_offsets={}, complete=True)


def test_split_span_covers_each_partition_once() -> None:
    for size in range(1, 12):
        for jobs in range(1, 6):
            spans = split_span(Span(first=3, last=3 + size - 1), jobs)
            covered = [i for s in spans for i in range(s.first, s.last + 1)]
            assert covered == list(range(3, 3 + size))
            assert len(spans) == min(jobs, size)
            assert max(s.size for s in spans) - min(s.size for s in spans) <= 1


def test_check_parts_names_every_problem() -> None:
    assert check_parts([_part("a", 0, 3), _part("b", 4, 7)]) == Span(first=0, last=7)
    with pytest.raises(PartsError) as e:
        check_parts([_part("a", 0, 3), _part("b", 2, 4), _part("c", 7, 7, until="2025-03-10")])
    msg = str(e.value)
    assert "overlap: partitions 2-3 are in both a (0-3) and b (2-4)" in msg
    assert "missing: partitions 5-6 are in no part" in msg
    assert "c and a differ in until: '2025-03-10' vs ''" in msg
    unfinished = Part(path="u", span=Span(first=0, last=7), ledger_partitions=8, meta={},
                      end_offsets={}, complete=False)
    with pytest.raises(PartsError, match="u is incomplete"):
        check_parts([unfinished])
