"""Properties of the settlement fold over random households (hypothesis)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.rules.engine import Engine
from yibao.rules.policy import load_policy
from yibao.rules.state import State
from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimReversed, ClaimSettled, OutputEvent

POLICY = load_policy()
ENGINE = Engine(POLICY)
CODEC = Codec()
REGIONS = ["500000", "500112", "110105", "440300"]
KINDS = ["outpatient", "emergency", "outpatient_special", "outpatient_chronic", "inpatient"]
CATEGORIES = [None, "extreme_poverty", "low_income", "marginal"]
DIAGNOSES = ["I10", "I13.2", "E11.9", "J18.9", "C34.9"]


@st.composite
def household(draw: st.DrawFn, hid: str = "H1") -> list[dict[str, Any]]:
    """A household's log: registrations, family aid, visits settled, refunded, re-settled, paid."""
    n = draw(st.integers(1, 3))
    people = [f"{hid}-P{i}" for i in range(n)]
    events: list[dict[str, Any]] = []
    schemes = {}
    for pid in people:
        scheme = draw(st.sampled_from(["employee", "resident"]))
        schemes[pid] = scheme
        events.append(
            registered(
                pid,
                household=hid,
                scheme=scheme,
                region=draw(st.sampled_from(REGIONS)),
                retired=scheme == "employee" and draw(st.booleans()),
                assistance=draw(st.sampled_from(CATEGORIES)),
                balance=draw(st.integers(0, 2_000_000)) if scheme == "employee" else 0,
            )
        )
        events.append(
            envelope(
                "SpecialDiseaseCertified",
                pid,
                disease_code="DIALYSIS",
                valid_from="2024-01-01",
                valid_to="2026-12-31",
            )
        )
        events.append(
            envelope("CreditLineGranted", pid, bank="B1", limit_fen=draw(st.integers(1, 5_000_000)))
        )
    for payer in people:
        if schemes[payer] == "employee":
            for b in people:
                if b != payer and draw(st.booleans()):
                    events.append(envelope("FamilyAidAuthorized", payer, beneficiary_id=b))
    for v in range(draw(st.integers(1, 6))):
        pid = draw(st.sampled_from(people))
        vid = f"{hid}-V{v}"
        kind = draw(st.sampled_from(KINDS))
        month = draw(st.integers(1, 12))
        year = draw(st.sampled_from([2024, 2025]))
        day = f"{year}-{month:02d}-10"
        if draw(st.integers(0, 9)) == 0:
            events.append(
                envelope(
                    "AssistanceStatusChanged",
                    pid,
                    assistance=draw(st.sampled_from(CATEGORIES)),
                    effective_from=f"{year}-{month:02d}-01",
                )
            )
        events.append(
            opened(
                pid,
                vid,
                kind=kind,
                level=draw(st.integers(1, 3)),
                region=draw(st.sampled_from(REGIONS)),
                opened_at=f"{day}T08:00:00+08:00",
                diagnoses=[draw(st.sampled_from(DIAGNOSES))],
                special="DIALYSIS" if kind == "outpatient_special" else None,
            )
        )
        lines = []
        big = 30_000_000 if kind == "inpatient" else 300_000
        for i in range(draw(st.integers(1, 4))):
            amount = draw(st.integers(0, big))
            cap = draw(st.one_of(st.none(), st.integers(0, big)))
            lines.append(item(f"L{i}", cls=draw(st.sampled_from("AABC")), amount=amount, cap=cap))
        events.append(charged(pid, vid, lines))
        events.append(
            closed(pid, vid, closed_at=f"{day}T20:00:00+08:00", use_account=draw(st.booleans()))
        )
        if draw(st.booleans()):
            events.append(
                envelope(
                    "PaymentMade",
                    pid,
                    visit_id=vid,
                    payment_id=f"PAY{v}",
                    method="credit",
                    bank="B1",
                    amount_fen=draw(st.integers(1, 200_000)),
                )
            )
        if draw(st.integers(0, 3)) == 0:
            events.append(envelope("VisitRefunded", pid, visit_id=vid, reason="test"))
            events.append(closed(pid, vid, closed_at=f"{day}T21:00:00+08:00"))
    return events


def fold(
    events: list[dict[str, Any]], state: State | None = None
) -> tuple[list[OutputEvent], State]:
    state = state or State()
    out: list[OutputEvent] = []
    for d in events:
        out += ENGINE.apply(state, CODEC.decode(json.dumps(d).encode()))
    return out, state


