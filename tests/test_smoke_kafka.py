"""Smoke tests on a real broker: aiokafka round trip, transactions, and a faust-streaming
worker counting per key — faust-streaming + aiokafka + Kafka 3.9 working together."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from yibao.dev.broker import fetch_metadata
from yibao.dev.smoke import run_smoke
from yibao.dev.testing import consume, produce
from yibao.settings import Settings

pytestmark = pytest.mark.kafka


def test_metadata_lists_the_broker(kafka_bootstrap: str) -> None:
    metadata = fetch_metadata(kafka_bootstrap)
    assert len(metadata.brokers) >= 1
    assert metadata.cluster_id


@pytest.mark.timeout(60)
def test_aiokafka_produce_consume_round_trip(kafka_bootstrap, unique_prefix, kafka_topics) -> None:
    (topic,) = kafka_topics([f"{unique_prefix}roundtrip"], partitions=3)
    sent = [(f"k{i % 4}", f"v{i}") for i in range(40)]

    asyncio.run(produce(kafka_bootstrap, topic, sent))
    got = asyncio.run(consume(kafka_bootstrap, topic, until=len(sent), timeout=30))

    assert sorted((r.key.decode(), r.value.decode()) for r in got) == sorted(sent)
    # Same key -> same partition, in the order sent.
    for key in {k for k, _ in sent}:
        mine = [r for r in got if r.key.decode() == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value.decode() for r in mine] == [v for k, v in sent if k == key]


@pytest.mark.timeout(60)
def test_transactions_on_a_single_node(kafka_bootstrap, unique_prefix, kafka_topics) -> None:
    (topic,) = kafka_topics([f"{unique_prefix}tx"])

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"{unique_prefix}tx-producer"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-1")
                await producer.send_and_wait(topic, b"committed-2")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(topic, b"committed-3")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            async with asyncio.timeout(20):
                while len(values) < 3:
                    batch = await consumer.getmany(timeout_ms=500)
                    values += [r.value for rs in batch.values() for r in rs]
        finally:
            await consumer.stop()
        return values

    assert asyncio.run(scenario()) == [b"committed-1", b"committed-2", b"committed-3"]


@pytest.mark.timeout(120)
def test_faust_worker_counts_per_key(kafka_settings: Settings, unique_prefix: str) -> None:
    result = run_smoke(kafka_settings, events=30, keys=3, prefix=unique_prefix, partitions=2, timeout=90)

    assert result.ok, result.report()
    assert result.final == {"patient-0": 10, "patient-1": 10, "patient-2": 10}
    # One clean worker run emits every running count exactly once, in order.
    assert all(counts == list(range(1, 11)) for counts in result.seen.values())
