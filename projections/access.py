"""Region-scoped, read-only access to a projection for a bureau's analysts.

``open_region(path, "500000")`` returns an in-memory DuckDB connection holding *copies* of
the base tables restricted to the region, with every view of the projection recreated over
them (so ``settlements``, ``fund_ledger``, ``payments_by_method``... all aggregate the region's
rows only), and then locked down:

- the projection file is DETACHed once copied: nothing in the connection refers to it, so
  no query can name a base table or row of another region — they are not there;
- ``enable_external_access = false`` + ``lock_configuration = true``: the analyst's SQL
  cannot ATTACH the file again, read files (``read_parquet``, ``read_csv``), write files
  (``COPY ... TO``) or load extensions, and cannot turn that back on;
- ``dead_letters`` is empty (its ``raw`` column holds the rejected bytes as they arrived,
  raw person ids included: operators only), ``_offsets`` too.

What is in scope for region R (a 6-digit code; ``NN0000`` means the whole province NN):
persons whose accepted registration is in R; their events, visits, payments, rejections,
audit flags and claims (settlements, reversals); family-account debits and aid where
the beneficiary or the payer is one of those persons; cross-region ``clearing`` rows where R
is the insured *or* the treatment region (what R owes and is owed).

What this enforces and what it cannot: it is enforced *inside the process* that builds the
connection. DuckDB has no users, GRANT or row-level security; whoever can read the
projection file (or its snapshot) can open it directly and see every region. Region scoping
is real only when analysts cannot read the file themselves: run ``yibao sql --region`` on
their behalf (a service, sudo rule, or a job under another Unix user), or hand a bureau the
file written by :func:`export_region`, which contains nothing but its region.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from yibao.projections.exceptions import RegionError
from yibao.projections.sql import region_predicate, sql_identifier, sql_literal

__all__ = [
    "RegionError",
    "export_region",
    "open_region",
    "open_region_for_query",
    "region_predicate",
    "write_result",
]

_SRC = "_yibao_src"

#: base table -> rows in scope (SQL over the attached source ``_SRC`` and the temp table
#: ``_scope(person_key)``); tables not listed are copied empty.
_ROWS = {
    "registrations": "person_key IN (SELECT person_key FROM _scope)",
    "enrollment_events": "person_key IN (SELECT person_key FROM _scope)",
    "visit_events": "person_key IN (SELECT person_key FROM _scope)",
    "payment_events": "person_key IN (SELECT person_key FROM _scope)",
    "payment_outcomes": "person_key IN (SELECT person_key FROM _scope)",
    "rejections": "person_key IN (SELECT person_key FROM _scope)",
    "audit_flags": "person_key IN (SELECT person_key FROM _scope)",
    "audit_reviews": "person_key IN (SELECT person_key FROM _scope)",
    # by person, not insured_region: a ClaimReversed row carries no region of its own
    "claims": "person_key IN (SELECT person_key FROM _scope)",
    "family_debits": "beneficiary_key IN (SELECT person_key FROM _scope) "
                     "OR payer_key IN (SELECT person_key FROM _scope)",
    "_meta": "true",
}
#: aggregate views computed over the *whole* projection, then restricted: a bureau's
#: cross-region clearing is what it owes (its insured treated elsewhere) and what it is owed
#: (other regions' insured treated in it) — totals per region pair and month, no person rows.
_FROM_SOURCE = {
    "clearing": "{insured} OR {treatment}",
}


def _fill(template: str, region: str) -> str:
    return template.format(insured=region_predicate("insured_region", region),
                           treatment=region_predicate("treatment_region", region))


def _build(con: duckdb.DuckDBPyConnection, source: Path, region: str, schema: str) -> None:
    """Copy ``source``'s region-``region`` rows into ``schema`` of ``con`` and recreate its
    views there; the source is detached at the end."""
    con.execute(f"ATTACH {sql_literal(source)} AS {_SRC} (READ_ONLY)")
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name",
            [_SRC]).fetchall()]
        views = con.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal "
            "ORDER BY view_oid", [_SRC]).fetchall()
        if "registrations" not in tables or not any(v[0] == "persons" for v in views):
            raise RegionError(f"{source} is not a yibao projection (no registrations/persons)")
        con.execute(f"CREATE TEMP TABLE _scope AS SELECT DISTINCT person_key FROM {_SRC}.persons "
                    f"WHERE {region_predicate('region', region)}")
        for t in tables:
            where = _fill(_ROWS[t], region) if t in _ROWS else "false"
            con.execute(f"CREATE TABLE {schema}.{sql_identifier(t)} AS SELECT * "
                        f"FROM {_SRC}.{sql_identifier(t)} WHERE {where}")
        con.execute(f"USE {schema.split('.')[0]}")
        for name, _sql in views:
            if name in _FROM_SOURCE:
                con.execute(f"CREATE TABLE {schema}.{sql_identifier(name)} AS SELECT * "
                            f"FROM {_SRC}.{sql_identifier(name)} WHERE {_fill(_FROM_SOURCE[name], region)}")
        todo = [(n, sql) for n, sql in views if n not in _FROM_SOURCE]
        while todo:  # in dependency order: a view over a view not yet made waits a round
            failed: list[tuple[str, str]] = []
            for name, sql in todo:
                try:
                    con.execute(sql)  # unqualified names: resolve to the scoped copies
                except duckdb.CatalogException:
                    failed.append((name, sql))
            if len(failed) == len(todo):
                raise RegionError(f"cannot recreate the views {[n for n, _ in failed]} of {source}")
            todo = failed
        con.execute("DROP TABLE _scope")
    finally:
        con.execute(f"DETACH {_SRC}")


def open_region(path: str | Path, region: str) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down connection with region ``region``'s rows of the projection
    at ``path`` (read-only; see the module docstring for what that enforces)."""
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no projection file {source}")
    con = duckdb.connect(":memory:")
    try:
        _build(con, source, region, "memory.main")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def export_region(path: str | Path, region: str, dest: str | Path) -> Path:
    """Write a new DuckDB file ``dest`` holding only region ``region``'s rows and the views:
    the file a bureau can be given (it cannot reveal other regions, whoever opens it)."""
    out = Path(dest)
    if out.exists():
        raise FileExistsError(f"{out} exists")
    con = duckdb.connect(str(out))
    try:
        db = con.sql("SELECT current_database()").fetchall()[0][0]
        _build(con, Path(path), region, f"{sql_identifier(db)}.main")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return out


def open_region_for_query(db: str | Path | None, default: str | Path, region: str
                          ) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """:func:`open_region` of ``db`` if given; else of the projection file ``default`` or,
    while the projector holds it, of its latest snapshot (as ``open_for_query``)."""
    from yibao.projections.store import snapshot_path

    candidates = [Path(db)] if db is not None else [Path(default), snapshot_path(default)]
    last: Exception | None = None
    for c in candidates:
        if not c.exists():
            continue
        try:
            return open_region(c, region), c
        except duckdb.IOException as exc:  # locked by the projector: try the snapshot
            last = exc
    if last is not None:
        raise last
    raise FileNotFoundError(f"no projection at {', '.join(map(str, candidates))}")


def write_result(rel: duckdb.DuckDBPyRelation, csv: str | None, parquet: str | None) -> None:
    """``--csv`` / ``--parquet`` of a locked-down connection (which may not write files
    itself): the result goes through Arrow, written by this process."""
    if not (csv or parquet):
        return
    table = rel.to_arrow_table()
    if csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, csv)
    if parquet:
        import pyarrow.parquet as pq

        pq.write_table(table, parquet)
