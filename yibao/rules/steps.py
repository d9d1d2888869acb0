"""Steps 1-6 of settlement.md, one pure function each, named as the spec names them.

Each step takes what the earlier steps found and the person's accumulators of the benefit
year, and returns a small frozen result: the amounts it fixed, the accumulator deltas it
moves (applied later by ``evolve``, in this order) and its ``trace`` entry, which names the
rule, the parameters and each accumulator before and after so an auditor can recompute the
claim by hand. Nothing here reads the clock, the log or any other person than those given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from yibao.rules.policy import PolicyVersion, SchemePolicy
from yibao.rules.state import in_force
from yibao.schemas import events as ev
from yibao.schemas.events import TraceEntry

FULL: Final = 10000

#: accumulator deltas of one step, in the order they are recorded
Deltas = tuple[tuple[str, int], ...]


def pct(x: int, r: int) -> int:
    """Round-half-up percentage in basis points (x >= 0): the spec's only rounding."""
    return (x * r + 5000) // 10000


def clamp(r: int) -> int:
    """A rate after bonuses and penalties stays within 0-100%."""
    return 0 if r < 0 else (FULL if r > FULL else r)


# ---------------------------------------------------------------------- Step 1: lines


@dataclass(frozen=True, slots=True)
class Lines:
    total: int
    self_pay_full: int
    over_cap: int
    first_self_pay: int
    eligible: int
    trace: TraceEntry


def split_lines(lines: Iterable[tuple[str, int, int | None]], count: int, b_first_self_pay: int) -> Lines:
    """Step 1: class C is self-paid in full; class A/B above ``cap_fen`` is over cap; class B
    pays its first self-pay share; the rest is the policy-scope ``eligible`` amount."""
    total = self_pay_full = over_cap = first_self_pay = eligible = 0
    for catalog_class, amount, cap in lines:
        total += amount
        if catalog_class == "C":
            self_pay_full += amount
            continue
        over = amount - cap if cap is not None and amount > cap else 0
        over_cap += over
        capped = amount - over
        if catalog_class == "A":
            eligible += capped
        else:
            first = pct(capped, b_first_self_pay)
            first_self_pay += first
            eligible += capped - first
    trace = TraceEntry(
        step="lines",
        detail=(
            f"{count} lines: total {total} = class C {self_pay_full} + over cap "
            f"{over_cap} + class B first self-pay {first_self_pay} (b_first_self_pay "
            f"{b_first_self_pay} bp) + eligible {eligible}"
        ),
    )
    return Lines(total, self_pay_full, over_cap, first_self_pay, eligible, trace)


# ---------------------------------------------------------------------- Step 2: the benefit


@dataclass(frozen=True, slots=True)
class Benefit:
    kind: str  # the benefit applied: inpatient, outpatient_special, outpatient, outpatient_chronic
    condition: str | None  # the chronic condition, for outpatient_chronic
    level: int
    retired: bool
    insured_region: str
    treatment_region: str
    cross_province: bool
    filed: bool
    penalty: int  # cross_province_penalty in bp, when cross-province and not filed
    trace: TraceEntry


def chronic_condition(pol: PolicyVersion, diagnoses: list[str]) -> str | None:
    """The first diagnosis that names a chronic condition of the policy's table."""
    for diag in diagnoses:
        for name, prefixes in pol.chronic_conditions.items():
            if diag.startswith(prefixes):
                return name
    return None


def benefit_that_applies(
    reg: ev.PersonRegistered,
    opened: ev.VisitOpened,
    pol: PolicyVersion,
    sp: SchemePolicy,
    filings: list[tuple[str, dt.date, dt.date]],
    d: dt.date,
) -> Benefit:
    """Step 2: the visit kind gives the benefit (a chronic visit of a resident at level 1-2
    with a listed condition gets the chronic benefit, else general outpatient); treatment in
    another province without a filing costs ``cross_province_penalty`` on every rate."""
    kind = opened.kind
    level = opened.facility_level
    condition: str | None = None
    if kind == "inpatient":
        benefit = "inpatient"
    elif kind == "outpatient_special":
        benefit = "outpatient_special"
    elif kind == "outpatient_chronic":
        benefit = "outpatient"
        if reg.scheme == "resident" and level in (1, 2):
            condition = chronic_condition(pol, opened.diagnoses)
            if condition is not None:
                benefit = "outpatient_chronic"
    else:
        benefit = "outpatient"
    retired = reg.scheme == "employee" and reg.retired
    insured, treated = reg.region, opened.facility_region
    cross = insured[:2] != treated[:2]
    filed = cross and any(r == treated and f <= d <= t for r, f, t in filings)
    penalty = sp.cross_province_penalty if cross and not filed else 0
    trace = TraceEntry(
        step="benefit",
        detail=(
            f"visit kind {kind} -> {benefit}"
            + (f" ({condition})" if condition else "")
            + f"; scheme {reg.scheme}, level {level}, retired {retired}; insured {insured}, "
            f"treated {treated}, cross-province {cross}, filed {filed}, penalty {penalty} bp; "
            f"policy {pol.id}, benefit year {d.year}"
        ),
    )
    return Benefit(benefit, condition, level, retired, insured, treated, cross, filed, penalty, trace)


