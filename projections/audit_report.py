"""`yibao report audit`: the page a bureau auditor reads for a region and a month.

Five sections, each a DuckDB query over the projection (audit.md "Tier C"), written as CSV
and Parquet beside the HTML, and charted with Plotly (plotly.js inline, so the file opens
offline):

1. **peer comparison**: per facility × benefit kind × month, claims, mean total and mean
   fund payout against the median of the facilities of the same level and kind in the same
   province; an outlier has at least 20 claims and a mean above 1.5 × its peers' median;
2. **flags** by facility and rule, with the money at risk (``amount_fen``);
3. **the open case queue**: flags nobody has reviewed yet, largest first;
4. **facility patterns** (tier B): group admissions and daily spikes whose window touches
   the month, at facilities treating in the region;
5. **recoveries**: what confirmed cases claw back, by facility.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go

from yibao.projections.sql import check_region, region_predicate, sql_literal

#: audit.md Tier C: an outlier needs this many claims, and a mean above this × the median.
MIN_CLAIMS = 20
OUTLIER_RATIO = 1.5


def peer_comparison_query(region: str, month: str) -> str:
    """Facilities treating in ``region`` in ``month`` against their province's peers."""
    check_month(month)
    return f"""
        WITH current AS (
            SELECT s.* FROM settlements s
            WHERE s.type = 'ClaimSettled' AND NOT EXISTS (
                SELECT 1 FROM claims r WHERE r.type = 'ClaimReversed'
                AND r.person_key = s.person_key AND r.visit_id = s.visit_id
                AND r.settlement_seq = s.settlement_seq)),
        level AS (SELECT facility_id, max(facility_level) AS level FROM visit_events
                  WHERE type = 'VisitOpened' GROUP BY ALL),
        f AS (
            SELECT c.facility_id, left(any_value(c.treatment_region), 2) AS province,
                   any_value(c.treatment_region) AS treatment_region, c.kind,
                   strftime(c.service_date, '%Y-%m') AS month, count(*) AS claims,
                   avg(c.total) AS mean_total,
                   avg(c.basic_fund + c.major_illness + c.assistance) AS mean_fund
            FROM current c GROUP BY c.facility_id, c.kind, month),
        p AS (
            SELECT f.*, l.level,
                   median(f.mean_total) OVER peers AS peer_median_total,
                   median(f.mean_fund) OVER peers AS peer_median_fund,
                   count(*) OVER peers AS peers
            FROM f LEFT JOIN level l USING (facility_id)
            WINDOW peers AS (PARTITION BY f.province, l.level, f.kind, f.month))
        SELECT facility_id, level, kind, month, claims,
               round(mean_total)::BIGINT AS mean_total_fen,
               round(peer_median_total)::BIGINT AS peer_median_total_fen,
               round(mean_fund)::BIGINT AS mean_fund_fen,
               round(peer_median_fund)::BIGINT AS peer_median_fund_fen, peers,
               claims >= {MIN_CLAIMS} AND (mean_total > {OUTLIER_RATIO} * peer_median_total
                   OR mean_fund > {OUTLIER_RATIO} * peer_median_fund) AS outlier
        FROM p
        WHERE month = {sql_literal(month)} AND {region_predicate('treatment_region', region)}
        ORDER BY outlier DESC, mean_fund DESC, facility_id, kind"""


def flags_query(region: str, month: str) -> str:
    """Flags on claims of persons insured in ``region`` with a service date in ``month``."""
    check_month(month)
    return f"""
        SELECT facility_id, rule, max(severity) AS severity, count(*) AS flags,
               sum(amount_fen) AS amount_fen,
               count(*) FILTER (WHERE state = 'open') AS open_cases
        FROM audit_cases
        WHERE state <> 'unknown_flag' AND strftime(service_date, '%Y-%m') = {sql_literal(month)}
              AND {region_predicate('insured_region', region)}
        GROUP BY ALL ORDER BY amount_fen DESC, facility_id, rule"""


def open_cases_query(region: str, month: str) -> str:
    """The queue: flags raised up to the end of ``month`` that no review has closed."""
    check_month(month)
    return f"""
        SELECT flag_id, rule, severity, facility_id, visit_id, related_visit_id, amount_fen,
               service_date, detail
        FROM audit_cases
        WHERE state = 'open' AND strftime(service_date, '%Y-%m') <= {sql_literal(month)}
              AND {region_predicate('insured_region', region)}
        ORDER BY amount_fen DESC, service_date, flag_id"""


def facility_flags_query(region: str, month: str) -> str:
    """Tier B: facility patterns (group admissions, daily spikes) whose window touches
    ``month``, at facilities treating in ``region``."""
    check_month(month)
    return f"""
        WITH treating AS (SELECT DISTINCT facility_id FROM visit_events
                          WHERE {region_predicate('facility_region', region)})
        SELECT f.rule, f.severity, f.facility_id, f.window_start, f.window_end, f.count AS claims,
               f.amount_fen, f.detail
        FROM facility_flags_current f JOIN treating USING (facility_id)
        WHERE strftime(f.window_start, '%Y-%m') <= {sql_literal(month)}
              AND strftime(f.window_end, '%Y-%m') >= {sql_literal(month)}
        ORDER BY f.amount_fen DESC, f.facility_id, f.window_start, f.rule"""


