"""`yibao audit`: the fund audit's commands over files (audit.md)."""

from __future__ import annotations

import sys
from typing import BinaryIO

import click

from yibao.rules.facility_audit import FacilityWindows
from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimReversed, ClaimSettled
from yibao.settings import Settings, setting_option
from yibao.streams.facility_audit import key_partition


@click.group()
def audit() -> None:
    """The fund audit (audit.md) over files."""


@audit.command("facilities")
@click.argument("settlements", type=click.File("rb"))
@setting_option("--partitions", setting="partitions", type=click.IntRange(min=1))
@click.pass_obj
def facilities(settings: Settings, settlements: BinaryIO, partitions: int) -> None:
    """Tier B over a SETTLEMENTS.jsonl (`yibao settle`'s output, or an export of the
    `settlements` topic): the FacilityFlagRaised of every facility window that closes, as
    JSON lines. Each claim is read as from the settlements partition of its household
    (--partitions, as the topic has), so the flags are those the live `audit` stage raises
    from the same log."""
    codec = Codec()
    windows = FacilityWindows(partitions)
    out = sys.stdout.buffer
    for n, line in enumerate(settlements, 1):
        if not line.strip() or (b"ClaimSettled" not in line and b"ClaimReversed" not in line):
            continue
        try:
            event = codec.decode_output(line)
        except Exception as e:
            raise click.ClickException(f"{settlements.name}:{n}: not a settlement output: {e}") from e
        if isinstance(event, ClaimSettled):
            flags = windows.feed(event, key_partition(event.household_id, partitions))
        elif isinstance(event, ClaimReversed):
            flags = windows.feed(event)
        else:
            continue
        for flag in flags:
            out.write(codec.encode(flag) + b"\n")


@audit.command("backtest")
@click.option("--catalog", "catalog_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="The candidate audit catalog (TOML); default: the one in force.")
@click.option("--events", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Replay this JSONL log instead of the ledger topic.")
@click.option("--split-admission-days", type=click.IntRange(min=0), default=None)
@click.option("--history-days", type=click.IntRange(min=1), default=None)
@click.option("--shopping-days", type=click.IntRange(min=1), default=None)
@click.option("--shopping-facilities", type=click.IntRange(min=2), default=None)
@setting_option("--policy", "policy_path", setting="policy",
                type=click.Path(dir_okay=False, exists=True))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table as CSV.")
@click.pass_obj
def backtest(settings: Settings, catalog_path: str | None, events: str | None,
             split_admission_days: int | None, history_days: int | None,
             shopping_days: int | None, shopping_facilities: int | None,
             policy_path: str | None, csv_path: str | None) -> None:
    """What a rule change would do before it is switched on: the ledger (or --events) is
    settled under the rules in force and under the candidate (--catalog, thresholds), and
    the flags and blocks that appear and disappear are listed per rule and facility with
    the money at risk."""
    import csv
    import dataclasses

    from yibao.rules.audit import DEFAULTS
    from yibao.rules.backtest import backtest as run_backtest
    from yibao.rules.catalog import load_catalog
    from yibao.rules.engine import Engine
    from yibao.rules.exceptions import RulesError
    from yibao.rules.policy import load_policy

    changed = {k: v for k, v in {
        "split_admission_days": split_admission_days, "history_days": history_days,
        "shopping_days": shopping_days, "shopping_facilities": shopping_facilities,
    }.items() if v is not None}
    try:
        policy = load_policy(policy_path)
        current = Engine(policy)
        candidate = Engine(policy, load_catalog(catalog_path) if catalog_path else None,
                           dataclasses.replace(DEFAULTS, **changed))
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None
    if events is not None:
        with open(events, "rb") as f:
            ledger = [line for line in f.read().splitlines() if line.strip()]
    else:
        import asyncio

        from yibao.streams.publish import read_topic
        from yibao.streams.topics import Topics

        records = asyncio.run(read_topic(settings, Topics.of(settings).ledger))
        ledger = [value for _p, _o, _k, value in records]
    result = run_backtest(current, candidate, ledger)
    click.echo(f"flags {result.flags_before} -> {result.flags_after}, "
               f"blocks {result.blocks_before} -> {result.blocks_after} "
               f"({len(ledger)} events; candidate: {catalog_path or 'catalog in force'}"
               + "".join(f", {k} {v}" for k, v in changed.items()) + ")")
    header = ("rule", "facility_id", "appeared", "appeared_fen", "disappeared",
              "disappeared_fen")
    rows = [(c.rule, c.facility_id, c.appeared, c.appeared_fen, c.disappeared,
             c.disappeared_fen) for c in result.rows()]
    click.echo("  ".join(f"{h:>16}" for h in header))
    for row in rows:
        click.echo("  ".join(f"{v!s:>16}" for v in row))
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
