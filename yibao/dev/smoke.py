"""Smoke path: the smallest faust-streaming app that touches everything yibao relies on.

A worker consumes ``<prefix>smoke.in``, counts events per key in a Table (changelogged to
Kafka) and produces every running count to ``<prefix>smoke.counts`` as
``{"key": ..., "count": n}``. Consumer group and changelog topics are named after the app
id ``<prefix>smoke``, so runs with different ``YIBAO_TOPIC_PREFIX`` never interfere.

Run a worker (settings from ``YIBAO_*``)::

    python -m yibao.dev.smoke worker --without-web -l warning

or the whole round trip (topics, events, worker, check) with ``yibao smoke`` / ``make demo``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from yibao.settings import Settings
from yibao.streams.kafka.io import consume, create_topics, produce
from yibao.streams.kafka.options import security_env, ssl_context

__all__ = ["SmokeResult", "create_app", "in_topic", "out_topic", "run_smoke", "start_worker"]



def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for a faust app (the smoke demo): the same security as
    :func:`client_options`, or None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.kafka_sasl_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )

def in_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}smoke.in"


def out_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}smoke.counts"


def create_app(settings: Settings, *, datadir: str | Path | None = None) -> faust.App:
    """The smoke faust app: count events per key, emit running counts."""
    app = faust.App(
        f"{settings.topic_prefix}smoke",
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(datadir or Path(tempfile.gettempdir()) / "yibao-faust"),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        table_cleanup_interval=3600.0,
    )
    source = app.topic(in_topic(settings), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    sink = app.topic(out_topic(settings), key_type=bytes, value_type=bytes, partitions=settings.partitions)
    counts = app.Table("counts", default=int, partitions=settings.partitions)

    @app.agent(source)
    async def count(stream: faust.StreamT[bytes]) -> None:
        # Not stream.take(): tables can't be written inside take() buffers.
        async for key, _value in stream.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            counts[name] += 1
            payload = json.dumps({"key": name, "count": counts[name]}).encode()
            await sink.send(key=name.encode(), value=payload)

    return app


def start_worker(
    settings: Settings, *, log_file: Path, cwd: Path | None = None, loglevel: str = "warn"
) -> subprocess.Popen[bytes]:
    """Start ``python -m yibao.dev.smoke worker`` in a subprocess configured by ``settings``."""
    env = {
        **os.environ,
        "YIBAO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "YIBAO_TOPIC_PREFIX": settings.topic_prefix,
        "YIBAO_PARTITIONS": str(settings.partitions),
        **security_env(settings),
    }
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "yibao.dev.smoke", "worker", "--without-web", "-l", loglevel],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM (faust shuts down cleanly), SIGKILL after ``timeout``; return the exit code."""
    from yibao.streams.worker import terminate

    return terminate(proc, timeout)


@dataclass
class SmokeResult:
    bootstrap: str
    prefix: str
    expected: dict[str, int]
    seen: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def final(self) -> dict[str, int]:
        return {k: v[-1] for k, v in sorted(self.seen.items())}

    @property
    def ok(self) -> bool:
        # One clean worker run: every key's counts are exactly 1, 2, ..., n.
        return self.error is None and all(
            self.seen.get(k) == list(range(1, n + 1)) for k, n in self.expected.items()
        )

    def report(self) -> str:
        total = sum(self.expected.values())
        head = (
            f"smoke: {total} events over {len(self.expected)} keys -> faust-streaming "
            f"{faust.__version__} worker (app {self.prefix}smoke) on Kafka {self.bootstrap}"
        )
        lines = [head, f"  expected counts: {dict(sorted(self.expected.items()))}"]
        lines.append(f"  counts read back from {self.prefix}smoke.counts: {self.final}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"  {verdict} in {self.seconds:.1f}s" + (f": {self.error}" if self.error else ""))
        return "\n".join(lines)


def run_smoke(
    settings: Settings,
    *,
    events: int = 60,
    keys: int = 4,
    timeout: float = 120.0,
    prefix: str | None = None,
    partitions: int = 2,
    workdir: Path | None = None,
) -> SmokeResult:
    """Create topics, produce ``events`` events over ``keys`` keys, run a worker, check counts.

    Topics are namespaced by ``prefix`` (default: ``<topic_prefix>smoke-<uuid8>-``, a fresh
    namespace per run).
    """
    run_prefix = prefix or f"{settings.topic_prefix}smoke-{uuid.uuid4().hex[:8]}-"
    run = settings.model_copy(update={"topic_prefix": run_prefix, "partitions": partitions})
    keys_list = [f"patient-{i}" for i in range(keys)]
    records = [(keys_list[i % keys], json.dumps({"seq": i}).encode()) for i in range(events)]
    expected = dict(collections.Counter(k for k, _ in records))
    result = SmokeResult(settings.bootstrap_servers, run_prefix, expected)

    proc: subprocess.Popen[bytes] | None = None

    def complete(rs: list[Any]) -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the faust worker exited with code {proc.returncode}")
        latest: dict[str, int] = {}
        for r in rs:
            doc = json.loads(r.value)
            latest[doc["key"]] = doc["count"]
        return all(latest.get(k) == n for k, n in expected.items())

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        bootstrap = run  # the settings: client options with their security
        asyncio.run(create_topics(bootstrap, [in_topic(run), out_topic(run)], partitions=partitions))
        asyncio.run(produce(bootstrap, in_topic(run), records))
        log_file = work / "smoke-worker.log"
        proc = start_worker(run, log_file=log_file, cwd=work)
        try:
            out = asyncio.run(consume(bootstrap, out_topic(run), until=complete, timeout=timeout))
            for r in out:
                doc = json.loads(r.value)
                result.seen.setdefault(doc["key"], []).append(doc["count"])
        except (TimeoutError, RuntimeError) as e:
            result.error = (
                f"{e}; worker exit code {proc.poll()}; log:\n" + log_file.read_text(errors="replace")[-4000:]
            )
        finally:
            stop_worker(proc)
    result.seconds = time.monotonic() - started
    return result


if __name__ == "__main__":  # `python -m yibao.dev.smoke worker ...`
    create_app(Settings()).main()