def caps_hold(state: State) -> None:
    for p in state.persons.values():
        assert p.balance >= 0, p.person_id
        for bank, owed in p.credit_outstanding.items():
            assert 0 <= owed <= p.credit_limit[bank]
        if p.registration is None:
            continue
        sp = POLICY.versions[-1].scheme[p.registration.scheme]
        for year, acc in p.accumulators.items():
            sp = POLICY.versions[
                POLICY.version_index(__import__("datetime").date(year, 6, 1))
            ].scheme[p.registration.scheme]
            assert acc.get("pooled_fund_paid", 0) <= sp.pooled_cap
            assert acc.get("outpatient_fund_paid", 0) <= sp.outpatient_cap
            assert acc.get("major_paid", 0) <= sp.major_cap
            assert acc.get("assistance_paid", 0) <= 10_000_000
            for cond, cap in sp.chronic_cap.items():
                assert acc.get(f"chronic_paid:{cond}", 0) <= cap
            assert all(v >= 0 for k, v in acc.items() if k != "assistance_deductible_used")


AMOUNT_FIELDS = (
    "basic_fund",
    "major_illness",
    "assistance",
    "personal_account",
    "family_account",
    "cash_due",
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(household())
def test_amount_identities_and_caps(events: list[dict[str, Any]]) -> None:
    outputs, state = fold(events)
    for o in outputs:
        if isinstance(o, ClaimSettled | ClaimReversed):
            a = o.amounts
            assert a.total == a.self_pay_full + a.over_cap + a.first_self_pay + a.eligible
            assert a.total == sum(getattr(a, f) for f in AMOUNT_FIELDS)
            assert a.family_account == sum(d.amount_fen for d in o.family_debits)
            assert 0 <= abs(a.deductible) <= abs(a.eligible)
    caps_hold(state)


def snapshot(state: State) -> dict[str, Any]:
    def nonzero(acc: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in acc.items() if v}

    return {
        pid: (
            p.balance,
            {y: nonzero(acc) for y, acc in p.accumulators.items() if nonzero(acc)},
            {b: v for b, v in p.credit_outstanding.items() if v},
        )
        for pid, p in state.persons.items()
    }


@SETTINGS
@given(household())
def test_settle_then_refund_restores_everything(events: list[dict[str, Any]]) -> None:
    _, state = fold(events)
    checked = 0
    for pid, p in list(state.persons.items()):
        for vid, visit in list(p.visits.items()):
            if visit.current is None:
                continue
            trial = copy.deepcopy(state)
            fold([envelope("VisitRefunded", pid, visit_id=vid, reason="r")], trial)
            before = snapshot(trial)
            out, _ = fold([closed(pid, vid, closed_at="2025-12-30T10:00:00+08:00")], trial)
            settled = [o for o in out if isinstance(o, ClaimSettled)]
            if not settled:
                continue
            back, _ = fold([envelope("VisitRefunded", pid, visit_id=vid, reason="r")], trial)
            assert isinstance(back[0], ClaimReversed)
            assert back[0].amounts == settled[0].amounts.negated()
            assert snapshot(trial) == before
            checked += 1
    assert checked or not any(v.current for p in state.persons.values() for v in p.visits.values())


@SETTINGS
@given(household("HA"), household("HB"), st.randoms(use_true_random=False))
def test_interleaving_households_changes_no_household(a: list, b: list, rnd: Any) -> None:
    alone_a, _ = fold(a)
    alone_b, _ = fold(b)
    merged, ia, ib = [], 0, 0
    while ia < len(a) or ib < len(b):
        if ib >= len(b) or (ia < len(a) and rnd.random() < 0.5):
            merged.append(a[ia])
            ia += 1
        else:
            merged.append(b[ib])
            ib += 1
    together, _ = fold(merged)
    assert [o for o in together if o.person_id.startswith("HA")] == alone_a
    assert [o for o in together if o.person_id.startswith("HB")] == alone_b


@SETTINGS
@given(household())
def test_same_log_gives_byte_identical_output(events: list[dict[str, Any]]) -> None:
    first, _ = fold(events)
    second, _ = fold(events)
    assert b"".join(CODEC.encode(o) for o in first) == b"".join(CODEC.encode(o) for o in second)
