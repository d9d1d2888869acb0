"""Hostile input through the live pipeline: malformed and adversarial records produced raw to
the input topics, interleaved with a generated log's valid traffic, then one `yibao worker`.

Checked: every hostile record is in ``deadletter`` with its origin and a reason; the worker
never exits; the valid traffic settles exactly as `yibao settle` settles the valid lines
alone; and the books balance — records read from the inputs = applied (ledger) + duplicates
+ dead-lettered, to the record.

The default suite runs a few hundred hostile records; ``pytest -m chaos`` (or
``make chaos``) runs 10,000.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.dev.testing import compare_outputs
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.schemas.exceptions import SchemaError
from yibao.settings import Settings
from yibao.streams.cores import DEAD_LETTER_RAW_MAX, SequencerCounts
from yibao.streams.publish import (
    new_publisher_id,
    order_headers,
    producer_config,
    read_topic,
    route,
)
from yibao.streams.sequencer import read_books
from yibao.streams.topics import INPUTS, Topics, create_all
from yibao.streams.worker import spawn, terminate

pytestmark = pytest.mark.kafka

HUGE = 900 * 1024  # under the broker's message.max.bytes (1 MB) with the record overhead

Maker = Callable[[random.Random, dict[str, object]], bytes | None]


def _dump(doc: object) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _with(ev: dict[str, object], **changes: object) -> bytes:
    return _dump({**ev, **changes})


def _field(rng: random.Random, ev: dict[str, object]) -> str:
    return rng.choice([k for k in ev if k != "type"])


WRONG_TYPES: list[object] = [None, True, 1, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}]
BAD_NUMBERS: list[object] = [-1, -(2**63), 2**63, 2**64, 10**40, -(10**40), 1e308, -0.0, 0.5]
BAD_IDS = ["", " ", "a" * 65, "P 123", "P\u00001", "../../etc/passwd", "P\u00e9", "\u4eba\u540d",
           "P;DROP TABLE", "%s%s%s", "P\n1", "\ufeffP1", "P1\u200b", "${jndi:ldap://x/a}"]


def invalid_utf8(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    i = raw.index(b'"event_id"') + len(b'"event_id": "')
    return raw[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + raw[i:]


def truncated(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    return raw[:rng.randrange(0, len(raw) - 1)]


def huge(rng: random.Random, ev: dict[str, object]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # an id far over its 64 characters
        return _with(ev, event_id="E" * HUGE)
    if kind == 1:  # an unknown field holding most of a megabyte
        return _with(ev, padding="x" * HUGE)
    if kind == 2:  # raw control bytes: escaping makes a dead letter 6x this
        return b'{"type": "' + b"\x01" * HUGE + b'"}'
    return b"\xff" * HUGE  # invalid UTF-8 all the way: a base64 copy goes in the dead letter


def deep(rng: random.Random, ev: dict[str, object]) -> bytes:
    depth = rng.choice([200, 5_000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return b'{"type": "VisitOpened", "x": ' + opener * depth + b"1" + closer * depth + b"}"


def wrong_type(rng: random.Random, ev: dict[str, object]) -> bytes:
    k = _field(rng, ev)
    bad = [v for v in WRONG_TYPES if type(v) is not type(ev[k]) and not (v is None and ev[k] is None)]
    if k in ("assistance", "special_disease_code", "bank", "cap_fen", "use_personal_account"):
        bad = [v for v in bad if v is not None]
    return _with(ev, **{k: rng.choice(bad)})


def bad_number(rng: random.Random, ev: dict[str, object]) -> bytes:
    ints = [k for k, v in ev.items() if type(v) is int and k not in ("personal_account_fen",)]
    if not ints:
        return _with(ev, schema_version=rng.choice([0, 2, -1, 2**64]))
    k = rng.choice(ints)
    if k == "schema_version":
        return _with(ev, schema_version=rng.choice([0, 2, -1, 2**64, 10**40]))
    if k == "facility_level":
        return _with(ev, facility_level=rng.choice([0, 4, -1, 2**63]))
    return _with(ev, **{k: rng.choice([0, *BAD_NUMBERS])})


def unknown_field(rng: random.Random, ev: dict[str, object]) -> bytes:
    name = rng.choice(["extra", "Event_ID", "__proto__", "constructor", "type2", "", "\u0000",
                       "amount", "is_admin"])
    return _with(ev, **{name: rng.choice([*WRONG_TYPES, "x"])})


def bad_id(rng: random.Random, ev: dict[str, object]) -> bytes:
    k = rng.choice([k for k in ("event_id", "person_id", "source", "visit_id", "household_id",
                                "payment_id", "facility_id") if k in ev])
    return _with(ev, **{k: rng.choice(BAD_IDS)})


def null_bytes(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    where = rng.randrange(len(raw))
    return rng.choice([raw[:where] + b"\x00" + raw[where:], b"\x00" * rng.randrange(1, 64),
                       _with(ev, event_id="E\u0000" + str(ev["event_id"]))])


def not_finite(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    lit = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e999", b"-1e999"])
    return raw.replace(b'"schema_version": 1', b'"schema_version": ' + lit)


def duplicate_keys(rng: random.Random, ev: dict[str, object]) -> bytes:
    raw = _dump(ev)
    k = _field(rng, ev)
    bad = json.dumps(rng.choice([v for v in WRONG_TYPES if type(v) is not type(ev[k])]))
    dup = f'"{k}": {bad}, '.encode()
    return raw[:1] + dup + raw[1:] if rng.random() < 0.5 else raw[:-1] + b", " + dup[:-2] + b"}"


def enormous_int(rng: random.Random, ev: dict[str, object]) -> bytes:
    digits = rng.choice([20, 40, 400, 4000])
    n = ("-" if rng.random() < 0.3 else "") + "9" * digits
    k = rng.choice([k for k, v in ev.items() if type(v) is int] or ["schema_version"])
    return _dump(ev).replace(f'"{k}": {ev.get(k, 1)}'.encode(), f'"{k}": {n}'.encode(), 1)


def bad_time(rng: random.Random, ev: dict[str, object]) -> bytes:
    return _with(ev, occurred_at=rng.choice([
        "2025-03-01T10:00:00", "2025-13-45T10:00:00+08:00", "0000-00-00T00:00:00Z", "yesterday",
        "2025-03-01T25:61:00+08:00", 1740787200, "9999-12-31T23:59:59+99:00", ""]))


def not_an_event(rng: random.Random, ev: dict[str, object]) -> bytes | None:
    return rng.choice([None, b"", b"null", b"[]", b"{}", b"0", b'"VisitOpened"', b"true",
                       b'{"type": "NoSuchEvent"}', b'{"type": null}', b"<xml/>", b"\xef\xbb\xbf{}",
                       b"{" * 3, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
                       _with(ev, type="ClaimSettled"), _with(ev, type="personregistered")])


def missing_field(rng: random.Random, ev: dict[str, object]) -> bytes:
    k = rng.choice([k for k in ("event_id", "schema_version", "occurred_at", "source", "person_id",
                                "type") if k in ev])
    return _dump({x: v for x, v in ev.items() if x != k})


MAKERS: dict[str, Maker] = {
    "invalid_utf8": invalid_utf8, "truncated": truncated, "huge": huge, "deep": deep,
    "wrong_type": wrong_type, "bad_number": bad_number, "unknown_field": unknown_field,
    "bad_id": bad_id, "null_bytes": null_bytes, "not_finite": not_finite,
    "duplicate_keys": duplicate_keys, "enormous_int": enormous_int, "bad_time": bad_time,
    "not_an_event": not_an_event, "missing_field": missing_field,
}


def rejected(codec: Codec, value: bytes | None) -> bool:
    if value is None:
        return True
    try:
        codec.decode(value)
    except SchemaError:
        return True
    return False


def hostile_corpus(n: int, templates: list[dict[str, object]], rng: random.Random,
                   huge_every: int = 1000) -> list[tuple[str, bytes | None]]:
    """``n`` (category, value) records the codec must reject; a huge one every
    ``huge_every`` (they are a megabyte each), the rest spread over the other categories."""
    codec = Codec()
    names = [k for k in MAKERS if k != "huge"]
    out: list[tuple[str, bytes | None]] = []
    while len(out) < n:
        name = "huge" if len(out) % huge_every == huge_every // 2 else names[len(out) % len(names)]
        value = MAKERS[name](rng, rng.choice(templates))
        if rejected(codec, value):  # a mutation can land on something still valid: draw again
            out.append((name, value))
    return out


def test_corpus_is_rejected_by_the_codec_and_covers_every_category() -> None:
    lines = Path(__file__).resolve().parents[2].joinpath("shared/spec/examples/sample-events.jsonl")
    if not lines.exists():
        lines = Path("/work/shared/spec/examples/sample-events.jsonl")
    templates = [json.loads(x) for x in lines.read_bytes().splitlines() if x.strip()]
    corpus = hostile_corpus(600, templates, random.Random(1), huge_every=300)
    codec = Codec()
    assert all(rejected(codec, v) for _c, v in corpus)
    assert set(Counter(c for c, _v in corpus)) == set(MAKERS)
    assert max(len(v or b"") for _c, v in corpus) >= HUGE


# -- through the live pipeline ----------------------------------------------------------------


def _valid_log(tmp: Path, households: int, seed: int) -> list[bytes]:
    path = tmp / f"valid-{households}-{seed}.jsonl"
    generate_to_path(GenerateConfig(households=households, seed=seed, start=dt.date(2025, 3, 1),
                                    end=dt.date(2025, 3, 31), bad_rate=0.0), str(path))
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


async def _produce(settings: Settings, valid: list[bytes], hostile: list[tuple[str, bytes | None]],
                   rng: random.Random) -> dict[tuple[str, int, int], str]:
    """Valid lines as `yibao publish` sends them (numbered: they apply in file order),
    hostile records raw at random places in between (random input topic and key, no headers,
    the producer's clock). Returns hostile (topic, partition, offset) -> category."""
    t = Topics.of(settings)
    cfg = {**producer_config(settings), "max_request_size": 1_040_000, "max_batch_size": 1_040_000}
    producer = AIOKafkaProducer(**cfg)
    await producer.start()
    at = sorted(rng.randrange(len(valid) + 1) for _ in hostile)
    keys = [None, b"", b"P0000001", b"\xff\xfe", b"k" * 300]
    futures: list[tuple[str, asyncio.Future[object]]] = []
    publisher, seq, h = new_publisher_id(), 0, 0
    try:
        for i in range(len(valid) + 1):
            while h < len(hostile) and at[h] == i:
                category, value = hostile[h]
                topic = t.name(rng.choice(INPUTS))
                key = rng.choice(keys)
                if value is None and key is None:  # aiokafka sends no record without either
                    key = b"P0000001"
                futures.append((category, await producer.send(topic, value, key=key)))
                h += 1
            if i < len(valid):
                r = route(valid[i])
                await producer.send(t.name(r.topic), valid[i], key=r.key,
                                    headers=order_headers(publisher, seq))
                seq += 1
        await producer.flush()
        out: dict[tuple[str, int, int], str] = {}
        for category, fut in futures:
            md = await fut
            out[(md.topic, md.partition, md.offset)] = category  # type: ignore[attr-defined]
        return out
    finally:
        await producer.stop()


def _count(settings: Settings, short: str) -> int:
    return len(asyncio.run(read_topic(settings, settings.topic_prefix + short)))


def run_hostile(bootstrap: str, prefix: str, tmp: Path, *, households: int, hostile_n: int,
                seed: int, huge_every: int, timeout: float) -> dict[str, int]:
    rng = random.Random(seed)
    s = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=4)
    valid = _valid_log(tmp, households, seed)
    templates = [json.loads(x) for x in valid[:: max(1, len(valid) // 500)]]
    hostile = hostile_corpus(hostile_n, templates, rng, huge_every=huge_every)
    fold = Fold(Engine(load_policy()))
    expected: list[dict[str, object]] = []
    for line in valid:
        got = fold.feed(line)
        assert isinstance(got, list), got  # the valid traffic is valid
        expected += [json.loads(Codec().encode(o)) for o in got]
    asyncio.run(create_all(s))
    origins = asyncio.run(_produce(s, valid, hostile, rng))
    assert len(origins) == hostile_n
    log = tmp / "worker.log"
    proc = spawn(s, worker_id="h", log_file=log, env={"YIBAO_TRANSACTION_TIMEOUT_MS": "6000"})
    try:
        deadline = time.monotonic() + timeout
        dead: list[tuple[int, int, bytes | None, bytes]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            dead = asyncio.run(read_topic(s, prefix + "deadletter"))
            if len(dead) >= hostile_n and _count(s, "settlements") >= len(expected):
                time.sleep(1.0)
                break
            time.sleep(1.0)
        alive = proc.poll() is None
    finally:
        code = terminate(proc)
    tail = log.read_text(errors="replace")[-3000:]
    assert alive, f"the worker exited ({code}):\n{tail}"
    dead = asyncio.run(read_topic(s, prefix + "deadletter"))
    letters = [json.loads(v) for _p, _o, _k, v in dead]
    got_origins = Counter((d["origin"]["topic"], d["origin"]["partition"], d["origin"]["offset"])
                          for d in letters)
    assert not [o for o, n in got_origins.items() if n > 1], "a record dead-lettered twice"
    missing_dl = {o: c for o, c in origins.items() if o not in got_origins}
    assert not missing_dl, f"{len(missing_dl)} hostile records not dead-lettered: " \
        f"{Counter(missing_dl.values())}"
    assert set(got_origins) == set(origins), "a valid record was dead-lettered"
    assert all(d["error"] and d["path"] for d in letters)
    for d in letters:  # the original bytes (or their first 64 KiB, with size and hash)
        if d.get("raw_truncated"):
            assert d["raw_bytes"] > DEAD_LETTER_RAW_MAX and len(d["raw_sha256"]) == 64
        elif "raw_base64" in d:
            base64.b64decode(d["raw_base64"])
    live = [json.loads(v) for _p, _o, _k, v in asyncio.run(read_topic(s, prefix + "settlements"))]
    missing, duplicated, different = compare_outputs(live, expected)
    assert (missing, duplicated, different) == (0, 0, 0), (missing, duplicated, different)
    # the books: every record read from the inputs is applied, a duplicate, or a dead letter;
    # the sequencer's own committed books (`yibao books`) say the same, and the ledger holds
    # the applied records plus the hand-overs at registration (replays)
    books = SequencerCounts()
    for c in asyncio.run(read_books(s)).values():
        books.add(c)
    read = sum(_count(s, short) for short in INPUTS)
    ledger = _count(s, "ledger")
    counts = {"read": read, "applied": ledger - books.replayed,
              "duplicates": fold.counts.duplicates, "dead_lettered": len(letters),
              "replayed": books.replayed, "hostile": hostile_n, "valid": len(valid),
              "outputs": len(live)}
    assert ledger - books.replayed == fold.counts.applied
    assert read == ledger - books.replayed + fold.counts.duplicates + len(letters), counts
    assert (books.read, books.sequenced, books.duplicates, books.dead_lettered) == (
        read, ledger - books.replayed, fold.counts.duplicates, len(letters)), (books, counts)
    return counts


@pytest.mark.timeout(240)
def test_hostile_input_small(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    counts = run_hostile(kafka_bootstrap, unique_prefix, tmp_path, households=40, hostile_n=300,
                         seed=11, huge_every=150, timeout=150)
    assert counts["dead_lettered"] == 300


@pytest.mark.chaos
@pytest.mark.timeout(1200)
def test_hostile_input_10k(kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    counts = run_hostile(kafka_bootstrap, unique_prefix, tmp_path, households=1200,
                         hostile_n=10_000, seed=12, huge_every=1000, timeout=900)
    print("hostile:", counts)
    assert counts["dead_lettered"] == 10_000
