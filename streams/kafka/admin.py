"""Topic administration: create the topics that are missing, and wait until they are usable;
bring the configuration of existing ones to what the pipeline needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from yibao.streams.kafka.exceptions import TopicConfigError
from yibao.streams.kafka.options import KafkaTarget, client_options

__all__ = ["create_topics", "ensure_topic_config"]

#: DescribeConfigs' source of a value set on the topic itself (not a broker default).
_DYNAMIC_TOPIC_CONFIG = 1


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


async def ensure_topic_config(bootstrap: KafkaTarget, names: Iterable[str],
                              config: dict[str, str]) -> list[str]:
    """Set ``config`` on every topic of ``names`` whose values differ (topics created before
    a setting existed); return the topics changed.

    AlterConfigs replaces a topic's whole set of its own values, so the values already set on
    the topic (``retention.ms``...) are sent again with the new ones; broker defaults are
    left alone."""
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    changed: list[str] = []
    try:
        for name in names:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name)])
            entries = [e for response in described for resource in response.resources
                       for e in resource[4]]
            current = {e[0]: e[1] for e in entries}
            if all(current.get(k) == v for k, v in config.items()):
                continue
            own = {e[0]: e[1] for e in entries if e[3] == _DYNAMIC_TOPIC_CONFIG and not e[4]}
            responses = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, configs={**own, **config})])
            for response in responses:
                for code, message, *_ in response.resources:
                    if code:
                        raise TopicConfigError(f"setting {config} on topic {name}: "
                                               f"{for_code(code).__name__} {message}")
            changed.append(name)
    finally:
        await admin.close()
    return changed
