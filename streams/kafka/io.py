"""Small async helpers around aiokafka: produce records, read them back (and
:func:`~yibao.streams.kafka.admin.create_topics`, re-exported).

Used by the smoke demo (``yibao smoke``), the tests, the bulk publishers (``yibao.streams.publish``,
``yibao.projections.simulate``) and any tool that needs to poke a topic.
Keys and values are bytes (or str, encoded as UTF-8); serialization is the caller's business.
``bootstrap`` is a ``"host:port"`` string (PLAINTEXT) or the ``Settings`` (with their
security options, see :mod:`yibao.streams.kafka.options`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from yibao.streams.kafka.admin import create_topics
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.options import KafkaTarget, client_options

__all__ = ["SendWindow", "as_bytes", "consume", "create_topics", "produce"]

Data = bytes | str | None


def as_bytes(value: Data) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


async def produce(
    bootstrap: KafkaTarget,
    topic: str,
    records: Iterable[tuple[Data, Data]],
    **producer_config: object,
) -> int:
    """Send ``(key, value)`` records to ``topic`` (acks=all) and flush; return how many."""
    producer = AIOKafkaProducer(**client_options(bootstrap), acks="all", **producer_config)
    await start_client(producer)
    n = 0
    try:
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value=as_bytes(value), key=as_bytes(key)))
            n += 1
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


class SendWindow:
    """Sends on one producer, their delivery awaited ``size`` at a time.

    Why a window: awaiting each delivery would wait a broker round trip per record, and
    never awaiting would hold every future of a long input and report a failed delivery
    only at the end; every ``size`` sends the caller waits for all of them (so memory stays
    bounded and an error surfaces within ``size`` records) and ``on_progress`` hears how many
    were delivered. Why here: ``yibao.streams.publish`` (the input topics) and
    ``yibao.projections.simulate`` (the output topics) both bulk-publish this way; ``yibao`` is
    below both packages already, while a home in either would add an import between them.
    """

    def __init__(
        self, producer: AIOKafkaProducer, size: int, on_progress: Callable[[int], None] | None = None
    ) -> None:
        self.producer = producer
        self.size = size
        self.on_progress = on_progress
        self._pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> None:
        self._pending.append(await self.producer.send(topic, value, **kwargs))
        if len(self._pending) >= self.size:
            await self._settle()

    async def drain(self) -> None:
        """Flush first, so the last partial batches go now rather than when their linger ends."""
        await self.producer.flush()
        await self._settle()

    async def _settle(self) -> None:
        await asyncio.gather(*self._pending)
        if self.on_progress is not None:
            self.on_progress(len(self._pending))
        self._pending.clear()


async def consume(
    bootstrap: KafkaTarget,
    topics: str | Sequence[str],
    *,
    until: Callable[[list[ConsumerRecord]], bool] | int,
    timeout: float = 30.0,
    **consumer_config: object,
) -> list[ConsumerRecord]:
    """Read ``topics`` from the beginning (no consumer group) until ``until(records)`` holds
    (or ``until`` records arrived); raise ``TimeoutError`` with what was read otherwise."""
    names = [topics] if isinstance(topics, str) else list(topics)
    done: Callable[[list[ConsumerRecord]], bool]
    if isinstance(until, int):
        count = until
        done = lambda rs: len(rs) >= count  # noqa: E731
    else:
        done = until
    consumer = AIOKafkaConsumer(
        *names,
        **client_options(bootstrap),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **consumer_config,
    )
    await start_client(consumer)
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(records):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"read {len(records)} records from {names} in {timeout}s")
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for part in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
                records.extend(batch[part])
    finally:
        await consumer.stop()
    return records
