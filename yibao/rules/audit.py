"""Intelligent fund audit, tier A (audit.md): the rules the engine runs at each checkout.

Each rule is one pure function named after it, returning :class:`Finding` values; the
engine numbers them into ``AuditFlagRaised`` outputs in audit.md's emission order. Flags
never change money, except that a blocking catalog rule refuses the checkout (settlement.md,
Step 0 check 10).

- catalog rules, on the visit's current lines: :func:`sex_restricted`,
  :func:`age_restricted`, :func:`facility_level`, :func:`care_setting` (per line) and
  :func:`units_per_day` (per code);
- history rules, on the person's settled visits (:class:`yibao.rules.state.Claim`) of the
  last 90 days: :func:`split_admission`, :func:`overlapping_stays`,
  :func:`outpatient_during_stay`, :func:`frequency`, :func:`doctor_shopping`;
- claim rules, on the settlement: :func:`claim_rules`;
- :func:`claim_after_death`, on an accepted ``PersonDeceased``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yibao.rules.catalog import CatalogEntry, CatalogVersion
from yibao.rules.state import Claim, PastClaim
from yibao.schemas.events import ClaimSettled


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The numbers of audit.md's rules, as one value: the engine runs with the defaults,
    ``yibao audit backtest`` with others to see what a change would do."""

    #: the history: settled visits with a service date at most this many days before ``d``
    history_days: int = 90
    #: SPLIT_ADMISSION: a readmission within this many days of a discharge
    split_admission_days: int = 15
    #: DOCTOR_SHOPPING: the window (days, ``d`` included) and the number of facilities
    shopping_days: int = 30
    shopping_facilities: int = 3
    #: LARGE_OUTPATIENT_CLAIM: a general outpatient claim above this total (fen)
    large_outpatient_fen: int = 500_000
    #: HIGH_SELF_PAY_SHARE: class C share (basis points) above which cost may be shifted
    self_pay_share_bp: int = 5000
    #: not a rule: how far a checkout's service date may lag the person's newest settled one
    #: and still see its whole history; claims older than that are kept for
    #: CLAIM_AFTER_DEATH only (:func:`history_kept_from`)
    late_checkout_days: int = 366


DEFAULTS = Thresholds()

