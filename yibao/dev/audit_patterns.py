"""Fund-audit patterns in synthetic logs (audit.md): what ``yibao generate`` mixes in so that
the audit has something to find, and restricted codes used rightly so that it has something
to pass.

Why planted patterns and not just random care: the audit's rules look for coincidences (a
readmission within 15 days with the same diagnosis, stays that overlap, one diagnosis at three
facilities in a month, households admitted together) that independent random visits almost
never produce; a demo and a benchmark need each of them at a known, low rate.

Each pattern is one function named after what it simulates. Person patterns are planned per
household (:func:`plan_person_patterns`) with a random generator of their own, so the rest of
the household's plan draws the same numbers with the patterns on or off. Facility patterns
need persons of several households and are planned once every household exists
(:func:`plan_facility_patterns`). A pattern only schedules visits (the household's
``_a_open`` steered by :class:`~yibao.dev.generate.Steer`) or, for a death registered late,
the lag; the visits then live the usual life (charges, checkout, payments, refunds; a
blocked checkout is corrected and checked out again).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from yibao.dev.generate import (
    _DX_OUTPATIENT,
    _FACILITIES,
    _INPATIENT_DX,
    AUDITED,
    HOUR_MS,
    Line,
    Steer,
    _at_local,
    _Facility,
    _InpatientDx,
    _Person,
)

if TYPE_CHECKING:
    from yibao.dev.generate import _Generator, _Household

__all__ = ["plan_birth_patterns", "plan_facility_patterns", "plan_person_patterns"]

# ------------------------------------------------------------------- rates (per year)

P_WRONG_CODE = 0.012  # per person: a restricted code billed against its restriction
P_PSA_SCREENING = 0.15  # men 50+
P_HCG_TEST = 0.06  # women 18-45
P_PAEDIATRIC_AMOXICILLIN = 0.5  # children up to 12
P_CHEST_CT = 0.05  # adults 40+
P_HEAD_MRI = 0.03  # adults 30+
P_HBA1C_QUARTERLY = 0.7  # diabetics
P_PROSTATECTOMY = 0.01  # men 60+
P_NEONATAL_CARE = 0.08  # per infant: an incubator stay in the first year
P_DIALYSIS_SESSION = 0.6  # dialysis patients: a session billed under the catalog code
P_READMISSION = (0.003, 0.012)  # under 60, 60+; about a third after the 15-day window
P_OVERLAPPING_STAYS = 0.002  # adults 45+
P_OUTPATIENT_DURING_STAY = 0.004  # adults 18+
P_REPEAT_TEST = 0.008  # adults 18+
P_DOCTOR_SHOPPING = 0.004  # adults 18+
P_DEATH_REGISTERED_LATE = 0.3  # of deaths
HOUSEHOLDS_PER_GROUP_ADMISSION = 400  # per year
HOUSEHOLDS_PER_DAILY_SPIKE = 800  # per year

# The inpatient diagnoses of the table without surgery: pneumonia, stroke, chronic disease.
_MEDICAL_DX = [d for d in _INPATIENT_DX if d.surgery is None]
_BPH = _InpatientDx(("N40",), 12000, 0.3, 0.6, None, 6, 0.0)  # prostatectomy: the lines are steered
#: an infant's stay: neonatal jaundice, preterm care (the incubator days are steered)
_NEONATAL = _InpatientDx(("P59.9", "P07.3"), 8000, 0.4, 0.6, None, 5, 0.0)

Rng = random.Random
Pattern = Callable[["_Household", Rng, _Person], None]


# ------------------------------------------------------------------------------ helpers


def _instant(rng: Rng, day: int, lo_h: int = 8, hi_h: int = 17) -> int:
    return _at_local(day, rng.randrange(lo_h * HOUR_MS, hi_h * HOUR_MS))


def _facility(rng: Rng, region: str, levels: tuple[int, ...], other_than: _Facility | None = None
              ) -> _Facility:
    """A facility of one of ``levels`` in ``region`` (not ``other_than``)."""
    pool = [f for lv in levels for f in _FACILITIES[region][lv - 1] if f != other_than]
    if not pool:  # a region without that level: any other facility of the region
        pool = [f for fs in _FACILITIES[region] for f in fs if f != other_than]
    return rng.choice(pool)


def _lines(fac: _Facility, *codes: tuple[str, int]) -> tuple[Line, ...]:
    """Lines of audit-catalog codes (code, quantity) at ``fac``'s price level."""
    return tuple((AUDITED[c], q, AUDITED[c].prices[fac.level - 1], None) for c, q in codes)


