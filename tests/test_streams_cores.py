"""The live pipeline's logic without a broker: partition the spec logs as Kafka would, merge
them in the broker's order, sequence, shard the state by household and fold — and get exactly
the outputs of file mode (`yibao settle`)."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from yibao.rules.dedup import DedupWindow
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.streams.cores import (
    DEDUP_STORE,
    Change,
    DeadLetterAppend,
    LedgerAppend,
    ProcessorCore,
    SequencerCore,
)
from yibao.streams.merge import TP, Record, TimestampMerge
from yibao.streams.publish import route
from yibao.streams.topics import ACCEPTS, INPUTS

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
if not EXAMPLES.exists():
    EXAMPLES = Path("/work/shared/spec/examples")


def _partition(key: bytes | None, n: int) -> int:
    return 0 if key is None else (murmur2(key) & 0x7FFFFFFF) % n


def appended(lines: list[bytes], partitions: int, rng: random.Random | None = None,
             publisher: bytes | None = b"publish-1") -> list[Record]:
    """The lines as the broker appends them for one producer: routed and keyed as
    ``yibao publish`` does, numbered (headers) unless ``publisher`` is None, and stamped with
    append times the way a producer's batches land — with ``rng``, the batches of each window
    of 40 lines reach their partitions in a random order, a few ms apart, so append time
    across partitions is not the file's order (it is within a partition)."""
    offsets: Counter[TP] = Counter()
    last: dict[TP, int] = {}
    out: list[Record] = []
    for seq, raw in enumerate(lines):
        r = route(raw)
        tp = TP(r.topic, _partition(r.key, partitions))
        window = seq // 40 * 10
        ts = window + (rng.randrange(0, 12) if rng is not None else 0)
        ts = max(ts, last.get(tp, 0))  # one partition: append order, times never go back
        last[tp] = ts
        out.append(Record(tp, offsets[tp], ts, seq if publisher else 0, r.key, raw,
                          publisher=publisher))
        offsets[tp] += 1
    return out


def live_outputs(lines: list[bytes], partitions: int = 8, ledger_partitions: int = 8,
                 rng: random.Random | None = None, publisher: bytes | None = b"publish-1",
                 ) -> tuple[list[tuple[str, str]], dict[str, list[str]], int]:
    """Simulate publish → sequencer → ledger → processor; return (caused_by, type) pairs,
    the per-household caused_by order, and the dead-letter count."""
    merge = TimestampMerge()
    tps = {TP(t, p) for t in INPUTS for p in range(partitions)}
    merge.assign(tps)
    for rec in appended(lines, partitions, rng, publisher):
        merge.add(rec)
    for tp in tps:
        merge.set_caught_up(tp, True)
    seq_core = SequencerCore(accepts=ACCEPTS, partitions=partitions)
    for p in range(partitions):
        seq_core.assign(p)
    proc = ProcessorCore(Engine(load_policy(None)))
    for p in range(ledger_partitions):
        proc.assign(p)
    pairs: list[tuple[str, str]] = []
    order: dict[str, list[str]] = defaultdict(list)
    dead = 0
    changes: list[Change] = []
    for rec in merge.pop_ready(0.0):
        out = seq_core.process(rec, changes)
        if isinstance(out, DeadLetterAppend):
            dead += 1
        elif isinstance(out, LedgerAppend):
            lp = _partition(out.key, ledger_partitions)
            for _ts, old in out.replays:
                assert proc.apply(lp, out.key, old, replay=True) == []
            for o in proc.apply(lp, out.key, out.value):
                pairs.append((o.caused_by, type(o).__name__))
                order[out.key.decode()].append(o.event_id)
    assert merge.buffered() == 0
    return pairs, order, dead


def file_outputs(lines: list[bytes]) -> list[tuple[str, str]]:
    fold = Fold(Engine(load_policy(None)))
    pairs = []
    for res in fold.run(lines):
        if isinstance(res, list):
            pairs.extend((o.caused_by, type(o).__name__) for o in res)
    return pairs


def _lines(name: str) -> list[bytes]:
    return [ln for ln in (EXAMPLES / f"{name}-events.jsonl").read_bytes().splitlines() if ln]


def _by_time(*logs: list[bytes]) -> list[bytes]:
    import heapq
    import json

    return list(heapq.merge(*logs, key=lambda x: dt.datetime.fromisoformat(
        json.loads(x)["occurred_at"])))


@pytest.mark.parametrize(("name", "partitions", "shuffled"),
                         [("worked", 8, False), ("sample", 8, False), ("both", 2, True),
                          ("both", 4, True), ("both", 8, True), ("sample", 8, True)])
