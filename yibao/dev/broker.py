"""A local single-node Apache Kafka broker (KRaft, broker + controller in one JVM), no Docker.

The jars come from Maven Central through ``kafka/pom.xml`` (``make setup``) into
``var/kafka/libs``; config, data and logs of the broker on port P live in
``var/kafka/P/``. Used by ``yibao kafka up|down|status``, ``make kafka-up`` and the test
fixture; also ``python -m yibao kafka up|down|status``.

Readiness is a real Kafka request (Metadata) answered with at least one broker, never a sleep.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from yibao.dev.exceptions import BrokerError
from yibao.logging import get_logger
from yibao.settings import Settings

__all__ = [
    "BrokerConfig",
    "BrokerError",
    "BrokerInfo",
    "BrokerStatus",
    "ClusterMetadata",
    "LocalBroker",
    "fetch_metadata",
    "project_root",
]

log = get_logger("yibao.dev.broker")


def project_root() -> Path:
    """The checkout yibao runs from (where ``kafka/pom.xml`` is), else the current directory."""
    here = Path(__file__).resolve().parents[2]
    if (here / "kafka" / "pom.xml").is_file():
        return here
    return Path.cwd()


# --------------------------------------------------------------------------------------------
# A minimal Kafka wire-protocol client: one Metadata (v2) request, enough to prove a broker
# serves requests and to list the brokers of the cluster. No third-party dependency.


@dataclass(frozen=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int


@dataclass(frozen=True)
class ClusterMetadata:
    cluster_id: str | None
    controller_id: int
    brokers: tuple[BrokerInfo, ...]

    def __str__(self) -> str:
        brokers = ", ".join(f"{b.node_id}@{b.host}:{b.port}" for b in self.brokers)
        return f"cluster {self.cluster_id} controller {self.controller_id} brokers [{brokers}]"


_METADATA = 3


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def int16(self) -> int:
        return self._unpack(">h")

    def int32(self) -> int:
        return self._unpack(">i")

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        value = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return value


def fetch_metadata(bootstrap: str, timeout: float = 2.0) -> ClusterMetadata:
    """Send a Kafka Metadata v2 request (no topics) to the first of ``bootstrap``'s servers.

    Raises ``OSError`` (connection refused, timeout...) or ``ConnectionError``.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    client_id = b"yibao-probe"
    correlation_id = int(time.monotonic_ns() & 0x7FFFFFFF)
    header = struct.pack(">hhih", _METADATA, 2, correlation_id, len(client_id)) + client_id
    body = struct.pack(">i", 0)  # topics: empty array -> metadata of no topic, brokers only
    request = header + body
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        r = _Reader(_recv_exact(s, size))
    if r.int32() != correlation_id:
        raise ConnectionError("Kafka answered with a wrong correlation id")
    brokers = []
    for _ in range(r.int32()):
        node_id, b_host, b_port = r.int32(), r.string() or "", r.int32()
        r.string()  # rack
        brokers.append(BrokerInfo(node_id, b_host, b_port))
    cluster_id = r.string()
    controller_id = r.int32()
    return ClusterMetadata(cluster_id, controller_id, tuple(brokers))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the local broker runs; build it with :meth:`from_settings`."""

    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    home: Path = field(default_factory=lambda: project_root() / "var" / "kafka")
    libs: Path = field(default_factory=lambda: project_root() / "var" / "kafka" / "libs")
    heap: str = "2g"
    # An optional second client listener, SASL_SSL with SCRAM-SHA-256/512 (tests of client
    # security; see yibao.dev.testing.secured_kafka). Inter-broker and controller traffic stay on
    # the PLAINTEXT listeners of this single node.
    secure_port: int = 0
    """0: no SASL_SSL listener."""
    tls_keystore: Path | None = None
    """PEM file with the server's private key (PKCS#8, unencrypted) and certificate chain."""
    scram_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """(name, password) SCRAM-SHA-256 and -512 credentials written into the metadata log
    at format time (StorageTool ``--add-scram``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        root = project_root()
        home = settings.kafka_home or root / "var" / "kafka"
        return cls(
            host=settings.kafka_host,
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port or settings.kafka_port + 1,
            home=home.resolve(),
            libs=(settings.kafka_libs or home / "libs").resolve(),
            heap=settings.kafka_heap,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def secure_bootstrap(self) -> str | None:
        """host:port of the SASL_SSL listener, if there is one."""
        return f"{self.host}:{self.secure_port}" if self.secure_port else None

    @property
    def base(self) -> Path:
        """This broker's own folder: one per port, so brokers on other ports don't collide."""
        return self.home / str(self.port)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def logs_dir(self) -> Path:
        return self.base / "logs"

    @property
    def config_file(self) -> Path:
        return self.base / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.base / "log4j.properties"

    @property
    def pid_file(self) -> Path:
        return self.base / "broker.pid"

    @property
    def out_file(self) -> Path:
        return self.logs_dir / "kafka.out"


@dataclass(frozen=True)
class BrokerStatus:
    config: BrokerConfig
    pid: int | None  # our broker's process, if alive
    metadata: ClusterMetadata | None  # a Kafka answering on the port, ours or not
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.metadata is not None and bool(self.metadata.brokers)

    def __str__(self) -> str:
        where = self.config.bootstrap
        if self.ready:
            owner = f"pid {self.pid}" if self.pid else "not started by yibao"
            return f"kafka ready on {where} ({owner}): {self.metadata}"
        if self.pid:
            return f"kafka starting on {where} (pid {self.pid}), not ready: {self.error}"
        return f"kafka not running on {where}"


_SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def _secure_listener(c: BrokerConfig) -> str:
    """SASL_SSL (SCRAM) listener settings, all scoped to it with ``listener.name.sasl_ssl.``."""
    if not c.secure_port:
        return ""
    if c.tls_keystore is None:
        raise BrokerError("a SASL_SSL listener (secure_port) needs tls_keystore, a PEM key + certificate")
    p = "listener.name.sasl_ssl."
    jaas = "".join(f"{p}{m.lower()}.sasl.jaas.config={_SCRAM_JAAS}\n" for m in _SCRAM_MECHANISMS)
    return f"""
