"""Why the live stages are not faust-streaming ``exactly_once`` agents, as an executable check.

``streams/runtime.py`` says faust picks the transaction of a *send* by the output record's
partition and commits the input offsets in the transaction of the *input* partition. For a
stage whose output lands on another partition number than its input (the sequencer re-keys
person → household), the output and the offset that "consumed" its input then commit in two
different Kafka transactions: a kill between the two commits loses the output or repeats it.

This runs faust's own ``TransactionManager`` (the installed version) with a recording
producer in place of the broker and checks that premise. If an upgrade of faust-streaming
makes it fail, the premise is gone: revisit ``streams/runtime.py`` and
docs/architecture.md, "Why not faust-streaming agents".
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import faust
from faust.types import TP


class RecordingProducer:
    """Stands in for faust's transactional producer: records which transaction each send
    and each offset commit would go to."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, int | None, str | None]] = []
        self.commits: dict[str, dict[TP, int]] = {}

    async def send(self, topic: str, key: Any, value: Any, partition: int | None,
                   timestamp: Any, headers: Any, *, transactional_id: str | None = None) -> None:
        self.sends.append((topic, partition, transactional_id))

    async def commit_transactions(self, by_tid: Any, group_id: str,
                                  start_new_transaction: bool = True) -> None:
        for tid, offsets in by_tid.items():
            self.commits.setdefault(tid, {}).update(offsets)


def test_faust_exactly_once_splits_a_rekeyed_output_from_its_input_offset() -> None:
    async def scenario() -> RecordingProducer:
        app = faust.App("premise", broker="kafka://127.0.0.1:1",
                        processing_guarantee="exactly_once", web_enabled=False)
        source = app.topic("inputs", partitions=8, key_type=bytes, value_type=bytes)

        @app.agent(source)
        async def rekey(stream: Any) -> None:  # pragma: no cover - never started
            async for _ in stream:
                pass

        manager: Any = app.consumer.transactions
        producer = RecordingProducer()
        manager.producer = producer
        # What a started consumer knows after an assignment: the topic group of the source,
        # and that an explicit partition is taken as given (aiokafka driver's key_partition).
        manager.consumer = types.SimpleNamespace(key_partition=lambda topic, key, p: p)
        assignor: Any = app.assignor
        assignor._topic_groups = {"inputs": 0, "ledger": 0}
        # An event read from inputs[2] whose household hashes to ledger partition 5:
        await manager.send("ledger", b"H1", b"{}", 5, None, None)
        await manager.commit({TP("inputs", 2): 101})
        return producer

    producer = asyncio.run(scenario())
    (_, _, output_tid), = producer.sends
    (offset_tid, offsets), = producer.commits.items()
    assert offsets == {TP("inputs", 2): 101}
    assert output_tid == "premise-0-5" and offset_tid == "premise-0-2", (output_tid, offset_tid)
    # The premise: two transactions for one consume → produce step.
    assert output_tid != offset_tid
