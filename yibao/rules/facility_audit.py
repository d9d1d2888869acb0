"""Tier B of the fund audit (audit.md "Tier B: facility windows"): patterns across one
facility's patients over a window, computed from settlement outputs alone.

Pure: :class:`FacilityWindows` is fed the ``settlements`` records in order, each with the
number of the input partition it came from, and returns the ``FacilityFlagRaised`` events
of the windows that closed. The live stage (:mod:`yibao.streams.facility_audit`) and file
mode (``yibao audit facilities``) both drive it, so they give the same flags.

Event time, never wall clock. Each input partition has a *mark*, the latest service date
seen on it; the stage's event time is the smallest mark (a window is evaluated once every
partition has shown a claim with a service date after the window's end). A claim or a
reversal counts in a window only while its own partition's mark has not passed the
window's end: so what a window holds depends on each partition's own order only, never on
how the partitions interleave, and a replay of the same ``settlements`` log gives the same
flags. With one partition this is audit.md's sentence word for word.

State per facility is the claims still in an open window and the daily counts of the last
:data:`SPIKE_BASELINE_DAYS` closed service dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import msgspec

from yibao.schemas.events import ClaimReversed, ClaimSettled, FacilityFlagRaised

GROUP_ADMISSION_MIN_CLAIMS = 5
GROUP_ADMISSION_MIN_HOUSEHOLDS = 3
#: A ``GROUP_ADMISSION`` window (admissions of one local date) collects the claims whose
#: service date (discharge) is within this many days of it: its ``window_end``.
ADMISSION_HORIZON_DAYS = 30
SPIKE_MIN_CLAIMS = 20
SPIKE_FACTOR = 3
SPIKE_BASELINE_DAYS = 28


class WindowClaim(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """What tier B keeps of a current claim while one of its windows is open. Dates are
    ordinals; ``admission`` is the claim's ``GROUP_ADMISSION`` window end (0: in none),
    ``in_day`` whether it counts in its service date's window."""

    visit_id: str
    settlement_seq: int
    household_id: str
    partition: int
    service_date: int
    payout: int
    in_day: bool
    opened_date: int = 0
    dx3: str = ""
    admission: int = 0


