"""Replay in parts: a projection file built from a range of ledger partitions, and the merge
of parts (built in other processes, or on other machines) into one file.

Why a partition range is a unit: the ledger and ``settlements`` are keyed by household, and
every output sits on the settlements partition of its ledger record, so a range of ledger
partitions is a set of whole households — the what-if engine's state never crosses it. Every
base table is append-only and each row depends on its own record only (transform.py), so the
projection of a log is the union of the projections of its partitions, and every aggregate is
a view computed over the merged tables: nothing needs merging but the rows and the tracking
positions (``_offsets``, one row per topic partition read).

Topics that are not keyed by household (``deadletter``: the input's key; ``audit``: the
facility) are split by partition number too: partition ``p`` of every topic belongs to the
part holding ledger partition ``p``, and a partition beyond the ledger's count to the part
holding the last one. Their rows are per-record like the rest, so any split unions to the
same tables.

A part records in ``_meta`` what it covers (``partitions``, ``ledger_partitions``), the end
offsets it read up to (``end_offsets``), whether it finished (``complete``), and what must
match between parts to be merged: the kind of replay (``source``, the what-if policy's hash,
``until``), the topics (``topic_prefix``) and a check value of the pseudonym key (two keys
give pseudonyms that never join). A merged file records the same, so it is a part itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import msgspec

from yibao.projections.exceptions import PartsError
from yibao.projections.schema import TABLES
from yibao.projections.sql import sql_identifier, sql_literal
from yibao.projections.store import Offsets, Store

#: the _meta keys two parts must agree on to be merged
IDENTITY = ("source", "policy_sha256", "until", "topic_prefix", "pseudonym_check")


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """Ledger partitions ``first`` to ``last``, both included."""

    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}" if self.last != self.first else str(self.first)

    def __contains__(self, partition: object) -> bool:
        return isinstance(partition, int) and self.first <= partition <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def parse_span(text: str) -> Span:
    """``"0-3"`` or ``"5"``; PartsError naming the value otherwise."""
    first, sep, last = text.strip().partition("-")
    try:
        span = Span(first=int(first), last=int(last) if sep else int(first))
    except ValueError:
        raise PartsError(f"--partitions must be a range such as 0-3 or one partition such "
                         f"as 5, not {text!r}") from None
    if span.first < 0 or span.last < span.first:
        raise PartsError(f"--partitions {text!r}: the range must run from a partition >= 0 up")
    return span


def split_span(span: Span, jobs: int) -> list[Span]:
    """``span`` cut into ``jobs`` contiguous ranges as even as can be (fewer if it is shorter)."""
    jobs = max(1, min(jobs, span.size))
    size, extra = divmod(span.size, jobs)
    out, first = [], span.first
    for i in range(jobs):
        last = first + size + (1 if i < extra else 0) - 1
        out.append(Span(first=first, last=last))
        first = last + 1
    return out


def owner_partition(partition: int, ledger_partitions: int) -> int:
    """The ledger partition whose part reads ``partition`` of any topic."""
    return min(partition, ledger_partitions - 1)


def policy_sha256(path: str | Path | None) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


def pseudonym_check(key: str | bytes) -> str:
    """A value that is equal for equal pseudonym keys and reveals nothing of the key."""
    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, b"yibao replay part check", hashlib.sha256).hexdigest()[:16]


def encode_offsets(offsets: Offsets) -> str:
    return json.dumps({f"{t}:{p}": o for (t, p), o in sorted(offsets.items())})


def decode_offsets(text: str) -> Offsets:
    out: Offsets = {}
    for k, o in json.loads(text or "{}").items():
        t, _, p = k.rpartition(":")
        out[(t, int(p))] = int(o)
    return out


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """What a part file says about itself (its ``_meta``)."""

    path: str
    span: Span
    ledger_partitions: int
    meta: dict[str, str]
    end_offsets: Offsets
    complete: bool

    @property
    def identity(self) -> dict[str, str]:
        return {k: self.meta.get(k, "") for k in IDENTITY}


def read_part(path: str | Path) -> Part:
    """The part description of a projection file; PartsError if it is not a replay part."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise PartsError(f"{path}: cannot open it as a DuckDB file: {exc}") from None
    try:
        meta = dict(con.sql("SELECT key, value FROM _meta").fetchall())
    except duckdb.Error:
        raise PartsError(f"{path}: not a projection file (no _meta table)") from None
    finally:
        con.close()
    if "partitions" not in meta or "ledger_partitions" not in meta:
        raise PartsError(f"{path}: not a replay part (no 'partitions' in its _meta: built by "
                         f"the live projector or an older yibao replay)")
    return Part(path=str(path), span=parse_span(meta["partitions"]),
                ledger_partitions=int(meta["ledger_partitions"]),
                meta=meta,
                end_offsets=decode_offsets(meta.get("end_offsets", "")),
                complete=meta.get("complete") == "true")


