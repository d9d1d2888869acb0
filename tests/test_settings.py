from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
import structlog
from click.testing import CliRunner

from yibao.cli import main
from yibao.logging import configure, get_logger
from yibao.settings import Settings


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
