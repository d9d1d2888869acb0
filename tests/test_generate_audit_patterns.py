"""The generator's fund-audit patterns (yibao/dev/audit_patterns.py): a generated log settled in
file mode raises every tier-A rule the patterns target, blocks a few checkouts (which the
hospital corrects), gives tier B facility flags, and stays mostly clean; a restricted code
used rightly raises nothing where the same code used wrongly is blocked."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from yibao.cli import main
from yibao.dev.audit_patterns import _facility, _outpatient
from yibao.dev.generate import AUDITED, GenerateConfig, _Generator, _Household, generate
from yibao.rules.engine import Engine
from yibao.rules.fold import DeadLetter, Fold
from yibao.rules.policy import load_policy
from yibao.schemas.events import AuditFlagRaised, ClaimRejected, ClaimSettled, OutputEvent

HOUSEHOLDS = 1000
SEED = 7
#: every tier-A rule a pattern targets (the claim rules fire without them)
TARGETED = {
    "SEX_RESTRICTED", "AGE_RESTRICTED", "FACILITY_LEVEL", "CARE_SETTING", "UNITS_PER_DAY",
    "SPLIT_ADMISSION", "OVERLAPPING_STAYS", "OUTPATIENT_DURING_STAY", "FREQUENCY",
    "DOCTOR_SHOPPING", "CLAIM_AFTER_DEATH",
}


def settle(lines: list[bytes]) -> list[OutputEvent]:
    """File mode's fold (yibao/cli/filemode.py) over the lines; the outputs in order."""
    fold = Fold(Engine(load_policy()))
    return [o for r in fold.run(lines) if not isinstance(r, DeadLetter) for o in r]


@pytest.fixture(scope="module")
def log() -> list[bytes]:
    buf = io.BytesIO()
    generate(GenerateConfig(households=HOUSEHOLDS, seed=SEED, bad_rate=0.0), buf)
    return buf.getvalue().splitlines()


@pytest.fixture(scope="module")
def outputs(log: list[bytes]) -> list[OutputEvent]:
    return settle(log)


def flags(outputs: list[OutputEvent]) -> list[AuditFlagRaised]:
    return [o for o in outputs if isinstance(o, AuditFlagRaised)]


def test_every_targeted_tier_a_rule_fires(outputs: list[OutputEvent]) -> None:
    raised = Counter((f.rule, f.severity) for f in flags(outputs))
    assert {rule for rule, _ in raised} >= TARGETED, TARGETED - {rule for rule, _ in raised}
    # both kinds of UNITS_PER_DAY: absolute (blocks) and not (warns, the claim settles)
    assert raised["UNITS_PER_DAY", "block"] and raised["UNITS_PER_DAY", "warn"]
    # a readmission at the same hospital warns, at another informs
    assert raised["SPLIT_ADMISSION", "warn"]


def test_blocked_checkouts_are_corrected_and_settled(outputs: list[OutputEvent]) -> None:
    blocked = [o.visit_id for o in outputs
               if isinstance(o, ClaimRejected) and o.reason == "AUDIT_BLOCK"]
    assert blocked
    settled_after: set[str] = set()
    seen_block: set[str] = set(blocked)
    for o in outputs:
        if isinstance(o, ClaimSettled) and o.visit_id in seen_block:
            settled_after.add(o.visit_id)
    # the hospital reverses the flagged lines and checks out again, most of the time
    assert len(settled_after) > 0.7 * len(set(blocked))


def test_patterns_are_rare(log: list[bytes], outputs: list[OutputEvent]) -> None:
    """Realistic low rates: the targeted flags and the blocks are a small share of claims,
    and the restricted codes are mostly used rightly."""
    claims = sum(isinstance(o, ClaimSettled) for o in outputs)
    targeted = [f for f in flags(outputs) if f.rule in TARGETED]
    blocks = sum(isinstance(o, ClaimRejected) and o.reason == "AUDIT_BLOCK" for o in outputs)
    assert len(targeted) < 0.02 * claims
    assert blocks < 0.005 * claims
    restricted_lines = sum(line.count(b'"code":"' + code.encode() + b'"')
                           for line in log for code in AUDITED)
    catalog_flags = sum(len(f.line_ids) for f in targeted if f.rule != "FREQUENCY")
    assert restricted_lines > 10 * catalog_flags


def test_tier_b_flags_a_group_admission_and_a_spike(outputs: list[OutputEvent],
                                                    tmp_path: Path) -> None:
    path = tmp_path / "settlements.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(o) + b"\n" for o in outputs))
    result = CliRunner().invoke(main, ["audit", "facilities", str(path)])
    assert result.exit_code == 0, result.output
    rules = Counter(msgspec.json.decode(x)["rule"] for x in result.stdout.splitlines())
    assert rules["GROUP_ADMISSION"] >= 1
    assert rules["FACILITY_DAILY_SPIKE"] >= 1