# ---------------------------------------------------------------------- Step 3: basic fund


@dataclass(frozen=True, slots=True)
class BasicFund:
    deductible: int
    fund: int
    deltas: Deltas
    trace: TraceEntry


def inpatient_fund(eligible: int, b: Benefit, sp: SchemePolicy, acc: Mapping[str, int]) -> BasicFund:
    """Inpatient: the level's deductible (halved from the year's second admission), the
    level's rate (+ the retiree bonus, - the penalty), up to the yearly pooled cap."""
    n = acc.get("inpatient_admissions", 0) + 1
    full_deductible = sp.inpatient_deductible[b.level - 1]
    deductible_line = pct(full_deductible, 5000) if n >= 2 else full_deductible
    deductible = min(eligible, deductible_line)
    rate = clamp(sp.inpatient_rate[b.level - 1] + (sp.retiree_inpatient_bonus if b.retired else 0)
                 - b.penalty)
    paid = acc.get("pooled_fund_paid", 0)
    room = max(0, sp.pooled_cap - paid)
    raw = pct(eligible - deductible, rate)
    fund = min(raw, room)
    trace = TraceEntry(
        step="basic_fund",
        detail=(
            f"inpatient admission {n}: deductible {full_deductible}"
            + (" halved" if n >= 2 else "")
            + f" = {deductible_line}, ded = min({eligible}, {deductible_line}) = {deductible}; "
            f"rate {rate} bp; fund = min(pct({eligible - deductible}, "
            f"{rate}) = {raw}, pooled_cap {sp.pooled_cap} - pooled_fund_paid {paid}) = {fund}; "
            f"pooled_fund_paid {paid} -> {paid + fund}; inpatient_admissions {n - 1} -> {n}"
        ),
    )
    return BasicFund(deductible, fund, (("pooled_fund_paid", fund), ("inpatient_admissions", 1)),
                     trace)


def special_disease_fund(
    eligible: int, b: Benefit, code: str, pol: PolicyVersion, sp: SchemePolicy,
    acc: Mapping[str, int],
) -> BasicFund:
    """Outpatient special disease: inpatient rates, no deductible, up to the disease's yearly
    limit and the pooled cap."""
    rate = clamp(sp.inpatient_rate[b.level - 1] + (sp.retiree_inpatient_bonus if b.retired else 0)
                 - b.penalty)
    raw = pct(eligible, rate)
    paid = acc.get("pooled_fund_paid", 0)
    key = f"special_paid:{code}"
    special_paid = acc.get(key, 0)
    limit = pol.special_diseases[code].limit
    fund = min(raw, max(0, sp.pooled_cap - paid))
    if limit is not None:
        fund = min(fund, max(0, limit - special_paid))
    trace = TraceEntry(
        step="basic_fund",
        detail=(
            f"special disease {code}: no deductible; rate {rate} bp; fund = min(pct({eligible}, "
            f"{rate}) = {raw}, limit {limit if limit is not None else 'none'} - special_paid "
            f"{special_paid}, pooled_cap {sp.pooled_cap} - pooled_fund_paid {paid}) = {fund}; "
            f"special_paid {special_paid} -> {special_paid + fund}; pooled_fund_paid {paid} -> "
            f"{paid + fund}"
        ),
    )
    return BasicFund(0, fund, ((key, fund), ("pooled_fund_paid", fund)), trace)


