"""The tier-B audit stage on the real broker: a settlements log on the `settlements` topic
gives, on `audit`, the flags file mode gives for the same log, also across a SIGKILL of its
worker in the middle."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner
from test_facility_audit import mixed_log

from yibao.cli import main as cli
from yibao.schemas.events import ClaimReversed, ClaimSettled
from yibao.settings import Settings
from yibao.streams.facility_audit import key_partition
from yibao.streams.kafka.options import client_options
from yibao.streams.publish import read_topic
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

pytestmark = pytest.mark.kafka

PARTITIONS = 3


def settlements_log() -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of a log with spikes and group admissions, each record on
    its household's partition (a reversal on its claim's), as the processor writes them."""
    out, part = [], {}
    for r in mixed_log(7):
        if isinstance(r, ClaimSettled):
            part[r.visit_id] = (key_partition(r.household_id, PARTITIONS), r.household_id)
        assert isinstance(r, ClaimSettled | ClaimReversed)
        p, household = part[r.visit_id]
        out.append((p, household.encode(), msgspec.json.encode(r)))
    return out


async def produce(settings: Settings, records: list[tuple[int, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_options(settings))
    await producer.start()
    try:
        for p, key, value in records:
            await producer.send(settings.topic_prefix + "settlements", value, key=key, partition=p)
        await producer.flush()
    finally:
        await producer.stop()


def audit_flags(settings: Settings) -> list[dict[str, object]]:
    return [json.loads(v) for _p, _o, _k, v in
            asyncio.run(read_topic(settings, settings.topic_prefix + "audit"))]


def wait_flags(settings: Settings, count: int, log: Path, timeout: float = 90.0
               ) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    got: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        got = audit_flags(settings)
        if len(got) >= count:
            time.sleep(1.5)
            return audit_flags(settings)
        time.sleep(0.5)
    raise AssertionError(f"{len(got)} of {count} flags; log:\n{log.read_text()[-3000:]}")


def test_live_flags_equal_file_mode_across_a_sigkill(kafka_bootstrap: str, unique_prefix: str,
                                                     tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=unique_prefix,
                        partitions=PARTITIONS)
    asyncio.run(create_all(settings))
    records = settlements_log()
    src = tmp_path / "settlements.jsonl"
    src.write_bytes(b"".join(v + b"\n" for _p, _k, v in records))
    result = CliRunner().invoke(cli, ["audit", "facilities", str(src),
                                      "--partitions", str(PARTITIONS)])
    assert result.exit_code == 0, result.output
    expected = [json.loads(x) for x in result.stdout.splitlines()]
    assert {f["rule"] for f in expected} == {"GROUP_ADMISSION", "FACILITY_DAILY_SPIKE"}

    env = {"YIBAO_STAGES": "audit", "YIBAO_TRANSACTION_TIMEOUT_MS": "6000"}
    log = tmp_path / "worker.log"
    half = len(records) * 3 // 4  # past the first windows that fire
    asyncio.run(produce(settings, records[:half]))
    worker = spawn(settings, worker_id="a", log_file=log, env=env)
    try:
        first = wait_flags(settings, 1, log)
        worker.kill()  # SIGKILL: the state comes back from the changelog
        worker.wait()
        asyncio.run(produce(settings, records[half:]))
        worker = spawn(settings, worker_id="b", log_file=log, env=env)
        live = wait_flags(settings, len(expected), log)
    finally:
        terminate(worker)
    assert first
    key = json.dumps
    assert sorted(map(key, live)) == sorted(map(key, expected))  # once each, as in file mode
