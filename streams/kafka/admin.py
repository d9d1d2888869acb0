"""Topic administration: create the topics that are missing, and wait until they are usable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from yibao.streams.kafka.options import KafkaTarget, client_options

__all__ = ["create_topics"]


async def create_topics(
    bootstrap: KafkaTarget,
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    """Create the topics that don't exist yet, and wait until they are usable."""
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        wanted = list(names)
        existing = set(await admin.list_topics())
        new = [
            NewTopic(n, partitions, replication_factor, topic_configs=config or {})
            for n in wanted
            if n not in existing
        ]
        if new:
            response = await admin.create_topics(new)
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"creating topic {name}: {topic_error[2:]}")
        # CreateTopics returns once the controller accepted it; wait for the metadata too.
        deadline = time.monotonic() + 30
        while not set(wanted) <= set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {wanted} not visible after 30s")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