def _start_day(h: _Household, rng: Rng, p: _Person, span: int) -> int | None:
    """A day to start a pattern of ``span`` days: registered, enrolled and alive throughout;
    None if the period has no room for it."""
    g = h.gen
    lo = max(g.start_day, h.reg_day + 2, p.eff)
    hi = g.end_day - span
    if p.death is not None:
        hi = min(hi, p.death - span)
    return rng.randrange(lo, hi) if lo < hi else None


def _open(h: _Household, ms: int, p: _Person, kind: str, steer: Steer,
          dx: _InpatientDx | None = None) -> None:
    h.at(ms, h._a_open, (p, kind, dx, steer))


def _stay(h: _Household, rng: Rng, p: _Person, day: int, fac: _Facility, dx: _InpatientDx,
          code: str, days: int, extra: tuple[Line, ...] = ()) -> None:
    """An inpatient stay admitted on ``day`` with first diagnosis ``code``."""
    _open(h, _instant(rng, day, 7, 20), p, "inpatient", Steer(fac, (code,), days, extra), dx)


def _outpatient(h: _Household, rng: Rng, p: _Person, day: int, fac: _Facility,
                diagnoses: tuple[str, ...] | None, *codes: tuple[str, int],
                kind: str = "outpatient") -> None:
    _open(h, _instant(rng, day), p, kind, Steer(fac, diagnoses, 0, _lines(fac, *codes)))


def _chance(h: _Household, rng: Rng, p_per_year: float) -> bool:
    return rng.random() < p_per_year * h.years


# ------------------------------------------------------------------ restricted codes


def restricted_codes_used_rightly(h: _Household, rng: Rng, p: _Person) -> None:
    """The restricted codes as doctors use them: every restriction met, so no flag."""
    age = p.age(h.reg_day)
    region = p.region
    if p.sex == "M" and age >= 50 and _chance(h, rng, P_PSA_SCREENING):
        day = _start_day(h, rng, p, 1)
        if day is not None:
            _outpatient(h, rng, p, day, _facility(rng, region, (1, 2, 3)), ("Z00.0",), ("LAB-PSA", 1))
    if p.sex == "F" and 18 <= age <= 45 and _chance(h, rng, P_HCG_TEST):
        day = _start_day(h, rng, p, 1)
        if day is not None:
            _outpatient(h, rng, p, day, _facility(rng, region, (1, 2, 3)), ("N91.2",), ("LAB-HCG", 1))
    if age <= 12 and _chance(h, rng, P_PAEDIATRIC_AMOXICILLIN):
        day = _start_day(h, rng, p, 1)
        if day is not None:
            dx = rng.choice(("J06.9", "J02.9", "J20.9"))
            _outpatient(h, rng, p, day, _facility(rng, region, (1, 2)), (dx,),
                        ("DRUG-PED-AMOX", rng.randrange(1, 4)))
    if age >= 40 and _chance(h, rng, P_CHEST_CT):
        day = _start_day(h, rng, p, 1)
        if day is not None:
            _outpatient(h, rng, p, day, _facility(rng, region, (2, 3)), ("J18.9",), ("IMG-CT-CHEST", 1))
    if age >= 30 and _chance(h, rng, P_HEAD_MRI):
        day = _start_day(h, rng, p, 1)
        if day is not None:
            _outpatient(h, rng, p, day, _facility(rng, region, (3,)), ("R51",), ("IMG-MRI-HEAD", 1))
    if "diabetes" in p.conditions and rng.random() < P_HBA1C_QUARTERLY:
        hba1c_every_quarter(h, rng, p)
    if p.sex == "M" and age >= 60 and _chance(h, rng, P_PROSTATECTOMY):
        day = _start_day(h, rng, p, 10)
        if day is not None:
            fac = _facility(rng, region, (2, 3))
            extra = _lines(fac, ("SVC-PROSTATECTOMY", 1), ("SVC-ANES-MONITOR", rng.randrange(1, 4)))
            _stay(h, rng, p, day, fac, _BPH, "N40", rng.randrange(4, 9), extra)