def check_parts(parts: Sequence[Part], want: Span | None = None) -> Span:
    """The range ``parts`` cover together (all ledger partitions unless ``want`` says
    another); PartsError naming every overlap, gap, unfinished part or disagreement."""
    if not parts:
        raise PartsError("no part files given")
    problems: list[str] = []
    first = parts[0]
    for p in parts[1:]:
        if p.ledger_partitions != first.ledger_partitions:
            problems.append(f"{p.path} was built from a ledger of {p.ledger_partitions} "
                            f"partitions, {first.path} from {first.ledger_partitions}")
        for k in IDENTITY:
            if p.identity[k] != first.identity[k]:
                problems.append(f"{p.path} and {first.path} differ in {k}: "
                                f"{p.identity[k]!r} vs {first.identity[k]!r}")
    problems += [f"{p.path} is incomplete: its replay did not finish" for p in parts
                 if not p.complete]
    n = first.ledger_partitions
    want = want or Span(first=0, last=n - 1)
    if want.last >= n:
        problems.append(f"partitions {want} asked for, the ledger has {n} (0-{n - 1})")
    owners: dict[int, list[Part]] = {}
    for p in parts:
        if p.span.last >= n:
            problems.append(f"{p.path} covers partitions {p.span}, the ledger has {n}")
        for i in range(p.span.first, p.span.last + 1):
            owners.setdefault(i, []).append(p)
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            lo, hi = max(a.span.first, b.span.first), min(a.span.last, b.span.last)
            if lo <= hi:
                problems.append(f"overlap: partitions {Span(first=lo, last=hi)} are in both "
                                f"{a.path} ({a.span}) and {b.path} ({b.span})")
    missing = [i for i in range(want.first, want.last + 1) if i not in owners]
    problems += [f"missing: partitions {s} are in no part (the merge must cover {want})"
                 for s in _runs(missing)]
    problems += [f"{p.path} covers partitions {p.span}, outside {want}" for p in parts
                 if p.span.first < want.first or p.span.last > want.last]
    if problems:
        raise PartsError("cannot merge: " + "; ".join(problems))
    return want


def _runs(partitions: list[int]) -> list[Span]:
    out: list[Span] = []
    for i in partitions:
        if out and out[-1].last == i - 1:
            out[-1] = Span(first=out[-1].first, last=i)
        else:
            out.append(Span(first=i, last=i))
    return out


def part_meta(span: Span, ledger_partitions: int, end_offsets: Offsets) -> dict[str, str]:
    return {"partitions": str(span), "ledger_partitions": str(ledger_partitions),
            "end_offsets": encode_offsets(end_offsets)}


def merge_parts(into: str | Path, paths: Sequence[str | Path], *,
                want: Span | None = None, memory_limit: str | None = None) -> Span:
    """Merge the part files ``paths`` into ``into``: every base table's rows and every
    tracking position, one part per transaction. ``into`` may be one of the parts (it then
    keeps its rows and takes the others'); otherwise it is replaced. Refuses (PartsError)
    before writing anything unless the parts cover ``want`` (default: every ledger
    partition) exactly once and agree on what they replayed."""
    into = Path(into)
    parts = [read_part(p) for p in paths]
    span = check_parts(parts, want)
    keep = into.exists() and any(Path(p.path).resolve() == into.resolve() for p in parts)
    if not keep:
        for f in (into, into.with_name(into.name + ".wal")):
            f.unlink(missing_ok=True)
    with Store(into, bulk=True, memory_limit=memory_limit) as store:
        columns = _columns(store.con, store.name)
        for p in parts:
            if keep and Path(p.path).resolve() == into.resolve():
                continue
            _absorb(store, p, columns)
        end: Offsets = {}
        for p in parts:
            end.update(p.end_offsets)
        store.set_meta({**parts[0].meta, **part_meta(span, parts[0].ledger_partitions, end),
                        "merged_from": ", ".join(Path(p.path).name for p in parts),
                        "complete": "true"})
        store.checkpoint()
    return span


def _columns(con: duckdb.DuckDBPyConnection, database: str) -> dict[str, list[tuple[str, str]]]:
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = ? AND table_schema = 'main' ORDER BY table_name, ordinal_position",
        [database]).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for t, c, d in rows:
        out.setdefault(t, []).append((c, d))
    return out


def _absorb(store: Store, part: Part, columns: Mapping[str, list[tuple[str, str]]]) -> None:
    """Append ``part``'s rows and positions to ``store`` in one transaction."""
    con, alias = store.con, "_yibao_part"
    con.execute(f"ATTACH {sql_literal(part.path)} AS {alias} (READ_ONLY)")
    try:
        theirs = _columns(con, alias)
        for t in (*TABLES, "_offsets"):
            if theirs.get(t) != columns[t]:
                raise PartsError(f"{part.path}: table {t} has columns {theirs.get(t)}, this "
                                 f"yibao's has {columns[t]} (built by another version)")
        con.begin()
        try:
            for t in (*TABLES, "_offsets"):
                con.execute(f"INSERT INTO {sql_identifier(t)} "
                            f"SELECT * FROM {alias}.{sql_identifier(t)}")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.execute(f"DETACH {alias}")
