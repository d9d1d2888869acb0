"""Projection commands: `yibao project`, `replay`, `merge-parts`, `verify`, `reconcile`, `sql`,
`report`, `explain`, `chart`, `projection-schema`. Options that a ``YIBAO_*`` variable also sets (settings
fields) show it in --help."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path
from typing import Any

import click

from yibao.clock import as_local
from yibao.settings import Settings, setting_option

_DB_HELP = ("Projection file to read [default: YIBAO_DUCKDB_PATH, or its latest snapshot while "
            "the projector holds it].")


def _progress(label: str, quiet: bool) -> tuple[Any, Any, Any]:
    """(on_total, on_progress, close) for a click progress bar created once the total is known."""
    state: dict[str, Any] = {}

    def on_total(n: int) -> None:
        if not quiet:
            state["bar"] = click.progressbar(length=max(n, 1), label=label, file=sys.stderr,
                                             show_pos=True)
            state["bar"].__enter__()

    def on_progress(n: int) -> None:
        if "bar" in state:
            state["bar"].update(n)

    def close() -> None:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)

    return on_total, on_progress, close


@click.command()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Projection file [default: YIBAO_DUCKDB_PATH].")
@setting_option("--snapshot-every", setting="snapshot_every", type=click.FloatRange(min=0.1),
                help="Seconds between published snapshots (<db>.snapshot.duckdb) for readers.")
@setting_option("--max-wait-ms", "max_wait_ms", setting="project_max_wait_ms", type=click.IntRange(min=1),
                help="Write at least this often.")
@click.option("--max-records", type=click.IntRange(min=1), default=50_000,
              help="Records per write at most.")
@click.pass_obj
def project(settings: Settings, db: Path | None, snapshot_every: float, max_wait_ms: int,
            max_records: int) -> None:
    """Project ledger, settlements and deadletter into DuckDB, live and exactly once: each
    batch and the next offsets are one DuckDB transaction; a restart resumes from them.
    SIGTERM / Ctrl-C stops it cleanly (SIGKILL is safe too)."""
    from yibao.logging import get_logger
    from yibao.projections.runner import RunOptions, run
    from yibao.projections.store import Store, snapshot_path
    from yibao.projections.transform import Transform
    from yibao.streams.topics import create_all

    log = get_logger("yibao.project")
    path = db or settings.duckdb_path
    from yibao.metrics import serve_metrics

    serve_metrics(settings.metrics_port)

    async def main() -> None:
        await create_all(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        with Store(path, pseudonym_key=settings.pseudonym_key,
                   memory_limit=settings.duckdb_memory_limit) as store:
            store.set_meta({"source": "live", "topic_prefix": settings.topic_prefix})
            log.info("project.start", db=str(path), snapshot=str(snapshot_path(path)),
                     offsets=len(store.offsets()))
            stats = await run(settings, store, Transform(settings.pseudonym_key), RunOptions(
                follow=True, max_wait_ms=max_wait_ms, max_records=max_records,
                snapshot_every=snapshot_every, topic_wait=600.0), stop)
            log.info("project.stop", records=stats.records, writes=stats.writes,
                     snapshots=stats.snapshots)

    asyncio.run(main())


def _parse_ts(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO timestamp or date: {value}") from exc
    t = as_local(t)
    if len(value) == 10:  # a date: up to the end of that day
        t += dt.timedelta(days=1, milliseconds=-1)
    return int(t.timestamp() * 1000)


@click.command()
@click.option("--into", "into", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Projection file to build (replaced if it exists).")
@click.option("--until", default=None,
              help="Only events that occurred up to this timestamp (ISO 8601; no offset = UTC+8;"
                   " a date = to the end of that day).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="What-if: re-settle the ledger under this policy TOML instead of "
                                 "reading the recorded settlements.")
@click.option("--partitions", "span_text", default=None,
              help="Only these ledger partitions (e.g. 0-3): a part file for `yibao merge-parts`, "
                   "with the same partitions of the other topics [default: all].")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Processes, each over its own range of partitions, merged at the end "
                   "[default: the core count].")
@click.option("--max-records", type=click.IntRange(min=1), default=200_000,
              help="Records per write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def replay(settings: Settings, into: Path, until: str | None, policy_path: str | None,
           span_text: str | None, jobs: int | None, max_records: int, quiet: bool) -> None:
    """Rebuild every projection from offset 0 of the log (fast batch path: aiokafka getmany,
    msgspec, Arrow) up to the end offsets at start; with --partitions, only a range of
    partitions (a part), and with --jobs, several processes over disjoint ranges."""
    from yibao.projections.exceptions import PartsError
    from yibao.projections.parallel import PartJob, cores, replay_parallel, replay_part
    from yibao.projections.parts import parse_span

    try:
        span = parse_span(span_text) if span_text is not None else None
    except PartsError as exc:
        raise click.BadParameter(str(exc), param_hint="--partitions") from None
    job = PartJob(path=str(into), span=span, policy_path=policy_path, until=until,
                  until_ms=_parse_ts(until), max_records=max_records)
    jobs = jobs or cores()
    try:
        if jobs == 1:
            on_total, on_progress, close = _progress(f"replay into {into.name}", quiet)
            try:
                stats = replay_part(settings, job, on_total, on_progress)
            finally:
                close()
            records, events, seconds = stats.records, stats.events, stats.seconds
            how = ""
        else:
            par = replay_parallel(settings, job, jobs)
            records, events, seconds = par.records, par.events, par.seconds
            how = (f" with {len(par.spans)} processes (partitions "
                   f"{', '.join(map(str, par.spans))}; merge {par.merge_seconds:.2f} s)")
    except (TimeoutError, PartsError) as exc:
        raise click.ClickException(str(exc)) from None
    per_topic = ", ".join(f"{k} {v}" for k, v in records.items())
    click.echo(f"replayed {events} records ({per_topic}) into {into}{how} in "
               f"{seconds:.2f} s: {events / seconds if seconds else 0:,.0f} events/s", err=True)


@click.command("merge-parts")
@click.option("--into", "into", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Projection file to build (replaced if it exists).")
@click.argument("parts", nargs=-1, required=True,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_obj
def merge_parts(settings: Settings, into: Path, parts: tuple[Path, ...]) -> None:
    """Merge replay PARTS (`yibao replay --partitions`, from any machine) into one projection
    file; refuses overlapping or missing partition ranges, unfinished parts and parts of
    different replays (what-if policy, --until, topics, pseudonym key)."""
    from yibao.projections.exceptions import PartsError
    from yibao.projections.parts import merge_parts as run_merge

    if any(p.resolve() == into.resolve() for p in parts):
        raise click.BadParameter("--into must not be one of the parts", param_hint="--into")
    try:
        span = run_merge(into, parts, memory_limit=settings.duckdb_memory_limit)
    except PartsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"merged {len(parts)} parts (partitions {span}) into {into}", err=True)


@click.command()
@click.argument("a", type=click.Path(dir_okay=False, exists=True))
@click.argument("b", type=click.Path(dir_okay=False, exists=True))
@click.option("--rows", type=int, default=5, help="Differing rows to show per table.")
@click.option("--positions", is_flag=True,
              help="Also compare the tracking positions (_offsets): both read to the same offsets.")
def verify(a: str, b: str, rows: int, positions: bool) -> None:
    """Compare two projection files table by table (row counts and checksums, then the first
    differing rows); exit 1 unless identical."""
    from yibao.projections.audit import verify as run_verify

    res = run_verify(a, b, rows=rows, positions=positions)
    for name, n, checksum in res.compared:
        click.echo(f"  same  {name:<28} {n:>9} rows  checksum {checksum & 0xFFFFFFFFFFFF:012x}")
    for d in res.diffs:
        click.echo(f"  DIFF  {d.name:<28} {d.rows_a} vs {d.rows_b} rows {d.note}")
        for r in d.only_a:
            click.echo(f"        only in A: {r}")
        for r in d.only_b:
            click.echo(f"        only in B: {r}")
    if res.identical:
        click.echo(f"identical: {len(res.compared)} tables and views")
    else:
        click.echo(f"{len(res.diffs)} of {len(res.diffs) + len(res.compared)} differ")
        raise SystemExit(1)


@click.command()
@setting_option("--policy", "policy_path", setting="policy", type=click.Path(dir_okay=False, exists=True),
                help="Policy the pipeline ran with [default: national].")
@click.option("--limit", type=int, default=50, help="Differences to list at most.")
@click.option("--jobs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes over ledger partition ranges (0 = the cores this process may "
              "use); the result is the same for any number.")
@click.pass_obj
def reconcile(settings: Settings, policy_path: str | None, limit: int, jobs: int) -> None:
    """Re-run the pure engine over the ledger and compare with the recorded settlements,
    listing every difference; exit 1 if there is one."""
    from yibao.projections.audit import reconcile_parallel
    from yibao.projections.parallel import cores

    try:
        res = reconcile_parallel(settings, policy_path, jobs or cores())
        res.differences.sort(key=lambda d: d.partition)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    for d in res.differences[:limit]:
        click.echo(str(d))
    click.echo(f"reconcile: {res.ledger_records} ledger records, {res.expected} expected outputs, "
               f"{res.recorded} recorded, {res.matched} match, {len(res.differences)} differences"
               + (f", {res.pending} not yet processed" if res.pending else ""))
    if not res.clean:
        raise SystemExit(1)


def _query_cmd(settings: Settings, db: Path | None, query: str, csv: str | None,
               parquet: str | None) -> None:
    import duckdb

    from yibao.projections.reports import export
    from yibao.projections.store import open_for_query

    try:
        with open_for_query(db, settings.duckdb_path) as (con, path):
            click.echo(f"-- {path}", err=True)
            rel = con.sql(query)
            click.echo(str(rel))
            export(con, query, csv, parquet)
    except (duckdb.Error, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.argument("query")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.option("--csv", default=None, help="Also write the result as CSV.")
@click.option("--parquet", default=None, help="Also write the result as Parquet.")
@click.option("--region", default=None, help="A bureau's view: only this region's rows (6 digits; "
              "NN0000 = the province), in a locked-down in-memory copy (see docs/security.md, "
              "Region scoping).")
@click.pass_obj
def sql(settings: Settings, query: str, db: Path | None, csv: str | None,
        parquet: str | None, region: str | None) -> None:
    """Run a SQL QUERY on the projections, read-only (consistent: the latest snapshot while
    the projector runs)."""
    if region is None:
        _query_cmd(settings, db, query, csv, parquet)
        return
    import duckdb

    from yibao.projections.access import RegionError, open_region_for_query, write_result

    try:
        con, path = open_region_for_query(db, settings.duckdb_path, region)
    except (RegionError, duckdb.Error, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        click.echo(f"-- {path}, region {region}", err=True)
        rel = con.sql(query)
        click.echo(str(rel))
        write_result(rel, csv, parquet)
    except duckdb.Error as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        con.close()


@click.group()
def report() -> None:
    """Bureau reports (tables on screen; --csv / --parquet files)."""


_date = click.DateTime(formats=["%Y-%m-%d"])


@report.command("funds")
@click.option("--region", required=True, help="Insured region code (NN0000: the province).")
@click.option("--from", "start", type=_date, required=True)
@click.option("--to", "end", type=_date, required=True)
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.option("--csv", default=None)
@click.option("--parquet", default=None)
@click.pass_obj
def report_funds(settings: Settings, region: str, start: dt.datetime, end: dt.datetime,
                 db: Path | None, csv: str | None, parquet: str | None) -> None:
    """What each fund paid for persons insured in REGION, by scheme, between two days."""
    from yibao.projections.reports import funds_query

    _query_cmd(settings, db, funds_query(region, start.date(), end.date()), csv, parquet)


@report.command("clearing")
@click.option("--region", required=True, help="Region code (NN0000: the province).")
@click.option("--month", required=True, help="YYYY-MM")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.option("--csv", default=None)
@click.option("--parquet", default=None)
@click.pass_obj
def report_clearing(settings: Settings, region: str, month: str, db: Path | None,
                    csv: str | None, parquet: str | None) -> None:
    """Cross-region clearing of a month: what REGION owes treatment regions, and is owed."""
    from yibao.projections.reports import clearing_query

    _query_cmd(settings, db, clearing_query(region, month), csv, parquet)


@report.command("audit")
@click.option("--region", required=True, help="Region code (NN0000: the province).")
@click.option("--month", required=True, help="YYYY-MM")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/reports"), show_default=True, help="Folder for the files.")
@click.pass_obj
def report_audit(settings: Settings, region: str, month: str, db: Path | None,
                 out_dir: Path) -> None:
    """The fund audit of REGION for a month, as an auditor reads it: peer comparison of
    facilities, flags by facility and rule with the money at risk, the open case queue,
    recoveries. Writes audit-<region>-<month>.html (Plotly charts) and each section as CSV
    and Parquet."""
    from yibao.projections.audit_report import write_audit_report
    from yibao.projections.exceptions import RegionError
    from yibao.projections.store import open_for_query

    with open_for_query(db, settings.duckdb_path) as (con, _path):
        try:
            page = write_audit_report(con, out_dir, region, month)
        except (RegionError, ValueError) as exc:
            raise click.BadParameter(str(exc)) from None
    click.echo(f"audit report written: {page} (+ CSV and Parquet per section)")


@report.command("policy-impact")
@click.argument("base", type=click.Path(dir_okay=False, exists=True))
@click.argument("whatif", type=click.Path(dir_okay=False, exists=True))
@click.option("--csv", default=None)
@click.option("--parquet", default=None)
@click.option("--rows", type=int, default=40, help="Rows to show.")
def report_policy_impact(base: str, whatif: str, csv: str | None, parquet: str | None,
                         rows: int) -> None:
    """Fund cost deltas (WHATIF - BASE) per fund, insured region, scheme and month."""
    from yibao.projections.reports import (
        attach_pair,
        export,
        policy_impact_query,
        policy_impact_totals_query,
    )

    con = attach_pair(base, whatif)
    try:
        click.echo("totals per fund (fen):")
        click.echo(str(con.sql(policy_impact_totals_query())))
        click.echo("deltas per fund, insured region, scheme and month:")
        click.echo(str(con.sql(policy_impact_query() + f" LIMIT {int(rows)}")))
        export(con, policy_impact_query(), csv, parquet)
    finally:
        con.close()


@click.command()
@click.argument("person")
@click.argument("visit")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.pass_obj
def explain(settings: Settings, person: str, visit: str, db: Path | None) -> None:
    """Print the settlement(s) of VISIT of PERSON (a person id: it is pseudonymized with
    YIBAO_PSEUDONYM_KEY to find the rows) with every amount and its trace."""
    from yibao.projections.reports import explain as run_explain
    from yibao.projections.store import open_for_query

    with open_for_query(db, settings.duckdb_path) as (con, _path):
        click.echo(run_explain(con, settings.pseudonym_key, person, visit))


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HTML file.")
@click.option("--region", default=None, help="Only this insured region (NN0000: province).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help=_DB_HELP)
@click.pass_obj
def chart(settings: Settings, out: str, region: str | None, db: Path | None) -> None:
    """Write a chart of daily fund payouts by fund (HTML, Plotly, opens offline)."""
    from yibao.projections.reports import write_chart
    from yibao.projections.store import open_for_query

    with open_for_query(db, settings.duckdb_path) as (con, _path):
        click.echo(f"chart written: {write_chart(con, out, region)}")


@click.command("projection-schema")
def projection_schema() -> None:
    """Print the DuckDB DDL of every projection table and view, with their documentation."""
    from yibao.projections.schema import ddl

    click.echo(ddl())


from yibao.dev.demo import demo  # noqa: E402

COMMANDS = (project, replay, merge_parts, verify, reconcile, sql, report, explain, chart,
            projection_schema, demo)