# SASL_SSL client listener: TLS with a PEM keystore, SCRAM users from the metadata log.
sasl.enabled.mechanisms={",".join(_SCRAM_MECHANISMS)}
{p}sasl.enabled.mechanisms={",".join(_SCRAM_MECHANISMS)}
{jaas}{p}ssl.keystore.type=PEM
{p}ssl.keystore.location={c.tls_keystore}
{p}ssl.client.auth=none
{p}ssl.enabled.protocols=TLSv1.3,TLSv1.2
"""


def _server_properties(c: BrokerConfig) -> str:
    listeners = f"PLAINTEXT://{c.host}:{c.port},CONTROLLER://{c.host}:{c.controller_port}"
    advertised = f"PLAINTEXT://{c.host}:{c.port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if c.secure_port:
        listeners += f",SASL_SSL://{c.host}:{c.secure_port}"
        advertised += f",SASL_SSL://{c.host}:{c.secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    return f"""\
# Written by yibao.dev.broker for a single-node KRaft dev/test broker. Do not edit: regenerated
# on every `yibao kafka up`.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{c.host}:{c.controller_port}
listeners={listeners}
advertised.listeners={advertised}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map={protocols}
log.dirs={c.data_dir}
{_secure_listener(c)}
# A 2-core box: few threads.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4

# One node: replication factor 1 everywhere, transactions and consumer groups included.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10

# Fast tests: no wait before the first group rebalance; faust needs topic auto-creation.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true

# Retention: Kafka's defaults (7 days), written out for the reader.
log.retention.hours=168
log.retention.check.interval.ms=300000

# Roll segments by size only: yibao's record timestamps are event times, and a time-based roll
# (7 days of *record* time by default) gave every partition of a multi-year log a segment per
# few dozen records, until the broker ran out of file descriptors and shut down. (The
# pipeline's own topics also set segment.ms; this covers test and benchmark topics.)
log.roll.ms=9223372036854775807
"""


def _log4j_properties(c: BrokerConfig) -> str:
    return f"""\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={c.logs_dir / "server.log"}
