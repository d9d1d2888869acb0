"""A stage whose batch outlives its transaction gives up and says so, instead of waiting
for ever on a Kafka client that will not answer (aiokafka's sender task can die during a
broker restart, leaving the transaction's futures unresolved): the worker then exits and
its supervisor starts one that fences it and resumes from the last commit. Its shutdown
does not wait for ever on the stuck clients either."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from yibao.streams import runtime
from yibao.streams.exceptions import StageStalled
from yibao.streams.kafka.clients import StageConfig
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


class _Stuck:
    """A Kafka client whose stop never returns, as aiokafka's consumer did in ``make chaos``
    after a broker restart (its fetcher retrying a request for minutes)."""

    def subscribe(self, topics: object, listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def getmany(self, **options: object) -> dict[object, list[object]]:
        return {}

    async def stop(self) -> None:
        await asyncio.sleep(3600)


class _StalledStage(TxnStage):
    name = "sequencer"

    async def step(self, batch: dict[Any, list[Any]]) -> None:
        await asyncio.sleep(3600)  # a transaction that never completes


def test_a_stalled_stage_stops_even_if_its_clients_never_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "CLOSE_SECONDS", 0.3)

    async def run_stage() -> None:
        stage = _StalledStage(StageConfig(bootstrap="127.0.0.1:9", group_id="g",
                                          transactional_id="t", transaction_timeout_ms=500),
                              ["in"], None)
        stage.consumer = stage.producer = _Stuck()  # type: ignore[assignment]
        await asyncio.wait_for(stage.run(), 30)

    started = time.monotonic()
    with pytest.raises(StageStalled, match="sequencer: a batch took more than 1 s"):
        asyncio.run(run_stage())
    # twice the transaction timeout, then three close steps of at most 0.3 s each
    assert time.monotonic() - started < 5
