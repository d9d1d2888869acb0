"""Analysts' access to the projections (no broker): no raw person/household id in what they
can query, the pseudonym key taken from YIBAO_PSEUDONYM_KEY (and never stored), and a
bureau's region-scoped connection (yibao.projections.access) that holds its region's rows only."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from yibao.cli import main as cli
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.access import RegionError, export_region, open_region, region_predicate
from yibao.projections.store import Store
from yibao.projections.transform import DEV_PSEUDONYM_KEY, Rec, Transform
from yibao.rules.engine import Engine
from yibao.rules.fold import DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.settings import Settings

ENV_KEY = "bureau-secret-pseudonym-key-4f1d"
RAW_ID = re.compile(r"\b[PH]\d{6,7}\b")  # the generator's person (P0000290) / household (H000029) ids
REGIONS = ["500000", "500112", "530100"]  # a province (all 50xxxx), a district, a city


class Projection:
    def __init__(self, path: Path, person_ids: set[str], household_ids: set[str]) -> None:
        self.path, self.person_ids, self.household_ids = path, person_ids, household_ids


@pytest.fixture(scope="module")
def projection(tmp_path_factory: pytest.TempPathFactory) -> Projection:
    """Half a year for 80 households, projected with the key read from the environment, plus
    a dead letter whose raw bytes carry a person id."""
    tmp = tmp_path_factory.mktemp("access")
    log = tmp / "log.jsonl"
    generate_to_path(GenerateConfig(households=80, seed=11, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 6, 30), bad_rate=0.0), str(log))
    fold, codec = Fold(Engine(load_policy())), Codec()
    ledger: list[Rec] = []
    outs: list[Rec] = []
    persons: set[str] = set()
    households: set[str] = set()
    for i, raw in enumerate(log.read_bytes().splitlines()):
        doc = json.loads(raw)
        persons.update(v for k, v in doc.items() if k in ("person_id", "beneficiary_id") and v)
        if doc.get("household_id"):
            households.add(doc["household_id"])
        dups = fold.counts.duplicates
        res = fold.feed(raw)
        if isinstance(res, DeadLetter) or fold.counts.duplicates != dups:
            continue
        ledger.append(Rec(0, len(ledger), 1_735_660_800_000 + i, raw))
        outs.extend(Rec(0, len(outs), 1_735_660_800_000 + i, codec.encode(o)) for o in res)
    pid = sorted(persons)[0]
    dead = [Rec(0, 0, 1_735_660_800_000, json.dumps({
        "origin": {"topic": "visits", "partition": 0, "offset": 7}, "error": "truncated",
        "path": "$", "raw": f'{{"type":"VisitOpened","person_id":"{pid}",'}).encode())]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YIBAO_PSEUDONYM_KEY", ENV_KEY)
        key = Settings().pseudonym_key  # what `yibao project` / `replay` hand the transform
    path = tmp / "proj.duckdb"
    with Store(path) as store:
        store.write(Transform(key).batch(ledger, outs, dead), {})
    assert all(RAW_ID.fullmatch(x) for x in persons | households)  # the pattern fits the ids
    return Projection(path, persons, households)


def hmac32(key: str, ident: str) -> str:
    return hmac.new(key.encode(), ident.encode(), hashlib.sha256).hexdigest()[:32]


def relations(con: duckdb.DuckDBPyConnection, kind: str | None = None) -> list[str]:
    q = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    if kind:
        q += f" AND table_type = '{kind}'"
    return [r[0] for r in con.execute(q + " ORDER BY 1").fetchall()]


def raw_ids_in(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """Every raw-id-looking string in any column of ``name`` (all cast to text)."""
    cols = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall()]
    found: list[str] = []
    for c in cols:
        rows = con.execute(f'SELECT DISTINCT CAST("{c}" AS VARCHAR) FROM "{name}" WHERE '
                           f"regexp_matches(CAST(\"{c}\" AS VARCHAR), '\\b[PH][0-9]{{6,7}}\\b')").fetchall()
        found += [f"{name}.{c}: {r[0][:80]}" for r in rows]
    return found


def test_no_analyst_view_exposes_raw_person_ids(projection: Projection) -> None:
    con = duckdb.connect(str(projection.path), read_only=True)
    views = relations(con, "VIEW")
    assert {"persons", "settlements", "visits", "payments", "accounts", "family_aid"} <= set(views)
    assert [hit for v in views for hit in raw_ids_in(con, v)] == []
    # the documented exception: dead_letters.raw keeps the bytes as they arrived (operators)
    assert raw_ids_in(con, "dead_letters")
    # ...which a bureau's connection never carries: nothing in it, table or view, has one
    for region in REGIONS:
        scoped = open_region(projection.path, region)
        assert scoped.execute("SELECT count(*) FROM dead_letters").fetchall() == [(0,)]
        assert [hit for r in relations(scoped) for hit in raw_ids_in(scoped, r)] == []


def test_pseudonym_key_comes_from_the_environment(projection: Projection,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_PSEUDONYM_KEY", ENV_KEY)
    assert Settings().pseudonym_key == ENV_KEY
    con = duckdb.connect(str(projection.path), read_only=True)
    keys = {r[0] for r in con.execute("SELECT person_key FROM registrations").fetchall()}
    assert keys and keys <= {hmac32(ENV_KEY, p) for p in projection.person_ids}
    assert not keys & {hmac32(DEV_PSEUDONYM_KEY, p) for p in projection.person_ids}
    households = {r[0] for r in con.execute("SELECT household_key FROM persons").fetchall()}
    assert households <= {hmac32(ENV_KEY, h) for h in projection.household_ids}
    # the key is used, never stored: not in the file, not in a persistent macro or _meta
    con.close()
    assert ENV_KEY.encode() not in projection.path.read_bytes()
    con = duckdb.connect(str(projection.path), read_only=True)
    macros = con.execute("SELECT count(*) FROM duckdb_functions() WHERE NOT internal "
                         "AND database_name <> 'temp'").fetchall()
    assert macros == [(0,)]
    assert not [v for (v,) in con.execute("SELECT value FROM _meta").fetchall() if ENV_KEY in v]


@pytest.mark.parametrize("region", REGIONS)
def test_a_bureau_sees_only_its_own_region(projection: Projection, region: str) -> None:
    full = duckdb.connect(str(projection.path), read_only=True)
    scoped = open_region(projection.path, region)
    ins = region_predicate("insured_region", region)

    def rows(con: duckdb.DuckDBPyConnection, q: str) -> list[tuple[object, ...]]:
        return sorted(con.execute(q).fetchall(), key=repr)

    persons = rows(scoped, "SELECT * FROM persons")
    assert persons and persons == rows(full, f"SELECT * FROM persons WHERE "
                                             f"{region_predicate('region', region)}")
    assert len(persons) < full.execute("SELECT count(*) FROM persons").fetchall()[0][0]
    mine = {p[0] for p in persons}
    # per-person views: exactly the full projection's rows of the region's persons
    for view, key in [("settlements", "person_key"), ("accumulators", "person_key"),
                      ("visits", "person_key"), ("payments", "person_key"),
                      ("accounts", "person_key"), ("credit_lines", "person_key")]:
        got = rows(scoped, f"SELECT * FROM {view}")
        assert {r[0] for r in scoped.execute(f"SELECT {key} FROM {view}").fetchall()} <= mine, view
        want = rows(full, f"SELECT * FROM {view} WHERE {key} IN (SELECT person_key FROM persons "
                          f"WHERE {region_predicate('region', region)})")
        assert got == want, view
    assert rows(scoped, "SELECT DISTINCT insured_region FROM settlements") == \
        rows(full, f"SELECT DISTINCT insured_region FROM settlements WHERE {ins}")
    # aggregates are of the region's rows only
    assert rows(scoped, "SELECT * FROM fund_ledger") == rows(full, f"SELECT * FROM fund_ledger WHERE {ins}")
    by_method = rows(scoped, "SELECT * FROM payments_by_method")
    assert sum(r[4] for r in by_method) == scoped.execute(  # type: ignore[misc]
        "SELECT sum(amount_fen) FROM payments").fetchall()[0][0]
    # clearing: what the region owes and is owed, nothing between two other regions
    tre = region_predicate("treatment_region", region)
    assert rows(scoped, "SELECT * FROM clearing") == \
        rows(full, f"SELECT * FROM clearing WHERE {ins} OR {tre}")
    # family aid: only pairs where the region's person gives or gets
    for b, p in scoped.execute("SELECT beneficiary_key, payer_key FROM family_aid").fetchall():
        assert b in mine or p in mine


def test_the_region_connection_is_locked_down(projection: Projection, tmp_path: Path) -> None:
    con = open_region(projection.path, "500112")
    assert {r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()} \
        == {"memory", "system", "temp"}  # the projection file is not attached
    for attempt in [
        f"ATTACH '{projection.path}' AS full_copy (READ_ONLY)",
        f"SELECT * FROM read_csv('{projection.path}')",
        f"COPY settlements TO '{tmp_path / 'leak.csv'}'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SELECT * FROM _yibao_src.claims",
    ]:
        with pytest.raises(duckdb.Error):
            con.execute(attempt).fetchall()
    assert not (tmp_path / "leak.csv").exists()


def test_bad_region_codes_are_refused(projection: Projection) -> None:
    for bad in ["50", "5000000", "500000' OR '1'='1", "abcdef", ""]:
        with pytest.raises(RegionError, match="6-digit code"):
            open_region(projection.path, bad)


def test_export_region_holds_nothing_else(projection: Projection, tmp_path: Path) -> None:
    out = export_region(projection.path, "530100", tmp_path / "bureau-530100.duckdb")
    con = duckdb.connect(str(out), read_only=True)  # opened directly, no lock-down needed
    assert con.execute("SELECT DISTINCT region FROM registrations").fetchall() == [("530100",)]
    assert con.execute("SELECT DISTINCT insured_region FROM claims").fetchall() == [("530100",)]
    assert con.execute("SELECT count(*) FROM settlements").fetchall()[0][0] > 0
    with pytest.raises(FileExistsError):
        export_region(projection.path, "530100", out)


def test_cli_sql_region(projection: Projection, tmp_path: Path) -> None:
    csv = tmp_path / "out.csv"
    ok = CliRunner().invoke(cli, ["sql", "--db", str(projection.path), "--region", "500000", "--csv",
                                  str(csv), "SELECT DISTINCT left(insured_region, 2) AS p FROM settlements"])
    assert ok.exit_code == 0, ok.output
    assert csv.read_text().split() == ['"p"', '"50"'] or csv.read_text().split() == ["p", "50"]
    bad = CliRunner().invoke(cli, ["sql", "--db", str(projection.path), "--region", "50", "SELECT 1"])
    assert bad.exit_code == 1 and "6-digit code" in bad.output
    denied = CliRunner().invoke(cli, ["sql", "--db", str(projection.path), "--region", "500000",
                                      f"SELECT * FROM read_csv('{projection.path}')"])
    assert denied.exit_code == 1 and "disabled by configuration" in denied.output
