"""A stage whose batch outlives its transaction gives up and says so, instead of waiting
for ever on a Kafka client that will not answer (aiokafka's sender task can die during a
broker restart, leaving the transaction's futures unresolved): the worker then exits and
its supervisor starts one that fences it and resumes from the last commit."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from yibao.streams.exceptions import StageStalled
from yibao.streams.runtime import TxnStage


def _stage(step_seconds: float) -> Any:
    async def step(batch: object) -> None:
        await asyncio.sleep(step_seconds)

    return SimpleNamespace(name="sequencer", step=step,
                           cfg=SimpleNamespace(transaction_timeout_ms=1000))


def test_a_batch_stuck_past_twice_the_transaction_timeout_stops_the_stage() -> None:
    started = time.monotonic()
    with pytest.raises(StageStalled, match="sequencer: a batch took more than 2 s"):
        asyncio.run(TxnStage.step_within_transaction_life(_stage(3600), {}))
    assert 1.9 < time.monotonic() - started < 10


def test_a_batch_within_the_limit_is_left_alone() -> None:
    asyncio.run(TxnStage.step_within_transaction_life(_stage(0.2), {}))
