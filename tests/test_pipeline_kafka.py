"""The live pipeline on the real broker: `yibao publish` → `yibao worker` (subprocesses) →
`settlements`, compared with `yibao settle` of the same log; crashes (SIGKILL) and scale-out.

Each test has its own topic prefix (app id), so they never share topics, groups, changelogs
or transactional ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from yibao.cli import main as cli
from yibao.settings import Settings
from yibao.streams.publish import publish_lines, read_topic
from yibao.streams.topics import INPUTS, create_all
from yibao.streams.worker import spawn, terminate

pytestmark = pytest.mark.kafka

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
if not EXAMPLES.exists():
    EXAMPLES = Path("/work/shared/spec/examples")

# Publication runs while the worker settles, with the default merge wait: `yibao publish`
# numbers its records, so the file's order holds whatever the skew between topics.
FAST = {"YIBAO_TRANSACTION_TIMEOUT_MS": "6000", "YIBAO_LOG_LEVEL": "info"}


def lines_of(name: str) -> list[bytes]:
    return [ln for ln in (EXAMPLES / f"{name}-events.jsonl").read_bytes().splitlines() if ln]


def settle(lines: Iterable[bytes], tmp: Path) -> list[dict[str, object]]:
    """The reference: `yibao settle` of the log, as parsed JSON lines."""
    src = tmp / f"log-{time.monotonic_ns()}.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["settle", str(src)])
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines() if x.strip()]


def by_time(*logs: list[bytes]) -> list[bytes]:
    """Interleave logs by occurred_at, keeping each log's own order."""
    def ts(line: bytes) -> dt.datetime:
        return dt.datetime.fromisoformat(json.loads(line)["occurred_at"])

    return list(heapq.merge(*logs, key=ts))


def settings_for(bootstrap: str, prefix: str, partitions: int = 4) -> Settings:
    return Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=partitions)


def read(settings: Settings, short: str) -> list[dict[str, object]]:
    recs = asyncio.run(read_topic(settings, settings.topic_prefix + short))
    return [json.loads(v) for _p, _o, _k, v in recs]


def wait_for(settings: Settings, count: int, procs: list[subprocess.Popen[bytes]],
             logs: list[Path], timeout: float) -> list[dict[str, object]]:
    """Read settlements until ``count`` outputs are there, then make sure no more come."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        got = read(settings, "settlements")
        if len(got) >= count:
            time.sleep(1.5)
            return read(settings, "settlements")
        if procs and all(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    tails = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs if log.exists())
    raise AssertionError(f"{len(got)} of {count} settlements after {timeout}s; logs:\n{tails}")


def stopped(log: Path, stage: str) -> list[dict[str, Any]]:
    """The stop records (``<stage>.stopped``) of every run of a stage in a worker's log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{stage}.stopped"' in line:
            out.append(json.loads(line))
    return out


def assert_same_outputs(live: list[dict[str, object]], expected: list[dict[str, object]]
                        ) -> None:
    ids = Counter(o["event_id"] for o in live)
    assert [i for i, n in ids.items() if n > 1] == [], "an output appears twice"
    got = Counter((o["caused_by"], o["type"]) for o in live)
    want = Counter((o["caused_by"], o["type"]) for o in expected)
    assert got == want, (sum((got - want).values()), sum((want - got).values()))
    exact = {o["event_id"]: o for o in expected}
    assert all(exact[o["event_id"]] == o for o in live), "an output differs from file mode"


def publish(settings: Settings, lines: list[bytes], rate: float | None = None) -> None:
    asyncio.run(publish_lines(settings, lines, rate=rate))


def settle_live(settings: Settings, expected: list[dict[str, object]], tmp: Path,
                fuse: bool = True) -> list[dict[str, object]]:
    """One worker over what is published, until file mode's output count; its outputs,
    checked equal to file mode's."""
    log = tmp / "worker.log"
    proc = spawn(settings, worker_id="a", log_file=log,
                 env={**FAST, "YIBAO_FUSE": "1" if fuse else "0"})
    try:
        live = wait_for(settings, len(expected), [proc], [log], timeout=60)
    finally:
        terminate(proc)
    assert_same_outputs(live, expected)
    return live


