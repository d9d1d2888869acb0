"""Live-pipeline commands: `yibao topics create`, `yibao publish`, `yibao export`,
`yibao worker`, `yibao books`. The worker's options are also set by their ``YIBAO_*`` variables
(settings fields; shown in --help).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from yibao.settings import Settings, setting_option


@click.group()
def topics() -> None:
    """The pipeline's topics under YIBAO_TOPIC_PREFIX."""


@topics.command("create")
@click.pass_obj
def topics_create(settings: Settings) -> None:
    """Create every topic that doesn't exist yet, with YIBAO_PARTITIONS partitions
    (idempotent): the input topics registrations (bureau), care (hospitals) and reviews
    (auditors) with message.timestamp.type=LogAppendTime (also set on existing ones), the
    ledger, settlements and dead letters kept forever, and the stages' changelogs."""
    from yibao.streams.topics import create_all_sync

    names = create_all_sync(settings)
    click.echo(f"{len(names)} topics ready ({settings.partitions} partitions each): "
               + ", ".join(names))


@click.command()
@click.argument("events", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--create-topics/--no-create-topics", default=True,
              help="Create the pipeline's topics first if they don't exist.")
@click.pass_obj
def publish(settings: Settings, events: Path, create_topics: bool) -> None:
    """Publish EVENTS.jsonl in file order: each line to its type's topic (registrations,
    care or reviews), key person_id, numbered (headers yibao-publisher, yibao-seq) so the
    pipeline applies it in the file's order. Lines that cannot be routed go to
    registrations, where the sequencer dead-letters them with their origin."""
    from yibao.streams.publish import publish_file
    from yibao.streams.topics import create_all_sync

    if create_topics:
        create_all_sync(settings)
    total = sum(1 for line in events.open("rb") if line.strip())
    with click.progressbar(length=total, label=f"publishing {events.name}",
                           file=sys.stderr) as bar:
        counts = publish_file(settings, events, on_progress=bar.update)
    click.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), err=True)


@click.command()
@click.argument("topic")
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--timeout", type=float, default=120.0, help="Seconds to reach the end offsets.")
@click.pass_obj
def export(settings: Settings, topic: str, out: str, timeout: float) -> None:
    """Write TOPIC (a short name like `settlements`, or a full topic name) from the
    beginning to its current end, committed records only, as JSONL to OUT."""
    from yibao.streams.publish import export_topic
    from yibao.streams.topics import INPUTS, Topics

    t = Topics.of(settings)
    short = {*INPUTS, "ledger", "settlements", "deadletter"}
    name = t.name(topic) if topic in short else topic
    try:
        if out == "-":
            n = export_topic(settings, name, sys.stdout.buffer, timeout=timeout)
        else:
            with open(out, "wb") as f:
                n = export_topic(settings, name, f, timeout=timeout)
    except (LookupError, TimeoutError) as exc:  # NoSuchTopic, ReadTimeout
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {n} records of {name}", err=True)


@click.command()
@setting_option("--worker-id", setting="worker_id")
@setting_option("--merge-wait-ms", setting="merge_wait_ms", type=click.IntRange(min=0))
@setting_option("--dedup-window-days", setting="dedup_window_days", type=click.IntRange(min=1))
@setting_option("--policy", "policy_path", setting="policy",
                type=click.Path(dir_okay=False, exists=True))
@setting_option("--stage", "stages", setting="stages", type=click.Choice(["sequencer", "processor", "audit"]),
                multiple=True)
@setting_option("--transaction-timeout-ms", setting="transaction_timeout_ms",
                type=click.IntRange(min=1000))
@setting_option("--store", setting="store", type=click.Choice(["rocksdb", "memory"]))
@setting_option("--state-dir", setting="state_dir", type=click.Path(file_okay=False))
@setting_option("--store-cache-mb", setting="store_cache_mb", type=click.IntRange(min=8))
@setting_option("--fuse/--no-fuse", setting="fuse")
@click.pass_obj
def worker(settings: Settings, worker_id: str, merge_wait_ms: int, dedup_window_days: int,
           policy_path: str | None, stages: tuple[str, ...],
           transaction_timeout_ms: int, store: str, state_dir: str, store_cache_mb: int,
           fuse: bool) -> None:
    """Run the sequencer and the settlement processor (exactly-once, Kafka transactions)."""
    from yibao.streams.worker import WorkerOptions, main

    main(settings, WorkerOptions(
        worker_id=worker_id, merge_wait_ms=merge_wait_ms,
        dedup_window_days=dedup_window_days, policy_path=policy_path, stages=tuple(stages),
        transaction_timeout_ms=transaction_timeout_ms, store=store, state_dir=state_dir,
        store_cache_mb=store_cache_mb, fuse=fuse,
    ))


@click.command()
@click.pass_obj
def books(settings: Settings) -> None:
    """The sequencer's committed books: records read from the input topics, and how many
    went to the ledger, were dropped as duplicates or were dead-lettered. They are written
    in the same transaction as the input offsets, so they are exact after any crash; compare
    them with `yibao export ledger` / `deadletter` line counts (the ledger also holds each
    person's events before registration again, replayed under the household). Exit 1 if
    they do not balance."""
    import asyncio

    from yibao.streams.cores import SequencerCounts
    from yibao.streams.sequencer import read_books

    per = asyncio.run(read_books(settings))
    total = SequencerCounts()
    for p in sorted(per):
        c = per[p]
        total.add(c)
        click.echo(f"partition {p}: read {c.read}, sequenced {c.sequenced}, "
                   f"duplicates {c.duplicates}, dead-lettered {c.dead_lettered}, "
                   f"replayed {c.replayed}, stash dropped {c.stash_dropped}")
    ok = total.read == total.sequenced + total.duplicates + total.dead_lettered
    click.echo(f"books: read {total.read} = sequenced {total.sequenced} + duplicates "
               f"{total.duplicates} + dead-lettered {total.dead_lettered}"
               f" ({'balanced' if ok else 'NOT BALANCED'}); ledger records = sequenced + "
               f"{total.replayed} replayed at registration")
    if not ok:
        sys.exit(1)
