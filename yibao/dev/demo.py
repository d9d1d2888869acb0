"""`yibao demo`: the whole system on the local broker, end to end.

A generated month for N households is published to the input topics (progress bar); the
worker (sequencer + settlement processor, exactly-once) settles it; the projector projects
ledger, settlements and dead letters into DuckDB (progress bar, from the snapshots it
publishes). Then the HTTP gateway starts and a few hundred visits go through it as a
hospital's system would send them (open, charges, pre-settle, settle), with their latencies.
Last, the fund summary and a clearing report print, and a chart of daily fund payouts by
fund and the region's fund audit report are written as HTML (Plotly). Every run uses fresh
topics (``demo-<time>-``) and a fresh projection file, ``var/demo/yibao.duckdb``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from yibao.settings import Settings, setting_option


def _expected(log: Path) -> dict[str, int]:
    """What the projection must hold once everything is settled: file mode's counts."""
    from yibao.rules.engine import Engine
    from yibao.rules.fold import Fold
    from yibao.rules.policy import load_policy

    fold = Fold(Engine(load_policy()))
    with log.open("rb") as f:
        for line in f:
            if line.strip():
                fold.feed(line.rstrip(b"\r\n"))
    c = fold.counts
    return {"ledger": c.applied, "settlements": c.outputs, "deadletter": c.dead_lettered}


_LEDGER = ("registrations", "enrollment_events", "visit_events", "payment_events")
_OUTPUT = ("claims", "payment_outcomes", "rejections", "audit_flags")


def _projected(snapshot: Path) -> dict[str, int] | None:
    import duckdb

    if not snapshot.exists():
        return None
    try:
        con = duckdb.connect(str(snapshot), read_only=True)
    except duckdb.Error:
        return None
    try:
        n = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
             for t in (*_LEDGER, *_OUTPUT, "dead_letters")}
    finally:
        con.close()
    return {"ledger": sum(n[t] for t in _LEDGER), "settlements": sum(n[t] for t in _OUTPUT),
            "deadletter": n["dead_letters"]}


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "yibao", *args],
                                env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    from yibao.streams.worker import terminate

    return terminate(proc, 30.0)


HTTP_VISITS = 300


def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, answer = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, answer = e.code, json.loads(e.read() or b"{}")
    return status, answer, time.perf_counter() - started


def _visit(base: str, key: str, person: str, n: int, day: dt.date) -> tuple[str, float]:
    """One visit as a hospital sends it; (the settle's answer, its latency in s)."""
    at = f"{day.isoformat()}T10:{n % 60:02d}:00+08:00"
    visit = f"V-HTTP-{n}"
    head = {"schema_version": 1, "occurred_at": at, "source": "demo-his", "person_id": person,
            "visit_id": visit}
    items = [{"line_id": "L1", "code": "DRUG-AMOX", "name": "amoxicillin", "category": "drug",
              "catalog_class": "A", "quantity": 2, "unit_price_fen": 1_500 + n,
              "amount_fen": 2 * (1_500 + n)},
             {"line_id": "L2", "code": "SVC-CONSULT", "name": "consultation",
              "category": "service", "catalog_class": "A", "quantity": 1,
              "unit_price_fen": 2_000, "amount_fen": 2_000}]
    steps = [("events", {"type": "VisitOpened", **head, "event_id": f"{visit}-open",
                         "facility_id": "F-DEMO-HTTP", "facility_level": 2,
                         "facility_region": "500000", "kind": "outpatient", "opened_at": at,
                         "diagnoses": ["J06.9"], "special_disease_code": None}),
             ("events", {"type": "ItemsCharged", **head, "event_id": f"{visit}-charge",
                         "items": items}),
             ("presettle", {"type": "PreSettlementRequested", **head,
                            "event_id": f"{visit}-pre", "closed_at": at}),
             ("settle", {"type": "VisitClosed", **head, "event_id": f"{visit}-close",
                         "closed_at": at})]
    for command, body in steps:
        status, answer, seconds = _post(f"{base}/v1/{command}", key, body)
        if status >= 400:
            return f"HTTP {status}", seconds
    return str(answer.get("answer") or answer.get("status")), seconds