OUTPATIENT_KINDS = frozenset({"outpatient", "emergency"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One flag before it has an id: what the rule found and the money at risk."""

    rule: str
    severity: str
    detail: str
    line_ids: tuple[str, ...] = ()
    related_visit_id: str | None = None
    amount_fen: int = 0


@dataclass(frozen=True, slots=True)
class Line:
    """A current line of the visit being checked, as the catalog rules need it."""

    line_id: str
    code: str
    quantity: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Checkout:
    """The visit being checked out (or pre-settled), as the history rules see it."""

    visit_id: str
    facility_id: str
    kind: str  # the kind it was opened with, never the benefit applied
    opened_at: dt.datetime
    closed_at: dt.datetime
    opened_date: dt.date  # local (UTC+08:00)
    service_date: dt.date  # d: local date of closed_at
    dx3: str | None
    lines: tuple[Line, ...]

    @property
    def days(self) -> int:
        """audit.md: local date(closed_at) - local date(opened_at) + 1, at least 1."""
        return max(1, (self.service_date - self.opened_date).days + 1)


def dx3_of(diagnoses: Sequence[str]) -> str | None:
    """The first three characters of the first diagnosis (none without one)."""
    return diagnoses[0][:3] if diagnoses else None


def age_on(birth: dt.date, d: dt.date) -> int:
    """Completed years on ``d`` (negative for a person born after ``d``)."""
    return d.year - birth.year - ((d.month, d.day) < (birth.month, birth.day))


# ------------------------------------------------------------------------- catalog rules


def sex_restricted(entry: CatalogEntry, sex: str) -> bool:
    return entry.sex is not None and sex != entry.sex


def age_restricted(entry: CatalogEntry, birth: dt.date, d: dt.date) -> bool:
    """Outside the entry's inclusive range; a person born after ``d`` is outside every one."""
    if not entry.has_age_range:
        return False
    if birth > d:
        return True
    age = age_on(birth, d)
    return ((entry.age_min is not None and age < entry.age_min)
            or (entry.age_max is not None and age > entry.age_max))


def facility_level(entry: CatalogEntry, level: int) -> bool:
    return entry.min_level is not None and level < entry.min_level


def care_setting(entry: CatalogEntry, kind: str) -> bool:
    return entry.setting == "inpatient" and kind != "inpatient"


#: The per-line rules in audit.md's order, with what each checks.
_LINE_RULES = ("SEX_RESTRICTED", "AGE_RESTRICTED", "FACILITY_LEVEL", "CARE_SETTING")


def line_restrictions(line: Line, entry: CatalogEntry, sex: str, birth: dt.date,
                      level: int, v: Checkout) -> list[Finding]:
    """The four blocking per-line rules for one line, in audit.md's order."""
    fired = (sex_restricted(entry, sex), age_restricted(entry, birth, v.service_date),
             facility_level(entry, level), care_setting(entry, v.kind))
    details = (f"{line.code} is for sex {entry.sex}, the person is {sex}",
               f"{line.code} is for ages {_range(entry)}, the person is "
               f"{age_on(birth, v.service_date)} on {v.service_date}",
               f"{line.code} needs facility level >= {entry.min_level}, got {level}",
               f"{line.code} is inpatient only, the visit is {v.kind}")
    return [Finding(rule, "block", detail, (line.line_id,), None, line.amount_fen)
            for rule, hit, detail in zip(_LINE_RULES, fired, details, strict=True) if hit]


def units_per_day(v: Checkout, catalog: CatalogVersion) -> list[Finding]:
    """Per code with a max per day, in the order of the code's first line: all the current
    lines of that code above max per day × days of the visit."""
    out: list[Finding] = []
    for code, lines in _by_code(v.lines).items():
        entry = catalog.entries.get(code)
        if entry is None or entry.max_per_day is None:
            continue
        units = sum(ln.quantity for ln in lines)
        allowed = entry.max_per_day * v.days
        if units > allowed:
            out.append(Finding(
                "UNITS_PER_DAY", "block" if entry.absolute else "warn",
                f"{code}: {units} units over {v.days} day(s), at most {entry.max_per_day} a day",
                tuple(ln.line_id for ln in lines), None, sum(ln.amount_fen for ln in lines)))
    return out


def catalog_findings(v: Checkout, catalog: CatalogVersion | None, sex: str, birth: dt.date,
                     level: int) -> tuple[list[Finding], list[Finding]]:
    """(blocking, warning) catalog flags of the visit's current lines, each in emission
    order: per line its restrictions, then the absolute UNITS_PER_DAY per code; the
    warning UNITS_PER_DAY per code."""
    if catalog is None:
        return [], []
    blocking: list[Finding] = []
    for line in v.lines:
        entry = catalog.entries.get(line.code)
        if entry is not None:
            blocking += line_restrictions(line, entry, sex, birth, level, v)
    units = units_per_day(v, catalog)
    blocking += [f for f in units if f.severity == "block"]
    return blocking, [f for f in units if f.severity != "block"]


def audit_block_detail(blocking: Iterable[Finding], v: Checkout) -> str:
    """settlement.md check 10: each ``RULE:line_id``, in line order."""
    position = {ln.line_id: i for i, ln in enumerate(v.lines)}
    pairs = sorted(((position[lid], i, f"{f.rule}:{lid}") for i, f in enumerate(blocking)
                    for lid in f.line_ids), key=lambda t: (t[0], t[1]))
    return ", ".join(p for _pos, _i, p in pairs)


# ------------------------------------------------------------------------- history rules


def history_of(claims: Iterable[Claim], v: Checkout, t: Thresholds = DEFAULTS) -> list[Claim]:
    """The settled visits with a service date ``>= d - 90`` (no upper bound), never V."""
    start = v.service_date.toordinal() - t.history_days
    return [c for c in claims if c.service_date >= start and c.visit_id != v.visit_id]


def history_kept_from(claims: Iterable[Claim], d: dt.date, t: Thresholds = DEFAULTS) -> int:
    """The oldest service date (ordinal) a person's history may still need after a checkout
    on ``d``. audit.md bounds the history below only by each checkout's own ``d`` and
    checkouts may arrive late, so the bound trails the newest service date by the history
    and a year's lateness: the person keeps full records of recent claims only."""
    newest = max((c.service_date for c in claims), default=d.toordinal())
    return max(newest, d.toordinal()) - t.history_days - t.late_checkout_days


def split_admission(v: Checkout, history: Sequence[Claim], payout: int,
                    t: Thresholds = DEFAULTS) -> list[Finding]:
    """分解住院: readmitted within 15 days of a discharge with the same dx3."""
    if v.kind != "inpatient" or v.dx3 is None:
        return []
    opened = v.opened_date.toordinal()
    matches = [w for w in history if w.kind == "inpatient" and w.dx3 == v.dx3
               and w.service_date <= opened <= w.service_date + t.split_admission_days]
    if not matches:
        return []
    w = max(matches, key=lambda c: (c.closed_at, c.visit_id))
    gap = opened - w.service_date
    return [Finding("SPLIT_ADMISSION", "warn" if w.facility_id == v.facility_id else "info",
                    f"admitted {gap} day(s) after discharge from {w.visit_id} at "
                    f"{w.facility_id}, same diagnosis {v.dx3}", (), w.visit_id, payout)]


def overlapping_stays(v: Checkout, history: Sequence[Claim], payout: int) -> list[Finding]:
    """Two inpatient stays at different facilities overlapping in time."""
    if v.kind != "inpatient":
        return []
    hits = sorted((w for w in history if w.kind == "inpatient"
                   and w.facility_id != v.facility_id
                   and w.opened_at < v.closed_at and v.opened_at < w.closed_at),
                  key=lambda c: (c.opened_at, c.visit_id))
    return [Finding("OVERLAPPING_STAYS", "warn",
                    f"stay overlaps {w.visit_id} at {w.facility_id}", (), w.visit_id, payout)
            for w in hits]


def outpatient_during_stay(v: Checkout, history: Sequence[Claim], payout: int
                           ) -> list[Finding]:
    """A visit that is not inpatient opened during an inpatient stay (either way round)."""
    def severity(c: Claim) -> str:
        return "warn" if c.facility_id == v.facility_id else "info"

    if v.kind != "inpatient":
        stays = [w for w in history if w.kind == "inpatient"
                 and w.opened_at <= v.opened_at < w.closed_at]
        if not stays:
            return []
        w = min(stays, key=lambda c: (c.opened_at, c.visit_id))
        return [Finding("OUTPATIENT_DURING_STAY", severity(w),
                        f"opened during the inpatient stay {w.visit_id} at {w.facility_id}",
                        (), w.visit_id, payout)]
    during = sorted((u for u in history if u.kind != "inpatient"
                     and v.opened_at <= u.opened_at < v.closed_at),
                    key=lambda c: (c.opened_at, c.visit_id))
    return [Finding("OUTPATIENT_DURING_STAY", severity(u),
                    f"{u.kind} visit {u.visit_id} at {u.facility_id} during this stay",
                    (), u.visit_id, payout) for u in during]


def frequency(v: Checkout, history: Sequence[Claim], catalog: CatalogVersion | None
              ) -> list[Finding]:
    """超频次: per code with a frequency on V's lines, a history visit with a line of it
    less than ``freq`` days from ``d`` (either side)."""
    if catalog is None:
        return []
    d = v.service_date.toordinal()
    out: list[Finding] = []
    for code, lines in _by_code(v.lines).items():
        entry = catalog.entries.get(code)
        if entry is None or entry.freq_days is None:
            continue
        freq = entry.freq_days
        matches = [c for c in history if code in c.codes and abs(d - c.service_date) < freq]
        if not matches:
            continue
        w = max(matches, key=lambda c: (c.service_date, c.closed_at, c.visit_id))
        out.append(Finding(
            "FREQUENCY", "warn",
            f"{code} again after {abs(d - w.service_date)} day(s) (visit {w.visit_id}); at "
            f"most once in {freq} days", tuple(ln.line_id for ln in lines), w.visit_id,
            sum(ln.amount_fen for ln in lines)))
    return out


def doctor_shopping(v: Checkout, history: Sequence[Claim], payout: int,
                    t: Thresholds = DEFAULTS) -> list[Finding]:
    """多点就医: the same dx3 at 3 or more facilities within 30 days, outpatient or emergency."""
    if v.kind not in OUTPATIENT_KINDS or v.dx3 is None:
        return []
    d = v.service_date.toordinal()
    facilities = {c.facility_id for c in history if c.kind in OUTPATIENT_KINDS
                  and c.dx3 == v.dx3 and d - t.shopping_days < c.service_date <= d}
    facilities.add(v.facility_id)
    if len(facilities) < t.shopping_facilities:
        return []
    return [Finding("DOCTOR_SHOPPING", "warn",
                    f"diagnosis {v.dx3} at {len(facilities)} facilities within "
                    f"{t.shopping_days} days: {', '.join(sorted(facilities))}", (), None,
                    payout)]


def history_findings(v: Checkout, claims: Iterable[Claim], catalog: CatalogVersion | None,
                     payout: int, t: Thresholds = DEFAULTS) -> list[Finding]:
    """The history rules in audit.md's emission order."""
    history = history_of(claims, v, t)
    if not history:
        return []
    return [*split_admission(v, history, payout, t), *overlapping_stays(v, history, payout),
            *outpatient_during_stay(v, history, payout), *frequency(v, history, catalog),
            *doctor_shopping(v, history, payout, t)]


# --------------------------------------------------------------------------- claim rules


def fund_payout(s: ClaimSettled) -> int:
    a = s.amounts
    return a.basic_fund + a.major_illness + a.assistance


def claim_rules(s: ClaimSettled, filed: bool, oop: int, t: Thresholds = DEFAULTS
                ) -> list[Finding]:
    """The four claim rules of audit.md, in their table's order."""
    out: list[Finding] = []
    a = s.amounts
    payout = fund_payout(s)
    if s.kind in ("outpatient", "outpatient_chronic") and a.total > t.large_outpatient_fen:
        out.append(Finding("LARGE_OUTPATIENT_CLAIM", "warn",
                           f"outpatient total {a.total} fen > {t.large_outpatient_fen}",
                           amount_fen=payout))
    if s.cross_province and not filed:
        out.append(Finding("CROSS_PROVINCE_UNFILED", "info",
                           f"treated in {s.treatment_region}, insured in {s.insured_region}, "
                           "no filing", amount_fen=payout))
    if a.total > 0 and a.self_pay_full * 10000 > a.total * t.self_pay_share_bp:
        out.append(Finding("HIGH_SELF_PAY_SHARE", "info",
                           f"class C {a.self_pay_full} of total {a.total} fen", amount_fen=payout))
    if a.major_illness + a.assistance > oop or a.personal_account < 0:
        out.append(Finding(
            "ASSISTANCE_ABOVE_OUT_OF_POCKET", "warn",
            f"major illness {a.major_illness} + assistance {a.assistance} > compliant "
            f"out-of-pocket {oop}; personal account {a.personal_account} (negative assistance "
            "deductible remainder after a category change)", amount_fen=payout))
    return out


def claim_after_death(claims: Iterable[Claim | PastClaim], date_of_death: dt.date
                      ) -> list[Claim | PastClaim]:
    """Pay and chase: the settled visits (any age: recent claims and past ones) opened
    after the date of death, in the order their current settlements were made."""
    death = date_of_death.toordinal()
    return sorted((c for c in claims if c.opened_date > death), key=lambda c: c.order)


def _by_code(lines: Iterable[Line]) -> dict[str, list[Line]]:
    """Lines grouped by code, codes in the order of their first line."""
    out: dict[str, list[Line]] = {}
    for ln in lines:
        out.setdefault(ln.code, []).append(ln)
    return out


def _range(entry: CatalogEntry) -> str:
    low = "" if entry.age_min is None else str(entry.age_min)
    high = "" if entry.age_max is None else str(entry.age_max)
    return f"{low}-{high}"
