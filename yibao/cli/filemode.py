"""File-mode commands: `yibao settle` and `yibao schema export`.

The same fold as the live pipeline, over a JSONL file: what an auditor runs on a laptop to
get the answer to the fen without a broker.
"""

from __future__ import annotations

import base64
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click
import msgspec

from yibao.cli.exceptions import ShardError
from yibao.cli.shards import MIN_LINES_PER_JOB, default_jobs, route, settle_sharded
from yibao.rules.dedup import DedupWindow
from yibao.rules.engine import Engine
from yibao.rules.exceptions import PolicyError
from yibao.rules.fold import Counts, DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.settings import setting_option

_FLUSH_BYTES = 1 << 20
_FREEZE_EVERY = 20_000


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    for raw in stream:
        if raw.strip():
            yield raw


def dead_letter_record(dl: DeadLetter) -> dict[str, object]:
    raw = dl.raw.rstrip(b"\r\n")
    record: dict[str, object] = {"line": dl.line, "error": dl.error, "path": dl.path}
    try:
        record["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["raw"] = raw.decode("utf-8", errors="replace")
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return record


@click.command()
@click.argument("events", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Policy TOML file [default: the national default policy].",
)
@click.option(
    "--deadletter",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write malformed lines here as JSONL (line, error, raw).",
)
@setting_option("--dedup-window-days", setting="dedup_window_days", type=click.IntRange(min=1))
@click.option(
    "--jobs",
    type=click.IntRange(min=0, max=255),
    default=0,
    show_default=True,
    help="Processes folding households in parallel (0 = the cores this process may use). "
    "The output is the same for any number.",
)
def settle(
    events: str, policy_path: str | None, deadletter: str | None, dedup_window_days: int,
    jobs: int,
) -> None:
    """Fold an EVENTS.jsonl log in order and write the output events to stdout as JSONL.

    Malformed lines go to --deadletter (and are counted); a repeated event_id has no
    effect; counts go to stderr at the end. Exit 0 unless the input cannot be read.
    """
    import datetime as dt

    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    window = dt.timedelta(days=dedup_window_days)

    def make_fold() -> Fold:
        return Fold(Engine(policy), dedup=DedupWindow.of(window))

    jobs = jobs or default_jobs()
    out = sys.stdout.buffer
    started = time.perf_counter()
    dl_file: IO[bytes] | None = None
    spool: Path | None = None
    try:
        if deadletter is not None:
            dl_file = open(deadletter, "wb")  # noqa: SIM115
        path = None if events == "-" else Path(events)
        if jobs > 1 and path is None:
            spool = _spool_stdin()
            path = spool
        shard_of = None
        whole_window = False
        if jobs > 1 and path is not None:
            shard_of, whole_window = route(path, _lines, int(window.total_seconds() * 1000),
                                           jobs)
            if len(shard_of) < MIN_LINES_PER_JOB * 2:
                shard_of = None
        if shard_of is not None and path is not None:
            counts = settle_sharded(path, _lines, make_fold, shard_of, jobs, out, dl_file,
                                    whole_window)
        else:
            counts = _settle_one_process(path, make_fold(), out, dl_file)
    except OSError as exc:
        raise click.ClickException(f"cannot read {events}: {exc.strerror or exc}") from None
    except ShardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        out.flush()
        if dl_file is not None:
            dl_file.close()
        if spool is not None:
            spool.unlink(missing_ok=True)
    c = counts
    secs = time.perf_counter() - started
    by = ", ".join(f"{k} {v}" for k, v in sorted(c.by_output.items()))
    click.echo(
        f"settle: read {c.read}, applied {c.applied}, duplicates {c.duplicates}, "
        f"dead-lettered {c.dead_lettered}; outputs {c.outputs} ({by}); "
        f"{secs:.2f} s, {c.read / secs if secs else 0:,.0f} events/s",
        err=True,
    )


def _spool_stdin() -> Path:
    """Standard input copied to a file: the router and every shard read the log."""
    fd, name = tempfile.mkstemp(prefix="yibao-settle-", suffix=".jsonl")
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f, _FLUSH_BYTES)
    return Path(name)


def _settle_one_process(path: Path | None, fold: Fold, out: IO[bytes],
                        dl_file: IO[bytes] | None) -> Counts:
    encoder = msgspec.json.Encoder()
    buf = bytearray()
    src: IO[bytes] = sys.stdin.buffer if path is None else open(path, "rb")  # noqa: SIM115
    try:
        with src:
            for result in fold.run(_lines(src)):
                if fold.counts.read % _FREEZE_EVERY == 0:
                    # Settlement state is long-lived and acyclic: moving it out of the
                    # collector's generations stops full collections from rescanning the
                    # whole heap, which otherwise halves throughput at a million events.
                    gc.freeze()
                if isinstance(result, DeadLetter):
                    if dl_file is not None:
                        dl_file.write(encoder.encode(dead_letter_record(result)) + b"\n")
                    continue
                for o in result:
                    encoder.encode_into(o, buf, -1)
                    buf += b"\n"
                if len(buf) > _FLUSH_BYTES:
                    out.write(buf)
                    buf.clear()
    finally:
        out.write(buf)
    return fold.counts


@click.group()
def schema() -> None:
    """The event contract as JSON Schema, for gateway teams in other languages."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
def schema_export(directory: str) -> None:
    """Write one JSON Schema file per event type into DIRECTORY."""
    from yibao.schemas.jsonschema import schemas

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    docs = schemas()
    for name, doc in docs.items():
        (target / f"{name}.schema.json").write_bytes(msgspec.json.format(encoder.encode(doc)))
    click.echo(f"wrote {len(docs)} schemas to {target}", err=True)
