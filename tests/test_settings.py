from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pydantic
import pytest
import structlog
from click.testing import CliRunner

from yibao.cli import main
from yibao.logging import configure, get_logger
from yibao.settings import SettingOption, Settings, variable


@pytest.fixture(autouse=True)
def _clean_env_and_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("YIBAO_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_defaults() -> None:
    s = Settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.topic_prefix == "yibao."
    assert s.partitions == 8
    assert s.duckdb_path == Path("var/yibao.duckdb")
    assert (s.log_format, s.log_level) == ("auto", "info")


def test_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("YIBAO_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("YIBAO_PARTITIONS", "12")
    monkeypatch.setenv("YIBAO_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("YIBAO_LOG_FORMAT", "json")
    s = Settings()
    assert s.bootstrap_list == ["k1:9092", "k2:9093"]
    assert (s.topic_prefix, s.partitions, s.log_level, s.log_format) == (
        "prod.",
        12,
        "debug",
        "json",
    )


def test_bootstrap_follows_the_local_broker_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_KAFKA_PORT", "19092")
    assert Settings().bootstrap_servers == "127.0.0.1:19092"
    monkeypatch.setenv("YIBAO_BOOTSTRAP_SERVERS", "elsewhere:9092")
    assert Settings().bootstrap_servers == "elsewhere:9092"


def test_frozen_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.partitions = 3  # type: ignore[misc]
    monkeypatch.setenv("YIBAO_PARTITIONS", "0")
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_cli_puts_settings_in_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_KAFKA_PORT", "1")  # nothing listens there
    result = CliRunner().invoke(main, ["kafka", "status"])
    assert result.exit_code == 1
    assert "kafka not running on 127.0.0.1:1" in result.output


def test_cli_rejects_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_PARTITIONS", "many")
    result = CliRunner().invoke(main, ["kafka", "status"])
    assert result.exit_code == 2
    assert "YIBAO_" in result.output


def test_json_logs_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure(Settings(log_format="auto"), stream=out)
    get_logger("t").info("claim.settled", claim_id="C1", amount_fen=1234)
    logging.getLogger("aiokafka").warning("from %s", "stdlib")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "claim.settled"
    assert lines[0]["claim_id"] == "C1" and lines[0]["level"] == "info"
    assert lines[1] == {**lines[1], "event": "from stdlib", "logger": "aiokafka"}


def test_console_logs_on_request() -> None:
    out = io.StringIO()
    configure(Settings(log_format="console"), stream=out)
    get_logger("t").info("hello", who="world")
    text = out.getvalue()
    assert "hello" in text and "who=world" in text
    assert not text.lstrip().startswith("{")


# -- one configuration: every YIBAO_* variable is a Settings field ---------------------------

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bYIBAO_[A-Z0-9_]*")
SKIP_DIRS = {"var", "build", "dist", "node_modules", "__pycache__"}


def _python_files() -> Iterator[Path]:
    """The repository's own Python files (no virtualenv, caches, broker data or symlinked
    copies: yibao/schemas etc. are links to the top-level folders, which are walked)."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                   and not (Path(folder) / d).is_symlink()]
        for f in files:
            if f.endswith(".py"):
                yield Path(folder) / f


def _commands(group: click.Group) -> Iterator[click.Command]:
    for cmd in group.commands.values():
        yield cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd)


def test_every_field_has_a_type_a_default_and_a_one_line_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.annotation is not None, name
        assert not field.is_required(), name
        assert field.description and "\n" not in field.description, name
        assert len(field.description) <= 160, name


def test_every_yibao_name_in_the_python_files_is_a_settings_field() -> None:
    fields = {variable(name) for name in Settings.model_fields}
    unknown: dict[str, list[str]] = {}
    files = list(_python_files())
    assert any(p.name == "settings.py" for p in files) and any(p.name == "runtime.py" for p in files)
    for path in files:
        for name in set(NAME.findall(path.read_text(encoding="utf-8"))):
            known = (any(f.startswith(name) for f in fields) if name.endswith("_")  # a prefix
                     else name in fields)
            if not known:
                unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"YIBAO_ names that are not Settings fields: {unknown}"


def test_only_the_settings_read_yibao_variables() -> None:
    envvar = re.compile(r"""envvar\s*=\s*[\[(]?\s*["']YIBAO_""")
    reads = re.compile(r"""(?:getenv|environ\.get|environ\.setdefault)\(\s*["']YIBAO_"""
                       r"""|environ\[\s*["']YIBAO_[A-Z0-9_]*["']\s*\](?!\s*=[^=])"""
                       r"""|["']YIBAO_[A-Z0-9_]*["']\s+(?:not\s+)?in\s+os\.environ""")
    found = []
    for path in _python_files():
        if path == ROOT / "yibao" / "settings.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if envvar.search(line) or reads.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_options_take_variables_only_through_the_settings() -> None:
    assert "auto_envvar_prefix" not in (main.context_settings or {})
    backed = []
    for cmd in _commands(main):
        for param in cmd.params:
            assert param.envvar is None, (cmd.name, param.name)
            if isinstance(param, SettingOption):
                assert param.setting in Settings.model_fields
                backed.append(param.variable)
    assert {"YIBAO_MERGE_WAIT_MS", "YIBAO_POLICY", "YIBAO_DEMO_HOUSEHOLDS",
            "YIBAO_GENERATE_FROM", "YIBAO_PROJECT_MAX_WAIT_MS"} <= set(backed)


def test_a_variable_changes_the_option_default(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    assert "default: 20" in " ".join(runner.invoke(main, ["worker", "--help"]).output.split())
    monkeypatch.setenv("YIBAO_MERGE_WAIT_MS", "7")
    help_text = " ".join(runner.invoke(main, ["worker", "--help"]).output.split())
    assert "[env var: YIBAO_MERGE_WAIT_MS; default: 7; x>=0]" in help_text

    import yibao.streams.worker as worker_module

    seen: list[Any] = []
    monkeypatch.setattr(worker_module, "main", lambda settings, opts: seen.append(opts))
    monkeypatch.setenv("YIBAO_STAGES", "processor")
    monkeypatch.setenv("YIBAO_FUSE", "0")
    monkeypatch.setenv("YIBAO_STATE_DIR", "elsewhere/state")
    assert runner.invoke(main, ["worker"]).exit_code == 0
    assert runner.invoke(main, ["worker", "--merge-wait-ms", "9", "--stage", "sequencer"]).exit_code == 0
    a, b = seen
    assert (a.merge_wait_ms, a.stages, a.fuse, a.state_dir, a.dedup_window_days) == (
        7, ("processor",), False, "elsewhere/state", 30)
    assert (b.merge_wait_ms, b.stages) == (9, ("sequencer",))  # the command line wins


def test_a_bad_option_variable_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_MERGE_WAIT_MS", "soon")
    result = CliRunner().invoke(main, ["worker", "--help"])
    assert result.exit_code == 2
    assert "merge_wait_ms" in result.output


def test_config_lists_every_variable_and_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_PSEUDONYM_KEY", "prod-pseudonym-key-4711")
    monkeypatch.setenv("YIBAO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_USERNAME", "settler")
    monkeypatch.setenv("YIBAO_KAFKA_SASL_PASSWORD", "sasl-password-0815")
    monkeypatch.setenv("YIBAO_MERGE_WAIT_MS", "7")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(rows) == {variable(name) for name in Settings.model_fields}
    assert "prod-pseudonym-key-4711" not in result.output
    assert "sasl-password-0815" not in result.output
    assert rows["YIBAO_PSEUDONYM_KEY"][1:3] == ["yibao-dev-pseudonym-key", "**********"]
    assert rows["YIBAO_KAFKA_SASL_PASSWORD"][1:3] == ["(unset)", "**********"]
    assert rows["YIBAO_KAFKA_SASL_USERNAME"][1:3] == ["(unset)", "settler"]
    assert rows["YIBAO_MERGE_WAIT_MS"][1:3] == ["20", "7"]
    for name, field in Settings.model_fields.items():
        assert (field.description or "") in result.output, name


def test_docs_configuration_is_the_generated_table() -> None:
    result = CliRunner().invoke(main, ["config", "--markdown"])
    assert result.exit_code == 0, result.output
    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == result.output, (
        "docs/configuration.md is stale: run `yibao config --write-docs`")
    table = [line for line in result.output.splitlines() if line.startswith("| `YIBAO_")]
    assert [line.split("`")[1] for line in table] == [variable(n) for n in Settings.model_fields]


def test_readme_has_the_generated_table() -> None:
    from yibao.cli import readme_with_config_table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_with_config_table(readme) == readme, (
        "the README's configuration table is stale: run `yibao config --write-docs`")
    assert "| `YIBAO_BOOTSTRAP_SERVERS` |" in readme