def outpatient_fund(eligible: int, b: Benefit, sp: SchemePolicy, acc: Mapping[str, int]) -> BasicFund:
    """General outpatient pooling: what is left of the yearly deductible, the level's rate
    (+ the retiree bonus, - the penalty), up to the yearly outpatient cap."""
    used = acc.get("outpatient_deductible_used", 0)
    deductible = min(eligible, max(0, sp.outpatient_deductible - used))
    rate = clamp(sp.outpatient_rate[b.level - 1] + (sp.retiree_outpatient_bonus if b.retired else 0)
                 - b.penalty)
    raw = pct(eligible - deductible, rate)
    paid = acc.get("outpatient_fund_paid", 0)
    fund = min(raw, max(0, sp.outpatient_cap - paid))
    trace = TraceEntry(
        step="basic_fund",
        detail=(
            f"outpatient: deductible {sp.outpatient_deductible} - used {used}, ded = {deductible}; "
            f"rate {rate} bp; fund = min(pct({eligible - deductible}, {rate}) = {raw}, outpatient_cap "
            f"{sp.outpatient_cap} - outpatient_fund_paid {paid}) = {fund}; "
            f"outpatient_deductible_used {used} -> {used + deductible}; outpatient_fund_paid "
            f"{paid} -> {paid + fund}"
        ),
    )
    return BasicFund(deductible, fund,
                     (("outpatient_deductible_used", deductible), ("outpatient_fund_paid", fund)),
                     trace)


def chronic_fund(eligible: int, b: Benefit, sp: SchemePolicy, acc: Mapping[str, int]) -> BasicFund:
    """Chronic-medication benefit: ``chronic_rate`` (- the penalty), no deductible, up to the
    condition's yearly cap."""
    condition = b.condition
    assert condition is not None
    rate = clamp(sp.chronic_rate - b.penalty)
    raw = pct(eligible, rate)
    key = f"chronic_paid:{condition}"
    paid = acc.get(key, 0)
    cap = sp.chronic_cap.get(condition, 0)
    fund = min(raw, max(0, cap - paid))
    trace = TraceEntry(
        step="basic_fund",
        detail=(
            f"chronic {condition}: no deductible; rate {rate} bp; fund = min(pct({eligible}, {rate}) = "
            f"{raw}, chronic_cap {cap} - chronic_paid {paid}) = {fund}; chronic_paid "
            f"{paid} -> {paid + fund}"
        ),
    )
    return BasicFund(0, fund, ((key, fund),), trace)


def basic_fund(
    eligible: int, b: Benefit, special_disease_code: str | None, pol: PolicyVersion,
    sp: SchemePolicy, acc: Mapping[str, int],
) -> BasicFund:
    """Step 3: the pooled fund's share under the benefit that applies."""
    if b.kind == "inpatient":
        return inpatient_fund(eligible, b, sp, acc)
    if b.kind == "outpatient_special":
        assert special_disease_code is not None
        return special_disease_fund(eligible, b, special_disease_code, pol, sp, acc)
    if b.kind == "outpatient":
        return outpatient_fund(eligible, b, sp, acc)
    return chronic_fund(eligible, b, sp, acc)


# ---------------------------------------------------------------------- Step 4: major illness


@dataclass(frozen=True, slots=True)
class MajorIllness:
    paid: int
    deltas: Deltas
    trace: TraceEntry | None


def major_illness(
    oop: int, b: Benefit, category: str | None, sp: SchemePolicy, acc: Mapping[str, int]
) -> MajorIllness:
    """Step 4 (inpatient and special disease only): the year's compliant out-of-pocket above
    the threshold (halved for assistance recipients) is paid tier by tier, each tier's rate
    plus the assistance bonus, up to the yearly cap."""
    if b.kind not in ("inpatient", "outpatient_special"):
        return MajorIllness(0, (), None)
    threshold = sp.major_threshold
    bonus = sp.assistance_major_bonus if category is not None else 0
    if category is not None:
        threshold = pct(threshold, 5000)
    oop_before = acc.get("major_oop", 0)
    low = max(oop_before, threshold)
    high = max(oop_before + oop, threshold)
    tiers = sp.major_tiers
    parts = []
    raw = 0
    for i, (start, rate) in enumerate(tiers):
        tier_low = threshold + start
        tier_high = threshold + tiers[i + 1][0] if i + 1 < len(tiers) else None
        top = high if tier_high is None else min(high, tier_high)
        part = max(0, top - max(low, tier_low))
        tier_rate = clamp(rate + bonus)
        if part:
            raw += pct(part, tier_rate)
            parts.append(f"{part} at {tier_rate} bp")
    paid_before = acc.get("major_paid", 0)
    paid = min(raw, max(0, sp.major_cap - paid_before))
    trace = TraceEntry(
        step="major_illness",
        detail=(
            f"threshold {threshold}"
            + (f" (halved, assistance {category}, tier bonus {bonus} bp)" if category else "")
            + f"; major_oop {oop_before} -> {oop_before + oop}; tiers: "
            f"{', '.join(parts) or 'none reached'}"
            f"; major = min({raw}, major_cap {sp.major_cap} - major_paid {paid_before}) = "
            f"{paid}; major_paid {paid_before} -> {paid_before + paid}"
        ),
    )
    return MajorIllness(paid, (("major_oop", oop), ("major_paid", paid)), trace)