def incubator_days_for_an_infant(h: _Household, rng: Rng, p: _Person) -> None:
    """An infant in hospital in its first year (after its registration, which comes 7 to
    60 days after birth), one incubator day per day in a level-2 or -3 hospital: within
    SVC-NEONATAL's age, level, setting and daily limit."""
    g = h.gen
    if p.birth + 330 <= max(g.start_day, h.reg_day) or not rng.random() < P_NEONATAL_CARE:
        return
    days = rng.randrange(2, 7)
    lo = max(g.start_day, h.reg_day + 2, p.eff, p.birth + 62)
    # discharged (the service date) well before the first birthday
    hi = min(g.end_day - days - 1, p.birth + 330 - days)
    if p.death is not None:
        hi = min(hi, p.death - days - 1)
    if lo >= hi:
        return
    day = rng.randrange(lo, hi)
    fac = _facility(rng, p.region, (2, 3))
    _stay(h, rng, p, day, fac, _NEONATAL, rng.choice(_NEONATAL.codes), days,
          _lines(fac, ("SVC-NEONATAL", days)))


def dialysis_session_by_catalog_code(h: _Household, rng: Rng, p: _Person) -> None:
    """A dialysis patient's session billed under the catalog's SVC-HEMODIALYSIS (the usual
    special-disease visits bill the national code, several sessions a visit): one session,
    one day, a level-2 or -3 hospital."""
    if p.special != "DIALYSIS" or not rng.random() < P_DIALYSIS_SESSION:
        return
    day = _start_day(h, rng, p, 1)
    if day is not None:
        _outpatient(h, rng, p, day, _facility(rng, p.region, (2, 3)), ("N18.6",),
                    ("SVC-HEMODIALYSIS", 1))


def hba1c_every_quarter(h: _Household, rng: Rng, p: _Person) -> None:
    """A diabetic's glycated haemoglobin every three months: outside LAB-HBA1C's 60 days."""
    day = _start_day(h, rng, p, 1)
    fac = _facility(rng, p.region, (1, 2))
    while day is not None and day < h.gen.end_day and (p.death is None or day < p.death):
        _outpatient(h, rng, p, day, fac, None, ("LAB-HBA1C", 1), kind="outpatient_chronic")
        day += rng.randrange(85, 100)


