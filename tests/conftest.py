"""Shared fixtures. Kafka ones:

- ``kafka_bootstrap`` (session): "host:port" of a real broker — ``YIBAO_BOOTSTRAP_SERVERS`` if
  set, else a testcontainers Kafka if Docker answers, else the local JVM broker (started if
  needed, and stopped at the end only if this session started it). See ``yibao.dev.testing``.
- ``unique_prefix``: a fresh ``t-<uuid8>-`` namespace for topics, app ids and groups.
- ``kafka_settings``: ``Settings`` pointing at that broker, with that prefix and 2 partitions.
- ``kafka_topics``: ``kafka_topics(names, partitions=1)`` creates topics and waits for them.

Tests that use Kafka are marked ``@pytest.mark.kafka``; they get a 120 s pytest-timeout
unless they set their own ``@pytest.mark.timeout``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from yibao.dev import testing
from yibao.settings import Settings

KAFKA_TEST_TIMEOUT = 120


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("kafka") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(KAFKA_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with testing.kafka_for_tests() as bootstrap:
        yield bootstrap
        # Leave a reused broker as we found it: delete this session's topics (best effort).
        try:
            asyncio.run(testing.delete_topics_with_prefixes(bootstrap, testing.ISSUED_PREFIXES))
        except Exception as exc:  # a cleanup failure must not fail the run
            print(f"warning: could not delete the session's test topics: {exc}")
        # and the local stores of workers that were killed (a clean stop removes its own)
        for prefix in testing.ISSUED_PREFIXES:
            for folder in Path("var/state").glob(f"{prefix}*"):
                shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def unique_prefix() -> str:
    return testing.unique_prefix()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique_prefix: str) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=unique_prefix, partitions=2)


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> Callable[..., list[str]]:
    def create(names: Iterable[str], partitions: int = 1) -> list[str]:
        wanted = list(names)
        asyncio.run(testing.create_topics(kafka_bootstrap, wanted, partitions=partitions))
        return wanted

    return create