# ---------------------------------------------------------------------- Step 5: assistance


@dataclass(frozen=True, slots=True)
class Assistance:
    paid: int
    deltas: Deltas
    trace: TraceEntry | None


def medical_assistance(
    oop: int, major: int, category: str | None, pol: PolicyVersion, acc: Mapping[str, int]
) -> Assistance:
    """Step 5: what is left after major illness, above the category's yearly deductible, at
    its rate, up to its yearly cap.

    Literal per settlement.md: the remaining deductible is *not* floored at zero. After a
    category change (marginal -> low_income) it is negative, and the contract's expected
    outputs pay assistance above the out-of-pocket; we keep the contract and raise an audit
    flag (yibao.rules.audit) for the bureau to review.
    """
    if category is None:
        return Assistance(0, (), None)
    ap = pol.assistance[category]  # type: ignore[index]
    rest = oop - major
    used = acc.get("assistance_deductible_used", 0)
    deductible = min(rest, ap.deductible - used)
    paid_before = acc.get("assistance_paid", 0)
    raw = pct(rest - deductible, ap.rate)
    paid = min(raw, max(0, ap.cap - paid_before))
    trace = TraceEntry(
        step="assistance",
        detail=(
            f"category {category}: rest {rest}; deductible {ap.deductible} - used {used}, "
            f"ded = {deductible}; assist = min(pct({rest - deductible}, {ap.rate}) = {raw}, cap "
            f"{ap.cap} - assistance_paid {paid_before}) = {paid}; assistance_deductible_used "
            f"{used} -> {used + deductible}; assistance_paid {paid_before} -> {paid_before + paid}"
        ),
    )
    return Assistance(paid, (("assistance_deductible_used", deductible), ("assistance_paid", paid)),
                      trace)


# ---------------------------------------------------------------------- Step 6: accounts and cash


@dataclass(frozen=True, slots=True)
class Accounts:
    own: int
    family: list[tuple[str, int]]
    family_total: int
    cash_due: int
    trace: TraceEntry


def accounts_and_cash(
    share: int, use_personal_account: bool, balance: int, aid_payers: list[str],
    balance_of: Mapping[str, int], parts: tuple[int, int, int, int, int, int],
) -> Accounts:
    """Step 6: the patient's share comes from their own account, then from the accounts of
    family members who authorized aid, in authorization order; the rest is cash due."""
    own = 0
    family: list[tuple[str, int]] = []
    family_total = 0
    if use_personal_account:
        own = min(balance, share)
        for payer_id in aid_payers:
            left = share - own - family_total
            if left <= 0:
                break
            amount = min(balance_of.get(payer_id, 0), left)
            if amount > 0:
                family.append((payer_id, amount))
                family_total += amount
    cash_due = share - own - family_total
    self_pay_full, over_cap, first_self_pay, oop, major, assist = parts
    trace = TraceEntry(
        step="accounts",
        detail=(
            f"share = {self_pay_full} + {over_cap} + {first_self_pay} + oop {oop} - major {major} "
            f"- assistance {assist} = {share}; use_personal_account {use_personal_account}; "
            f"own account {balance} pays {own}; family "
            + (", ".join(f"{pid} pays {amt}" for pid, amt in family) or "none")
            + f"; cash due {cash_due}"
        ),
    )
    return Accounts(own, family, family_total, cash_due, trace)


def category_on(history: list[tuple[dt.date, str | None]], d: dt.date) -> str | None:
    """The assistance category in force on the service date."""
    return in_force(history, d, None)
