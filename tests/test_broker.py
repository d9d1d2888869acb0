"""The local broker manager: config, errors, and (marked kafka) a second broker on free ports
started twice, then stopped."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from yibao.dev.broker import (
    BrokerConfig,
    BrokerError,
    LocalBroker,
    _pid_alive,
    fetch_metadata,
    project_root,
)
from yibao.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(home: Path, libs: Path) -> BrokerConfig:
    return BrokerConfig(port=_free_port(), controller_port=_free_port(), home=home, libs=libs)


def test_config_from_settings(tmp_path: Path) -> None:
    s = Settings(kafka_port=19092, kafka_home=tmp_path, kafka_heap="256m")
    c = BrokerConfig.from_settings(s)
    assert (c.bootstrap, c.controller_port, c.heap) == ("127.0.0.1:19092", 19093, "256m")
    assert c.base == tmp_path / "19092"
    assert c.libs == tmp_path / "libs"
    assert BrokerConfig.from_settings(Settings()).libs == project_root() / "var/kafka/libs"


def test_missing_java_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    broker = LocalBroker(_config(tmp_path, libs=tmp_path))
    with pytest.raises(BrokerError, match=r"`java` not found.*docker-compose\.kafka\.yml"):
        broker.up(timeout=5)


def test_missing_jars_are_explained(tmp_path: Path) -> None:
    broker = LocalBroker(_config(tmp_path, libs=tmp_path / "none"))
    if shutil.which("java") is None:
        pytest.skip("no java")
    with pytest.raises(BrokerError, match="make setup"):
        broker.up(timeout=5)


def test_status_and_down_when_nothing_runs(tmp_path: Path) -> None:
    broker = LocalBroker(_config(tmp_path, libs=tmp_path))
    status = broker.status()
    assert not status.ready and status.pid is None
    assert "not running" in str(status)
    assert broker.down() is False


def test_server_properties_single_node(tmp_path: Path) -> None:
    from yibao.dev.broker import _server_properties

    c = BrokerConfig(port=1234, controller_port=1235, home=tmp_path, libs=tmp_path)
    props = dict(
        line.split("=", 1) for line in _server_properties(c).splitlines() if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:1235"
    assert props["log.dirs"] == str(tmp_path / "1234" / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_up_is_idempotent_and_down_frees_the_ports(tmp_path: Path) -> None:
    libs = BrokerConfig.from_settings(Settings()).libs
    if shutil.which("java") is None or not any(libs.glob("kafka_2.13-*.jar")):
        pytest.skip("needs java and the Kafka jars of `make setup`")
    port, controller = _free_port(), _free_port()
    broker = LocalBroker(
        BrokerConfig(port=port, controller_port=controller, home=tmp_path, libs=libs, heap="256m")
    )
    try:
        first, started = broker.up(timeout=60)
        assert started and first.ready and first.pid
        second, started_again = broker.up(timeout=60)
        assert not started_again and second.pid == first.pid
        metadata = fetch_metadata(f"127.0.0.1:{port}")
        assert [(b.host, b.port) for b in metadata.brokers] == [("127.0.0.1", port)]
        assert (tmp_path / str(port) / "data" / "meta.properties").exists()
    finally:
        assert broker.down(timeout=20) is True
    assert not _port_open(port) and not _port_open(controller)
    assert first.pid is not None
    # Exited: gone, or a zombie until its parent reaps it (the JVM runs detached, and this
    # machine's init reaps late) — what `_pid_alive` counts as not alive.
    assert not _pid_alive(first.pid)
    assert broker.status().pid is None
