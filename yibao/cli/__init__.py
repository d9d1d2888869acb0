"""The `yibao` command line.

The group callback builds the one :class:`~yibao.settings.Settings` object from the
``YIBAO_*`` environment, configures logging and puts the settings in ``ctx.obj``: subcommands
take it with ``@click.pass_obj``. An option that a variable also sets is a
:func:`~yibao.settings.setting_option`: its default is that settings field, and ``--help``
shows the variable and its current value, so a container or CI job configures yibao the same
way an operator at a terminal does. `yibao config` lists every variable.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import click
from pydantic import ValidationError

from yibao.dev.broker import BrokerConfig, BrokerError, LocalBroker
from yibao.logging import configure as configure_logging
from yibao.rules import core_build
from yibao.settings import Settings, setting_option, show, variable

CONTEXT = {
    "show_default": True,
    "help_option_names": ["-h", "--help"],
}


@click.group(context_settings=CONTEXT)
@click.version_option(version("yibao"), message=f"%(prog)s %(version)s, rules core: {core_build()}")
@click.pass_context
def main(ctx: click.Context) -> None:
    """yibao: event-sourced medical insurance settlement on Kafka."""
    try:
        settings = Settings()
    except ValidationError as e:
        raise click.UsageError(f"bad YIBAO_* environment: {e}") from e
    configure_logging(settings)
    ctx.obj = settings


# -- configuration ---------------------------------------------------------------------------

CONFIG_DOC = "docs/configuration.md"


def config_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(variable, default, current value, description) of every settings field, secrets masked."""
    return [(variable(name), show(name, field.default), show(name, getattr(settings, name)),
             field.description or "")
            for name, field in Settings.model_fields.items()]