def test_sharded_pipeline_matches_file_mode(name: str, partitions: int, shuffled: bool) -> None:
    """Numbered by ``yibao publish``, the log applies in the file's order, even when the
    producer's batches reach their partitions out of order (``shuffled``)."""
    # "both": one log in event-time order, the worked example inside the sample's two years
    both = name == "both"
    lines = _by_time(_lines("worked"), _lines("sample")) if both else _lines(name)
    rng = random.Random(partitions) if shuffled else None
    live, order, _ = live_outputs(lines, partitions, partitions, rng)
    expected = file_outputs(lines)
    assert Counter(live) == Counter(expected)
    # per household, the outputs come in file order
    position = {eid: i for i, (eid, _) in enumerate(expected)}
    for hh, eids in order.items():
        idx = [position[e.split("/")[0]] for e in eids]
        assert idx == sorted(idx), hh


def test_without_the_numbering_out_of_order_batches_reorder_a_household() -> None:
    """The same shuffled appends from a producer that numbers nothing: append time alone
    puts some of a household's events out of the file's order (what the numbering of
    ``yibao publish`` is for), yet a person's events on one topic stay in partition order."""
    lines = _by_time(_lines("worked"), _lines("sample"))
    merge = TimestampMerge()
    tps = {TP(t, p) for t in INPUTS for p in range(8)}
    merge.assign(tps)
    records = appended(lines, 8, random.Random(8), publisher=None)
    for rec in records:
        merge.add(rec)
    for tp in tps:
        merge.set_caught_up(tp, True)
    released = merge.pop_ready(0.0)
    index = {id(r): i for i, r in enumerate(records)}
    file_order = [index[id(r)] for r in released]
    assert file_order != sorted(file_order)
    per_tp: dict[TP, list[int]] = defaultdict(list)
    for r in released:
        per_tp[r.tp].append(r.offset)
    assert all(offs == sorted(offs) for offs in per_tp.values())


def test_a_persons_state_does_not_depend_on_the_producers_partitioner() -> None:
    """librdkafka hashes keys with CRC32 by default, aiokafka and Java with murmur2: the
    registration and the care events of one person reach different partition numbers. The
    sequencer keys its state by the person, so the checkout still finds the household."""
    import json

    from yibao.dev.events import closed, opened, registered

    events = [registered("P-CRC", "H-CRC"), opened("P-CRC", "V-1"), closed("P-CRC", "V-1")]
    home = _partition(b"P-CRC", 4)
    seq = SequencerCore(accepts=ACCEPTS, partitions=4)
    for p in range(4):
        seq.assign(p)
    changes: list[Change] = []
    reg = seq.process(Record(TP("registrations", home), 0, 0, 0, b"P-CRC",
                             json.dumps(events[0]).encode()), changes)
    other = (home + 1) % 4
    outs = [seq.process(Record(TP("care", other), i, 0, 0, b"P-CRC", json.dumps(e).encode()),
                        changes) for i, e in enumerate(events[1:])]
    assert isinstance(reg, LedgerAppend) and reg.key == b"H-CRC"
    assert all(isinstance(o, LedgerAppend) and o.key == b"H-CRC" for o in outs)
    assert seq.books[home].read == 1 and seq.books[other].read == 2  # books: by input partition
    assert {p for store, p, _k, _v in changes if store != "counts"} == {home}


def test_an_event_on_a_topic_that_does_not_accept_its_type_is_dead_lettered() -> None:
    """A hospital credential writes ``care``: its PersonalAccountCredited (a bureau event)
    is dead-lettered, naming topic and type, and credits nothing; on ``registrations`` the
    same bytes apply."""
    import json

    from yibao.dev.events import envelope

    credit = json.dumps(envelope("PersonalAccountCredited", "P-1", "2025-03-01T09:00:00+08:00",
                                 amount_fen=10_000_000)).encode()
    seq = SequencerCore(accepts={f"x.{t}": types for t, types in ACCEPTS.items()})
    seq.assign(0)
    dl = seq.process(Record(TP("x.care", 0), 7, 0, 0, b"P-1", credit), [])
    assert isinstance(dl, DeadLetterAppend)
    body = json.loads(dl.value)
    assert "x.care" in body["error"] and "PersonalAccountCredited" in body["error"]
    assert "x.registrations" in body["error"] and body["path"] == "$.type"
    assert body["origin"] == {"topic": "x.care", "partition": 0, "offset": 7}
    assert seq.books[0].dead_lettered == 1 and "P-1" not in seq.persons[0]
    ok = seq.process(Record(TP("x.registrations", 0), 8, 0, 0, b"P-1", credit), [])
    assert isinstance(ok, LedgerAppend)
    # every type has exactly one home
    assert sorted(t for types in ACCEPTS.values() for t in types) == sorted(
        ["PersonRegistered", "AssistanceStatusChanged", "PersonalAccountCredited",
         "FamilyAidAuthorized", "FamilyAidRevoked", "SpecialDiseaseCertified",
         "CrossRegionFiled", "EnrollmentSuspended", "EnrollmentResumed", "PersonDeceased",
         "CreditLineGranted", "CreditRepaid", "VisitOpened", "PrescriptionIssued",
         "ItemsCharged", "ChargeReversed", "VisitClosed", "VisitRefunded", "PaymentMade",
         "PreSettlementRequested", "AuditFlagReviewed"])
    assert ACCEPTS["reviews"] == {"AuditFlagReviewed"}