@pytest.mark.timeout(120)
def test_publish_worker_export_matches_settle(kafka_bootstrap: str, unique_prefix: str,
                                              tmp_path: Path) -> None:
    s = settings_for(kafka_bootstrap, unique_prefix)
    worked, sample = lines_of("worked"), lines_of("sample")
    bad = [b"this is not json", b'{"type": "VisitOpened", "event_id": "bad-1"}',
           b'{"type": "NoSuchEvent", "person_id": "P0000140"}']
    runner = CliRunner()
    env = {"YIBAO_BOOTSTRAP_SERVERS": kafka_bootstrap, "YIBAO_TOPIC_PREFIX": unique_prefix,
           "YIBAO_PARTITIONS": "4"}
    res = runner.invoke(cli, ["topics", "create"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["topics", "create"], env=env)  # idempotent
    assert res.exit_code == 0, res.output
    src = tmp_path / "events.jsonl"
    # one log in event-time order, as the merge expects (the worked example happens in the
    # middle of the sample's two years); malformed lines at the end
    log_lines = [*by_time(worked, sample), *bad]
    src.write_bytes(b"\n".join(log_lines) + b"\n")
    res = runner.invoke(cli, ["publish", str(src)], env=env)
    assert res.exit_code == 0, res.output
    expected = settle(log_lines, tmp_path)
    live = settle_live(s, expected, tmp_path)
    # per household: same order as file mode
    order = {o["event_id"]: i for i, o in enumerate(expected)}
    per_household: dict[str, list[int]] = {}
    for o in live:
        hh = str(o.get("household_id") or o["person_id"])
        per_household.setdefault(hh, []).append(order[str(o["event_id"])])
    for hh, idx in per_household.items():
        if hh.startswith("H"):
            assert idx == sorted(idx), hh
    # dead letters: origin, error, original bytes
    dead = read(s, "deadletter")
    assert sorted(d["raw"] for d in dead) == sorted(b.decode() for b in bad)
    for d in dead:
        assert set(d["origin"]) == {"topic", "partition", "offset"}
        assert d["origin"]["topic"].startswith(unique_prefix) and d["error"]
    # the books balance: read = ledger (applied) + duplicates + dead-lettered
    ledger = asyncio.run(read_topic(s, s.topic_prefix + "ledger"))
    assert len(ledger) == len(worked) + len(sample) - 1 - 143
    # export writes the same thing as JSONL
    out = tmp_path / "settlements.jsonl"
    res = runner.invoke(cli, ["export", "settlements", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert len(out.read_bytes().splitlines()) == len(expected)


def _kill_mid_stream(s: Settings, lines: list[bytes], expected_n: int, tmp_path: Path,
                     worker_ids: list[str], rate: float, kills: list[float],
                     restart: bool = True) -> list[Path]:
    """Publish at ``rate`` while workers run; SIGKILL the first worker at each time in
    ``kills`` (seconds after publication started) and start it again if ``restart``."""
    asyncio.run(create_all(s))
    logs = [tmp_path / f"worker-{w}.log" for w in worker_ids]
    procs = [spawn(s, worker_id=w, log_file=lg, env=FAST) for w, lg in zip(worker_ids, logs,
                                                                         strict=True)]
    try:
        time.sleep(2)
        started = time.monotonic()
        loop_kills = list(kills)

        async def publish_and_kill() -> None:
            task = asyncio.create_task(publish_lines(s, lines, rate=rate))
            while loop_kills:
                at = started + loop_kills.pop(0)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                n = len(await read_topic(s, s.topic_prefix + "settlements"))
                assert n < expected_n, "the kill came too late to be mid-stream"
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait()
                if restart:
                    procs[0] = spawn(s, worker_id=worker_ids[0], log_file=logs[0], env=FAST)
            await task

        asyncio.run(publish_and_kill())
        return logs
    finally:
        _procs.extend(procs)


_procs: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _cleanup_workers() -> Iterable[None]:
    yield
    while _procs:
        terminate(_procs.pop())


@pytest.mark.timeout(150)
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    s = settings_for(kafka_bootstrap, unique_prefix)
    sample = lines_of("sample")
    expected = settle(sample, tmp_path)
    # ~7 s of publication; killed twice while settling, restarted with the same worker id
    logs = _kill_mid_stream(s, sample, len(expected), tmp_path, ["k"], rate=2000,
                            kills=[1.5, 4.0])
    live = wait_for(s, len(expected), _procs, logs, timeout=60)
    assert_same_outputs(live, expected)
    # killed while settling in the sequencer's transactions, restarted from the positions
    # they wrote (offset + records to skip, see Sequencer.attach)
    assert '"sequencer.fused"' in logs[0].read_text()


@pytest.mark.timeout(150)
def test_two_workers_one_killed_outputs_complete_and_exactly_once(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    s = settings_for(kafka_bootstrap, unique_prefix)
    sample = lines_of("sample")
    expected = settle(sample, tmp_path)
    # the killed worker stays dead: the survivor must finish alone
    logs = _kill_mid_stream(s, sample, len(expected), tmp_path, ["x", "y"], rate=2500,
                            kills=[2.0], restart=False)
    survivors = [p for p in _procs if p.poll() is None]
    live = wait_for(s, len(expected), survivors, logs, timeout=60)
    assert_same_outputs(live, expected)


@pytest.mark.timeout(120)
def test_newborn_treated_before_registration_settles_as_in_file_mode(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    """The hand-over at registration on the broker: the baby's visit is opened under the
    baby's own id, the checkout under the household; the ledger repeats the opening under
    the household (header ``yibao-replay``), the books count it, outputs equal file mode."""
    from yibao.dev.events import charged, closed, item, opened, registered
    from yibao.streams.cores import REPLAY_HEADER, SequencerCounts
    from yibao.streams.sequencer import read_books

    s = settings_for(kafka_bootstrap, unique_prefix)
    events = [
        registered("P-MOM", "H-1", scheme="employee", balance=50_000),
        opened("P-BABY", "V-1"),
        registered("P-BABY", "H-1", scheme="resident", effective_from="2025-01-01"),
        charged("P-BABY", "V-1", [item("L-1", amount=20_000)]),
        closed("P-BABY", "V-1"),
    ]
    lines = [json.dumps(e).encode() for e in events]
    expected = settle(lines, tmp_path)
    assert next(o["type"] for o in expected if o["caused_by"] == events[4]["event_id"]) \
        == "ClaimSettled"
    asyncio.run(create_all(s))
    publish(s, lines)
    settle_live(s, expected, tmp_path)

    async def ledger_headers() -> list[tuple[bytes, list[str]]]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(s.topic_prefix + "ledger", p) for p in range(4)]
            c.assign(tps)
            end = await c.end_offsets(tps)
            out: list[tuple[bytes, list[str]]] = []
            todo = [tp for tp in tps if end[tp] > 0]
            while todo:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    out += [(r.value, [k for k, _ in r.headers]) for r in recs]
                todo = [tp for tp in todo if await c.position(tp) < end[tp]]
            return out
        finally:
            await c.stop()

    replays = [v for v, keys in asyncio.run(ledger_headers()) if REPLAY_HEADER in keys]
    assert [json.loads(v)["event_id"] for v in replays] == [events[1]["event_id"]]
    books = SequencerCounts()
    for c in asyncio.run(read_books(s)).values():
        books.add(c)
    assert (books.read, books.sequenced, books.replayed) == (5, 5, 1)
    env = {"YIBAO_BOOTSTRAP_SERVERS": kafka_bootstrap, "YIBAO_TOPIC_PREFIX": unique_prefix,
           "YIBAO_PARTITIONS": "4"}
    res = CliRunner().invoke(cli, ["books"], env=env)
    assert res.exit_code == 0, res.output
    assert "books: read 5 = sequenced 5 + duplicates 0 + dead-lettered 0 (balanced)" in res.output
    assert "1 replayed at registration" in res.output


@pytest.mark.timeout(120)
def test_resumes_at_the_positions_in_its_changelog_not_the_group_offsets(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    """The input positions are committed in the stage's own transaction (changelog), the
    consumer group's offsets are for lag monitoring only: rewound to 0 between two runs,
    they change nothing — no event re-read as a duplicate, no output twice."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from yibao.streams.cores import SequencerCounts
    from yibao.streams.sequencer import read_books
    from yibao.streams.topics import Topics

    s = settings_for(kafka_bootstrap, unique_prefix)
    sample = lines_of("sample")[:3000]
    expected = settle(sample, tmp_path)
    asyncio.run(create_all(s))
    half = len(sample) // 2
    (tmp_path / "first").mkdir()
    first = settle(sample[:half], tmp_path / "first")
    publish(s, sample[:half])
    settle_live(s, first, tmp_path)

    async def rewind_groups() -> None:
        t = Topics.of(s)
        for group, topics in ((t.group("sequencer"), t.inputs), (t.group("processor"),
                                                                  [t.ledger])):
            c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                                 enable_auto_commit=False)
            await c.start()
            try:
                await c._client.force_metadata_update()
                c.assign([TopicPartition(topic, p) for topic in topics for p in range(4)])
                await c.commit({tp: 0 for tp in c.assignment()})
            finally:
                await c.stop()

    asyncio.run(rewind_groups())
    publish(s, sample[half:])
    # this run settles through the ledger (the processor's own transactions)
    settle_live(s, expected, tmp_path, fuse=False)
    assert int(stopped(tmp_path / "worker.log", "sequencer")[-1]["fused_records"]) == 0
    assert int(stopped(tmp_path / "worker.log", "processor")[-1]["batches"]) > 0
    books = SequencerCounts()
    for c in asyncio.run(read_books(s)).values():
        books.add(c)
    ids = [json.loads(ln)["event_id"] for ln in sample]
    assert (books.read, books.duplicates) == (len(sample), len(ids) - len(set(ids)))


@pytest.mark.timeout(150)
def test_a_worker_joining_mid_stream_takes_partitions_from_the_fused_one(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    """Worker x runs alone and settles every ledger partition in its sequencer's
    transactions; y joins while events flow, so the processor partitions (and perhaps the
    sequencer) move: the fused partitions go back to reading the ledger, from the positions
    the sequencer's transactions left. Outputs stay exactly file mode's."""
    s = settings_for(kafka_bootstrap, unique_prefix)
    sample = lines_of("sample")
    expected = settle(sample, tmp_path)
    asyncio.run(create_all(s))
    logs = [tmp_path / "worker-x.log", tmp_path / "worker-y.log"]
    _procs.append(spawn(s, worker_id="x", log_file=logs[0], env=FAST))
    time.sleep(2)

    async def publish_and_join() -> None:
        task = asyncio.create_task(publish_lines(s, sample, rate=2500))
        await asyncio.sleep(2.5)
        n = len(await read_topic(s, s.topic_prefix + "settlements"))
        assert 0 < n < len(expected), "y must join mid-stream"
        _procs.append(spawn(s, worker_id="y", log_file=logs[1], env=FAST))
        await task

    asyncio.run(publish_and_join())
    live = wait_for(s, len(expected), _procs, logs, timeout=60)
    assert_same_outputs(live, expected)
    for p in list(_procs):
        terminate(p)
    x_log = logs[0].read_text()
    assert '"sequencer.fused"' in x_log and '"processor.revoked"' in x_log
    processed = [int(r["records"]) for log in logs for r in stopped(log, "processor")]
    assert sum(processed) > 0, "no partition went back to reading the ledger"



def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stage", ["sequencer", "processor"])
def test_a_zombie_is_fenced_by_the_worker_that_takes_over(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path, stage: str) -> None:
    """Worker x freezes in the middle of one of its ``stage``'s transactions (records on
    the broker, commit not sent: ``YIBAO_FAULT_PAUSE_IN_TRANSACTION``) for longer than its
    session timeout; worker y takes everything over and settles it. x then wakes up as a
    zombie that still believes it owns its partitions and goes on to commit. It must not
    get through: y's sequencer shares x's transactional id (Sequencer.take_over), and y's
    processor finds x's name in the changelog of the partitions x never handed over and
    fences it (Processor.on_assigned); either aborts x's transaction. Unfenced, x's
    transaction would still be open when x woke up (the timeout is longer than the pause),
    its commit would go through, and that batch would be settled twice (with an id per
    worker for the sequencer, 2,714 outputs twice)."""
    s = settings_for(kafka_bootstrap, unique_prefix)
    sample = lines_of("sample")
    expected = settle(sample, tmp_path)
    asyncio.run(create_all(s))
    # the processor's own transactions only run unfused
    env = {**FAST, "YIBAO_TRANSACTION_TIMEOUT_MS": "60000",
           "YIBAO_FUSE": "1" if stage == "sequencer" else "0"}
    logs = [tmp_path / "worker-x.log", tmp_path / "worker-y.log"]
    x = spawn(s, worker_id="x", log_file=logs[0],
              env={**env, "YIBAO_FAULT_PAUSE_IN_TRANSACTION": f"{stage}:40"})
    _procs.append(x)
    time.sleep(2)

    async def publish_freeze_take_over() -> None:
        task = asyncio.create_task(publish_lines(s, sample, rate=2500))
        deadline = time.monotonic() + 30
        while not _stopped(x):
            assert time.monotonic() < deadline, "x never reached the fault"
            await asyncio.sleep(0.1)
        _procs.append(spawn(s, worker_id="y", log_file=logs[1], env=env))
        await task
        # x's session times out after 6 s, then y gets the inputs
        while f'"partitions": {len(INPUTS) * 4}, "restored"' not in logs[1].read_text():
            assert time.monotonic() < deadline + 30, "y did not take over"
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # y sequences what x's open transaction holds, again

    asyncio.run(publish_freeze_take_over())
    x.send_signal(signal.SIGCONT)  # well before x's transaction would time out (60 s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        x.wait(10)  # the zombie's commit: refused (unfenced, it would go through)
    live = wait_for(s, len(expected), [_procs[-1]], logs, timeout=30)
    assert_same_outputs(live, expected)
    assert x.poll() is not None and x.returncode != 0, "the zombie kept running"
    assert "ProducerFenced" in logs[0].read_text()


@pytest.mark.timeout(60)
def test_a_hand_over_still_being_committed_does_not_fence_the_live_owner(
        kafka_bootstrap: str, unique_prefix: str) -> None:
    """The new owner of a processor partition reads the owner record right after the
    rebalance, while the old owner's hand-over (the blanked record) may be committed but not
    yet readable (its markers follow EndTxn by a few ms). It must wait for that, not fence a
    live worker. A dead owner's open transaction never settles: that one is fenced."""
    from aiokafka.errors import ProducerFenced

    from yibao.rules.engine import Engine
    from yibao.rules.policy import load_policy
    from yibao.streams.kafka.clients import StageConfig, make_producer
    from yibao.streams.kafka.fencing import OWNER_KEY
    from yibao.streams.processor import Processor
    from yibao.streams.topics import Topics

    s = settings_for(kafka_bootstrap, unique_prefix, partitions=2)
    topics = Topics.of(s)
    changelog = topics.changelog("processor", "households")

    def cfg(worker: str) -> StageConfig:
        return StageConfig(bootstrap=s, group_id=topics.group("processor"),
                           transactional_id=f"{topics.group('processor')}-{worker}")

    async def owner_record(producer: Any, partition: int, name: str, commit: bool) -> None:
        await producer.begin_transaction()
        await producer.send_and_wait(changelog, name.encode(), key=OWNER_KEY,
                                     partition=partition)
        if commit:
            await producer.commit_transaction()

    async def scenario() -> None:
        await create_all(s)
        old, dead = make_producer(cfg("old")), make_producer(cfg("dead"))
        new = Processor(cfg("new"), topics, Engine(load_policy(None)))
        for p in (old, dead, new.producer):
            await p.start()
        try:
            # partition 0: old owns it, and hands it over in a transaction not yet decided
            await owner_record(old, 0, cfg("old").transactional_id, commit=True)
            await owner_record(old, 0, "", commit=False)
            restoring = asyncio.create_task(new.restore_fencing_stale([0]))
            await asyncio.sleep(0.15)
            await old.commit_transaction()  # fenced by then, this would raise
            _, _, fenced = await restoring
            assert fenced == set()
            # partition 1: dead owns it and died in the middle of a transaction
            await owner_record(dead, 1, cfg("dead").transactional_id, commit=True)
            await owner_record(dead, 1, "", commit=False)
            _, _, fenced = await new.restore_fencing_stale([1])
            assert fenced == {cfg("dead").transactional_id}
            with pytest.raises(ProducerFenced):
                await dead.commit_transaction()
        finally:
            for p in (old, dead, new.producer, new.consumer):
                with contextlib.suppress(Exception):
                    await p.stop()
            new.close()

    asyncio.run(scenario())