log4j.appender.file.MaxFileSize=10MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.org.apache.kafka.controller=INFO
"""


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID, URL-safe base64 without padding (22 chars). Not one
    starting with "-" (1 in 64): the storage tool would read it as an option (Kafka's own
    Uuid.randomUuid() skips those too)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our own exited child, so it doesn't linger as a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if stat.rsplit(")", 1)[1].split()[0] != "Z":
        return True
    # A zombie: it may have exited just after the waitpid above; reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return False


def _is_our_broker(pid: int, c: BrokerConfig) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka with this broker's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc (macOS): trust the pid file
    return b"kafka.Kafka" in cmdline and str(c.config_file).encode() in cmdline


class LocalBroker:
    """Start, check and stop the local broker described by ``config``."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config

    # -- helpers ---------------------------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            pid = int(self.config.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and _is_our_broker(pid, self.config):
            return pid
        return None

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
        found = shutil.which("java")
        if found:
            candidates.append(found)
        for java in candidates:
            if os.access(java, os.X_OK):
                return java
        raise BrokerError(
            "`java` not found: the local Kafka broker needs a Java 17+ runtime "
            "(e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME). "
            "Without Java, run Kafka in Docker: `docker compose -f docker-compose.kafka.yml up -d`."
        )

    def _classpath(self) -> str:
        libs = self.config.libs
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"no Kafka jars in {libs}: run `make setup` (or `make kafka-libs`) first")
        return f"{libs}/*"

    def _jvm(self) -> list[str]:
        heap = self.config.heap
        return [
            self._java(),
            f"-Xmx{heap}",
            f"-Xms{min(heap, '256m', key=_mem_bytes)}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.config.log4j_file}",
            f"-Dkafka.logs.dir={self.config.logs_dir}",
            "-cp",
            self._classpath(),
        ]

    def _write_config(self) -> None:
        c = self.config
        for d in (c.base, c.data_dir, c.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        c.config_file.write_text(_server_properties(c))
        c.log4j_file.write_text(_log4j_properties(c))

    def _format(self) -> None:
        c = self.config
        if (c.data_dir / "meta.properties").exists():
            return
        cmd = [
            *self._jvm(),
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "--cluster-id",
            _cluster_id(),
            "--config",
            str(c.config_file),
        ]
        for name, password in c.scram_users:
            for mechanism in _SCRAM_MECHANISMS:
                cmd += ["--add-scram", f'{mechanism}=[name={name},password="{password}"]']
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            output = f"{done.stdout}{done.stderr}"
            for _name, password in c.scram_users:
                output = output.replace(password, "***")
            raise BrokerError(f"formatting {c.data_dir} failed:\n{output}".rstrip())
        log.info("kafka.formatted", data_dir=str(c.data_dir))

    def _tail(self, lines: int = 30) -> str:
        out = []
        for f in (self.config.out_file, self.config.logs_dir / "server.log"):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {f}\n" + "\n".join(text))
        return "\n".join(out)

    # -- API -------------------------------------------------------------------------------

    def status(self, timeout: float = 2.0) -> BrokerStatus:
        pid = self._pid()
        try:
            metadata: ClusterMetadata | None = fetch_metadata(self.config.bootstrap, timeout)
            error = None
        except OSError as e:
            metadata, error = None, str(e) or type(e).__name__
        return BrokerStatus(self.config, pid, metadata, error)

    def wait_ready(self, timeout: float = 90.0, pid: int | None = None) -> BrokerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(timeout=1.0)
            if status.ready:
                return status
            if pid is not None and not _pid_alive(pid):
                raise BrokerError(f"the Kafka broker (pid {pid}) exited during startup.\n{self._tail()}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Kafka on {self.config.bootstrap} not ready after {timeout:.0f}s "
                    f"({status.error}).\n{self._tail()}"
                )
            time.sleep(0.1)

    def up(self, timeout: float = 90.0) -> tuple[BrokerStatus, bool]:
        """Start the broker unless one already answers; return (status, started_by_us)."""
        c = self.config
        pid = self._pid()
        if pid is not None:
            log.info("kafka.already_running", pid=pid, bootstrap=c.bootstrap)
            return self.wait_ready(timeout, pid), False
        existing = self.status(timeout=1.0)
        if existing.ready:
            log.info("kafka.already_answering", bootstrap=c.bootstrap, note="not started by yibao")
            return existing, False
        jvm = self._jvm()  # checks java and the jars before anything else
        for port in (c.port, c.controller_port, *([c.secure_port] if c.secure_port else [])):
            if _port_open(c.host, port):
                raise BrokerError(
                    f"port {c.host}:{port} is taken by something that is not a Kafka broker; "
                    "free it or choose YIBAO_KAFKA_PORT / YIBAO_KAFKA_CONTROLLER_PORT"
                )
        self._write_config()
        started = time.monotonic()
        self._format()
        with c.out_file.open("ab") as out:
            proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(c.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `yibao kafka up`; not hit by the shell's ^C
                cwd=c.base,
            )
        c.pid_file.write_text(f"{proc.pid}\n")
        log.info("kafka.starting", pid=proc.pid, bootstrap=c.bootstrap, logs=str(c.logs_dir))
        try:
            status = self.wait_ready(timeout, proc.pid)
        except BaseException:
            self.down()
            raise
        log.info(
            "kafka.ready",
            pid=proc.pid,
            bootstrap=c.bootstrap,
            startup_seconds=round(time.monotonic() - started, 2),
            cluster_id=status.metadata.cluster_id if status.metadata else None,
        )
        return status, True

    def down(self, timeout: float = 30.0) -> bool:
        """Stop our broker (SIGTERM, then SIGKILL after ``timeout``); True if one was stopped."""
        c = self.config
        pid = self._pid()
        if pid is None:
            c.pid_file.unlink(missing_ok=True)
            if _port_open(c.host, c.port):
                log.warning(
                    "kafka.not_ours",
                    bootstrap=c.bootstrap,
                    note="something answers on the port but yibao did not start it; left alone",
                )
            else:
                log.info("kafka.not_running", bootstrap=c.bootstrap)
            return False
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            log.warning("kafka.kill", pid=pid, after_seconds=timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 10.0)
        deadline = time.monotonic() + 10.0
        while (
            _port_open(c.host, c.port) or _port_open(c.host, c.controller_port)
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        c.pid_file.unlink(missing_ok=True)
        log.info("kafka.stopped", pid=pid, seconds=round(time.monotonic() - started, 2))
        return True

    @staticmethod
    def _wait_exit(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _mem_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = size.strip().lower()
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)