def visits_over_http(s: Settings, workdir: Path, log: Path, *, count: int, day: dt.date) -> None:
    """Start the gateway and send ``count`` outpatient visits of registered persons through
    it, eight hospital connections at a time; print what they got and how fast."""
    from concurrent.futures import ThreadPoolExecutor

    from yibao.gateway.credentials import add_client
    from yibao.gateway.process import free_port, spawn_gateway, wait_ready

    persons = []
    for line in log.open("rb"):
        if b'"PersonRegistered"' in line:
            persons.append(json.loads(line)["person_id"])
            if len(persons) == count:
                break
    clients = workdir / "gateway-clients.json"
    clients.unlink(missing_ok=True)
    key = add_client(clients, "demo-his", "hospital", ("F-DEMO-HTTP",))
    port = free_port()
    index = workdir / "gateway-index.sqlite"
    index.unlink(missing_ok=True)
    gateway = spawn_gateway(s, port=port, clients=clients, index=index,
                            log_file=workdir / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, gateway, timeout=120)
        click.echo(f"gateway on {base} (docs {base}/docs); {len(persons)} visits over HTTP ...",
                   err=True)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda a: _visit(base, key, a[1], a[0], day),
                                    enumerate(persons)))
    finally:
        _stop(gateway)
    latencies = sorted(sec for _answer, sec in results)
    answers: dict[str, int] = {}
    for answer, _sec in results:
        answers[answer] = answers.get(answer, 0) + 1
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    click.echo(f"\n{len(results)} visits through the gateway: "
               + ", ".join(f"{k} {v}" for k, v in sorted(answers.items()))
               + f"; settle p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


@click.command()
@setting_option("--households", setting="demo_households", type=click.IntRange(min=1))
@click.option("--month", default="2025-03", help="YYYY-MM to generate.")
@click.option("--seed", type=int, default=1)
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/demo"), help="Where the log, the projection and the chart go.")
@click.option("--timeout", type=float, default=600.0, help="Seconds to wait for the projection.")
@click.pass_obj
def demo(settings: Settings, households: int, month: str, seed: int, workdir: Path,
         timeout: float) -> None:
    """Broker, worker and projector up; a generated month published; reports and a chart."""
    import duckdb

    from yibao.dev.generate import GenerateConfig, generate_to_path
    from yibao.projections.audit_report import write_audit_report
    from yibao.projections.reports import clearing_query, funds_query, write_chart
    from yibao.projections.store import snapshot_path
    from yibao.streams.publish import publish_file
    from yibao.streams.topics import create_all_sync

    workdir.mkdir(parents=True, exist_ok=True)
    first = dt.date.fromisoformat(month + "-01")
    last = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    log = workdir / f"log-h{households}-s{seed}-{month}.jsonl"
    if not log.exists():
        click.echo(f"generating {households:,} households, {first} .. {last} ...", err=True)
        stats = generate_to_path(GenerateConfig(households=households, seed=seed, start=first,
                                                end=last), str(log))
        click.echo(stats.summary(), err=True)
    expected = _expected(log)
    prefix = f"demo-{int(time.time())}-"
    s = settings.model_copy(update={"topic_prefix": prefix})
    db = workdir / "yibao.duckdb"
    for p in (db, db.with_name(db.name + ".wal"), snapshot_path(db)):
        p.unlink(missing_ok=True)
    env = {"YIBAO_BOOTSTRAP_SERVERS": s.bootstrap_servers, "YIBAO_TOPIC_PREFIX": prefix,
           "YIBAO_PARTITIONS": str(s.partitions), "YIBAO_DUCKDB_PATH": str(db),
           "YIBAO_LOG_FORMAT": "json", "YIBAO_PSEUDONYM_KEY": s.pseudonym_key}
    create_all_sync(s)
    click.echo(f"topics {prefix}*; worker and projector logs in {workdir}/", err=True)
    worker = _spawn(["worker"], {**env, "YIBAO_WORKER_ID": "demo"}, workdir / "worker.log")
    projector = _spawn(["project", "--snapshot-every", "1"], env, workdir / "projector.log")
    try:
        total = sum(1 for line in log.open("rb") if line.strip())
        with click.progressbar(length=total, label="publishing   ", file=sys.stderr,
                               show_pos=True) as bar:
            publish_file(s, log, on_progress=bar.update)
        want = sum(expected.values())
        deadline = time.monotonic() + timeout
        got: dict[str, int] = {}
        with click.progressbar(length=want, label="settling and projecting", file=sys.stderr,
                               show_pos=True) as bar:
            done = 0
            while time.monotonic() < deadline:
                for name, proc in (("worker", worker), ("projector", projector)):
                    if proc.poll() is not None:
                        raise click.ClickException(f"the {name} exited ({proc.returncode}); see "
                                                   f"{workdir}/{name}.log")
                got = _projected(snapshot_path(db)) or {}
                n = min(sum(got.values()), want)
                bar.update(n - done)
                done = n
                if got == expected:
                    break
                time.sleep(0.5)
        if got != expected:
            click.echo(f"warning: projected {got}, expected {expected}", err=True)
        visits_over_http(s, workdir, log, count=HTTP_VISITS, day=last)
    finally:
        rc_p = _stop(projector)
        rc_w = _stop(worker)
    click.echo(f"projector exit {rc_p}, worker exit {rc_w}; projection {db}", err=True)

    con = duckdb.connect(str(db), read_only=True)
    try:
        region = con.sql("SELECT region, count(*) FROM registrations GROUP BY ALL "
                         "ORDER BY 2 DESC, 1 LIMIT 1").fetchall()[0][0]
        click.echo(f"\nFund summary, insured region {region}, {first} .. {last}:")
        click.echo(str(con.sql(funds_query(region, first, last))))
        click.echo(f"Cross-region clearing, region {region}, {month}:")
        click.echo(str(con.sql(clearing_query(region, month))))
        chart = write_chart(con, workdir / "daily-fund-payouts.html")
        audit = write_audit_report(con, workdir, region, month)
        flags = con.sql("SELECT rule, count(*), sum(amount_fen) FROM audit_flags "
                        "GROUP BY ALL ORDER BY 2 DESC").fetchall()
    finally:
        con.close()
    click.echo("Audit flags by rule (count, money at risk in fen): "
               + ", ".join(f"{rule} {n} ({amount})" for rule, n, amount in flags))
    click.echo(f"chart of daily fund payouts by fund: {chart}")
    click.echo(f"fund audit report of region {region}, {month}: {audit}")
    click.echo(f"query it: .venv/bin/yibao sql \"SELECT * FROM fund_ledger LIMIT 10\" --db {db}\n"
               f"      or: duckdb -readonly {db}")
