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
