"""Audits: ``verify`` (two projection files, table by table) and ``reconcile`` (the pure engine
re-run over the ledger against the recorded ``settlements``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from yibao.collector import keep_out_of_the_collector, tuned_for_a_fold
from yibao.projections.parts import Span, split_span
from yibao.projections.runner import assign, consumer_for
from yibao.projections.schema import PROJECTIONS
from yibao.projections.sql import sql_literal
from yibao.rules.engine import Engine
from yibao.rules.policy import Policy, load_policy
from yibao.schemas.codec import Codec
from yibao.settings import Settings
from yibao.streams.kafka.clients import start_client
from yibao.streams.topics import Topics

# ------------------------------------------------------------------------------ verify


@dataclass
class TableDiff:
    name: str
    rows_a: int
    rows_b: int
    only_a: list[tuple[Any, ...]] = field(default_factory=list)
    only_b: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""


@dataclass
class VerifyResult:
    compared: list[tuple[str, int, int]]  # name, rows, checksum
    diffs: list[TableDiff]

    @property
    def identical(self) -> bool:
        return not self.diffs


def verify(a: str | Path, b: str | Path, *, rows: int = 5, positions: bool = False
           ) -> VerifyResult:
    """Compare every projection (tables and views) of two files: row count and an
    order-independent checksum (sum of row hashes); on a mismatch, the first rows that are
    in one and not the other (multiset difference). With ``positions``, the tracking
    positions too (``_offsets``): two projections read up to the same place in the log."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {sql_literal(a)} AS a (READ_ONLY)")
        con.execute(f"ATTACH {sql_literal(b)} AS b (READ_ONLY)")
        compared: list[tuple[str, int, int]] = []
        diffs: list[TableDiff] = []
        for name in (*PROJECTIONS, *(("_offsets",) if positions else ())):
            try:
                ca = con.sql(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM a.{name} t"
                             ).fetchall()[0]
                cb = con.sql(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM b.{name} t"
                             ).fetchall()[0]
            except duckdb.Error as exc:
                diffs.append(TableDiff(name, -1, -1, note=f"cannot compare: {exc}"))
                continue
            if ca == cb:
                compared.append((name, ca[0], int(ca[1])))
                continue
            only_a = con.sql(f"SELECT * FROM (SELECT * FROM a.{name} EXCEPT ALL "
                             f"SELECT * FROM b.{name}) ORDER BY ALL LIMIT {rows}").fetchall()
            only_b = con.sql(f"SELECT * FROM (SELECT * FROM b.{name} EXCEPT ALL "
                             f"SELECT * FROM a.{name}) ORDER BY ALL LIMIT {rows}").fetchall()
            diffs.append(TableDiff(name, ca[0], cb[0], only_a, only_b))
        return VerifyResult(compared, diffs)
    finally:
        con.close()


# ------------------------------------------------------------------------------ reconcile


@dataclass
class Difference:
    kind: str  # differs | missing (expected, not recorded) | unexpected (recorded, not expected)
    partition: int
    event_id: str
    fields: list[str] = field(default_factory=list)  # "path: expected != recorded"

    def __str__(self) -> str:
        what = {"differs": "differs", "missing": "expected but not recorded",
                "unexpected": "recorded but not expected"}[self.kind]
        more = ("; " + "; ".join(self.fields)) if self.fields else ""
        return f"partition {self.partition} {self.event_id}: {what}{more}"


@dataclass
class ReconcileResult:
    ledger_records: int = 0
    expected: int = 0
    recorded: int = 0
    matched: int = 0
    pending: int = 0  # expected outputs after the last recorded one of their partition
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences

    def add(self, other: ReconcileResult) -> None:
        self.ledger_records += other.ledger_records
        self.expected += other.expected
        self.recorded += other.recorded
        self.matched += other.matched
        self.pending += other.pending
        self.differences.extend(other.differences)


async def _read_all(settings: Settings, roles: dict[str, str], span: Span | None = None
                    ) -> dict[str, dict[int, list[Any]]]:
    consumer = consumer_for(settings)
    await start_client(consumer)
    try:
        tps = await assign(consumer, roles, 10.0, span)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
        end = await consumer.end_offsets(list(tps))
        out: dict[str, dict[int, list[Any]]] = {r: {} for r in roles}
        for tp, r in tps.items():
            out[r][tp.partition] = []
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            data = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for tp, recs in data.items():
                out[tps[tp]][tp.partition].extend(x for x in recs if x.offset < end[tp])
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return out
    finally:
        await consumer.stop()