def restricted_code_used_wrongly(h: _Household, rng: Rng, p: _Person) -> None:
    """A restricted code billed against its restriction: to the wrong family member's sex, a
    child's drug to an adult, a scan a small hospital may not bill, a bed-day outside a stay,
    more bed-days or anaesthesia hours than the visit has days. All but the CT scans billed
    three times a day block the checkout."""
    if not _chance(h, rng, P_WRONG_CODE):
        return
    day = _start_day(h, rng, p, 12)
    if day is None:
        return
    age = p.age(day)
    region = p.region
    variants = ["sex", "level", "setting", "bed_days", "anaesthesia", "ct_per_day",
                "dialysis_per_day"]
    if age >= 18:
        variants += ["age", "incubator_age"]
    variant = rng.choice(variants)
    if variant == "sex":
        code = "LAB-PSA" if p.sex == "F" else "LAB-HCG"
        _outpatient(h, rng, p, day, _facility(rng, region, (1, 2, 3)), ("Z00.0",), (code, 1))
    elif variant == "age":
        _outpatient(h, rng, p, day, _facility(rng, region, (1, 2)), ("J06.9",), ("DRUG-PED-AMOX", 2))
    elif variant == "level":
        if rng.random() < 0.6:
            _outpatient(h, rng, p, day, _facility(rng, region, (1,)), ("J20.9",), ("IMG-CT-CHEST", 1))
        else:
            _outpatient(h, rng, p, day, _facility(rng, region, (1, 2)), ("R51",), ("IMG-MRI-HEAD", 1))
    elif variant == "setting":
        _outpatient(h, rng, p, day, _facility(rng, region, (2, 3)), ("R07.4",), ("SVC-BED-WARD", 1),
                    kind="emergency")
    elif variant == "bed_days":
        fac = _facility(rng, region, (1, 2))
        dx = rng.choice(_MEDICAL_DX)
        _stay(h, rng, p, day, fac, dx, rng.choice(dx.codes), rng.randrange(3, 9),
              _lines(fac, ("SVC-BED-WARD", rng.randrange(2, 5))))
    elif variant == "dialysis_per_day":  # two sessions on one day: one is not possible
        _outpatient(h, rng, p, day, _facility(rng, region, (2, 3)), ("N18.6",),
                    ("SVC-HEMODIALYSIS", 2))
    elif variant == "incubator_age":  # an adult's stay billed incubator days
        fac = _facility(rng, region, (2, 3))
        dx = rng.choice(_MEDICAL_DX)
        days = rng.randrange(3, 9)
        _stay(h, rng, p, day, fac, dx, rng.choice(dx.codes), days,
              _lines(fac, ("SVC-NEONATAL", days)))
    elif variant == "anaesthesia":
        _outpatient(h, rng, p, day, _facility(rng, region, (2, 3)), ("T14.1",),
                    ("SVC-ANES-MONITOR", rng.randrange(26, 40)), kind="emergency")
    else:
        _outpatient(h, rng, p, day, _facility(rng, region, (2, 3)), ("J18.9",), ("IMG-CT-CHEST", 3))


# --------------------------------------------------------------------- history patterns


def readmission(h: _Household, rng: Rng, p: _Person) -> None:
    """分解住院: discharged and readmitted with the same diagnosis, mostly within the 15 days
    of SPLIT_ADMISSION (mostly at the same hospital), else later (no flag)."""
    if not _chance(h, rng, P_READMISSION[int(p.age(h.reg_day) >= 60)]):
        return
    first, gap, second = rng.randrange(4, 11), rng.randrange(1, 16), rng.randrange(3, 9)
    if rng.random() < 0.3:
        gap = rng.randrange(16, 41)
    day = _start_day(h, rng, p, first + gap + second + 1)
    if day is None:
        return
    dx = rng.choice(_MEDICAL_DX)
    code = rng.choice(dx.codes)
    fac = _facility(rng, p.region, (1, 2, 3))
    again = fac if rng.random() < 0.7 else _facility(rng, p.region, (fac.level,), other_than=fac)
    _stay(h, rng, p, day, fac, dx, code, first)
    _stay(h, rng, p, day + first + gap, again, dx, code, second)


def overlapping_stays(h: _Household, rng: Rng, p: _Person) -> None:
    """Admitted to a second hospital while still in the first (挂床住院)."""
    if p.age(h.reg_day) < 45 or not _chance(h, rng, P_OVERLAPPING_STAYS):
        return
    first = rng.randrange(6, 13)
    day = _start_day(h, rng, p, first + 8)
    if day is None:
        return
    fac = _facility(rng, p.region, (2, 3))
    other = _facility(rng, p.region, (1, 2), other_than=fac)
    dx1, dx2 = rng.sample(_MEDICAL_DX, 2)
    _stay(h, rng, p, day, fac, dx1, rng.choice(dx1.codes), first)
    _stay(h, rng, p, day + rng.randrange(2, first - 1), other, dx2, rng.choice(dx2.codes),
          rng.randrange(3, 7))


