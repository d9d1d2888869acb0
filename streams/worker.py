"""`yibao worker`: run the sequencer and the settlement processor in one process.

Start as many workers as you like with the same ``YIBAO_TOPIC_PREFIX`` (the app id) and a
distinct ``YIBAO_WORKER_ID`` each: processors share the ledger partitions, one sequencer is
active and the others stand by. SIGTERM/SIGINT stop cleanly; SIGKILL loses nothing (see
:mod:`yibao.streams.runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yibao.collector import GC_THRESHOLDS
from yibao.metrics import serve_metrics
from yibao.rules.dedup import DEFAULT_WINDOW_DAYS
from yibao.rules.engine import Engine
from yibao.rules.policy import load_policy
from yibao.settings import Settings
from yibao.streams.exceptions import StoreError
from yibao.streams.facility_audit import FacilityAudit
from yibao.streams.kafka.clients import StageConfig
from yibao.streams.kafka.options import security_env
from yibao.streams.processor import Processor
from yibao.streams.runtime import TxnStage, log, percentiles
from yibao.streams.sequencer import Sequencer
from yibao.streams.stores import KVStore, RocksMemory, RocksStore, memory_stores
from yibao.streams.topics import Topics, create_all


@dataclass(frozen=True)
class WorkerOptions:
    worker_id: str = "0"
    merge_wait_ms: int = 20
    dedup_window_days: int = DEFAULT_WINDOW_DAYS
    policy_path: str | None = None
    stages: tuple[str, ...] = ("sequencer", "processor")
    create_topics: bool = True
    transaction_timeout_ms: int = 10_000
    store: str = "rocksdb"  # or "memory"
    state_dir: str = "var/state"
    store_cache_mb: int = 64
    fuse: bool = True  # see Sequencer.attach


def build_stages(settings: Settings, opts: WorkerOptions) -> list[TxnStage]:
    topics = Topics.of(settings)
    stages: list[TxnStage] = []
    sequencer: Sequencer | None = None

    def cfg(stage: str) -> StageConfig:
        return StageConfig(
            bootstrap=settings,
            group_id=topics.group(stage),
            # one sequencer (audit stage) is active at a time and they share an id
            # (Sequencer.take_over)
            transactional_id=topics.group(stage) if stage in ("sequencer", "audit")
            else f"{topics.group(stage)}-{opts.worker_id}",
            transaction_timeout_ms=opts.transaction_timeout_ms,
            # The processor long-polls. The sequencer polls every 5 ms: aiokafka keeps one
            # fetch in flight per broker, and a partition left out of a long-polling fetch
            # (its last records were still buffered) is not fetched until that fetch ends, so
            # a long poll widens the skew between partitions that the merge must absorb.
            fetch_max_wait_ms=5 if stage == "sequencer" else 100,
        )

    if "sequencer" in opts.stages:
        sequencer = Sequencer(cfg("sequencer"), topics, max_wait=opts.merge_wait_ms / 1000,
                              window=dt.timedelta(days=opts.dedup_window_days))
        stages.append(sequencer)
    if "processor" in opts.stages:
        processor = Processor(cfg("processor"), topics, Engine(load_policy(opts.policy_path)),
                              store_factory(settings, opts))
        if opts.fuse and sequencer is not None:
            sequencer.attach(processor)
        stages.append(processor)
    if "audit" in opts.stages:
        stages.append(FacilityAudit(cfg("audit"), topics))
    return stages


def store_factory(settings: Settings, opts: WorkerOptions) -> Callable[[int], KVStore]:
    """One store per ledger partition, under a folder of this worker's own (a store is a
    cache of its changelog, rebuilt on assignment, so it never outlives the process)."""
    if opts.store == "memory":
        return memory_stores
    if opts.store != "rocksdb":
        raise StoreError(f"store: unknown kind {opts.store!r} (rocksdb or memory)")
    root = Path(opts.state_dir) / f"{settings.topic_prefix}processor-{opts.worker_id}"
    memory = RocksMemory(opts.store_cache_mb)
    return lambda p: RocksStore(root / f"visits-{p}", memory)


async def run_worker(settings: Settings, opts: WorkerOptions) -> None:
    if opts.create_topics:
        await create_all(settings)
    stages = build_stages(settings, opts)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("worker.stopping")
        for s in stages:
            s.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)
    log.info("worker.start", worker_id=opts.worker_id, prefix=settings.topic_prefix,
             stages=[s.name for s in stages])
    tasks = [asyncio.create_task(s.run(), name=s.name) for s in stages]
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    gc.set_threshold(*GC_THRESHOLDS)
    freezer = asyncio.create_task(freeze_long_lived(), name="gc-freeze")
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in done:
        if t.exception() is not None:
            stop()
            for p in pending:
                p.cancel()
            raise t.exception()  # type: ignore[misc]
    await asyncio.gather(*pending)
    freezer.cancel()
    gc.callbacks.remove(pauses)
    log.info("worker.gc", **pauses.summary())


async def freeze_long_lived(every: float = 1.0, full_every: float = 3600.0) -> None:
    """Keep the state tables out of the cyclic GC's full collections.

    The tables are hundreds of thousands of long-lived objects and a full collection walks
    them all with the event loop stopped: 35-85 ms a time in ``make bench-live``, a dozen
    times a run, each one landing in the latency of the checkouts waiting at that moment
    (the p99). Every second everything alive moves to the permanent generation
    (``gc.freeze``), so full collections only walk what is younger. Frozen objects are still
    freed by reference counting (the state has no reference cycles); once an hour
    everything is unfrozen and collected in full, so a cycle frozen by chance is not kept.
    """
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every)
        if time.monotonic() - last_full >= full_every:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        gc.freeze()


class GcPauses:
    """Durations of the cyclic GC's collections per generation: a full collection walks
    every live object of the state tables with the event loop stopped, so it shows up in
    the tail latency of checkouts; the worker's stop log says how much."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.full: deque[tuple[float, float]] = deque(maxlen=50)  # (s since start, ms)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started = now
        else:
            self.pauses[info["generation"]].append(now - self.started)
            if info["generation"] == 2:
                self.full.append((round(self.started - self.t0, 1),
                                  round((now - self.started) * 1000, 1)))

    def summary(self) -> dict[str, object]:
        return {**{f"gen{g}": {"n": len(xs), "total_ms": round(sum(xs) * 1000, 1),
                               **percentiles(xs)} for g, xs in self.pauses.items()},
                "last_full": list(self.full)}


def main(settings: Settings, opts: WorkerOptions) -> None:
    serve_metrics(settings.metrics_port)
    if settings.profile is None:
        _run(settings, opts)
        return
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(_run, settings, opts)
    finally:
        profiler.dump_stats(settings.profile)


def _run(settings: Settings, opts: WorkerOptions) -> None:
    try:
        import uvloop

        uvloop.run(run_worker(settings, opts))
    except ImportError:  # pragma: no cover
        asyncio.run(run_worker(settings, opts))


def spawn(
    settings: Settings,
    *,
    worker_id: str,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``yibao worker`` in a subprocess configured through ``YIBAO_*`` variables
    (tests, the benchmark)."""
    full = {
        **os.environ,
        "YIBAO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "YIBAO_TOPIC_PREFIX": settings.topic_prefix,
        "YIBAO_PARTITIONS": str(settings.partitions),
        **security_env(settings),
        "YIBAO_WORKER_ID": worker_id,
        "YIBAO_LOG_FORMAT": "json",
        **(env or {}),
    }
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "yibao", "worker"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full, cwd=cwd,
        )


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM (clean stop), SIGKILL after ``timeout``; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
