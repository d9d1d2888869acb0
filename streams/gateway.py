"""Gateway SDK for hospital systems: publish events, wait for the settlement of a checkout.

    async with Gateway(settings) as gw:
        await gw.publish(visit_opened)                  # validated first: SchemaError if not
        result = await gw.settle(visit_closed, timeout=5.0)   # ClaimSettled | ClaimRejected

``publish`` validates with the same codec as the sequencer (an event built in Python is
encoded and decoded again, so every rule of events.md applies) and raises
:class:`yibao.schemas.exceptions.SchemaError` naming the field; nothing invalid leaves the
gateway. ``settle`` is request/response over Kafka: it registers interest in the
checkout's ``event_id``, publishes the ``VisitClosed`` and resolves with the first
``ClaimSettled``/``ClaimRejected`` in ``settlements`` whose ``caused_by`` is that id (an
``EventRejected`` too, should the checkout be rejected as an event). The gateway reads
``settlements`` from the end as of its start, with no consumer group, so any number of
gateways can wait side by side.

What goes on the wire is what any gateway in any language sends (events.md, "Topics and
order"): the event's JSON to its authority's topic (``care`` for a hospital's events), key
``person_id``; the timestamp is the broker's. On top of that the SDK numbers its records
(headers ``yibao-publisher``, ``yibao-seq``), which the merge uses for one thing a plain
producer does without: a record whose predecessors have all been applied goes without the
merge wait (``YIBAO_MERGE_WAIT_MS``), so a checkout settles up to that much sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimRejected, ClaimSettled, EventRejected, InputEvent, VisitClosed
from yibao.schemas.exceptions import SchemaError
from yibao.settings import Settings
from yibao.streams.exceptions import NoSuchTopic
from yibao.streams.kafka.clients import start_client
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import new_publisher_id, order_headers
from yibao.streams.topics import INPUTS, Topics

Outcome = ClaimSettled | ClaimRejected | EventRejected

__all__ = ["Gateway", "Outcome", "SchemaError"]


class Gateway:
    def __init__(self, settings: Settings, *, codec: Codec | None = None,
                 linger_ms: int = 0) -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        self.codec = codec or Codec()
        self._producer = AIOKafkaProducer(
            **client_options(settings), acks="all",
            enable_idempotence=True, linger_ms=linger_ms,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0  # the next record's number (from 0, without gaps)
        self._publisher = new_publisher_id()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._producer.start()
        for short in INPUTS:
            await self._producer.partitions_for(self.topics.name(short))
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None,
            enable_auto_commit=False, isolation_level="read_committed",
            fetch_max_wait_ms=5,
        )
        topic = self.topics.settlements
        parts = await self._producer.partitions_for(topic)
        if not parts:
            raise NoSuchTopic(f"no topic {topic}: run `yibao topics create` first")
        await start_client(consumer)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now: nothing published later is missed
            await consumer.position(tp)
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(), name="gateway-settlements")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        await self._producer.stop()
        for fut in self._waiters.values():
            fut.cancel()

    def validate(self, event: InputEvent | bytes | str | dict[str, Any]) -> tuple[
            InputEvent, bytes]:
        """The event as the sequencer will see it, and its bytes; SchemaError if invalid."""
        if isinstance(event, bytes | str):
            raw = event.encode() if isinstance(event, str) else event
        else:  # a Struct built in Python, or a dict: encode, then validate like the sequencer
            raw = self.codec.encode(event)
        return self.codec.decode(raw), raw

    async def publish(self, event: InputEvent | bytes | str | dict[str, Any]) -> InputEvent:
        """Validate, then send to the event's topic (key person_id); return once the broker
        has it (acks=all)."""
        decoded, raw = self.validate(event)
        fut = await self._send(decoded, raw)
        await fut
        return decoded

    async def _send(self, event: InputEvent, raw: bytes) -> asyncio.Future[Any]:
        """To the type's topic, key person_id; the timestamp is the broker's. The number is
        taken before the send awaits anything: concurrent sends sharing one left a gap
        behind them, and the merge held every later record for its hole wait. (A send that
        fails before the producer takes it leaves a gap the merge waits out once.)"""
        seq = self._seq
        self._seq += 1
        return await self._producer.send(
            self.topics.input_for_type(type(event).__name__), raw,
            key=event.person_id.encode(), headers=order_headers(self._publisher, seq),
        )

    async def settle(self, visit_closed: VisitClosed | bytes | str | dict[str, Any], *,
                     timeout: float = 10.0, publish: bool = True) -> Outcome:
        """Publish the checkout (unless ``publish=False``: already sent) and wait for its
        ClaimSettled or ClaimRejected. TimeoutError after ``timeout`` seconds."""
        decoded, raw = self.validate(visit_closed)
        if not isinstance(decoded, VisitClosed):
            raise SchemaError(f"settle() takes a VisitClosed, not {type(decoded).__name__}"
                              " - at `$.type`", "$.type")
        eid = decoded.event_id
        fut = self._waiters.get(eid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[eid] = fut
        try:
            if publish:
                await (await self._send(decoded, raw))
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self._waiters.pop(eid, None)

    async def _read(self) -> None:
        assert self._consumer is not None
        consumer, waiters, codec = self._consumer, self._waiters, self.codec
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            if not waiters:
                continue
            for records in batch.values():
                for r in records:
                    # cheap filter before decoding: only outputs someone waits for
                    cause = _caused_by(r.value)
                    fut = waiters.get(cause) if cause else None
                    if fut is None or fut.done():
                        continue
                    out = codec.decode_output(r.value)
                    if isinstance(out, ClaimSettled | ClaimRejected | EventRejected):
                        fut.set_result(out)


def _caused_by(value: bytes) -> str | None:
    i = value.find(b'"caused_by":')
    if i < 0:
        return None
    start = value.find(b'"', i + 12)
    end = value.find(b'"', start + 1)
    return value[start + 1:end].decode() if start >= 0 and end > start else None