def test_malformed_lines_are_dead_lettered_with_origin() -> None:
    good = (EXAMPLES / "worked-events.jsonl").read_bytes().splitlines()
    lines = [good[0], b"not json", b'{"type": "Nope", "person_id": "P1"}', good[1]]
    _, _, dead = live_outputs(lines)
    assert dead == 2
    seq = SequencerCore()
    seq.assign(0)
    rec = Record(TP("x.registrations", 0), 41, 0, 0, None, b'{"type": "VisitOpened"}')
    dl = seq.process(rec, [])
    assert isinstance(dl, DeadLetterAppend)
    doc = Codec().decode_output  # noqa: F841 - the value is plain JSON, not an output event
    import json

    body = json.loads(dl.value)
    assert body["origin"] == {"topic": "x.registrations", "partition": 0, "offset": 41}
    assert "event_id" in body["error"] or "$" in body["error"]
    assert body["raw"] == '{"type": "VisitOpened"}'


def test_dedup_store_window_and_tombstones() -> None:
    store = DedupWindow.of(dt.timedelta(days=30))
    day = 86_400_000
    assert store.add("a", 0) == []
    assert "a" in store
    assert store.add("b", 31 * day) == ["a"]
    assert "a" not in store and "b" in store


def test_sequencer_state_restores_from_its_changes() -> None:
    lines = (EXAMPLES / "worked-events.jsonl").read_bytes().splitlines()
    codec = Codec()
    a = SequencerCore(codec)
    a.assign(0)
    changes: list[Change] = []
    for i, raw in enumerate(lines):
        a.process(Record(TP("t", 0), i, 0, i, None, raw), changes)
    b = SequencerCore(codec)
    for store, p, k, v in changes:
        b.restore(store, p, k, v)
    b.restored(0)
    assert b.persons == a.persons
    assert set(b.dedup[0]._seen) == set(a.dedup[0]._seen)
    assert any(c[0] == DEDUP_STORE for c in changes)
    # the repeated ex-16 is a duplicate after the restore too
    assert b.process(Record(TP("t", 0), 99, 0, 99, None, lines[-1]), []) is None


