"""``yibao generate``: a deterministic, realistic synthetic event log (yibao/generate.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from yibao.clock import UTC8
from yibao.dev.generate import GenerateConfig, GenerateStats, generate

ROOT = Path(__file__).resolve().parents[1]

INPUT_TYPES = {
    "PersonRegistered",
    "AssistanceStatusChanged",
    "PersonalAccountCredited",
    "FamilyAidAuthorized",
    "FamilyAidRevoked",
    "SpecialDiseaseCertified",
    "CrossRegionFiled",
    "EnrollmentSuspended",
    "EnrollmentResumed",
    "PersonDeceased",
    "CreditLineGranted",
    "CreditRepaid",
    "VisitOpened",
    "PrescriptionIssued",
    "ItemsCharged",
    "ChargeReversed",
    "VisitClosed",
    "VisitRefunded",
    "PaymentMade",
}
ENVELOPE = ("type", "event_id", "schema_version", "occurred_at", "source", "person_id")
BAD_RATE = 0.02


def run(cfg: GenerateConfig) -> tuple[bytes, GenerateStats]:
    buf = io.BytesIO()
    stats = generate(cfg, buf)
    return buf.getvalue(), stats


@pytest.fixture(scope="module")
def year_log() -> tuple[list[bytes], GenerateStats]:
    """A moderately sized log: 250 households over 2025 (~24k events, well under a second)."""
    raw, stats = run(GenerateConfig(households=250, seed=11, bad_rate=BAD_RATE))
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    return lines[:-1], stats


@pytest.fixture(scope="module")
def good_events(year_log: tuple[list[bytes], GenerateStats]) -> list[dict[str, Any]]:
    lines, stats = year_log
    bad = set(stats.bad_lines)
    return [json.loads(line) for i, line in enumerate(lines) if i not in bad]


def test_same_seed_same_bytes() -> None:
    cfg = GenerateConfig(
        households=40, seed=5, start=dt.date(2024, 11, 1), end=dt.date(2025, 2, 28), bad_rate=0.01
    )
    a, _ = run(cfg)
    b, _ = run(cfg)
    assert a == b
    assert len(a) > 100_000


def test_same_bytes_in_another_process() -> None:
    """No dependence on hash randomisation, the clock or the global random generator."""
    cfg = GenerateConfig(households=15, seed=3, start=dt.date(2025, 3, 1), end=dt.date(2025, 6, 30))
    here = hashlib.sha256(run(cfg)[0]).hexdigest()
    code = (
        "import datetime as dt, hashlib, io, sys\n"
        "from yibao.dev.generate import GenerateConfig, generate\n"
        "b = io.BytesIO()\n"
        "generate(GenerateConfig(households=15, seed=3, start=dt.date(2025, 3, 1),"
        " end=dt.date(2025, 6, 30)), b)\n"
        "print(hashlib.sha256(b.getvalue()).hexdigest())\n"
    )
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        assert out == here


def test_different_seed_different_log() -> None:
    cfg = GenerateConfig(households=20, seed=1, end=dt.date(2025, 3, 31))
    a, _ = run(cfg)
    b, _ = run(GenerateConfig(households=20, seed=2, end=dt.date(2025, 3, 31)))
    assert a != b


def test_good_lines_are_events_of_the_contract(
    year_log: tuple[list[bytes], GenerateStats], good_events: list[dict[str, Any]]
) -> None:
    _, stats = year_log
    assert len(good_events) == stats.events + stats.duplicates
    for e in good_events:
        assert tuple(e)[:6] == ENVELOPE
        assert e["type"] in INPUT_TYPES
        assert e["schema_version"] == 1
        assert e["event_id"].startswith("E") and len(e["event_id"]) <= 64
        assert dt.datetime.fromisoformat(e["occurred_at"]).utcoffset() is not None


def test_event_ids_unique_except_exact_duplicates(year_log: tuple[list[bytes], GenerateStats]) -> None:
    lines, stats = year_log
    dups = set(stats.duplicate_lines)
    assert dups, "the log should repeat a few lines"
    bad = set(stats.bad_lines)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        if i in bad:
            continue
        eid = json.loads(line)["event_id"]
        if i in dups:
            assert line == lines[i - 1]  # an exact repeat, right after the original
            assert eid in seen
        else:
            assert eid not in seen
            seen.add(eid)


def test_bad_lines_about_bad_rate(year_log: tuple[list[bytes], GenerateStats]) -> None:
    lines, stats = year_log
    share = len(stats.bad_lines) / len(lines)
    assert 0.75 * BAD_RATE < share < 1.25 * BAD_RATE
    assert len(stats.bad_kinds) >= 12  # many kinds of malformation
    undecodable = 0
    for i in stats.bad_lines:
        try:
            obj = json.loads(lines[i])
        except ValueError:
            undecodable += 1
            continue
        assert obj != json.loads(lines[i - 1])  # not a copy of the good line before it
    assert undecodable > 0


def test_no_bad_lines_at_rate_zero() -> None:
    raw, stats = run(GenerateConfig(households=30, seed=2, end=dt.date(2025, 4, 30), bad_rate=0.0))
    assert stats.malformed == 0
    for line in raw.splitlines():
        json.loads(line)


def test_every_event_type_appears(good_events: list[dict[str, Any]]) -> None:
    assert {e["type"] for e in good_events} == INPUT_TYPES
    kinds = Counter(e["kind"] for e in good_events if e["type"] == "VisitOpened")
    assert set(kinds) == {"outpatient", "emergency", "outpatient_special", "outpatient_chronic", "inpatient"}
    methods = {e["method"] for e in good_events if e["type"] == "PaymentMade"}
    assert methods == {"insurance_code_qr", "face", "mobile", "bank_card", "cash", "credit"}


def test_line_items_add_up(good_events: list[dict[str, Any]]) -> None:
    n = 0
    for e in good_events:
        for item in e.get("items", ()):
            assert item["amount_fen"] == item["quantity"] * item["unit_price_fen"]
            assert item["quantity"] > 0 and item["unit_price_fen"] >= 0
            assert item["category"] in ("drug", "service", "consumable")
            assert item["catalog_class"] in ("A", "B", "C")
            if e["type"] == "PrescriptionIssued":
                assert item["category"] == "drug"
            n += 1
    assert n > 10_000


def test_occurred_at_non_decreasing(good_events: list[dict[str, Any]]) -> None:
    times = [dt.datetime.fromisoformat(e["occurred_at"]) for e in good_events]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert times[0] >= dt.datetime(2025, 1, 1, tzinfo=UTC8)
    assert times[-1] < dt.datetime(2026, 1, 1, tzinfo=UTC8)


def test_visit_timelines_are_consistent(good_events: list[dict[str, Any]]) -> None:
    """A visit's first event is its VisitOpened; payments follow a checkout unless they are
    deliberate deposits; a person's registration precedes their enrollment events."""
    opened: set[tuple[str, str]] = set()
    registered: set[str] = set()
    orphans = 0
    for e in good_events:
        pid = e["person_id"]
        if e["type"] == "PersonRegistered":
            registered.add(pid)
        elif e["type"] in ("EnrollmentResumed", "CrossRegionFiled", "PersonDeceased"):
            assert pid in registered
        key = (pid, e.get("visit_id", ""))
        if e["type"] == "VisitOpened":
            opened.add(key)
        elif "visit_id" in e and key not in opened:
            orphans += 1  # deliberate: events for a visit that was never opened
    visits = sum(1 for e in good_events if e["type"] == "VisitOpened")
    assert orphans < 0.01 * visits


