"""One SQL literal helper and one region predicate for every projection module."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from yibao.projections.exceptions import RegionError
from yibao.projections.reports import clearing_query, funds_query
from yibao.projections.sql import region_predicate, sql_literal


@pytest.mark.parametrize("bad", ["50000", "5000000", "50000'", "500000' OR '1'='1", "", "abcdef"])
def test_every_region_reaching_sql_is_validated_and_named(bad: str) -> None:
    for build in (lambda r: region_predicate("insured_region", r),
                  lambda r: funds_query(r, dt.date(2025, 1, 1), dt.date(2025, 1, 31)),
                  lambda r: clearing_query(r, "2025-01")):
        with pytest.raises(RegionError, match="6-digit") as err:
            build(bad)
        assert repr(bad) in str(err.value)


def test_a_province_code_covers_its_regions() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('500112'), ('500000'), ('510100')) v(r)")
    province = region_predicate("r", "500000")
    exact = region_predicate("r", "500112")
    assert sorted(x for (x,) in con.sql(f"SELECT r FROM t WHERE {province}").fetchall()) == [
        "500000", "500112"]
    assert con.sql(f"SELECT r FROM t WHERE {exact}").fetchall() == [("500112",)]


def test_a_literal_survives_quotes() -> None:
    value = "it's a 'quoted' path/x.duckdb"
    assert duckdb.connect().execute(f"SELECT {sql_literal(value)}").fetchone() == (value,)


def test_the_projections_read_records_as_the_contract_types_them() -> None:
    """The JSON structs the SQL transform reads records with come from the Structs: a field
    the contract does not have fails at import, and each type is the field's."""
    from yibao.projections.schema import AMOUNTS, TABLES
    from yibao.projections.sqltransform import _LEDGER_STRUCT, _OUT_STRUCT, _contract_struct
    from yibao.schemas.events import OUTPUT_TYPES, Amounts

    with pytest.raises(KeyError, match="no_such_field"):
        _contract_struct(OUTPUT_TYPES, ("type", "no_such_field"), {"type": '"VARCHAR"'})
    assert '"facility_level":"BIGINT"' in _LEDGER_STRUCT
    assert '"opened_at":"TIMESTAMPTZ"' in _LEDGER_STRUCT
    assert '"cross_province":"BOOLEAN"' in _OUT_STRUCT and '"service_date":"DATE"' in _OUT_STRUCT
    assert Amounts.__struct_fields__ == AMOUNTS
    claims = [c.name for c in TABLES["claims"][1]]
    assert all(a in claims for a in AMOUNTS)


def test_an_identifier_survives_quotes() -> None:
    from yibao.projections.sql import sql_identifier

    con = duckdb.connect()
    name = 'odd "table" name'
    con.execute(f"CREATE TABLE {sql_identifier(name)} AS SELECT 1 AS x")
    assert con.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [(name,)]


def test_the_copied_tables_have_their_structs_fields_as_columns(tmp_path: Path) -> None:
    """A table that copies events' fields has, after its head, exactly the contract's fields
    in the contract's order, in the DuckDB file too (only audit_flags' line_ids is left out)."""
    from yibao.projections.schema import _HEAD_FIELDS, COPIED_FROM, contract_fields
    from yibao.projections.store import Store

    skipped = {"audit_flags": {"line_ids"}}
    with Store(tmp_path / "p.duckdb") as s:
        for table, types in COPIED_FROM.items():
            fields = [f for f in contract_fields(*types)
                      if f not in _HEAD_FIELDS and f not in skipped.get(table, set())]
            described = [r[0] for r in s.con.execute(f'DESCRIBE "{table}"').fetchall()]
            tail = [c for c in described if c not in (
                "event_id", "caused_by", "type", "person_key", "event_time", "occurred_at",
                "src_partition", "src_offset")]
            assert tail == fields, table


def test_a_field_added_to_the_contract_becomes_a_column() -> None:
    import msgspec

    from yibao.projections.schema import copied
    from yibao.schemas.events import PaymentRejected

    Wider = msgspec.defstruct("Wider", [("insurer_note", str | None, None)],
                              bases=(PaymentRejected,), kw_only=True, frozen=True)
    cols = copied((Wider,), {})
    assert [c.name for c in cols] == ["visit_id", "payment_id", "reason", "insurer_note"]
    with pytest.raises(KeyError, match="nonexistent"):
        copied((PaymentRejected,), {"nonexistent": "a column the contract lacks"})