def _ledger(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(household key, value) of the sample's records, as the sequencer keys them."""
    seq = SequencerCore()
    seq.assign(0)
    out = []
    for i, raw in enumerate(lines):
        rec = seq.process(Record(TP("t", 0), i, 0, i, None, raw), [])
        if isinstance(rec, LedgerAppend):
            out.append((rec.key, rec.value))
    return out


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_processor_restored_mid_stream_from_its_changelogs_continues_identically(
    store: str, tmp_path: Path
) -> None:
    """Settled visits are paged out to the visits store (and its changelog) and paged back
    in for a payment or refund; a core rebuilt from the compacted changelogs half-way gives
    the same outputs as one that never stopped, and file mode's."""
    from yibao.streams.cores import HOUSEHOLDS_STORE, VISITS_STORE
    from yibao.streams.stores import KVStore, MemoryStore, RocksMemory, RocksStore

    memory = RocksMemory(8)

    def factory(tag: str) -> Callable[[int], KVStore]:
        if store == "memory":
            return lambda _p: MemoryStore()
        return lambda p: RocksStore(tmp_path / tag / str(p), memory)

    records = _ledger(_lines("sample"))
    half = len(records) // 2
    engine = Engine(load_policy(None))
    a = ProcessorCore(engine, store_factory=factory("a"))
    a.assign(0)
    compacted: dict[tuple[str, bytes], bytes | None] = {}
    got: list[tuple[str, str]] = []
    for key, value in records[:half]:
        got.extend((o.caused_by, type(o).__name__) for o in a.apply(0, key, value))
    for name, _p, k, v in a.take_changes():
        compacted[(name, k)] = v
    # no household value holds a settled visit; the store holds them
    for persons in a.households[0].values():
        assert all(v.current is None for p in persons.values() for v in p.visits.values())
    assert a.counts.visits_stored > 100
    stored = {k for (name, k), v in compacted.items() if name == VISITS_STORE and v is not None}
    assert stored and all(a.visits[0].get(k) is not None for k in stored)

    b = ProcessorCore(engine, store_factory=factory("b"))
    for (name, k), v in compacted.items():
        if name == HOUSEHOLDS_STORE:
            b.restore(0, k, v)
    b.restore_visits(0, [(k, v) for (name, k), v in compacted.items() if name == VISITS_STORE])
    rest_a: list[tuple[str, str]] = []
    rest_b: list[tuple[str, str]] = []
    for key, value in records[half:]:
        rest_a.extend((o.caused_by, type(o).__name__) for o in a.apply(0, key, value))
        rest_b.extend((o.caused_by, type(o).__name__) for o in b.apply(0, key, value))
    assert rest_a == rest_b
    assert b.counts.visits_loaded > 0  # payments and refunds of settled visits paged them in
    assert Counter(got + rest_b) == Counter(file_outputs(_lines("sample")))
    a.close()
    b.close()
    if store == "rocksdb":
        assert not (tmp_path / "a" / "0").exists()  # a store is a cache: removed on close


def _rec(tp: TP, offset: int, ts: int, seq: int, arrived: float = 0.0) -> Record:
    return Record(tp, offset, ts, seq, None, b"", arrived)


def test_merge_releases_in_event_time_order_and_waits_for_lagging_partitions() -> None:
    a, b = TP("visits", 0), TP("payments", 0)
    m = TimestampMerge(max_wait=0.0)
    m.assign({a, b})
    m.add(_rec(a, 0, 100, 2))
    m.add(_rec(a, 1, 300, 5))
    # b is empty and not caught up (records on the broker not fetched yet): nothing goes
    assert m.pop_ready(0.0) == []
    m.add(_rec(b, 0, 100, 1))  # same instant, published earlier: seq breaks the tie
    m.add(_rec(b, 1, 200, 3))
    out = m.pop_ready(0.0)
    # a's 300 must wait: b could still deliver something earlier
    assert [(r.tp, r.offset) for r in out] == [(b, 0), (a, 0), (b, 1)]
    assert m.first_unreleased() == {a: 1}
    m.set_caught_up(b, True)  # b is at its high watermark: with no wait, a's 300 goes
    assert [(r.tp, r.offset) for r in m.pop_ready(0.0)] == [(a, 1)]


def test_an_idle_partition_vouches_only_for_records_appended_before_its_last_fetch() -> None:
    """The registrations' partition was fetched to its end at 1,000 ms; the consumer then
    held records of it and left it out of the next fetches, while a checkout appended at
    1,005 ms arrived on care. Registrations appended in between could be on the broker, so
    the checkout waits past the merge wait for a newer fetch of that partition, however
    long; a fetch at 1,010 ms showing it still at its end lets the checkout go."""
    reg, care = TP("registrations", 0), TP("care", 0)
    m = TimestampMerge(max_wait=0.02)
    m.assign({reg, care})
    m.set_caught_up(reg, True, polled_at=1_000)
    m.add(_rec(care, 0, 1_005, 0, arrived=10.0))
    assert m.pop_ready(10.0) == []
    assert m.pop_ready(99.0) == []  # no amount of waiting makes an old fetch new
    assert m.next_deadline() == pytest.approx(99.005)
    m.add(_rec(reg, 0, 1_003, 0, arrived=99.0))  # the newer fetch brings a registration
    m.set_caught_up(reg, False, polled_at=1_010)
    assert [(r.tp, r.offset) for r in m.pop_ready(99.0)] == [(reg, 0)]
    m.set_caught_up(reg, True, polled_at=1_010)
    assert [(r.tp, r.offset) for r in m.pop_ready(99.0)] == [(care, 0)]
    # a candidate appended before the idle partition's last fetch only waits the merge wait
    m.add(_rec(care, 1, 1_008, 0, arrived=100.0))
    assert m.pop_ready(100.0) == []
    assert [(r.tp, r.offset) for r in m.pop_ready(100.021)] == [(care, 1)]


def test_merge_wait_holds_a_record_for_an_idle_partition_until_the_deadline() -> None:
    a, b = TP("visits", 0), TP("payments", 0)
    m = TimestampMerge(max_wait=0.02)
    m.assign({a, b})
    m.set_caught_up(b, True)
    m.add(_rec(a, 0, 100, 1, arrived=10.0))
    assert m.pop_ready(10.005) == []
    assert m.next_deadline() == pytest.approx(10.02)
    # a record arriving on the idle partition within the wait, earlier in event time, goes first
    m.add(_rec(b, 0, 50, 0, arrived=10.01))
    assert [(r.tp, r.offset) for r in m.pop_ready(10.01)] == [(b, 0)]
    assert [(r.tp, r.offset) for r in m.pop_ready(10.021)] == [(a, 0)]
    assert m.next_deadline() is None


def test_events_before_registration_are_handed_over_to_the_household() -> None:
    """A newborn treated before being enrolled: the visit is opened under the baby's own id
    (no household yet); after the registration the charges and the checkout go to the
    household, which must know the visit — as file mode does."""
    import json

    from yibao.dev.events import charged, closed, item, opened, registered

    events = [
        registered("P-MOM", "H-1", scheme="employee", balance=50_000),
        opened("P-BABY", "V-1"),
        opened("P-GHOST", "V-9"),  # never registered
        registered("P-BABY", "H-1", scheme="resident", effective_from="2025-01-01"),
        charged("P-BABY", "V-1", [item("L-1", amount=20_000)]),
        closed("P-BABY", "V-1"),
        closed("P-GHOST", "V-9"),
    ]
    lines = [json.dumps(e).encode() for e in events]
    live, _, _ = live_outputs(lines, partitions=4, ledger_partitions=4)
    expected = file_outputs(lines)
    assert Counter(live) == Counter(expected)
    assert (events[5]["event_id"], "ClaimSettled") in live
    assert (events[6]["event_id"], "ClaimRejected") in live


def test_stash_of_a_person_never_registered_expires_with_the_window() -> None:
    import json

    from yibao.dev.events import envelope, opened

    seq = SequencerCore(window=dt.timedelta(days=30))
    seq.assign(0)
    changes: list[Change] = []
    first = opened("P-GHOST", "V-9")
    later = envelope("PersonDeceased", "P-OTHER", "2025-04-15T09:00:00+08:00",
                     date_of_death="2025-04-14")
    for i, e in enumerate((first, later)):
        seq.process(Record(TP("t", 0), i, 0, i, None, json.dumps(e).encode()), changes)
    from yibao.streams.cores import STASH_STORE

    stash_changes = [(k, v) for store, _p, k, v in changes if store == STASH_STORE]
    assert stash_changes[0][0] == b"P-GHOST" and stash_changes[0][1] is not None
    # 45 days later in event time the ghost's stash is dropped (a tombstone)
    assert (b"P-GHOST", None) in stash_changes
    assert "P-GHOST" not in seq.stash[0]


def test_merge_releases_a_publishers_next_record_at_once_and_waits_after_a_gap() -> None:
    """Records numbered without gaps by one publisher: once its seq 1 is out, seq 2 cannot
    be overtaken by anything of that publisher in flight, so it goes without the wait; seq 4
    after a missing 3 waits (3 may be in flight on the idle partition)."""
    a, b = TP("visits", 0), TP("payments", 0)
    pub = b"gateway1"
    m = TimestampMerge(max_wait=0.02)
    m.assign({a, b})
    m.set_caught_up(b, True)
    m.add(Record(a, 0, 100, 1, None, b"", 0.0, pub))
    # first seen of this publisher, not its seq 0 (a restart): waits as before
    assert m.pop_ready(0.001) == []
    assert [r.seq for r in m.pop_ready(0.021)] == [1]
    m.add(Record(a, 1, 110, 2, None, b"", 1.0, pub))
    assert [r.seq for r in m.pop_ready(1.0)] == [2]  # in sequence: no wait
    m.add(Record(a, 2, 120, 4, None, b"", 2.0, pub))
    assert m.pop_ready(2.0) == []  # seq 3 is missing: wait for it
    assert m.pop_ready(2.5) == []  # ...beyond the merge wait: it is in flight
    assert m.next_deadline() == pytest.approx(2.0 + m.hole_wait)
    m.add(Record(b, 0, 115, 3, None, b"", 2.6, pub))
    assert [r.seq for r in m.pop_ready(2.6)] == [3, 4]  # 3 arrived: both go, in order
    other = Record(a, 3, 130, 7, None, b"", 3.0, None)  # no publisher header: waits
    m.add(other)
    assert m.pop_ready(3.0) == [] and m.pop_ready(3.021) == [other]
    assert m.released_at_once == 1  # seq 2 (4 had waited longer than the wait already)


def test_merge_a_publishers_seq_0_goes_at_once() -> None:
    """Numbering starts at 0: a publisher's first record has nothing before it."""
    a, idle = TP("care", 0), TP("care", 1)
    m = TimestampMerge(max_wait=0.02)
    m.assign({a, idle})
    m.set_caught_up(idle, True)
    m.add(Record(a, 0, 100, 0, None, b"", 0.0, b"new"))
    assert [r.seq for r in m.pop_ready(0.0)] == [0]


def test_merge_keeps_a_publishers_order_when_its_batches_land_out_of_order() -> None:
    """The broker stamped seq 5's batch (partition b) before seq 3-4's (partition a): append
    time says 5 first, the publisher's numbering says 3, 4, 5 — the numbering wins. A plain
    record (no header) stamped between them is merged by append time: it goes before 3, as
    the heap's first, once a is known to be behind it."""
    a, b, c = TP("care", 0), TP("care", 1), TP("registrations", 0)
    pub = b"publish1"
    m = TimestampMerge(max_wait=0.02)
    m.assign({a, b, c})
    for tp in (a, b, c):
        m.set_caught_up(tp, True)
    m.add(Record(a, 0, 100, 2, None, b"", 0.0, pub))
    assert [r.seq for r in m.pop_ready(0.03)] == [2]  # first seen: after the wait
    m.add(Record(b, 0, 200, 5, None, b"", 1.0, pub))
    m.add(Record(c, 0, 205, 0, None, b"", 1.0, None))
    assert m.pop_ready(1.0) == []  # 3 and 4 are in flight: 5 waits for them
    m.add(Record(a, 1, 210, 3, None, b"", 1.004, pub))
    m.add(Record(a, 2, 210, 4, None, b"", 1.004, pub))
    out = m.pop_ready(1.004)
    assert [(r.tp, r.seq) for r in out] == [(a, 3), (a, 4), (b, 5)]
    # the plain record: released by append time once the merge wait is over
    assert [r.tp for r in m.pop_ready(1.021)] == [c]
    assert m.buffered_seqs == {} and m.publishers[pub].next == 6


def test_merge_lets_the_record_in_front_of_a_publishers_next_go_first() -> None:
    """seq 2 is buffered behind another producer's record in its partition: that record
    goes first (partition order), then 2, then 3 — even though 3 was stamped earliest."""
    a, b = TP("care", 0), TP("care", 1)
    pub = b"publish1"
    m = TimestampMerge(max_wait=0.0)
    m.assign({a, b})
    m.set_caught_up(a, True)
    m.set_caught_up(b, True)
    m.add(Record(a, 0, 100, 1, None, b"", 0.0, pub))
    m.add(Record(b, 0, 90, 0, None, b"", 0.0, None))
    assert [(r.tp, r.offset) for r in m.pop_ready(0.0)] == [(b, 0), (a, 0)]
    m.add(Record(a, 1, 150, 3, None, b"", 1.0, pub))  # heads the merge by append time
    m.add(Record(b, 1, 160, 0, None, b"", 1.0, None))  # another producer's, in front of 2
    m.add(Record(b, 2, 160, 2, None, b"", 1.0, pub))
    out = m.pop_ready(1.0)
    assert [(r.tp, r.offset) for r in out] == [(b, 1), (b, 2), (a, 1)]


def test_merge_two_publishers_waiting_on_each_other_fall_back_to_append_time() -> None:
    """P's next is behind Q's record, Q's next is behind P's: a cycle no order satisfies;
    append time decides rather than a deadlock."""
    a, b = TP("care", 0), TP("care", 1)
    m = TimestampMerge(max_wait=0.0)
    m.assign({a, b})
    m.set_caught_up(a, True)
    m.set_caught_up(b, True)
    for pub, tp in ((b"P", a), (b"Q", b)):  # both known, next = 1
        m.add(Record(tp, 0, 10, 0, None, b"", 0.0, pub))
    assert len(m.pop_ready(0.0)) == 2
    m.add(Record(a, 1, 100, 2, None, b"", 1.0, b"P"))
    m.add(Record(a, 2, 100, 1, None, b"", 1.0, b"Q"))
    m.add(Record(b, 1, 101, 2, None, b"", 1.0, b"Q"))
    m.add(Record(b, 2, 101, 1, None, b"", 1.0, b"P"))
    out = m.pop_ready(1.0)
    assert len(out) == 4 and (out[0].tp, out[0].offset) == (a, 1)


def test_merge_a_hole_that_outlasts_the_hole_wait_is_given_up() -> None:
    """A publisher that died with a batch unsent: its later record waits ``hole_wait`` for
    the missing one, then goes; the numbering goes on from there."""
    v = TP("care", 0)
    pub = b"publish1"
    m = TimestampMerge(max_wait=0.02, hole_wait=0.5)
    m.assign({v})
    m.set_caught_up(v, True)
    m.add(Record(v, 0, 100, 0, None, b"", 0.0, pub))
    assert [r.seq for r in m.pop_ready(0.0)] == [0]
    m.add(Record(v, 1, 120, 3, None, b"", 1.0, pub))  # 1 and 2 are lost
    assert m.pop_ready(1.49) == []
    assert [r.seq for r in m.pop_ready(1.5)] == [3]
    m.add(Record(v, 2, 130, 4, None, b"", 2.0, pub))
    assert m.pop_ready(2.0) == []  # the hole (1, 2) is still open below 4
    assert [r.seq for r in m.pop_ready(2.5)] == [4]


def test_records_below_the_restored_position_are_never_processed_twice() -> None:
    """aiokafka may hand a partition's first fetch over twice when it is seeked to the
    restored position while that fetch is in flight; the stage drops what is below it."""
    from types import SimpleNamespace

    from yibao.streams.kafka.changelog import (
        Position,
        decode_position,
        encode_position,
        position_key,
    )
    from yibao.streams.runtime import TxnStage

    recs = [SimpleNamespace(offset=o) for o in range(5, 10)]
    assert [r.offset for r in TxnStage.unseen(recs, 7)] == [7, 8, 9]
    assert TxnStage.unseen(recs, 5) is recs
    assert TxnStage.unseen(recs, 10) == []
    assert decode_position(position_key("p-ledger"), encode_position(2**40 + 3)) == \
        Position("p-ledger", 2**40 + 3)
    assert decode_position(position_key("p-ledger"), encode_position(7, 12)) == \
        Position("p-ledger", 7, 12)
    assert len(encode_position(7)) == 8  # the positions written before skips existed
    assert decode_position(b"H0000001", b"{}") is None  # a store key is not a position


def test_a_publisher_hole_that_never_fills_is_skipped_once_and_costs_nothing_after() -> None:
    """A crashed publisher leaves a hole in its numbering; beyond AHEAD_MAX released seqs
    above it, the merge goes on from there. Nothing below ``next`` may stay behind in
    ``ahead``: it used to, and every later overflow walked back to it (a 30 s stall)."""
    from yibao.streams.merge import AHEAD_MAX, PublisherSeq

    pub = PublisherSeq(next=0)
    pub.released(0)
    holes = set(range(1, 200_000, 7))  # records lost for good, all over the numbering
    for seq in range(1, 200_000):
        if seq not in holes:
            pub.released(seq)
        assert not pub.ahead or min(pub.ahead) > pub.next
        assert len(pub.ahead) <= AHEAD_MAX
    assert pub.next >= 200_000 - 7 * AHEAD_MAX


def _scan_pop_ready(m: TimestampMerge, now: float) -> list[Record]:
    """The merge rule written as a plain scan over every partition (the reference): the
    same judgement of each head, without the heap and its stale entries."""
    out: list[Record] = []
    m._wake_at = None
    while True:
        m._empty_caught_up = sum(1 for tp, q in m.queues.items() if not q and m.caught_up[tp])
        if any(not q and not m.caught_up[tp] for tp, q in m.queues.items()):
            return out
        heads = [(q[0].timestamp, q[0].seq, m._index[tp], tp) for tp, q in m.queues.items() if q]
        if not heads:
            return out
        tp = m._choose(min(heads)[3], now)
        if tp is None:
            return out
        head = m.queues[tp].popleft()
        out.append(head)
        if head.publisher is not None:
            m._released(head)


def test_merge_heap_releases_exactly_what_a_scan_of_every_partition_releases() -> None:
    """Random fetches, catch-ups, waits, holes and rebalances over 12 partitions: the heap
    merge (with its stale entries) and the scan release the same records in the same order."""
    import copy
    import random

    rng = random.Random(5)
    released = 0
    tps = [TP(t, p) for t in ("visits", "payments", "registrations") for p in range(4)]
    pubs = [b"a", b"b", None]
    for _trial in range(40):
        m = TimestampMerge(max_wait=0.02, hole_wait=0.1)
        m.assign(set(tps))
        ref = copy.deepcopy(m)
        offsets = dict.fromkeys(tps, 0)
        seqs = {b"a": 0, b"b": 0, None: 0}
        now = 0.0
        for _step in range(300):
            now += rng.choice([0.0, 0.001, 0.005, 0.03])
            op = rng.random()
            if op < 0.55:
                tp = rng.choice(tps)
                pub = rng.choice(pubs)
                seqs[pub] += rng.choice([1, 1, 1, 2])  # sometimes a hole
                rec = Record(tp, offsets[tp], rng.randrange(0, 50) + int(now * 1000), seqs[pub],
                             None, b"", now, pub)
                offsets[tp] += 1
                m.add(rec)
                ref.add(copy.copy(rec))
            elif op < 0.8:
                tp, value = rng.choice(tps), rng.random() < 0.7
                m.set_caught_up(tp, value)
                ref.set_caught_up(tp, value)
            elif op < 0.97:
                got = [(r.tp, r.offset) for r in m.pop_ready(now)]
                assert got == [(r.tp, r.offset) for r in _scan_pop_ready(ref, now)]
                released += len(got)
            else:
                kept = set(rng.sample(tps, rng.randrange(6, len(tps) + 1)))
                m.assign(kept)  # a rebalance drops the others' buffered records...
                ref.assign(kept)
                m.assign(set(tps))  # ...and gives the partitions back, empty
                ref.assign(set(tps))
    assert released > 2000  # the comparison was not vacuous


def test_a_ledger_partition_is_fused_only_once_the_processor_has_read_all_it_was_written() -> None:
    """The safety rule of the fused transaction (yibao.streams.fused): fusing a partition
    whose earlier records the processor has not committed would skip them."""
    from aiokafka import TopicPartition

    from yibao.streams.fused import to_fuse

    tp = [TopicPartition("p-ledger", i) for i in range(4)]
    assigned = set(tp)
    positions = {tp[0]: 120, tp[1]: 99, tp[2]: 500}
    ends = {0: 120, 1: 100, 3: 0}  # partition 2: not written by this sequencer yet
    assert sorted(to_fuse(assigned, set(), positions, ends)) == [tp[0], tp[3]]
    assert to_fuse(assigned, {tp[0]}, positions, ends) == [tp[3]]
    assert to_fuse(assigned - {tp[3]}, {tp[0]}, positions, ends) == []  # not this worker's
    positions[tp[1]] = 100  # the processor committed the last record written
    assert sorted(to_fuse(assigned, set(), positions, ends)) == [tp[0], tp[1], tp[3]]


def test_the_json_schemas_tell_a_gateway_where_each_input_goes() -> None:
    """A gateway team in another language reads the JSON Schemas: each input names its
    topic and key, and that the timestamp and headers do not matter; outputs name none."""
    from yibao.schemas.events import INPUT_TYPES, OUTPUT_TYPES, TOPIC_OF
    from yibao.schemas.jsonschema import schemas

    docs = schemas()
    for t in INPUT_TYPES:
        doc = docs[t.__name__]
        assert doc["x-kafka-topic"] == TOPIC_OF[t.__name__] in INPUTS
        assert doc["x-kafka-key"] == "person_id"
        assert f"topic `{TOPIC_OF[t.__name__]}`" in doc["description"]
        assert "no headers" in doc["description"]
    assert docs["PersonalAccountCredited"]["x-kafka-topic"] == "registrations"
    assert docs["VisitClosed"]["x-kafka-topic"] == "care"
    assert docs["AuditFlagReviewed"]["x-kafka-topic"] == "reviews"
    assert all("x-kafka-topic" not in docs[t.__name__] for t in OUTPUT_TYPES)


def test_merge_ties_in_one_millisecond_go_by_topic_rank_the_same_way_every_run() -> None:
    """LogAppendTime has millisecond resolution: a registration and a care event appended
    in the same millisecond go registration first, whatever order the partitions were
    assigned in (a set's order changes from one process to the next)."""
    care, reg = TP("x.care", 0), TP("x.registrations", 3)
    for order in ([care, reg], [reg, care]):
        m = TimestampMerge(rank={"x.registrations": 0, "x.care": 1})
        m.assign(set(order))
        m.add(Record(care, 0, 500, 0, None, b""))
        m.add(Record(reg, 0, 500, 0, None, b""))
        m.set_caught_up(care, True)
        m.set_caught_up(reg, True)
        assert [r.tp for r in m.pop_ready(0.0)] == [reg, care]