def reconcile_parallel(settings: Settings, policy_path: str | None, jobs: int
                       ) -> ReconcileResult:
    """:func:`reconcile` by ``jobs`` processes over disjoint ledger partition ranges: a
    partition holds whole households and the settlements of its ledger records (same
    partition number), so each range reconciles alone and the results add up."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    n = asyncio.run(_ledger_partitions(settings))
    spans = split_span(Span(first=0, last=n - 1), jobs)
    if len(spans) == 1:
        return reconcile(settings, load_policy(policy_path) if policy_path else None)
    res = ReconcileResult()
    with ProcessPoolExecutor(max_workers=len(spans), mp_context=get_context("spawn")) as ex:
        for part in ex.map(_reconcile_span, [settings] * len(spans), [policy_path] * len(spans),
                           spans):
            res.add(part)
    return res


def _reconcile_span(settings: Settings, policy_path: str | None, span: Span) -> ReconcileResult:
    return reconcile(settings, load_policy(policy_path) if policy_path else None, span)


async def _ledger_partitions(settings: Settings) -> int:
    consumer = consumer_for(settings)
    await start_client(consumer)
    try:
        roles = await assign(consumer, {"ledger": Topics.of(settings).ledger}, 10.0)
        return len(roles)
    finally:
        await consumer.stop()


def reconcile(settings: Settings, policy: Policy | None = None, span: Span | None = None
              ) -> ReconcileResult:
    """Re-settle the ledger (with ``span``, its partitions ``span.first``-``span.last``) with
    the pure engine, per ledger partition and key as the live processor does, and compare
    output by output with the recorded ``settlements``."""
    t = Topics.of(settings)
    data = asyncio.run(_read_all(settings, {"ledger": t.ledger, "settlements": t.settlements},
                                 span))
    with tuned_for_a_fold():  # the records read and the engine's state: see yibao.collector
        keep_out_of_the_collector()
        return _compare(data, policy)


#: ledger records re-settled between two :func:`keep_out_of_the_collector` calls
_FREEZE_EVERY = 20_000


def _compare(data: dict[str, dict[int, list[Any]]], policy: Policy | None) -> ReconcileResult:
    """Re-settle every partition's ledger records and compare with its recorded outputs."""
    from yibao.streams.cores import ProcessorCore, is_replay

    codec = Codec()
    core = ProcessorCore(Engine(policy or load_policy()), codec)
    res = ReconcileResult()
    for p in sorted(set(data["ledger"]) | set(data["settlements"])):
        core.assign(p)
        expected: list[tuple[str, bytes]] = []
        for r in data["ledger"].get(p, []):
            res.ledger_records += 1
            if res.ledger_records % _FREEZE_EVERY == 0:
                keep_out_of_the_collector()
            for o in core.apply(p, r.key, r.value, is_replay(r.headers)):
                expected.append((o.event_id, codec.encode(o)))
        core.take_changes()
        recorded: dict[str, list[bytes]] = {}
        for r in data["settlements"].get(p, []):
            eid = _event_id(r.value)
            recorded.setdefault(eid, []).append(r.value)
        res.expected += len(expected)
        res.recorded += sum(len(v) for v in recorded.values())
        last = max((i for i, (eid, _) in enumerate(expected) if eid in recorded), default=-1)
        seen: set[str] = set()
        for i, (eid, value) in enumerate(expected):
            got = recorded.get(eid)
            if got is None:
                if i > last:
                    res.pending += 1
                else:
                    res.differences.append(Difference("missing", p, eid))
                continue
            seen.add(eid)
            bad = [g for g in got if g != value]
            if bad:
                res.differences.append(Difference("differs", p, eid, _field_diffs(value, bad[0])))
            else:
                res.matched += 1
        for eid in recorded.keys() - seen:
            res.differences.append(Difference("unexpected", p, eid))
    return res


def _event_id(raw: bytes) -> str:
    try:
        return str(msgspec.json.decode(raw).get("event_id"))
    except (msgspec.DecodeError, AttributeError):
        return f"<undecodable {raw[:40]!r}>"


def _field_diffs(expected: bytes, recorded: bytes) -> list[str]:
    a, b = msgspec.json.decode(expected), msgspec.json.decode(recorded)
    out: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(x.keys() | y.keys()):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{path}[{i}]")
        elif x != y:
            out.append(f"{path}: expected {x!r}, recorded {y!r}")

    walk(a, b, "")
    return out