def test_amounts_are_realistic(good_events: list[dict[str, Any]]) -> None:
    totals: dict[tuple[str, str], int] = Counter()
    kind: dict[tuple[str, str], str] = {}
    for e in good_events:
        key = (e["person_id"], e.get("visit_id", ""))
        if e["type"] == "VisitOpened":
            kind[key] = e["kind"]
        for item in e.get("items", ()):
            totals[key] += item["amount_fen"]
    inpatient = sorted(t for k, t in totals.items() if kind.get(k) == "inpatient")
    outpatient = sorted(t for k, t in totals.items() if kind.get(k) == "outpatient")
    assert 300_000 < inpatient[len(inpatient) // 2] < 5_000_000  # median 3,000-50,000 yuan
    assert inpatient[-1] < 40_000_000
    assert 5_000 < outpatient[len(outpatient) // 2] < 60_000  # median 50-600 yuan


def test_validates_against_the_project_schema(year_log: tuple[list[bytes], GenerateStats]) -> None:
    """Every good line decodes with the project's codec; every malformed line is rejected."""
    codec_mod = pytest.importorskip("yibao.schemas.codec")
    exc_mod = pytest.importorskip("yibao.schemas.exceptions")
    codec = codec_mod.Codec()
    lines, stats = year_log
    bad = set(stats.bad_lines)
    for i, line in enumerate(lines):
        if i in bad:
            with pytest.raises(exc_mod.SchemaError):
                codec.decode(line)
        else:
            codec.decode(line)


def test_payments_are_mostly_accepted(year_log: tuple[list[bytes], GenerateStats]) -> None:
    """The generator sizes payments from the engine's own state of each household: settled
    through the project's engine, nearly every payment is accepted and every repayment fits."""
    engine_mod = pytest.importorskip("yibao.rules.engine")
    policy_mod = pytest.importorskip("yibao.rules.policy")
    state_mod = pytest.importorskip("yibao.rules.state")
    codec = pytest.importorskip("yibao.schemas.codec").Codec()
    engine = engine_mod.Engine(policy_mod.load_policy())
    state = state_mod.State()
    lines, stats = year_log
    bad = set(stats.bad_lines)
    seen: set[str] = set()
    outcome: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if i in bad:
            continue
        event = codec.decode(line)
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        for out in engine.apply(state, event):
            name = type(out).__name__
            outcome[name if name != "PaymentRejected" else f"{name}:{out.reason}"] += 1
    payments = sum(v for k, v in outcome.items() if k.startswith("Payment"))
    assert outcome["PaymentAccepted"] > 0.9 * payments
    assert outcome["ClaimSettled"] > 0.95 * (stats.types["VisitClosed"])
    assert outcome["ClaimReversed"] > 0
