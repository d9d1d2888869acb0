"""The DuckDB projection file: schema, batch writes with their offsets in one transaction,
consistent snapshots for readers while the projector writes.

DuckDB lets one process write a database file; a second process cannot even open it
read-only while the writer holds it. So the projector *publishes* snapshots: every few
seconds, between two batches, it copies the whole database (``COPY FROM DATABASE``, tables
and views) into ``<name>.snapshot.duckdb.tmp`` and renames it over ``<name>.snapshot.duckdb``.
The rename is atomic: a reader (``yibao sql``, the reports, ``duckdb -readonly``, any DuckDB
client with ``read_only=True``) opens either the previous or the new snapshot, each one the
state after a committed batch, and a reader that has a snapshot open keeps reading it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from yibao.projections import sqltransform
from yibao.projections.schema import PROJECTIONS, TABLES, VIEWS, ddl
from yibao.projections.sql import sql_identifier, sql_literal
from yibao.projections.sqltransform import install_pseudonym_macro
from yibao.projections.transform import DEV_PSEUDONYM_KEY

#: (role, partition) -> next offset to read
Offsets = dict[tuple[str, int], int]


def snapshot_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".snapshot" + (p.suffix or ".duckdb"))


class Store:
    """The projector's (or replay's) single writer connection."""

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 pseudonym_key: str | bytes = DEV_PSEUDONYM_KEY, bulk: bool = False,
                 memory_limit: str | None = None) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
        if bulk:  # replay: one checkpoint at the end instead of one per 16 MiB of WAL
            self.con.execute("SET checkpoint_threshold = '8GB'")
        self.con.execute(ddl())
        install_pseudonym_macro(self.con, pseudonym_key)
        self.name = self.con.sql("SELECT current_database()").fetchall()[0][0]
        self.last_snapshot = 0.0

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- reads

    def offsets(self) -> Offsets:
        rows = self.con.sql('SELECT topic, "partition", next_offset FROM _offsets').fetchall()
        return {(t, p): o for t, p, o in rows}

    def meta(self) -> dict[str, str]:
        return dict(self.con.sql("SELECT key, value FROM _meta").fetchall())

    def set_meta(self, values: Mapping[str, str]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO _meta VALUES (?, ?)",
                             [[k, v] for k, v in values.items()])

    def counts(self) -> dict[str, int]:
        return {t: self.con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}

    # ---------------------------------------------------------------------- writes

    def write(self, tables: Mapping[str, pa.Table], offsets: Offsets,
              raw: Mapping[str, pa.Table] | None = None) -> None:
        """Append every table (``tables``: rows made by :class:`Transform`; ``raw``: record
        batches per topic that :mod:`yibao.projections.sqltransform` turns into rows) and store the
        offsets they end at, in one transaction: after a crash the file has either the whole
        batch and its offsets, or neither."""
        con = self.con
        con.begin()
        try:
            if raw:
                sqltransform.insert(con, dict(raw))
            for name, table in tables.items():
                if name not in TABLES:
                    raise ValueError(f"no projection table {name!r}")
                con.register("_yibao_batch", table)
                try:
                    con.execute(f"INSERT INTO {name} SELECT * FROM _yibao_batch")
                finally:
                    con.unregister("_yibao_batch")
            if offsets:
                items = list(offsets.items())
                con.register("_yibao_offsets", pa.table({
                    "topic": pa.array([t for (t, _p), _o in items], pa.string()),
                    "partition": pa.array([p for (_t, p), _o in items], pa.int32()),
                    "next_offset": pa.array([o for _k, o in items], pa.int64())}))
                try:
                    con.execute("INSERT OR REPLACE INTO _offsets SELECT * FROM _yibao_offsets")
                finally:
                    con.unregister("_yibao_offsets")
            con.commit()
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            raise

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")

    def snapshot(self, dest: str | Path | None = None) -> Path:
        """Publish a consistent copy of the database (atomic rename); return its path."""
        final = Path(dest) if dest is not None else snapshot_path(self.path)
        tmp = final.with_name(final.name + ".tmp")
        for p in (tmp, tmp.with_name(tmp.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        con = self.con
        con.execute(f"ATTACH {sql_literal(str(tmp))} AS _yibao_snapshot")
        try:
            con.execute(f"COPY FROM DATABASE {sql_identifier(self.name)} TO _yibao_snapshot")
            con.execute("INSERT OR REPLACE INTO _yibao_snapshot._meta VALUES "
                        "('snapshot_at', strftime(now(), '%Y-%m-%dT%H:%M:%S.%g%z'))")
        finally:
            con.execute("DETACH _yibao_snapshot")
        os.replace(tmp, final)
        self.last_snapshot = time.monotonic()
        return final


def connect_readonly(path: str | Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=True)


@contextlib.contextmanager
def open_for_query(db: str | Path | None, default: str | Path) -> Iterator[
        tuple[duckdb.DuckDBPyConnection, Path]]:
    """A read-only connection to ``db`` if given; else to the projection file ``default``
    or, while the projector holds it, to its latest snapshot."""
    candidates = [Path(db)] if db is not None else [Path(default), snapshot_path(default)]
    last: Exception | None = None
    for c in candidates:
        if not c.exists():
            continue
        try:
            con = connect_readonly(c)
        except duckdb.Error as exc:  # locked by the projector: try the snapshot
            last = exc
            continue
        try:
            yield con, c
        finally:
            con.close()
        return
    if last is not None:
        raise last
    raise FileNotFoundError(f"no projection at {', '.join(map(str, candidates))}")


__all__ = ["PROJECTIONS", "VIEWS", "Offsets", "Store", "open_for_query", "snapshot_path"]
