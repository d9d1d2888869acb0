"""Tier C in the projection: reviews become audit cases, confirmed recoveries reach the fund
ledger, a review of an unknown flag is kept and shown as such — by both transforms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yibao.projections.audit import verify
from yibao.projections.sqltransform import raw_table
from yibao.projections.store import Store
from yibao.projections.transform import Rec, Transform
from yibao.rules.engine import Engine
from yibao.rules.fold import DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
KEY = "k"


def _records() -> tuple[list[Rec], list[Rec]]:
    """The audit-charges-presettle example (flag c3/1 confirmed with 100 yuan, then a
    malformed dismissal with money, dead-lettered) plus a review of a flag never raised."""
    lines = (EXAMPLE / "audit-charges-presettle-events.jsonl").read_bytes().splitlines()
    ghost = {"type": "AuditFlagReviewed", "event_id": "r9", "schema_version": 1,
             "occurred_at": "2025-11-22T09:00:00+08:00", "source": "audit-500000",
             "person_id": "A", "flag_id": "nope/1", "outcome": "confirmed",
             "recovered_fen": 777, "reviewer": "AUD-009"}
    lines.append(json.dumps(ghost).encode())
    fold, codec = Fold(Engine(load_policy())), Codec()
    ledger: list[Rec] = []
    outs: list[Rec] = []
    for i, raw in enumerate(lines):
        dups = fold.counts.duplicates
        res = fold.feed(raw)
        if isinstance(res, DeadLetter) or fold.counts.duplicates != dups:
            continue
        ts = codec.decode(raw).occurred_at
        ms = int(ts.timestamp() * 1000)
        ledger.append(Rec(0, len(ledger), ms, raw))
        outs += [Rec(0, len(outs), ms, codec.encode(o)) for o in res]
        del i
    return ledger, outs


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ledger, outs = _records()
    folder = tmp_path_factory.mktemp("cases")
    a, b = folder / "python.duckdb", folder / "sql.duckdb"
    with Store(a) as s:
        s.write(Transform(KEY).batch(ledger, outs), {})
    with Store(b, pseudonym_key=KEY) as s:
        s.write({}, {}, raw={"ledger": raw_table(ledger), "settlements": raw_table(outs)})
    return a, b


def test_cases_recoveries_and_unknown_flags(projected: tuple[Path, Path]) -> None:
    a, b = projected
    res = verify(a, b)
    assert res.identical, [(d.name, d.only_a[:2], d.only_b[:2]) for d in res.diffs]
    with Store(a) as s:
        q = s.con.sql
        cases = {r[0]: r[1:] for r in q(
            "SELECT flag_id, state, recovered_fen, reviewer, amount_fen, rule FROM audit_cases"
        ).fetchall()}
        assert cases["c3/1"][:3] == ("confirmed", 10_000, "AUD-001")
        assert cases["c3/1"][4] == "UNITS_PER_DAY" and cases["c3/1"][3] > 0
        assert cases["nope/1"][:3] == ("unknown_flag", 0, "AUD-009")
        assert q("SELECT day, recovered_fen FROM recoveries").fetchall() == [
            (__import__("datetime").date(2025, 11, 20), 10_000)]
        ledger = q("SELECT day, amount_fen FROM fund_ledger WHERE fund = 'audit_recovery'"
                   ).fetchall()
        assert [(str(d), a) for d, a in ledger] == [("2025-11-20", -10_000)]


def test_facility_flags_keep_one_per_event_id_by_both_transforms(tmp_path: Path) -> None:
    """Tier B delivers at least once: a repeated flag id is projected once in
    facility_flags_current, identically by the Python and the SQL transform."""
    flag = {"type": "FacilityFlagRaised", "event_id": "GROUP_ADMISSION/F1/2025-03-01/J18",
            "rule": "GROUP_ADMISSION", "severity": "warn", "facility_id": "F1",
            "window_start": "2025-03-01", "window_end": "2025-03-01", "count": 5,
            "amount_fen": 123_456, "detail": "5 admissions of 3 households"}
    other = {**flag, "event_id": "FACILITY_DAILY_SPIKE/F1/2025-03-02", "rule":
             "FACILITY_DAILY_SPIKE", "severity": "info", "count": 25, "amount_fen": 9}
    recs = [Rec(0, i, 1_740_000_000_000 + i, json.dumps(f).encode())
            for i, f in enumerate([flag, other, flag])]
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    with Store(a) as s:
        s.write(Transform(KEY).batch(audit=recs), {})
    with Store(b, pseudonym_key=KEY) as s:
        s.write({}, {}, raw={"audit": raw_table(recs)})
    assert verify(a, b).identical
    with Store(a) as s:
        assert s.con.sql("SELECT count(*) FROM facility_flags").fetchall() == [(3,)]
        assert sorted(s.con.sql("SELECT rule, amount_fen FROM facility_flags_current"
                                ).fetchall()) == [("FACILITY_DAILY_SPIKE", 9),
                                                  ("GROUP_ADMISSION", 123_456)]