class FacilityState(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    claims: dict[str, WindowClaim] = msgspec.field(default_factory=dict)
    counts: dict[int, int] = msgspec.field(default_factory=dict)  # closed date -> claims


def payout_of(s: ClaimSettled) -> int:
    """audit.md's fund payout: what the funds paid for the claim."""
    a = s.amounts
    return a.basic_fund + a.major_illness + a.assistance


def flag_id(rule: str, facility_id: str, window_start: dt.date, dx3: str = "") -> str:
    """Derived from rule, facility and window only: the same window raises the same id."""
    return "/".join(x for x in (rule, facility_id, window_start.isoformat(), dx3) if x)


def group_admission(facility_id: str, opened: dt.date, dx3: str,
                    claims: list[WindowClaim]) -> FacilityFlagRaised | None:
    """结伴住院: 5 or more inpatient claims admitted the same local date with the same dx3,
    of persons of 3 or more households."""
    households = {c.household_id for c in claims}
    if len(claims) < GROUP_ADMISSION_MIN_CLAIMS or len(households) < GROUP_ADMISSION_MIN_HOUSEHOLDS:
        return None
    end = opened + dt.timedelta(days=ADMISSION_HORIZON_DAYS)
    return FacilityFlagRaised(
        event_id=flag_id("GROUP_ADMISSION", facility_id, opened, dx3), rule="GROUP_ADMISSION",
        severity="warn", facility_id=facility_id, window_start=opened, window_end=end,
        count=len(claims), amount_fen=sum(c.payout for c in claims),
        detail=(f"{len(claims)} inpatient claims of {len(households)} households admitted "
                f"{opened} with dx3 {dx3} (discharged by {end})"))


def facility_daily_spike(facility_id: str, day: dt.date, claims: list[WindowClaim],
                         baseline: int) -> FacilityFlagRaised | None:
    """Claims of one service date >= 20 and > 3 x the mean daily claims of the
    :data:`SPIKE_BASELINE_DAYS` service dates before it (``baseline`` is their sum; a date
    without claims counts 0)."""
    n = len(claims)
    if n < SPIKE_MIN_CLAIMS or n * SPIKE_BASELINE_DAYS <= SPIKE_FACTOR * baseline:
        return None
    return FacilityFlagRaised(
        event_id=flag_id("FACILITY_DAILY_SPIKE", facility_id, day), rule="FACILITY_DAILY_SPIKE",
        severity="info", facility_id=facility_id, window_start=day, window_end=day, count=n,
        amount_fen=sum(c.payout for c in claims),
        detail=(f"{n} claims on {day} > {SPIKE_FACTOR} x mean {baseline}/{SPIKE_BASELINE_DAYS}"
                f" = {baseline / SPIKE_BASELINE_DAYS:.2f} of the service dates before"))


class FacilityWindows:
    """Tier B's state and its step; see the module docstring for the event-time rules.

    ``take_changes`` reports what changed since it was last called (facilities and the
    marks), for a changelog; ``restore_*`` rebuild the state from one.
    """

    def __init__(self, partitions: int = 1) -> None:
        self.marks = [0] * partitions  # per input partition: latest service date (ordinal)
        self.facilities: dict[str, FacilityState] = {}
        self.where: dict[str, str] = {}  # visit_id -> facility_id of a claim in open windows
        self.changed: set[str] = set()
        self.marks_changed = False

    @property
    def event_time(self) -> int:
        """The latest date every partition has passed (0 before all have shown a claim)."""
        return min(self.marks)

    def feed(self, out: object, partition: int = 0) -> list[FacilityFlagRaised]:
        """One ``settlements`` record (any output type; only claims and reversals count),
        read from input ``partition``; the flags of the windows it closed."""
        if isinstance(out, ClaimSettled):
            return self.claim_settled(out, partition)
        if isinstance(out, ClaimReversed):
            self.claim_reversed(out)
        return []

    def claim_settled(self, s: ClaimSettled, partition: int) -> list[FacilityFlagRaised]:
        mark = self.marks[partition]
        day = s.service_date.toordinal()
        admission = 0
        if s.kind == "inpatient" and s.dx3 and s.opened_date is not None:
            end = s.opened_date.toordinal() + ADMISSION_HORIZON_DAYS
            if day <= end and mark <= end:
                admission = end
        claim = WindowClaim(
            visit_id=s.visit_id, settlement_seq=s.settlement_seq, household_id=s.household_id,
            partition=partition, service_date=day, payout=payout_of(s), in_day=mark <= day,
            opened_date=s.opened_date.toordinal() if admission and s.opened_date else 0,
            dx3=(s.dx3 or "") if admission else "", admission=admission)
        self._drop(s.visit_id)  # a settlement replaces the visit's previous one
        if claim.in_day or claim.admission:
            self.facilities.setdefault(s.facility_id, FacilityState()).claims[s.visit_id] = claim
            self.where[s.visit_id] = s.facility_id
            self.changed.add(s.facility_id)
        if day > mark:
            before = self.event_time
            self.marks[partition] = day
            self.marks_changed = True
            if self.event_time > before:
                return self.close_windows(self.event_time)
        return []

    def claim_reversed(self, r: ClaimReversed) -> None:
        """A reversal takes its claim out of every window its partition has not passed."""
        facility = self.where.get(r.visit_id)
        if facility is None:
            return
        state = self.facilities[facility]
        c = state.claims[r.visit_id]
        if c.settlement_seq != r.settlement_seq:
            return
        mark = self.marks[c.partition]
        in_day = c.in_day and mark > c.service_date
        admission = c.admission if c.admission and mark > c.admission else 0
        if in_day or admission:  # closed for its partition: it stays as it was counted
            state.claims[r.visit_id] = msgspec.structs.replace(c, in_day=in_day,
                                                               admission=admission)
        else:
            del state.claims[r.visit_id]
            del self.where[r.visit_id]
        self.changed.add(facility)

    def _drop(self, visit_id: str) -> None:
        facility = self.where.pop(visit_id, None)
        if facility is not None:
            del self.facilities[facility].claims[visit_id]
            self.changed.add(facility)

    def close_windows(self, now: int) -> list[FacilityFlagRaised]:
        """Evaluate every window whose end is before ``now`` and forget it; flags sorted by
        window end, rule, facility, window start and dx3, whatever the order of arrival."""
        flags: list[FacilityFlagRaised] = []
        for facility in sorted(self.facilities):
            state = self.facilities[facility]
            flags.extend(self.close_facility(facility, state, now))
        flags.sort(key=lambda f: (f.window_end, f.rule, f.facility_id, f.window_start, f.event_id))
        return flags

    def close_facility(self, facility: str, state: FacilityState,
                       now: int) -> Iterable[FacilityFlagRaised]:
        days: dict[int, list[WindowClaim]] = {}
        groups: dict[tuple[int, str], list[WindowClaim]] = {}
        for c in state.claims.values():
            if c.in_day and c.service_date < now:
                days.setdefault(c.service_date, []).append(c)
            if c.admission and c.admission < now:
                groups.setdefault((c.opened_date, c.dx3), []).append(c)
        if not days and not groups:
            return []
        self.changed.add(facility)
        flags = []
        for day in sorted(days):
            baseline = sum(state.counts.get(day - k, 0) for k in range(1, SPIKE_BASELINE_DAYS + 1))
            flag = facility_daily_spike(facility, dt.date.fromordinal(day), days[day], baseline)
            if flag is not None:
                flags.append(flag)
            state.counts[day] = len(days[day])
        for opened, dx3 in sorted(groups):
            flag = group_admission(facility, dt.date.fromordinal(opened), dx3, groups[opened, dx3])
            if flag is not None:
                flags.append(flag)
        oldest = now - 1 - SPIKE_BASELINE_DAYS
        state.counts = {d: n for d, n in state.counts.items() if d >= oldest}
        for visit_id, c in list(state.claims.items()):
            in_day = c.in_day and c.service_date >= now
            admission = c.admission if c.admission >= now else 0
            if in_day or admission:
                if (in_day, admission) != (c.in_day, c.admission):
                    state.claims[visit_id] = msgspec.structs.replace(
                        c, in_day=in_day, admission=admission)
            else:
                del state.claims[visit_id]
                del self.where[visit_id]
        return flags

    # -- changelog ------------------------------------------------------------------------

    def take_changes(self) -> tuple[dict[str, bytes | None], list[int] | None]:
        """Changed facilities (encoded state, ``None`` once it holds nothing) and the marks
        if they moved, since the last call."""
        encode = msgspec.msgpack.encode
        out: dict[str, bytes | None] = {}
        for facility in sorted(self.changed):
            state = self.facilities.get(facility)
            if state is not None and not state.claims and not state.counts:
                del self.facilities[facility]
                state = None
            out[facility] = None if state is None else encode(state)
        self.changed.clear()
        marks = list(self.marks) if self.marks_changed else None
        self.marks_changed = False
        return out, marks

    def restore_facility(self, facility: str, value: bytes | None) -> None:
        """One changelog record (the latest per facility wins); then :meth:`restored`."""
        if value is None:
            self.facilities.pop(facility, None)
        else:
            self.facilities[facility] = msgspec.msgpack.decode(value, type=FacilityState)

    def restored(self) -> None:
        """Rebuild the visit index once every facility is restored."""
        self.where = {v: f for f, state in self.facilities.items() for v in state.claims}
        self.changed.clear()
        self.marks_changed = False

    def restore_marks(self, marks: list[int]) -> None:
        self.marks[: len(marks)] = marks[: len(self.marks)]
