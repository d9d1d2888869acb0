"""Projections without a broker: the pure transform into DuckDB, compared with the engine's own
state after folding the same log (balances, credit, family aid), batching independence,
pseudonyms, verify and the reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.audit import verify
from yibao.projections.reports import (
    attach_pair,
    chart_html,
    clearing_query,
    daily_payouts,
    explain,
    funds_query,
    policy_impact_query,
)
from yibao.projections.sqltransform import raw_table
from yibao.projections.store import Store
from yibao.projections.transform import Pseudonyms, Rec, Transform
from yibao.rules.engine import Engine
from yibao.rules.fold import DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec

KEY = "test-key"


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fold, list[Rec], list[Rec]]:
    """A generated year (refunds, credit, family aid...) folded as file mode does; the
    ledger and settlements records the pipeline would write (one partition)."""
    log = tmp_path_factory.mktemp("log") / "log.jsonl"
    generate_to_path(GenerateConfig(households=150, seed=7, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 12, 31), bad_rate=0.0), str(log))
    fold = Fold(Engine(load_policy()))
    codec = Codec()
    ledger: list[Rec] = []
    outs: list[Rec] = []
    base = 1_735_660_800_000
    for i, raw in enumerate(log.read_bytes().splitlines()):
        dups = fold.counts.duplicates
        res = fold.feed(raw)
        if isinstance(res, DeadLetter) or fold.counts.duplicates != dups:
            continue
        ledger.append(Rec(0, len(ledger), base + i, raw))
        for o in res:
            outs.append(Rec(0, len(outs), base + i, codec.encode(o)))
    return fold, ledger, outs


def project(path: Path, ledger: list[Rec], outs: list[Rec], batch: int) -> None:
    t = Transform(KEY)
    with Store(path) as store:
        for i in range(0, max(len(ledger), len(outs)), batch):
            store.write(t.batch(ledger[i:i + batch], outs[i:i + batch]),
                        {("ledger", 0): i + batch})


def test_views_agree_with_engine_state(folded: tuple[Fold, list[Rec], list[Rec]],
                                       tmp_path: Path) -> None:
    fold, ledger, outs = folded
    db = tmp_path / "p.duckdb"
    project(db, ledger, outs, 5000)
    ps = Pseudonyms(KEY)
    persons = {pid: p for pid, p in fold.state.persons.items() if p.registration is not None}
    with Store(db) as s:
        q = s.con.sql
        balances = dict(q("SELECT person_key, balance_fen FROM accounts").fetchall())
        assert balances == {ps(pid): p.balance for pid, p in persons.items()}
        credit = {(k, b): o for k, b, _lim, o in q("SELECT * FROM credit_lines").fetchall()}
        want = {(ps(pid), b): p.credit_outstanding.get(b, 0)
                for pid, p in persons.items() for b in p.credit_limit}
        assert credit == want
        assert any(v for v in want.values()), "the log should exercise credit"
        aid = set(q("SELECT beneficiary_key, payer_key FROM family_aid").fetchall())
        assert aid == {(ps(pid), ps(payer)) for pid, p in persons.items() for payer in p.aid_payers}
        n_claims = q("SELECT count(*) FROM settlements WHERE type = 'ClaimSettled'").fetchall()
        assert n_claims[0][0] == fold.counts.by_output["ClaimSettled"]
        rev = q("SELECT count(*) FROM settlements WHERE type = 'ClaimReversed' "
                "AND benefit_year IS NOT NULL").fetchall()[0][0]
        assert rev == fold.counts.by_output["ClaimReversed"] > 0
        # the funds add up to the settlements, to the fen
        fl = q("SELECT sum(amount_fen) FROM fund_ledger").fetchall()[0][0]
        st = q("SELECT sum(basic_fund + major_illness + assistance + personal_account "
               "+ family_account) FROM settlements").fetchall()[0][0]
        assert fl == st
        # no person id anywhere: only pseudonyms
        some = next(iter(persons))
        for table in ("registrations", "claims", "rejections", "audit_flags", "family_debits"):
            hits = q(f"SELECT count(*) FROM {table} t WHERE CAST(t AS VARCHAR) LIKE "
                     f"'%{some}%'").fetchall()[0][0]
            assert hits == 0, table
        assert "trace" not in explain(s.con, KEY, "nobody", "V0")
        pid, visit = q("SELECT person_key, visit_id FROM claims LIMIT 1").fetchall()[0]
        real = next(p for p in persons if ps(p) == pid)
        text = explain(s.con, KEY, real, visit)
        assert "ClaimSettled" in text and "- accounts:" in text
        days, series = daily_payouts(s.con)
        assert days and "major_illness" in series
        assert "plotly" in chart_html(days, series, "t")
        region = q("SELECT insured_region FROM fund_ledger LIMIT 1").fetchall()[0][0]
        assert q(funds_query(region, dt.date(2025, 1, 1), dt.date(2025, 12, 31))).fetchall()
        q(clearing_query(region[:2] + "0000", "2025-06")).fetchall()


def test_batching_does_not_change_projection(folded: tuple[Fold, list[Rec], list[Rec]],
                                             tmp_path: Path) -> None:
    _fold, ledger, outs = folded
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    project(a, ledger, outs, 100_000)
    project(b, ledger, outs, 777)
    res = verify(a, b)
    assert res.identical, res.diffs
    # and a planted difference is found, with its rows
    with Store(b) as s:
        s.con.execute("UPDATE claims SET basic_fund = basic_fund + 1 WHERE src_offset = 3")
    res = verify(a, b)
    names = {d.name for d in res.diffs}
    assert {"claims", "settlements", "fund_ledger"} <= names
    claims = next(d for d in res.diffs if d.name == "claims")
    assert len(claims.only_a) == len(claims.only_b) == 1


def test_sql_path_equals_python_transform(folded: tuple[Fold, list[Rec], list[Rec]],
                                          tmp_path: Path) -> None:
    """The fast path (DuckDB parses the JSON) makes exactly the reference transform's rows."""
    _fold, ledger, outs = folded
    dead = [Rec(0, 0, 1_735_660_800_000, b'{"origin": {"topic": "t", "partition": 1, '
                b'"offset": 2}, "error": "bad", "path": "$.x", "raw": "{oops"}'),
            Rec(0, 1, 1_735_660_800_001, b"not json")]
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    t = Transform(KEY)
    with Store(a) as s:
        s.write(t.batch(ledger, outs, dead), {})
    with Store(b, pseudonym_key=KEY) as s:
        for i in range(0, max(len(ledger), len(outs)), 3000):
            s.write({}, {}, raw={r: raw_table(x[i:i + 3000]) for r, x in
                                 (("ledger", ledger), ("settlements", outs))
                                 if x[i:i + 3000]})
        s.write({}, {}, raw={"deadletter": raw_table(dead)})
    res = verify(a, b)
    assert res.identical, [(d.name, d.only_a[:2], d.only_b[:2]) for d in res.diffs]


def test_policy_impact_query(folded: tuple[Fold, list[Rec], list[Rec]], tmp_path: Path) -> None:
    _fold, ledger, outs = folded
    a = tmp_path / "a.duckdb"
    project(a, ledger, outs, 100_000)
    con = attach_pair(a, a)
    assert con.sql(policy_impact_query()).fetchall() == []
    con.close()


def test_pseudonyms_are_keyed() -> None:
    assert Pseudonyms("k1")("P1") != Pseudonyms("k2")("P1")
    assert Pseudonyms("k1")("P1") == Pseudonyms("k1")("P1")
    assert len(Pseudonyms("k1")("P1") or "") == 32


def test_store_memory_limit_is_set_and_a_bad_one_names_the_setting(tmp_path: Path) -> None:
    import pydantic

    from yibao.settings import Settings

    with Store(tmp_path / "m.duckdb", memory_limit="256MB") as s:
        got = s.con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert got.replace(" ", "") in ("256.0MB", "244.1MiB", "256MB")
    with pytest.raises(pydantic.ValidationError, match="duckdb_memory_limit"):
        Settings(duckdb_memory_limit="lots")
