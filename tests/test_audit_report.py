"""`yibao report audit`: the HTML an auditor opens (checked in headless Chromium), its CSV
and Parquet, over a projection of a generated year with reviews of some of its flags."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.projections.audit_report import write_audit_report
from yibao.projections.reports import chart_html, daily_payouts
from yibao.projections.store import Store
from yibao.projections.transform import Rec, Transform
from yibao.rules.engine import Engine
from yibao.rules.facility_audit import FacilityWindows
from yibao.rules.fold import DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def projection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated year, plus reviews: the first flag confirmed with a recovery, the second
    dismissed, one review of a flag that does not exist."""
    folder = tmp_path_factory.mktemp("report")
    log = folder / "log.jsonl"
    generate_to_path(GenerateConfig(households=400, seed=11, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 6, 30), bad_rate=0.0), str(log))
    fold, codec = Fold(Engine(load_policy())), Codec()
    ledger: list[Rec] = []
    outs: list[Rec] = []
    flags: list[dict[str, object]] = []

    def feed(raw: bytes) -> None:
        dups = fold.counts.duplicates
        res = fold.feed(raw)
        if isinstance(res, DeadLetter) or fold.counts.duplicates != dups:
            return
        ms = int(codec.decode(raw).occurred_at.timestamp() * 1000)
        ledger.append(Rec(0, len(ledger), ms, raw))
        for o in res:
            outs.append(Rec(0, len(outs), ms, codec.encode(o)))
            if type(o).__name__ == "AuditFlagRaised":
                flags.append({"flag_id": o.event_id, "person_id": o.person_id})

    for raw in log.read_bytes().splitlines():
        feed(raw)
    assert len(flags) >= 2
    for i, (flag, outcome, money) in enumerate([(flags[0]["flag_id"], "confirmed", 12_345),
                                               (flags[1]["flag_id"], "dismissed", 0),
                                               ("no-such/1", "confirmed", 1)]):
        feed(json.dumps({
            "type": "AuditFlagReviewed", "event_id": f"rev-{i}", "schema_version": 1,
            "occurred_at": "2025-06-20T10:00:00+08:00", "source": "auditor",
            "person_id": flags[0]["person_id"], "flag_id": flag, "outcome": outcome,
            "recovered_fen": money, "reviewer": "AUD-1"}).encode())
    windows = FacilityWindows()  # tier B over the same settlements, as the audit stage
    audit: list[Rec] = []
    for rec in outs:
        for flag in windows.feed(codec.decode_output(rec.value)):
            audit.append(Rec(0, len(audit), rec.timestamp, codec.encode(flag)))
    db = folder / "p.duckdb"
    with Store(db) as s:
        s.write(Transform("k").batch(ledger, outs, audit=audit), {})
    return db


def _region_month(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    row = con.execute("SELECT insured_region, strftime(service_date, '%Y-%m') AS m, count(*) "
                  "FROM audit_cases WHERE insured_region IS NOT NULL GROUP BY ALL "
                  "ORDER BY 3 DESC LIMIT 1").fetchall()[0]
    assert row is not None
    return row[0], row[1]


def test_the_report_files_and_their_content(projection: Path, tmp_path: Path) -> None:
    con = duckdb.connect(str(projection), read_only=True)
    region, month = _region_month(con)
    page = write_audit_report(con, tmp_path, region, month)
    for section in ("peers", "flags", "open_cases", "facility_flags", "recoveries"):
        csv = tmp_path / f"audit-{region}-{month}-{section}.csv"
        parquet = csv.with_suffix(".parquet")
        assert csv.exists() and parquet.exists()
        n_csv = len(csv.read_text().splitlines()) - 1
        assert con.execute(f"SELECT count(*) FROM '{parquet}'").fetchall()[0] == (n_csv,)
    flags = con.execute(f"SELECT sum(flags), sum(amount_fen) FROM "
                    f"'{tmp_path / f'audit-{region}-{month}-flags.parquet'}'").fetchall()[0]
    assert flags is not None and flags[0] > 0
    want = con.execute(f"SELECT count(*), sum(amount_fen) FROM audit_cases WHERE insured_region = "
                   f"'{region}' AND strftime(service_date, '%Y-%m') = '{month}' "
                   "AND state <> 'unknown_flag'").fetchall()[0]
    assert flags == want
    # tier B: the region and month with the most facility flags, against a plain query
    fregion, fmonth, n = con.execute(
        "SELECT v.facility_region, strftime(f.window_start, '%Y-%m'), count(DISTINCT f.event_id) "
        "FROM facility_flags_current f JOIN visit_events v USING (facility_id) "
        "GROUP BY ALL ORDER BY 3 DESC LIMIT 1").fetchall()[0]
    assert n > 0  # the generated group admissions and spikes raised some
    write_audit_report(con, tmp_path / "tier-b", fregion, fmonth)
    facility = con.execute(
        "SELECT rule, facility_id, window_start, window_end FROM "
        f"'{tmp_path / 'tier-b' / f'audit-{fregion}-{fmonth}-facility_flags.parquet'}'"
    ).fetchall()
    want_facility = con.execute(
        "SELECT rule, facility_id, window_start, window_end FROM facility_flags_current "
        "WHERE facility_id IN (SELECT facility_id FROM visit_events WHERE "
        f"facility_region = '{fregion}') AND strftime(window_start, '%Y-%m') <= '{fmonth}' "
        f"AND strftime(window_end, '%Y-%m') >= '{fmonth}'").fetchall()
    assert len(facility) >= n and sorted(facility) == sorted(want_facility)
    html = page.read_text()
    assert "Facility patterns (tier B)" in html
    assert "Peer comparison" in html and "Open case queue" in html and "plotly" in html
    peers = con.execute(
        "SELECT claims, outlier, mean_total_fen, peer_median_total_fen, mean_fund_fen, "
        f"peer_median_fund_fen FROM '{tmp_path / f'audit-{region}-{month}-peers.parquet'}'"
    ).fetchall()
    assert peers
    for claims, outlier, total, peer_total, fund, peer_fund in peers:  # rounding: 1 fen
        if abs(total - 1.5 * peer_total) > 2 and abs(fund - 1.5 * peer_fund) > 2:
            assert outlier == (claims >= 20 and (total > 1.5 * peer_total
                                                 or fund > 1.5 * peer_fund))
    with pytest.raises(ValueError, match="YYYY-MM"):
        write_audit_report(con, tmp_path, region, "2025-6")
    con.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup)")
def test_the_report_and_the_fund_chart_render_in_chromium(projection: Path,
                                                          tmp_path: Path) -> None:
    """Opened in headless Chromium, offline: plotly.js draws every chart (its SVG is only
    there once the script ran)."""
    con = duckdb.connect(str(projection), read_only=True)
    region, month = _region_month(con)
    page = write_audit_report(con, tmp_path, region, month)
    days, series = daily_payouts(con)
    chart = tmp_path / "funds.html"
    chart.write_text(chart_html(days, series, "Daily fund payouts"))
    con.close()
    for html_file, charts in ((page, 3), (chart, 1)):
        dom = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=10000", "--dump-dom", html_file.as_uri()],
            capture_output=True, text=True, timeout=120, check=True).stdout
        assert dom.count('class="main-svg"') >= charts, html_file
