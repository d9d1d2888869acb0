"""Topic names of the live pipeline, all under ``Settings.topic_prefix``.

The prefix namespaces everything the app creates on the broker — topics, changelogs,
consumer groups, transactional ids — so two deployments or test runs on one broker never
share state.

| topic | key | kept |
|---|---|---|
| registrations (bureau), care (hospitals), reviews (auditors) | person_id | forever |
| ledger | household_id (person_id while unregistered) | forever |
| settlements | household_id | forever |
| audit (tier-B facility flags) | facility_id | forever |
| deadletter | the input's key | forever |
| sequencer-{dedup,persons,counts,stash}-changelog | store key | compacted |
| processor-{households,visits}-changelog | store key | compacted |
| audit-facilities-changelog | store key | compacted |

The input topics (events.md, "Topics and order") are one per *authority*, and their record
timestamps are the broker's (``message.timestamp.type=LogAppendTime``): the sequencer orders
the inputs by what the broker saw, so a producer's clock (an hour ahead, a day behind, a year
off) changes nothing. :func:`create_all` sets that on input topics created before it existed.

Why inputs, ledger and dead letters are kept forever: the ledger's record timestamps are
event times (``occurred_at``), and the broker's time retention (7 days by default) counts from
them, so a backfill of events older than that was deleted by the next retention check (every
5 minutes), read or not; and an input the sequencer has not read yet (a worker down for a
week) must not go either. Purge inputs below the sequencer group's committed offsets
(``kafka-delete-records``) if disk matters: they trail the positions the sequencer commits
with its state by about a second, so what is below them is sequenced.

The same event-time timestamps made the broker roll a new segment whenever the event time in
a partition moved past ``segment.ms`` (7 days) — for the 2.7-year sample, a segment (open
.log file, two index maps, a producer snapshot) every few dozen records, ~20 per partition
per copy — until the broker ran out of file descriptors ("Too many open files") and shut
down its log dir after a dozen benchmark runs. These topics roll by size only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from yibao.schemas.events import TOPIC_OF
from yibao.settings import Settings
from yibao.streams.kafka.admin import create_topics, ensure_topic_config

#: The input topics, one per publishing authority (bureau, hospitals, auditors).
INPUTS = ("registrations", "care", "reviews")
assert set(TOPIC_OF.values()) == set(INPUTS)

#: The input types each input topic accepts (a type elsewhere is dead-lettered).
ACCEPTS: dict[str, frozenset[str]] = {
    topic: frozenset(t for t, where in TOPIC_OF.items() if where == topic) for topic in INPUTS}

# segment.ms: Long.MAX_VALUE, i.e. roll by size only (see above).
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "segment.ms": str(2**63 - 1)}
#: Record timestamps of the inputs are the broker's append time: the merge's order.
BROKER_TIME = {"message.timestamp.type": "LogAppendTime"}
# Compaction only cleans closed segments, and the broker's defaults close one at 1 GB or
# after 7 days: until then a restore reads every change ever written. The soak (2,000
# events/s) restored 5.8 million dedup/persons records in 109 s after a rebalance at 25
# minutes. Small segments and an eager cleaner keep a restore near the live state: the
# dedup window (ids and their tombstones) and one value per person or household.
COMPACTED = {"cleanup.policy": "compact", "segment.bytes": str(32 * 1024 * 1024),
             "segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.2",
             "delete.retention.ms": str(60 * 60 * 1000)}


@dataclass(frozen=True)
class Topics:
    prefix: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(settings.topic_prefix)

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    @property
    def inputs(self) -> list[str]:
        return [self.name(t) for t in INPUTS]

    def input_for_type(self, type_name: str) -> str:
        return self.name(TOPIC_OF[type_name])

    @property
    def accepts(self) -> dict[str, frozenset[str]]:
        """Input topic (full name) -> the type tags it accepts."""
        return {self.name(t): types for t, types in ACCEPTS.items()}

    @property
    def ledger(self) -> str:
        return self.name("ledger")

    @property
    def settlements(self) -> str:
        return self.name("settlements")

    @property
    def audit(self) -> str:
        return self.name("audit")

    @property
    def deadletter(self) -> str:
        return self.name("deadletter")

    def changelog(self, stage: str, store: str) -> str:
        return self.name(f"{stage}-{store}-changelog")

    def group(self, stage: str) -> str:
        return self.name(stage)

    @property
    def changelogs(self) -> list[str]:
        return [
            self.changelog("sequencer", "dedup"),
            self.changelog("sequencer", "persons"),
            self.changelog("sequencer", "counts"),
            self.changelog("sequencer", "stash"),
            self.changelog("processor", "households"),
            self.changelog("processor", "visits"),
            self.changelog("audit", "facilities"),
        ]


async def create_all(settings: Settings) -> list[str]:
    """Create every topic of the pipeline that doesn't exist yet (idempotent)."""
    t = Topics.of(settings)
    n = settings.partitions
    await create_topics(settings, t.inputs, partitions=n, config={**FOREVER, **BROKER_TIME})
    await ensure_topic_config(settings, t.inputs, BROKER_TIME)
    await create_topics(settings, [t.deadletter, t.ledger, t.settlements, t.audit], partitions=n,
                        config=FOREVER)
    await create_topics(settings, t.changelogs, partitions=n, config=COMPACTED)
    return [*t.inputs, t.ledger, t.settlements, t.audit, t.deadletter, *t.changelogs]


def create_all_sync(settings: Settings) -> list[str]:
    return asyncio.run(create_all(settings))