def config_markdown() -> str:
    """docs/configuration.md: every variable, its default and its meaning (no current values)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["Every `YIBAO_*` variable, generated from `yibao/settings.py` by "
             "`yibao config --write-docs` (edit the descriptions there and regenerate).",
             "", "| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, _current, meaning in config_rows(Settings.model_construct()):
        lines.append(f"| `{name}` | {'`' + cell(default) + '`' if default != '(unset)' else default} "
                     f"| {cell(meaning)} |")
    return "\n".join(lines) + "\n"


README = "README.md"
README_TABLE = ("<!-- config-table:start -->\n", "<!-- config-table:end -->")


def readme_with_config_table(readme: str) -> str:
    """The README with the generated table between its markers, so the user's guide and
    ``yibao config`` can never disagree."""
    start, end = README_TABLE
    head, found, rest = readme.partition(start)
    _old, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise click.ClickException(f"{README} lacks the markers {start.strip()} ... {end}")
    table = "\n".join(line for line in config_markdown().splitlines() if line.startswith("|"))
    return f"{head}{start}{table}\n{end}{tail}"


@main.command()
@click.option("--markdown", is_flag=True, help=f"The markdown table of {CONFIG_DOC} (no current values).")
@click.option("--write-docs", is_flag=True,
              help=f"Regenerate {CONFIG_DOC} and the table in {README} (run from the repository root).")
@click.pass_obj
def config(settings: Settings, markdown: bool, write_docs: bool) -> None:
    """Every YIBAO_* variable: its default, its current value (secrets masked) and its meaning."""
    if markdown:
        click.echo(config_markdown(), nl=False)
        return
    if write_docs:
        Path(CONFIG_DOC).write_text(config_markdown(), encoding="utf-8")
        readme = Path(README)
        readme.write_text(readme_with_config_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
        click.echo(f"wrote {CONFIG_DOC} and the configuration table of {README}")
        return
    rows = [("VARIABLE", "DEFAULT", "CURRENT", "MEANING"), *config_rows(settings)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])


# -- the local Kafka broker -------------------------------------------------------------------


@main.group()
def kafka() -> None:
    """A local single-node Kafka broker (KRaft, no Docker) on YIBAO_KAFKA_PORT."""


def _broker(settings: Settings) -> LocalBroker:
    return LocalBroker(BrokerConfig.from_settings(settings))


@kafka.command("up")
@click.option("--timeout", type=float, default=90.0, help="Seconds to wait for readiness.")
@click.pass_obj
def kafka_up(settings: Settings, timeout: float) -> None:
    """Start the broker unless it already runs; wait until it answers a Metadata request."""
    try:
        status, _started = _broker(settings).up(timeout=timeout)
    except BrokerError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(status))


@kafka.command("down")
@click.option("--timeout", type=float, default=30.0, help="Seconds before SIGTERM becomes SIGKILL.")
@click.pass_obj
def kafka_down(settings: Settings, timeout: float) -> None:
    """Stop the broker started by `yibao kafka up` and wait until its ports are free."""
    broker = _broker(settings)
    stopped = broker.down(timeout=timeout)
    click.echo(f"kafka on {broker.config.bootstrap}: {'stopped' if stopped else 'was not running'}")


@kafka.command("status")
@click.pass_obj
def kafka_status(settings: Settings) -> None:
    """Ask the broker for its metadata; exit 1 unless it answers."""
    status = _broker(settings).status()
    click.echo(str(status))
    if not status.ready:
        raise SystemExit(1)


@kafka.command("check")
@click.option("--timeout", type=float, default=10.0, help="Seconds per server.")
@click.pass_obj
def kafka_check(settings: Settings, timeout: float) -> None:
    """Connect to YIBAO_BOOTSTRAP_SERVERS with the configured security (TLS, SASL) and say
    whether it works, and if not, why; exit 1 on failure."""
    import asyncio

    from yibao.streams.kafka.options import KafkaAccessError, KafkaSecurityError, probe

    try:
        click.echo(asyncio.run(probe(settings, timeout)))
    except (KafkaAccessError, KafkaSecurityError) as e:
        click.echo(f"kafka check failed: {e}", err=True)
        raise SystemExit(1) from e


# -- demo -----------------------------------------------------------------------------------


@main.command()
@click.option("--events", type=int, default=60, help="Events to produce.")
@click.option("--keys", type=int, default=4, help="Distinct keys (patients) among them.")
@click.option("--timeout", type=float, default=120.0, help="Seconds to wait for the counts.")
@click.pass_obj
def smoke(settings: Settings, events: int, keys: int, timeout: float) -> None:
    """End-to-end smoke run: produce events, count them per key in a faust-streaming worker,
    read the counts back from Kafka and check them."""
    from yibao.dev.smoke import run_smoke

    result = run_smoke(settings, events=events, keys=keys, timeout=timeout)
    click.echo(result.report())
    if not result.ok:
        raise SystemExit(1)


# -- synthetic data ---------------------------------------------------------------------------

import datetime as _dt  # noqa: E402


@main.command()
@click.option(
    "--households",
    type=click.IntRange(min=1),
    default=100,
    help="Households to simulate (1-5 persons each, ~96 events per household-year).",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    help="Random seed: the same arguments give byte-identical output.",
)
@setting_option("--from", "date_from", setting="generate_from", type=click.DateTime(formats=["%Y-%m-%d"]))
@setting_option("--to", "date_to", setting="generate_to", type=click.DateTime(formats=["%Y-%m-%d"]))
@click.option(
    "--bad-rate",
    type=click.FloatRange(0.0, 0.5),
    default=0.001,
    help="Fraction of lines that are malformed (dead-letter material).",
)
@click.option(
    "--output",
    "-o",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file to write, or - for stdout.",
)
@click.option(
    "--audit-patterns/--no-audit-patterns",
    default=True,
    help="Mix in the fund-audit patterns (restricted codes used rightly and wrongly, "
    "readmissions, overlapping stays, repeat tests, doctor shopping, late deaths, group "
    "admissions, spikes).",
)
def generate(
    households: int,
    seed: int,
    date_from: _dt.datetime,
    date_to: _dt.datetime,
    bad_rate: float,
    output: str,
    audit_patterns: bool,
) -> None:
    """Write a realistic synthetic event log (JSONL, events.md schema_version 1), sorted by
    occurred_at: enrollment, visits, charges, checkouts, payments, refunds, rule-violating
    events, exact duplicates and malformed lines. Deterministic for a seed."""
    from yibao.dev.generate import GenerateConfig, generate_to_path

    cfg = GenerateConfig(
        households=households,
        seed=seed,
        start=date_from.date(),
        end=date_to.date(),
        bad_rate=bad_rate,
        audit_patterns=audit_patterns,
    )
    try:
        stats = generate_to_path(cfg, output)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    click.echo(stats.summary(), err=True)


# -- file mode ----------------------------------------------------------------------------

from yibao.cli.filemode import schema, settle  # noqa: E402

main.add_command(settle)
main.add_command(schema)

# -- live pipeline (issue 4) ----------------------------------------------------------------

from yibao.cli.live import books, export, publish, topics, worker  # noqa: E402

for _command in (topics, publish, export, worker, books):
    main.add_command(_command)

# -- the HTTP gateway ----------------------------------------------------------------------------

from yibao.cli.audit import audit  # noqa: E402

main.add_command(audit)

from yibao.cli.gateway import gateway  # noqa: E402

main.add_command(gateway)

# -- projections, replay, audits, reports (issue 5) -------------------------------------------

from yibao.cli.projections import COMMANDS as _PROJECTION_COMMANDS  # noqa: E402

for _command in _PROJECTION_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
