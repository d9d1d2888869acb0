"""Helpers for testing code that runs on Kafka: a broker for the test session, unique topic
namespaces, and async produce/consume/create-topic helpers (re-exported from
:mod:`yibao.kafka_io`).

``kafka_for_tests()`` finds a broker, in this order:

1. ``YIBAO_BOOTSTRAP_SERVERS`` if set: an existing cluster, used as it is;
2. a testcontainers ``KafkaContainer`` if a Docker engine answers (skipped with
   ``YIBAO_TEST_KAFKA=local``);
3. the local JVM broker of :mod:`yibao.broker` (``make setup`` fetched its jars): reused if
   already running, else started, and then stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from yibao.broker import BrokerConfig, LocalBroker
from yibao.kafka_io import consume, create_topics, produce
from yibao.logging import get_logger
from yibao.settings import Settings

__all__ = [
    "consume",
    "create_topics",
    "docker_available",
    "kafka_for_tests",
    "produce",
    "unique_prefix",
]

log = get_logger("yibao.testing")

DEFAULT_TEST_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9


def unique_prefix(tag: str = "t") -> str:
    """A fresh topic/app-id namespace, e.g. ``t-1f2e3d4c-``."""
    return f"{tag}-{uuid.uuid4().hex[:8]}-"


def docker_available(timeout: float = 2.0) -> bool:
    """True if a Docker engine answers a ping. Quick when there is none (no socket, no host)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        sock = Path("/var/run/docker.sock")
        if not sock.exists():
            return False
    else:
        url = urlparse(host)
        if url.scheme == "unix" and not Path(url.path).exists():
            return False
        if url.scheme == "tcp":
            try:
                with socket.create_connection((url.hostname or "", url.port or 2375), timeout):
                    pass
            except OSError:
                return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=int(max(timeout, 1)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def kafka_for_tests(settings: Settings | None = None) -> Iterator[str]:
    """Yield a ``host:port`` bootstrap string of a usable broker (see the module docstring)."""
    explicit = os.environ.get("YIBAO_BOOTSTRAP_SERVERS")
    if explicit:
        log.info("kafka.tests.external", bootstrap=explicit)
        yield explicit
        return

    mode = os.environ.get("YIBAO_TEST_KAFKA", "auto").lower()
    if mode in ("auto", "docker") and docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # older testcontainers
            from testcontainers.kafka import KafkaContainer

        image = os.environ.get("YIBAO_TEST_KAFKA_IMAGE", DEFAULT_TEST_IMAGE)
        container = (
            KafkaContainer(image)
            .with_kraft()
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
        )
        with container:
            bootstrap = container.get_bootstrap_server()
            log.info("kafka.tests.container", image=image, bootstrap=bootstrap)
            yield bootstrap
        return
    if mode == "docker":
        raise RuntimeError("YIBAO_TEST_KAFKA=docker but no Docker engine answers")

    broker = LocalBroker(BrokerConfig.from_settings(settings or Settings()))
    _status, started = broker.up()
    log.info("kafka.tests.local", bootstrap=broker.config.bootstrap, started=started)
    try:
        yield broker.config.bootstrap
    finally:
        if started:
            broker.down()
