"""Replay (and what-if) by partition range: one replay part per process, then one merge.

Households are independent and a ledger partition holds whole households, so N processes
over disjoint partition ranges (:mod:`yibao.projections.parts`) do the work of one replay
without talking to each other. The end offsets are read once, before the processes start,
and handed to each, so the merged file is the projection of one cut of the log — the cut a
single-process replay started at that moment would read to. The first range is replayed
straight into the target file and the others are merged into it, so the merge copies
(N-1)/N of the rows, not all of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import msgspec

from yibao.projections.exceptions import PartsError
from yibao.projections.parts import (
    Span,
    merge_parts,
    policy_sha256,
    pseudonym_check,
    split_span,
)
from yibao.projections.runner import RunOptions, RunStats, assign, consumer_for, run, topic_roles
from yibao.projections.store import Offsets, Store
from yibao.projections.transform import Transform
from yibao.settings import Settings
from yibao.streams.kafka.clients import start_client


class PartJob(msgspec.Struct, frozen=True, kw_only=True):
    """One replay part: what to read and where to write it."""

    path: str
    span: Span | None = None  # None: every partition
    policy_path: str | None = None  # what-if under this policy
    until: str | None = None  # as given, recorded in the file
    until_ms: int | None = None
    max_records: int = 200_000
    end_offsets: Offsets | None = None  # None: the end offsets when it starts
    threads: int | None = None  # DuckDB threads (None: one per core)


@dataclass
class ParallelStats:
    parts: list[RunStats] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    merge_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(s.events for s in self.parts)

    @property
    def records(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.parts:
            for k, v in s.records.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def replay_part(settings: Settings, job: PartJob, on_total: object = None,
                on_progress: object = None) -> RunStats:
    """Replay ``job``'s partitions into a fresh file at ``job.path``."""
    from yibao.rules.policy import load_policy

    path = Path(job.path)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    policy = load_policy(job.policy_path) if job.policy_path else None
    with Store(path, pseudonym_key=settings.pseudonym_key, bulk=True, threads=job.threads,
               memory_limit=settings.duckdb_memory_limit) as store:
        store.set_meta({"source": "whatif" if policy else "replay",
                        "policy": job.policy_path or "",
                        "policy_sha256": policy_sha256(job.policy_path),
                        "until": job.until or "", "topic_prefix": settings.topic_prefix,
                        "pseudonym_check": pseudonym_check(settings.pseudonym_key)})
        return asyncio.run(run(settings, store, Transform(settings.pseudonym_key), RunOptions(
            until_ms=job.until_ms, policy=policy, max_records=job.max_records,
            partitions=job.span, end_offsets=job.end_offsets,
            on_total=on_total, on_progress=on_progress)))  # type: ignore[arg-type]


async def read_layout(settings: Settings, whatif: bool, wait: float = 60.0
                      ) -> tuple[int, Offsets]:
    """(ledger partitions, end offsets of every partition a replay reads) right now."""
    names = topic_roles(settings, whatif)
    consumer = consumer_for(settings)
    await start_client(consumer)
    try:
        roles = await assign(consumer, names, wait)
        end = await consumer.end_offsets(list(roles))
        n = len(consumer.partitions_for_topic(names["ledger"]) or ())
        return n, {(r, tp.partition): end[tp] for tp, r in roles.items()}
    finally:
        await consumer.stop()


def part_path(into: Path, span: Span) -> Path:
    return into.with_name(f"{into.stem}.part-{span}{into.suffix or '.duckdb'}")


def replay_parallel(settings: Settings, job: PartJob, jobs: int) -> ParallelStats:
    """Replay ``job`` (its span, or every partition) with ``jobs`` processes over disjoint
    partition ranges, merged into ``job.path``."""
    started = time.monotonic()
    n, end = asyncio.run(read_layout(settings, job.policy_path is not None))
    if job.span is not None and job.span.last >= n:
        raise PartsError(f"partitions {job.span} asked for, {topic_roles(settings)['ledger']} "
                         f"has {n} (0-{n - 1})")
    spans = split_span(job.span or Span(first=0, last=n - 1), jobs)
    into = Path(job.path)
    paths = [into, *(part_path(into, s) for s in spans[1:])]
    stats = ParallelStats(spans=spans)
    if len(spans) == 1:
        stats.parts = [replay_part(settings, msgspec.structs.replace(job, end_offsets=end))]
        stats.seconds = time.monotonic() - started
        return stats
    threads = max(1, cores() // len(spans))
    try:
        with ProcessPoolExecutor(max_workers=len(spans), mp_context=get_context("spawn")) as ex:
            futures = [ex.submit(replay_part, settings, msgspec.structs.replace(
                job, path=str(p), span=s, end_offsets=end, threads=threads))
                for p, s in zip(paths, spans, strict=True)]
            stats.parts = [f.result() for f in futures]
        t = time.monotonic()
        merge_parts(into, paths, want=job.span, memory_limit=settings.duckdb_memory_limit)
        stats.merge_seconds = time.monotonic() - t
    finally:
        for p in paths[1:]:
            for f in (p, p.with_name(p.name + ".wal")):
                f.unlink(missing_ok=True)
    stats.seconds = time.monotonic() - started
    return stats
