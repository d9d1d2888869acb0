"""Gateway SDK on the real broker: validate-then-publish, and settle() as request/response."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimSettled, VisitClosed
from yibao.schemas.exceptions import SchemaError
from yibao.settings import Settings
from yibao.streams.gateway import Gateway
from yibao.streams.publish import read_topic
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

pytestmark = pytest.mark.kafka

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
if not EXAMPLES.exists():
    EXAMPLES = Path("/work/shared/spec/examples")


@pytest.mark.timeout(90)
def test_gateway_settles_the_worked_example(kafka_bootstrap: str, unique_prefix: str,
                                           tmp_path: Path) -> None:
    s = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=unique_prefix, partitions=2)
    asyncio.run(create_all(s))
    codec = Codec()
    events = [codec.decode(x) for x in (EXAMPLES / "worked-events.jsonl").read_bytes()
              .splitlines() if x.strip()]
    expected = {
        d["caused_by"]: d for d in map(json.loads, (EXAMPLES / "worked-expected.jsonl")
                                       .read_text().splitlines())
        if d["type"] in ("ClaimSettled", "ClaimRejected")
    }
    proc = spawn(s, worker_id="g", log_file=tmp_path / "worker.log",
                 env={"YIBAO_MERGE_WAIT_MS": "5"})

    async def run() -> dict[str, object]:
        results: dict[str, object] = {}
        async with Gateway(s) as gw:
            bad = {"type": "VisitClosed", "event_id": "x", "schema_version": 1}
            with pytest.raises(SchemaError):
                await gw.publish(bad)
            with pytest.raises(SchemaError, match="visit_id"):
                await gw.publish(b'{"type": "VisitClosed", "event_id": "x", '
                                 b'"schema_version": 1, "occurred_at": '
                                 b'"2025-03-01T09:00:00+08:00", "source": "g", '
                                 b'"person_id": "P", "closed_at": "2025-03-01T09:00:00+08:00"}')
            seen: set[str] = set()
            for e in events:
                if e.event_id in seen:
                    continue  # the repeated checkout: a duplicate has no settlement
                seen.add(e.event_id)
                if isinstance(e, VisitClosed):
                    results[e.event_id] = await gw.settle(e, timeout=30)
                else:
                    await gw.publish(e)
        return results

    try:
        results = asyncio.run(run())
    finally:
        terminate(proc)
    assert set(results) == set(expected)
    for eid, out in results.items():
        assert isinstance(out, ClaimSettled)
        got = json.loads(codec.encode(out))
        assert {k: got[k] for k in expected[eid]} == expected[eid]  # the spec's subset
    # nothing invalid reached the broker
    dead = asyncio.run(read_topic(s, s.topic_prefix + "deadletter"))
    assert dead == []
