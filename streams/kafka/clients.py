"""The Kafka clients of the live stages: how their consumers and transactional producers are
configured, the assignor that gives every input partition to one worker, and the
short-lived clients of a restore or a fence.

Every client is built with ``**client_options(...)`` (:mod:`yibao.streams.kafka.options`), so
the security settings apply everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.producer import sender as aiokafka_sender

from yibao.logging import get_logger
from yibao.streams.kafka.options import KafkaTarget, client_options

log = get_logger("yibao.streams")


@dataclass(frozen=True)
class StageConfig:
    bootstrap: KafkaTarget  # the Settings (security options), or a PLAINTEXT host:port
    group_id: str
    transactional_id: str
    poll_ms: int = 100
    max_records: int = 5000
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    fetch_max_wait_ms: int = 100


class SingletonAssignor(AbstractPartitionAssignor):
    """Every partition to one member (the smallest member id): a hot-standby singleton.

    The sequencer merges *all* input partitions in the order the broker appended them, which
    is only a total order if one process sees them all; the other workers stand by and take
    over on failure."""

    name = "yibao-singleton"
    version = 0

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        owner = min(members)
        topics: set[str] = set()
        for meta in members.values():
            topics.update(meta.subscription)
        owned: list[tuple[str, list[int]]] = []
        for topic in sorted(topics):
            parts = cluster.partitions_for_topic(topic)
            if parts:
                owned.append((topic, sorted(parts)))
        return {
            m: ConsumerProtocolMemberAssignment(cls.version, owned if m == owner else [], b"")
            for m in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


def make_consumer(cfg: StageConfig, topics: list[str], assignor: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **client_options(cfg.bootstrap),
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        partition_assignment_strategy=(assignor,),
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )


# The first AddPartitionsToTxn after a commit nearly always gets CONCURRENT_TRANSACTIONS: the
# broker answers EndTxn once PrepareCommit is logged and writes the markers afterwards (1-3 ms
# here). aiokafka retries that case after a fixed 20 ms (``sender.BACKOFF_OVERRIDE``, after
# KAFKA-5477), whatever ``retry_backoff_ms`` says, so back-to-back transactions cost 20+ ms
# each. Measured on the local broker, begin → 2 sends → offsets → commit in a loop: p90 22-26 ms
# with 20 ms, 6-10 ms with 2 ms (p50 2-3 ms either way).
TXN_CONCURRENT_BACKOFF_S = 0.002


def make_producer(cfg: StageConfig) -> AIOKafkaProducer:
    aiokafka_sender.BACKOFF_OVERRIDE = TXN_CONCURRENT_BACKOFF_S
    return AIOKafkaProducer(
        **client_options(cfg.bootstrap),
        transactional_id=cfg.transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        max_batch_size=512 * 1024,
        transaction_timeout_ms=cfg.transaction_timeout_ms,
        # other retriable errors (the CONCURRENT_TRANSACTIONS one is TXN_CONCURRENT_BACKOFF_S):
        # the default 100 ms would dominate the latency of a batch.
        retry_backoff_ms=5,
    )


def reader(bootstrap: KafkaTarget, **options: Any) -> AIOKafkaConsumer:
    """A consumer outside any group that never commits: for reads from given offsets."""
    return AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                            enable_auto_commit=False, **options)


_closing: set[asyncio.Future[None]] = set()
_Client = TypeVar("_Client", AIOKafkaConsumer, AIOKafkaProducer)


def stop_later(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a short-lived client (a restore read, a fence) without waiting for it.

    Why: over TLS, closing a connection waits for the broker's close_notify, and now and
    then none comes; the event loop then gives up only after its SSL shutdown timeout,
    30 s. Seen with SASL_SSL: a restore inside a rebalance took 30-60 s, past the session
    timeout, and the group threw the worker out. Whatever such a client was for is done
    when this is called (its records read, its epoch bumped), so nothing waits for it."""
    async def stop() -> None:
        try:
            await client.stop()
        except Exception as e:  # nothing depends on it any more
            log.debug("stop_later.failed", error=repr(e))

    task = asyncio.ensure_future(stop())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def start_client(client: _Client) -> _Client:
    """Start ``client``; one that cannot start (the broker refuses or cannot be reached) is
    stopped before the error goes up, rather than left half-open for the collector."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await client.stop()
        raise
    return client


@contextlib.asynccontextmanager
async def short_lived(client: _Client) -> AsyncIterator[_Client]:
    """Start ``client`` for one read or one fence; :func:`stop_later` it afterwards."""
    await start_client(client)
    try:
        yield client
    finally:
        stop_later(client)