def test_no_audit_patterns_leaves_out_the_restricted_codes() -> None:
    cfg = GenerateConfig(households=60, seed=2, end=dt.date(2025, 6, 30), audit_patterns=False)
    off, on = io.BytesIO(), io.BytesIO()
    generate(cfg, off)
    generate(GenerateConfig(households=60, seed=2, end=dt.date(2025, 6, 30)), on)
    assert not any(f'"code":"{code}"'.encode() in off.getvalue() for code in AUDITED)
    assert b'"code":"SVC-BED-WARD"' in on.getvalue()
    assert not any(isinstance(o, AuditFlagRaised) and o.rule in TARGETED - {"DOCTOR_SHOPPING"}
                   for o in settle(off.getvalue().splitlines()))


# -- a known case, built with the patterns' helpers ------------------------------------------


def psa_visit(sex: str) -> tuple[list[OutputEvent], str]:
    """One household whose first person, of ``sex`` and 55 years old, has a prostate-specific
    antigen test at a level-1 clinic: the log's outputs and the test's visit id."""
    gen = _Generator(GenerateConfig(households=1, seed=1, audit_patterns=False))
    idx = next(i for i in range(1, 100) if _Household(gen, i).persons[0].death is None)
    h = _Household(gen, idx)
    p = h.persons[0]
    p.sex = sex
    day = max(h.reg_day, p.eff) + 10
    p.birth = day - 55 * 366
    rng = random.Random(0)
    fac = _facility(rng, p.region, (1,))
    assert fac.level == 1
    _outpatient(h, rng, p, day, fac, ("Z00.0",), ("LAB-PSA", 1))
    enc = msgspec.json.Encoder()
    events = []
    for n, (_ms, _i, _s, ev) in enumerate(h.run(), 1):
        ev["event_id"] = f"E{n:08d}"
        events.append(ev)
    psa_lines = [(e["visit_id"], i["line_id"]) for e in events for i in e.get("items", ())
                 if i["code"] == "LAB-PSA"]
    assert len(psa_lines) == 1
    visit_id, line_id = psa_lines[0]
    # the test's line is not reversed at random before the first checkout
    first_close = next(n for n, e in enumerate(events)
                       if e["type"] == "VisitClosed" and e["visit_id"] == visit_id)
    assert not any(e["type"] == "ChargeReversed" and line_id in e["line_ids"]
                   for e in events[:first_close])
    return settle([enc.encode(e) for e in events]), visit_id


def test_a_restricted_code_used_rightly_raises_no_flag() -> None:
    outputs, visit_id = psa_visit("M")
    mine = [o for o in outputs if getattr(o, "visit_id", None) == visit_id]
    assert any(isinstance(o, ClaimSettled) for o in mine)
    assert not any(isinstance(o, ClaimRejected) for o in mine)
    catalog_rules = {"SEX_RESTRICTED", "AGE_RESTRICTED", "FACILITY_LEVEL", "CARE_SETTING",
                     "UNITS_PER_DAY", "FREQUENCY"}
    assert not [o for o in mine if isinstance(o, AuditFlagRaised) and o.rule in catalog_rules]


def test_the_same_code_used_wrongly_is_blocked() -> None:
    outputs, visit_id = psa_visit("F")
    mine = [o for o in outputs if getattr(o, "visit_id", None) == visit_id]
    rejected = [o for o in mine if isinstance(o, ClaimRejected)]
    assert rejected and rejected[0].reason == "AUDIT_BLOCK"
    assert [o.rule for o in mine if isinstance(o, AuditFlagRaised)][:1] == ["SEX_RESTRICTED"]


def test_incubator_days_and_dialysis_sessions_pass_when_right_and_block_when_wrong(
        log: list[bytes], outputs: list[OutputEvent]) -> None:
    """SVC-NEONATAL (age 0, inpatient, level 2+, one a day) for infants in hospital passes,
    billed to an adult's stay it is AGE_RESTRICTED; SVC-HEMODIALYSIS once a day passes,
    twice on a one-day visit is UNITS_PER_DAY. Both are absolute: a wrong use blocks."""
    decoder = msgspec.json.Decoder()
    code_of: dict[tuple[str, str], str] = {}
    uses: Counter[str] = Counter()
    for line in log:
        e = decoder.decode(line)
        if e["type"] == "ItemsCharged":
            for item in e["items"]:
                code_of[e["visit_id"], item["line_id"]] = item["code"]
                uses[item["code"]] += 1
    assert uses["SVC-NEONATAL"] and uses["SVC-HEMODIALYSIS"]
    flagged: Counter[tuple[str, str, str]] = Counter()
    for f in flags(outputs):
        for code in {code_of.get((f.visit_id, lid)) for lid in f.line_ids}:
            if code in ("SVC-NEONATAL", "SVC-HEMODIALYSIS"):
                flagged[code, f.rule, f.severity] += 1
    # only the wrong uses are flagged, with the rule they break, and they block
    assert set(flagged) == {("SVC-NEONATAL", "AGE_RESTRICTED", "block"),
                            ("SVC-HEMODIALYSIS", "UNITS_PER_DAY", "block")}, flagged
    # and the right uses (a flag names one use: one line, or a code's lines of one visit)
    for code in ("SVC-NEONATAL", "SVC-HEMODIALYSIS"):
        wrong = sum(n for (c, _r, _s), n in flagged.items() if c == code)
        assert uses[code] > wrong, (code, uses[code], wrong)