def outpatient_during_stay(h: _Household, rng: Rng, p: _Person) -> None:
    """An outpatient claim while in hospital: billed by the same hospital, or at another."""
    if p.age(h.reg_day) < 18 or not _chance(h, rng, P_OUTPATIENT_DURING_STAY):
        return
    days = rng.randrange(5, 13)
    day = _start_day(h, rng, p, days + 1)
    if day is None:
        return
    fac = _facility(rng, p.region, (1, 2, 3))
    dx = rng.choice(_MEDICAL_DX)
    _stay(h, rng, p, day, fac, dx, rng.choice(dx.codes), days)
    where = fac if rng.random() < 0.4 else _facility(rng, p.region, (1, 2), other_than=fac)
    _outpatient(h, rng, p, day + rng.randrange(1, days), where, (rng.choice(_DX_OUTPATIENT),))


# A test repeated within its FREQUENCY window: code, window (days), facility levels, diagnosis.
_REPEATS = (
    ("IMG-CT-CHEST", 7, (2, 3), "J18.9"),
    ("IMG-MRI-HEAD", 30, (3,), "R51"),
    ("LAB-PSA", 30, (1, 2, 3), "Z00.0"),
    ("LAB-HBA1C", 60, (1, 2, 3), "E11.9"),
)


def repeat_test(h: _Household, rng: Rng, p: _Person) -> None:
    """超频次: the same test again inside its window, often at another facility."""
    if p.age(h.reg_day) < 18 or not _chance(h, rng, P_REPEAT_TEST):
        return
    code, window, levels, dx = rng.choice([r for r in _REPEATS if r[0] != "LAB-PSA" or p.sex == "M"])
    gap = rng.randrange(1, window)
    day = _start_day(h, rng, p, gap + 1)
    if day is None:
        return
    fac = _facility(rng, p.region, levels)
    again = fac if rng.random() < 0.4 else _facility(rng, p.region, levels, other_than=fac)
    _outpatient(h, rng, p, day, fac, (dx,), (code, 1))
    _outpatient(h, rng, p, day + gap, again, (dx,), (code, 1))


def doctor_shopping(h: _Household, rng: Rng, p: _Person) -> None:
    """多点就医: one complaint taken to three to five facilities within a few weeks."""
    if p.age(h.reg_day) < 18 or not _chance(h, rng, P_DOCTOR_SHOPPING):
        return
    n = rng.randrange(3, 6)
    offsets = sorted(rng.sample(range(26), n))
    day = _start_day(h, rng, p, offsets[-1] + 1)
    if day is None:
        return
    dx = rng.choice(("M54.5", "R51", "K29.7", "G47.0"))
    pool = [f for fs in _FACILITIES[p.region] for f in fs]
    for off, fac in zip(offsets, rng.sample(pool, n), strict=True):
        kind = "emergency" if rng.random() < 0.15 else "outpatient"
        _outpatient(h, rng, p, day + off, fac, (dx,), kind=kind)


def death_registered_late(h: _Household, rng: Rng, p: _Person) -> None:
    """A death registered weeks late while the card goes on being used (drugs fetched by a
    relative): claims opened after the date of death, CLAIM_AFTER_DEATH once it is known."""
    if p.death is None or rng.random() >= P_DEATH_REGISTERED_LATE:
        return
    p.death_lag = rng.randrange(30, 121)
    kind = "outpatient_chronic" if p.conditions else "outpatient"
    fac = _facility(rng, p.region, (1,))
    for off in sorted(rng.sample(range(2, p.death_lag - 2), rng.randrange(1, 4))):
        if p.death + off < h.gen.end_day:
            _outpatient(h, rng, p, p.death + off, fac, None, kind=kind)


_PERSON_PATTERNS: tuple[Pattern, ...] = (
    restricted_codes_used_rightly,
    restricted_code_used_wrongly,
    readmission,
    overlapping_stays,
    outpatient_during_stay,
    repeat_test,
    doctor_shopping,
    death_registered_late,
    incubator_days_for_an_infant,
    dialysis_session_by_catalog_code,
)


