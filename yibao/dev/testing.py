"""Helpers for testing code that runs on Kafka: a broker for the test session, unique topic
namespaces, and async produce/consume/create-topic helpers (re-exported from
:mod:`yibao.streams.kafka.io`).

``kafka_for_tests()`` finds a broker, in this order:

1. ``YIBAO_BOOTSTRAP_SERVERS`` if set: an existing cluster, used as it is;
2. a testcontainers ``KafkaContainer`` if a Docker engine answers (skipped with
   ``YIBAO_TEST_KAFKA=local``);
3. the local JVM broker of :mod:`yibao.dev.broker` (``make setup`` fetched its jars): reused if
   already running, else started, and then stopped at the end.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import SecretStr

from yibao.dev.broker import BrokerConfig, LocalBroker, project_root
from yibao.logging import get_logger
from yibao.settings import Settings
from yibao.streams.kafka.io import consume, create_topics, produce

__all__ = [
    "consume",
    "create_topics",
    "docker_available",
    "kafka_for_tests",
    "produce",
    "secured_kafka",
    "throwaway_pki",
    "unique_prefix",
]

log = get_logger("yibao.dev.testing")

#: Every prefix handed out in this process, so a test session can delete its topics at the end.
ISSUED_PREFIXES: list[str] = []


def unique_prefix(tag: str = "t") -> str:
    """A fresh topic/app-id namespace, e.g. ``t-1f2e3d4c-``."""
    prefix = f"{tag}-{uuid.uuid4().hex[:8]}-"
    ISSUED_PREFIXES.append(prefix)
    return prefix


async def delete_topics_with_prefixes(bootstrap: str, prefixes: list[str]) -> int:
    """Delete the topics under ``prefixes``; returns how many.

    Why: every test namespaces its topics, and a broker that outlives test sessions (a
    developer's ``make kafka-up``) otherwise accumulates thousands of partition folders
    until it cannot open them all ("Too many open files") and will not start.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    from yibao.streams.kafka.options import client_options

    if not prefixes:
        return 0
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        for i in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[i : i + 100])
        return len(doomed)
    finally:
        await admin.close()


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
    settings = settings or Settings()
    if settings.bootstrap_given:
        log.info("kafka.tests.external", bootstrap=settings.bootstrap_servers)
        yield settings.bootstrap_servers
        return

    mode = settings.test_kafka
    if mode in ("auto", "docker") and docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # older testcontainers
            from testcontainers.kafka import KafkaContainer

        image = settings.test_kafka_image
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

    broker = LocalBroker(BrokerConfig.from_settings(settings))
    _status, started = broker.up()
    log.info("kafka.tests.local", bootstrap=broker.config.bootstrap, started=started)
    try:
        yield broker.config.bootstrap
    finally:
        if started:
            broker.down()


# -- a broker with a SASL_SSL + SCRAM listener, for tests of client security -----------------


@dataclass(frozen=True)
class Pki:
    """A throwaway CA and a server certificate it signed (PEM files in one folder)."""

    ca_cert: Path
    server_keystore: Path  # PKCS#8 private key + certificate: Kafka's PEM keystore file


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def throwaway_pki(folder: Path, host: str = "127.0.0.1", days: int = 2) -> Pki:
    """Generate a CA and a server certificate for ``host`` (IP or DNS name in subjectAltName)
    with the ``openssl`` CLI. Keys are unencrypted and live only in ``folder``."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the `openssl` command is needed to generate test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    rsa = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *rsa, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=yibao throwaway test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", *rsa, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}",
             cwd=folder)
    san = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
    (folder / "server.ext").write_text(
        f"subjectAltName={san},DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", str(days), "-extfile", "server.ext",
             cwd=folder)
    keystore = folder / "server-keystore.pem"
    keystore.write_text((folder / "server.key").read_text() + (folder / "server.pem").read_text())
    for secret in ("ca.key", "server.key", "server-keystore.pem"):
        (folder / secret).chmod(0o600)
    return Pki(ca_cert=folder / "ca.pem", server_keystore=keystore)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SecuredKafka:
    """A running broker with a SASL_SSL listener; ``settings(user, password)`` connects to it."""

    plaintext_bootstrap: str
    secure_bootstrap: str
    ca_cert: Path
    users: dict[str, str] = field(repr=False)

    def settings(self, username: str, password: str | None = None, **kw: Any) -> Settings:
        return Settings(
            bootstrap_servers=self.secure_bootstrap,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=kw.pop("kafka_sasl_mechanism", "SCRAM-SHA-256"),
            kafka_sasl_username=username,
            kafka_sasl_password=SecretStr(self.users[username] if password is None else password),
            kafka_ssl_cafile=self.ca_cert,
            **kw,
        )


@contextlib.contextmanager
def secured_kafka(folder: Path, users: dict[str, str], *, heap: str = "384m") -> Iterator[SecuredKafka]:
    """Start a throwaway single-node broker in ``folder`` (free ports) with a PLAINTEXT and a
    SASL_SSL listener (SCRAM-SHA-256/512 ``users``, a fresh CA); stop it at the end."""
    base = Settings()
    pki = throwaway_pki(folder / "pki")
    config = BrokerConfig(
        host="127.0.0.1",
        port=free_port(),
        controller_port=free_port(),
        home=folder / "kafka",
        libs=(base.kafka_libs or project_root() / "var" / "kafka" / "libs").resolve(),
        heap=heap,
        secure_port=free_port(),
        tls_keystore=pki.server_keystore,
        scram_users=tuple(users.items()),
    )
    broker = LocalBroker(config)
    broker.up()
    try:
        assert config.secure_bootstrap is not None
        yield SecuredKafka(config.bootstrap, config.secure_bootstrap, pki.ca_cert, dict(users))
    finally:
        broker.down()


def compare_outputs(live: list[dict[str, Any]], expected: list[dict[str, Any]]
                    ) -> tuple[int, int, int]:
    """(missing, duplicated, different) of live output events against file mode's, by
    output event id, every field compared: what the fault campaign and the hostile-input
    test report after each run."""
    from collections import Counter

    ids = Counter(o["event_id"] for o in live)
    want = {o["event_id"]: o for o in expected}
    got = {o["event_id"]: o for o in live}
    missing = sum(1 for k in want if k not in got)
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    different = sum(1 for k, o in got.items() if want.get(k) != o)
    return missing, duplicated, different
