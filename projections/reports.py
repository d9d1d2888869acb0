"""Bureau reports over a projection file: fund summary, cross-region clearing, policy impact,
one settlement explained, and a chart of daily fund payouts (HTML with inline SVG)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import duckdb

from yibao.projections.schema import AMOUNTS
from yibao.projections.sql import region_predicate, sql_literal
from yibao.projections.transform import Pseudonyms


def funds_query(region: str, start: dt.date, end: dt.date) -> str:
    return f"""
        SELECT fund, scheme, CAST(sum(amount_fen) AS BIGINT) AS amount_fen,
               CAST(sum(claims) AS BIGINT) AS claims,
               round(sum(amount_fen) / 100.0, 2) AS amount_yuan
        FROM fund_ledger
        WHERE {region_predicate('insured_region', region)}
          AND day BETWEEN DATE {sql_literal(start.isoformat())} AND DATE {sql_literal(end.isoformat())}
        GROUP BY ALL ORDER BY fund, scheme"""


def clearing_query(region: str, month: str) -> str:
    return f"""
        SELECT CASE WHEN {region_predicate('insured_region', region)} THEN 'owes' ELSE 'is owed'
               END AS direction, insured_region, treatment_region, claims, total_fen,
               basic_fund_fen + major_illness_fen + assistance_fen AS funds_fen,
               personal_account_fen + family_aid_fen AS accounts_fen, owed_fen,
               round(owed_fen / 100.0, 2) AS owed_yuan
        FROM clearing
        WHERE month = {sql_literal(month)} AND ({region_predicate('insured_region', region)}
                                 OR {region_predicate('treatment_region', region)})
        ORDER BY direction DESC, owed_fen DESC, insured_region, treatment_region"""


def policy_impact_query() -> str:
    """Over ``base`` and ``whatif`` attached: fund cost per fund, region, scheme, month."""
    agg = ("SELECT fund, insured_region, scheme, strftime(day, '%Y-%m') AS month, "
           "sum(amount_fen) AS amount_fen FROM {db}.fund_ledger GROUP BY ALL")
    return f"""
        SELECT fund, insured_region, scheme, month,
               coalesce(b.amount_fen, 0) AS base_fen, coalesce(w.amount_fen, 0) AS whatif_fen,
               coalesce(w.amount_fen, 0) - coalesce(b.amount_fen, 0) AS delta_fen,
               CASE WHEN coalesce(b.amount_fen, 0) <> 0 THEN round(100.0 *
                   (coalesce(w.amount_fen, 0) - b.amount_fen) / abs(b.amount_fen), 2) END
                   AS delta_pct
        FROM ({agg.format(db='base')}) b FULL OUTER JOIN ({agg.format(db='whatif')}) w
             USING (fund, insured_region, scheme, month)
        WHERE coalesce(w.amount_fen, 0) <> coalesce(b.amount_fen, 0)
        ORDER BY abs(delta_fen) DESC, fund, insured_region, scheme, month"""


def policy_impact_totals_query() -> str:
    return f"""
        SELECT fund, sum(base_fen) AS base_fen, sum(whatif_fen) AS whatif_fen,
               sum(delta_fen) AS delta_fen
        FROM ({policy_impact_query()}) GROUP BY ALL ORDER BY fund"""


def attach_pair(base: str | Path, whatif: str | Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"ATTACH {sql_literal(base)} AS base (READ_ONLY)")
    con.execute(f"ATTACH {sql_literal(whatif)} AS whatif (READ_ONLY)")
    return con


def export(con: duckdb.DuckDBPyConnection, query: str, csv: str | None, parquet: str | None
           ) -> None:
    if csv:
        con.execute(f"COPY ({query}) TO {sql_literal(csv)} (FORMAT csv, HEADER)")
    if parquet:
        con.execute(f"COPY ({query}) TO {sql_literal(parquet)} (FORMAT parquet)")


def explain(con: duckdb.DuckDBPyConnection, key: str, person_id: str, visit_id: str) -> str:
    """A visit's settlements (and reversals, rejections) with the trace, as text."""
    pk = Pseudonyms(key)(person_id)
    rows = con.execute(
        "SELECT type, settlement_seq, policy_version, benefit_year, service_date, scheme, kind, "
        "insured_region, treatment_region, facility_id, booked_on, total, self_pay_full, "
        "over_cap, first_self_pay, eligible, deductible, basic_fund, major_illness, assistance, "
        "personal_account, family_account, cash_due, trace, event_id "
        "FROM settlements WHERE person_key = ? AND visit_id = ? "
        "ORDER BY src_partition, src_offset", [pk, visit_id]).fetchall()
    rej = con.execute("SELECT reason, detail, event_id FROM rejections WHERE person_key = ? "
                      "AND visit_id = ? ORDER BY src_offset", [pk, visit_id]).fetchall()
    if not rows and not rej:
        return f"no settlement of visit {visit_id} of person {person_id} (key {pk})"
    out = [f"person {person_id} (pseudonym {pk}), visit {visit_id}"]
    names = AMOUNTS
    for r in rows:
        (typ, seq, pol, year, sdate, scheme, kind, ins, trt, fac, booked, *amts) = r[:23]
        trace, eid = r[23], r[24]
        out.append(f"\n{typ} {eid} (settlement {seq}): policy {pol}, benefit year {year}, "
                   f"service date {sdate}, booked {booked}; {scheme} / {kind}; insured {ins}, "
                   f"treated {trt} at {fac}")
        out.append("  amounts (fen): " + ", ".join(f"{n} {v}" for n, v in
                                                   zip(names, amts, strict=True)))
        for step in json.loads(trace) if trace else []:
            out.append(f"  - {step['step']}: {step['detail']}")
    for reason, detail, eid in rej:
        out.append(f"\nClaimRejected {eid}: {reason} — {detail}")
    return "\n".join(out)


# ------------------------------------------------------------------------------ chart

def daily_payouts(con: duckdb.DuckDBPyConnection, region: str | None = None
                  ) -> tuple[list[dt.date], dict[str, list[int]]]:
    where = f"WHERE {region_predicate('insured_region', region)}" if region else ""
    rows = con.sql(f"SELECT day, fund, sum(amount_fen) FROM fund_ledger {where} "
                   "GROUP BY ALL ORDER BY day, fund").fetchall()
    days = sorted({r[0] for r in rows})
    idx = {d: i for i, d in enumerate(days)}
    series: dict[str, list[int]] = {}
    for d, fund, amt in rows:
        series.setdefault(fund, [0] * len(days))[idx[d]] = int(amt)
    return days, series


def chart_html(days: list[dt.date], series: dict[str, list[int]], title: str) -> str:
    """A line chart (yuan per day, one line per fund) as a standalone HTML page (Plotly,
    plotly.js inline so the file opens offline)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for fund, vals in sorted(series.items()):
        fig.add_trace(go.Scatter(x=days, y=[v / 100 for v in vals], mode="lines",
                                 name=f"{fund} ({sum(vals) / 100:,.0f})"))
    fig.update_layout(title=title, xaxis_title="booking date (UTC+8)", yaxis_title="yuan per day")
    return fig.to_html(full_html=True, include_plotlyjs=True)


def write_chart(con: duckdb.DuckDBPyConnection, out: str | Path, region: str | None = None
                ) -> Path:
    days, series = daily_payouts(con, region)
    title = "Daily fund payouts by fund" + (f", insured region {region}" if region else "")
    p = Path(out)
    p.write_text(chart_html(days, series, title), encoding="utf-8")
    return p


def fmt(rel: Any) -> str:
    return str(rel)
