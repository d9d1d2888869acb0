"""The gateway's commands, without HTTP: check the caller, validate, publish once, wait.

``submit`` is one command of gateway.md (``events``, ``presettle``, ``settle``,
``refund``): validate with the contract's codec (Invalid names the JSON path), check the
command takes the type, check the role may publish to the type's topic and, for a
hospital, that the visit is one of its facilities' (Forbidden), check the ``event_id`` is
new or the same request again (Conflict if the body differs), publish it to its topic
(key ``person_id``), then wait for the answer up to the timeout. The HTTP layer
(:mod:`yibao.gateway.app`) only maps these to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from yibao.gateway.credentials import Client
from yibao.gateway.exceptions import Conflict, Forbidden, Invalid, NotFound, Unavailable
from yibao.gateway.index import ANSWER_TYPES, ANSWERS, Follower, Index, canonical, sha256
from yibao.logging import get_logger
from yibao.schemas.codec import Codec
from yibao.schemas.events import TOPIC_OF, InputEvent, VisitOpened
from yibao.schemas.exceptions import SchemaError
from yibao.settings import Settings
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import new_publisher_id, order_headers
from yibao.streams.topics import INPUTS, Topics

log = get_logger(__name__)

Command = Literal["events", "presettle", "settle", "refund"]

#: The one type a command other than ``events`` takes.
COMMAND_TYPE: dict[str, str] = {
    "presettle": "PreSettlementRequested",
    "settle": "VisitClosed",
    "refund": "VisitRefunded",
}

Status = Literal["answered", "pending", "published"]


@dataclass(frozen=True)
class Answer:
    """What a command or a lookup returns: ``answered`` (the answer is in ``outputs``),
    ``pending`` (the wait ran out: fetch it later) or ``published`` (a command without an
    answer of its own; an ``EventRejected`` may still follow)."""

    event_id: str
    status: Status
    type: str
    outputs: list[tuple[str, bytes]]  # (type, JSON) of each output, in order
    republished: bool = False  # a retry: nothing new was published

    @property
    def answer(self) -> str | None:
        return _answer_type(self.outputs)

    def body(self) -> bytes:
        """The JSON answer; the outputs are passed through as the pipeline wrote them."""
        head = msgspec.json.encode({"event_id": self.event_id, "status": self.status,
                                    "type": self.type, "answer": self.answer})
        return head[:-1] + b',"outputs":[' + b",".join(o for _t, o in self.outputs) + b"]}"


class Service:
    """One gateway instance: a producer, the index follower and the requests waiting."""

    def __init__(self, settings: Settings, index: Index, *, publish_timeout: float = 5.0
                 ) -> None:
        self.settings = settings
        self.topics = Topics.of(settings)
        self.codec = Codec()
        self.index = index
        self.follower = Follower(settings, index, self.codec)
        self.publish_timeout = publish_timeout
        self.producer: AIOKafkaProducer | None = None
        self._publisher = new_publisher_id()
        self._seq = 0
        self._starting: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background: the gateway serves (503) while the broker is away."""
        self._starting = asyncio.create_task(self._connect(), name="gateway-connect")

    async def _connect(self, follower: bool = True) -> None:
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(**client_options(self.settings), acks="all",
                                        enable_idempotence=True, linger_ms=1,
                                        request_timeout_ms=int(self.publish_timeout * 1000))
            try:
                await producer.start()
                for short in INPUTS:
                    await producer.partitions_for(self.topics.name(short))
                if follower:
                    await self.follower.start(producer.partitions_for)
            except (KafkaError, OSError, LookupError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("gateway.broker_unreachable", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.producer = producer
            log.info("gateway.connected", bootstrap=self.settings.bootstrap_servers)
            return

    def _replace_producer(self, error: BaseException) -> None:
        """A send the producer gave up on (after its own retries; an idempotent producer can
        also be left in a fatal state by a broker restart, and then refuses every later
        send at once): drop it and connect a new one in the background; requests answer
        503 meanwhile."""
        old, self.producer = self.producer, None
        log.warning("gateway.producer_replaced", error=repr(error))
        if self._starting is not None and not self._starting.done():
            return

        async def replace() -> None:
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.stop()
            await self._connect(follower=False)

        self._starting = asyncio.create_task(replace(), name="gateway-reconnect")

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await self.follower.stop()
        if self.producer is not None:
            await self.producer.stop()

    @property
    def ready(self) -> bool:
        return self.producer is not None and self.follower.ready.is_set()

    # -- commands ----------------------------------------------------------------------------

    async def submit(self, client: Client, command: Command, raw: bytes, timeout: float
                     ) -> Answer:
        event = self.decode(raw)
        kind = type(event).__name__
        expected = COMMAND_TYPE.get(command)
        if expected is not None and kind != expected:
            raise Invalid(f"{command} takes a {expected}, not a {kind}", path="$.type")
        self.check_role(client, kind)
        await self.check_facility(client, event)
        if not self.ready:
            raise Unavailable("the broker cannot be reached: nothing was published, retry")
        value = canonical(self.codec, event)
        digest = sha256(value)
        eid = event.event_id
        known = self.index.known_input(eid)
        if known is not None and known.sha256 != digest:
            raise Conflict(f"event_id {eid} was sent before with a different body",
                           path="$.event_id")
        answers = kind in ANSWERS
        fut = self._waiter(eid) if answers else None
        try:
            if known is None:
                await self.publish(event, value, digest)
            return await self._answer(eid, kind, fut, timeout, republished=known is not None)
        finally:
            if fut is not None and not fut.done():
                self.follower.waiters.pop(eid, None)

    async def outcome(self, client: Client, event_id: str, timeout: float) -> Answer:
        """The outputs caused by ``event_id``; NotFound also for another facility's input
        (whether it exists is not the caller's business)."""
        known = self.index.known_input(event_id)
        if known is None and self.ready:
            await self.follower.catch_up(timeout=2.0)
            known = self.index.known_input(event_id)
        if known is None or not client.serves(known.facility_id):
            raise NotFound(f"no input with event_id {event_id} of yours")
        fut = self._waiter(event_id) if timeout > 0 and known.type in ANSWERS else None
        try:
            return await self._answer(event_id, known.type, fut, timeout)
        finally:
            if fut is not None and not fut.done():
                self.follower.waiters.pop(event_id, None)

    # -- steps -------------------------------------------------------------------------------

    def decode(self, raw: bytes) -> InputEvent:
        try:
            return self.codec.decode(raw)
        except SchemaError as exc:
            raise Invalid(str(exc), path=exc.path) from None

    def check_role(self, client: Client, kind: str) -> None:
        topic = TOPIC_OF[kind]
        if not client.may_publish_to(topic):
            raise Forbidden(f"a {client.role} may not publish {kind} (topic {topic})",
                            path="$.type")

    async def check_facility(self, client: Client, event: InputEvent) -> None:
        """A hospital acts only on visits opened at its own facilities (gateway.md)."""
        if client.role != "hospital":
            return
        if isinstance(event, VisitOpened):
            if event.facility_id not in client.facilities:
                raise Forbidden(f"facility_id {event.facility_id} is not one of yours",
                                path="$.facility_id")
            opened_at = self.index.facility_of_visit(event.visit_id)
            if opened_at is not None and opened_at not in client.facilities:
                raise Forbidden(f"visit_id {event.visit_id} was opened at another facility",
                                path="$.visit_id")
            return
        visit_id: str = event.visit_id  # type: ignore[union-attr]  # every care type has one
        facility = self.index.facility_of_visit(visit_id)
        if facility is None and self.ready:  # opened through another instance just now?
            await self.follower.catch_up(timeout=2.0)
            facility = self.index.facility_of_visit(visit_id)
        if facility is None or facility not in client.facilities:
            raise Forbidden(f"visit_id {visit_id} was not opened at your facilities",
                            path="$.visit_id")

    async def publish(self, event: InputEvent, value: bytes, digest: str) -> None:
        """To the type's topic, key ``person_id``, numbered like the SDK (the merge then
        releases it without its wait); indexed here once the broker has it."""
        producer = self.producer
        if producer is None:
            raise Unavailable("the broker cannot be reached: nothing was published, retry")
        kind = type(event).__name__
        seq = self._seq  # taken before any await: concurrent requests never share one
        self._seq += 1
        try:
            fut = await asyncio.wait_for(producer.send(
                self.topics.input_for_type(kind), value, key=event.person_id.encode(),
                headers=order_headers(self._publisher, seq)), self.publish_timeout)
            await asyncio.wait_for(fut, self.publish_timeout)
        except KafkaError as exc:  # the producer has retried what it could already
            self._replace_producer(exc)
            raise Unavailable(f"the broker did not take the event ({type(exc).__name__}); "
                              "retry with the same event_id") from None
        except TimeoutError as exc:
            raise Unavailable(f"the broker did not take the event ({type(exc).__name__}); "
                              "retry with the same event_id") from None
        visit_id = getattr(event, "visit_id", None)
        visits = []
        if isinstance(event, VisitOpened):
            facility: str | None = event.facility_id
            visits.append((event.visit_id, event.facility_id))
        else:
            facility = self.index.facility_of_visit(visit_id) if visit_id else None
        self.index.add_inputs([(event.event_id, digest, kind, facility, visit_id)], visits)

    def _waiter(self, event_id: str) -> asyncio.Future[None]:
        fut = self.follower.waiters.get(event_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self.follower.waiters[event_id] = fut
        return fut

    async def _answer(self, event_id: str, kind: str, fut: asyncio.Future[None] | None,
                      timeout: float, republished: bool = False) -> Answer:
        outputs = self.index.outputs_of(event_id)
        if kind not in ANSWERS:
            return Answer(event_id, "published", kind, outputs, republished)
        if not _answered(outputs) and fut is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            outputs = self.index.outputs_of(event_id)
        status: Status = "answered" if _answered(outputs) else "pending"
        return Answer(event_id, status, kind, outputs, republished)


def _answer_type(outputs: list[tuple[str, bytes]]) -> str | None:
    return next((t for t, _o in outputs if t in ANSWER_TYPES), None)


def _answered(outputs: list[tuple[str, bytes]]) -> bool:
    return _answer_type(outputs) is not None