def recoveries_query(region: str, month: str) -> str:
    check_month(month)
    return f"""
        SELECT facility_id, rule, count(*) AS cases, sum(recovered_fen) AS recovered_fen
        FROM recoveries
        WHERE strftime(day, '%Y-%m') = {sql_literal(month)}
              AND {region_predicate('insured_region', region)}
        GROUP BY ALL ORDER BY recovered_fen DESC, facility_id, rule"""


def check_month(month: str) -> str:
    """``month`` if it is YYYY-MM, else ValueError naming it."""
    if len(month) != 7 or month[4] != "-" or not (month[:4] + month[5:]).isdigit():
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    return month


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def write_audit_report(con: duckdb.DuckDBPyConnection, out_dir: str | Path, region: str,
                       month: str) -> Path:
    """The HTML report and, beside it, each section as CSV and Parquet; returns the HTML."""
    check_region(region)
    check_month(month)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"audit-{region}-{month}"
    sections = []
    for name, title, query in (
            ("peers", "Peer comparison: facility × benefit kind against the median of "
             "same-level facilities of the province", peer_comparison_query(region, month)),
            ("flags", "Flags by facility and rule, with the money at risk",
             flags_query(region, month)),
            ("open_cases", "Open case queue", open_cases_query(region, month)),
            ("facility_flags", "Facility patterns (tier B): group admissions and daily spikes",
             facility_flags_query(region, month)),
            ("recoveries", "Recoveries of confirmed cases", recoveries_query(region, month))):
        rel = con.sql(query)
        sections.append(Section(name, title, list(rel.columns), rel.fetchall()))
        con.execute(f"COPY ({query}) TO {sql_literal(out / f'{stem}-{name}.csv')} "
                    "(FORMAT csv, HEADER)")
        con.execute(f"COPY ({query}) TO {sql_literal(out / f'{stem}-{name}.parquet')} "
                    "(FORMAT parquet)")
    figures = [_peer_figure(sections[0]), _flags_figure(sections[1]),
               _recoveries_figure(sections[4])]
    page = out / f"{stem}.html"
    page.write_text(_page(f"Fund audit, region {region}, {month}", figures, sections),
                    encoding="utf-8")
    return page


def _col(section: Section, name: str) -> list[Any]:
    i = section.columns.index(name)
    return [r[i] for r in section.rows]


def _peer_figure(s: Section) -> go.Figure:
    fig = go.Figure()
    outlier = _col(s, "outlier")
    for flag, label, color in ((False, "within 1.5 × peers", "#1f77b4"),
                               (True, "outlier", "#d62728")):
        pick = [i for i, o in enumerate(outlier) if bool(o) == flag]
        fig.add_trace(go.Scatter(
            x=[_col(s, "peer_median_fund_fen")[i] / 100 for i in pick],
            y=[_col(s, "mean_fund_fen")[i] / 100 for i in pick], mode="markers", name=label,
            marker={"color": color, "size": [6 + min(_col(s, "claims")[i], 200) / 10
                                             for i in pick]},
            text=[f"{_col(s, 'facility_id')[i]} {_col(s, 'kind')[i]}, "
                  f"{_col(s, 'claims')[i]} claims" for i in pick]))
    top = max([*(_col(s, "peer_median_fund_fen")), 1]) / 100
    fig.add_trace(go.Scatter(x=[0, top], y=[0, OUTLIER_RATIO * top], mode="lines",
                             name=f"{OUTLIER_RATIO} × peer median",
                             line={"dash": "dash", "color": "#999"}))
    fig.update_layout(title="Mean fund payout per claim against the peer median (yuan)",
                      xaxis_title="peer median (yuan)", yaxis_title="facility mean (yuan)")
    return fig


def _flags_figure(s: Section) -> go.Figure:
    by_rule: dict[str, int] = {}
    for rule, amount in zip(_col(s, "rule"), _col(s, "amount_fen"), strict=True):
        by_rule[rule] = by_rule.get(rule, 0) + int(amount or 0)
    rules = sorted(by_rule, key=lambda r: -by_rule[r])
    fig = go.Figure(go.Bar(x=rules, y=[by_rule[r] / 100 for r in rules]))
    fig.update_layout(title="Money at risk by rule (yuan)", yaxis_title="yuan")
    return fig


def _recoveries_figure(s: Section) -> go.Figure:
    fig = go.Figure(go.Bar(x=_col(s, "facility_id"),
                           y=[int(v) / 100 for v in _col(s, "recovered_fen")]))
    fig.update_layout(title="Recovered from facilities (yuan)", yaxis_title="yuan")
    return fig


def _page(title: str, figures: list[go.Figure], sections: list[Section]) -> str:
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0))
              for i, fig in enumerate(figures)]
    tables = []
    for s in sections:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in s.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>"
                                        for v in row) + "</tr>" for row in s.rows[:200])
        more = f"<p>{len(s.rows) - 200} more rows in the CSV.</p>" if len(s.rows) > 200 else ""
        tables.append(f"<h2 id='{s.name}'>{html.escape(s.title)}</h2>"
                      f"<p>{len(s.rows)} rows</p><table><tr>{head}</tr>{body}</table>{more}")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            + "".join(f"<div class='chart'>{c}</div>" for c in charts)
            + "".join(tables) + "</body></html>\n")