def plan_birth_patterns(h: _Household, baby: _Person) -> None:
    """The patterns of a child born in the log's period (planned after the household's
    persons), from a random generator of their own."""
    rng = random.Random(f"yibao-generate:{h.gen.seed}:{h.idx}:audit-birth")
    incubator_days_for_an_infant(h, rng, baby)


def plan_person_patterns(h: _Household) -> None:
    """The person patterns of one household, from a random generator of its own."""
    rng = random.Random(f"yibao-generate:{h.gen.seed}:{h.idx}:audit")
    for p in list(h.persons):
        for pattern in _PERSON_PATTERNS:
            pattern(h, rng, p)


# --------------------------------------------------------------------- facility patterns


def _candidates(households: list[_Household], region: str, day: int, min_age: int
                ) -> dict[int, list[tuple[_Household, _Person]]]:
    """By household: the persons of ``region``'s households who can be treated on ``day``
    (registered, enrolled, alive for a month, at least ``min_age``)."""
    out: dict[int, list[tuple[_Household, _Person]]] = {}
    for h in households:
        if h.persons[0].region != region or h.reg_day + 2 > day:
            continue
        for p in h.persons:
            if (p.birth <= h.reg_day and p.eff <= day and p.age(day) >= min_age
                    and (p.death is None or p.death > day + 30)):
                out.setdefault(h.idx, []).append((h, p))
    return out


def _count(gen: _Generator, households_per_year: int) -> int:
    return max(1, round(gen.households / households_per_year * gen.days / 365))


def _busiest_regions(households: list[_Household]) -> list[str]:
    """Regions by how many households live there, most first (ties by code)."""
    n: dict[str, int] = {}
    for h in households:
        n[h.persons[0].region] = n.get(h.persons[0].region, 0) + 1
    return sorted(n, key=lambda r: (-n[r], r))


def group_admission(gen: _Generator, households: list[_Household], rng: Rng, region: str) -> None:
    """结伴住院: a small hospital admits a group of older neighbours the same day with the same
    diagnosis (free transport and meals for a 'check-up' stay): 5 to 9 stays of 3 to 6
    households, GROUP_ADMISSION for tier B."""
    if gen.days < 60:
        return
    day = rng.randrange(gen.start_day + 5, gen.end_day - 45)
    by_household = _candidates(households, region, day, 50)
    if len(by_household) < 3:
        return
    chosen = rng.sample(sorted(by_household), min(len(by_household), rng.randrange(3, 7)))
    members = [hp for idx in chosen for hp in by_household[idx][:2]]
    if len(members) < 5:
        return
    fac = _facility(rng, region, (1, 2))
    dx = rng.choice(_MEDICAL_DX)
    code = dx.codes[0]
    for h, p in members[:9]:
        _stay(h, rng, p, day, fac, dx, code, rng.randrange(5, 13))


def daily_spike(gen: _Generator, households: list[_Household], rng: Rng, region: str) -> None:
    """A clinic bills a 'free check-up day' as 24 to 30 outpatient claims: many times its
    usual day, FACILITY_DAILY_SPIKE for tier B."""
    if gen.days < 45:
        return
    day = rng.randrange(gen.start_day + 35, gen.end_day - 5)
    members = [hp for ps in _candidates(households, region, day, 18).values() for hp in ps]
    if len(members) < 24:
        return
    fac = _facility(rng, region, (1,))
    for h, p in rng.sample(members, min(len(members), rng.randrange(24, 31))):
        _outpatient(h, rng, p, day, fac, ("Z00.0",))


def plan_facility_patterns(gen: _Generator, households: list[_Household]) -> None:
    """The patterns across households, in the regions where most households live."""
    rng = random.Random(f"yibao-generate:{gen.seed}:facility-audit")
    regions = _busiest_regions(households)[:5]
    for _ in range(_count(gen, HOUSEHOLDS_PER_GROUP_ADMISSION)):
        group_admission(gen, households, rng, rng.choice(regions))
    for _ in range(_count(gen, HOUSEHOLDS_PER_DAILY_SPIKE)):
        daily_spike(gen, households, rng, regions[0] if len(regions) < 2 else rng.choice(regions[:2]))
