"""Tier B (audit.md "Tier B: facility windows"): each rule at its boundary, reversals, the
event-time closing of windows, replays and restores, in the pure core and in file mode."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import msgspec
from click.testing import CliRunner

from yibao.cli import main
from yibao.rules.facility_audit import ADMISSION_HORIZON_DAYS, FacilityWindows
from yibao.schemas.events import Amounts, ClaimReversed, ClaimSettled, FacilityFlagRaised

D0 = dt.date(2025, 3, 1)
_n = iter(range(10**9))


def _amounts(fund: int) -> Amounts:
    z = dict.fromkeys(Amounts.__struct_fields__, 0)
    return Amounts(**{**z, "total": fund * 2, "basic_fund": fund, "assistance": 1})


def claim(day: dt.date, *, facility: str = "F1", household: str | None = None,
          inpatient: bool = False, opened: dt.date | None = None, dx3: str | None = "J18",
          fund: int = 100, seq: int = 1, visit: str | None = None) -> ClaimSettled:
    n = next(_n)
    return ClaimSettled(
        event_id=f"E{n}/0", caused_by=f"E{n}", person_id=f"P{n}", visit_id=visit or f"V{n}",
        household_id=household or f"H{n}", settlement_seq=seq, policy_version="2025",
        benefit_year=day.year, service_date=day, scheme="resident",
        kind="inpatient" if inpatient else "outpatient", insured_region="110000",
        treatment_region="110000", facility_id=facility, cross_province=False,
        amounts=_amounts(fund), family_debits=[], trace=[],
        opened_date=(opened or day) if inpatient else None, dx3=dx3 if inpatient else None)


def reversal(c: ClaimSettled) -> ClaimReversed:
    return ClaimReversed(event_id=f"R{c.visit_id}/0", caused_by=f"R{c.visit_id}",
                         person_id=c.person_id, visit_id=c.visit_id,
                         settlement_seq=c.settlement_seq, amounts=c.amounts.negated(),
                         family_debits=[])


def run(records: list[object], partitions: int = 1,
        where: dict[str, int] | None = None) -> list[FacilityFlagRaised]:
    w = FacilityWindows(partitions)
    out: list[FacilityFlagRaised] = []
    for r in records:
        p = (where or {}).get(getattr(r, "visit_id", ""), 0)
        out.extend(w.feed(r, p))
    return out


def admissions(n: int, households: int, opened: dt.date = D0, **kw: object) -> list[ClaimSettled]:
    return [claim(opened + dt.timedelta(days=3), inpatient=True, opened=opened,
                  household=f"H-adm-{i % households}", **kw) for i in range(n)]  # type: ignore[arg-type]


def closer(day: dt.date, facility: str = "F-other") -> ClaimSettled:
    """A claim elsewhere whose service date moves event time to ``day``."""
    return claim(day, facility=facility)


AFTER_ADMISSIONS = D0 + dt.timedelta(days=ADMISSION_HORIZON_DAYS + 1)


# -- GROUP_ADMISSION ---------------------------------------------------------------------


def test_group_admission_fires_at_exactly_five_claims_of_three_households() -> None:
    adm = admissions(5, 3, fund=1000)
    flags = run([*adm, closer(AFTER_ADMISSIONS)])
    assert [(f.rule, f.severity, f.facility_id, f.window_start, f.count) for f in flags] == [
        ("GROUP_ADMISSION", "warn", "F1", D0, 5)]
    assert flags[0].amount_fen == sum(c.amounts.basic_fund + c.amounts.assistance for c in adm)
    assert flags[0].window_end == D0 + dt.timedelta(days=ADMISSION_HORIZON_DAYS)
    assert flags[0].event_id == f"GROUP_ADMISSION/F1/{D0}/J18"


def test_group_admission_needs_five_claims_three_households_same_dx3_and_date() -> None:
    assert run([*admissions(4, 3), closer(AFTER_ADMISSIONS)]) == []
    assert run([*admissions(5, 2), closer(AFTER_ADMISSIONS)]) == []
    mixed = [*admissions(4, 3), *admissions(1, 1, dx3="K35")]
    assert run([*mixed, closer(AFTER_ADMISSIONS)]) == []
    other_day = [*admissions(4, 3), *admissions(1, 1, opened=D0 + dt.timedelta(days=1))]
    assert run([*other_day, closer(AFTER_ADMISSIONS + dt.timedelta(days=1))]) == []
    no_dx = admissions(5, 3, dx3=None)
    assert run([*no_dx, closer(AFTER_ADMISSIONS)]) == []


def test_outpatient_claims_never_make_a_group_admission() -> None:
    outs = [claim(D0, household=f"H{i}") for i in range(6)]
    assert run([*outs, closer(AFTER_ADMISSIONS)]) == []


def test_group_admission_window_closes_only_after_a_later_service_date() -> None:
    adm = admissions(5, 3)
    end = D0 + dt.timedelta(days=ADMISSION_HORIZON_DAYS)
    assert run([*adm, closer(end)]) == []  # on the window's end: still open
    assert len(run([*adm, closer(end), closer(end + dt.timedelta(days=1))])) == 1


def test_a_reversal_takes_its_claim_out_of_the_group() -> None:
    adm = admissions(5, 3)
    assert run([*adm, reversal(adm[0]), closer(AFTER_ADMISSIONS)]) == []
    # settled again after the refund: back in
    again = claim(adm[0].service_date, inpatient=True, opened=D0, household=adm[0].household_id,
                  visit=adm[0].visit_id, seq=2)
    assert len(run([*adm, reversal(adm[0]), again, closer(AFTER_ADMISSIONS)])) == 1


def test_a_reversal_after_the_window_closed_changes_nothing() -> None:
    adm = admissions(5, 3)
    flags = run([*adm, closer(AFTER_ADMISSIONS), reversal(adm[0]),
                 closer(AFTER_ADMISSIONS + dt.timedelta(days=5))])
    assert len(flags) == 1


# -- FACILITY_DAILY_SPIKE ------------------------------------------------------------------


def spike_log(baseline_per_day: list[int], today: int) -> list[ClaimSettled]:
    """``baseline_per_day[i]`` claims on the i-th of the 28 dates before D0 + 28, then
    ``today`` claims on D0 + 28, then one on the day after (closing it)."""
    out = []
    for i, n in enumerate(baseline_per_day):
        out += [claim(D0 + dt.timedelta(days=i)) for _ in range(n)]
    day = D0 + dt.timedelta(days=28)
    out += [claim(day, fund=7) for _ in range(today)]
    return [*out, claim(day + dt.timedelta(days=1))]


def spikes(records: list[ClaimSettled]) -> list[FacilityFlagRaised]:
    return [f for f in run(records) if f.rule == "FACILITY_DAILY_SPIKE"]


def test_daily_spike_at_twenty_claims_above_three_times_the_mean() -> None:
    flags = spikes(spike_log([6] * 28, 20))  # mean 6: 3 x 6 = 18 < 20
    day = D0 + dt.timedelta(days=28)
    assert [(f.window_start, f.window_end, f.count, f.severity) for f in flags] == [
        (day, day, 20, "info")]
    assert flags[0].amount_fen == 20 * 8
    assert flags[0].event_id == f"FACILITY_DAILY_SPIKE/F1/{day}"


def test_daily_spike_boundaries() -> None:
    assert spikes(spike_log([0] * 28, 19)) == []  # 19 claims: under 20 however low the mean
    assert len(spikes(spike_log([0] * 28, 20))) == 1
    # 20 x 28 = 560 against 3 x the baseline's sum: 3 x 187 = 561 (no), 3 x 186 = 558 (yes)
    assert spikes(spike_log([7] * 19 + [6] * 9, 20)) == []
    assert len(spikes(spike_log([7] * 18 + [6] * 10, 20))) == 1
    # equal is not above: 21 claims against a mean of 7 (3 x 7 = 21)
    assert spikes(spike_log([7] * 28, 21)) == []


def test_daily_spike_mean_is_over_the_28_dates_before_only() -> None:
    # a busy date 29 days before does not count in the mean
    day = D0 + dt.timedelta(days=28)
    log = [claim(D0 - dt.timedelta(days=1)) for _ in range(500)] + spike_log([0] * 28, 20)
    assert [f.window_start for f in spikes(log)] == [D0 - dt.timedelta(days=1), day]
    log = [claim(D0) for _ in range(500)] + spike_log([0] * 28, 20)
    assert [f.window_start for f in spikes(log)] == [D0]


def test_daily_spike_counts_current_claims_and_closes_on_a_later_date_only() -> None:
    day = D0 + dt.timedelta(days=28)
    today = [claim(day) for _ in range(20)]
    assert run(today) == []  # never closed: no later service date seen
    assert run([*today, reversal(today[0]), claim(day + dt.timedelta(days=1))]) == []
    assert len(run([*today, claim(day + dt.timedelta(days=1))])) == 1


def test_a_claim_after_its_date_closed_is_late_and_not_counted() -> None:
    day = D0 + dt.timedelta(days=28)
    log = [*[claim(day) for _ in range(19)], claim(day + dt.timedelta(days=1)), claim(day)]
    assert run([*log, claim(day + dt.timedelta(days=2))]) == []


# -- determinism -------------------------------------------------------------------------


def mixed_log(seed: int) -> list[object]:
    rng = random.Random(seed)
    out: list[object] = []
    for d in range(60):
        day = D0 + dt.timedelta(days=d)
        for f in ("F1", "F2", "F3"):
            n = 30 if (f, d) in {("F1", 40), ("F2", 45)} else rng.randint(0, 4)
            out += [claim(day, facility=f, fund=rng.randint(1, 99)) for _ in range(n)]
        if d in (5, 20):
            out += admissions(6, 3, opened=day - dt.timedelta(days=2))
            out.append(reversal(out[-1]))  # type: ignore[arg-type]
    return out


def test_same_flags_on_replay_and_after_a_restore_from_the_changelog() -> None:
    log = mixed_log(1)
    first = run(log)
    assert {f.rule for f in first} == {"GROUP_ADMISSION", "FACILITY_DAILY_SPIKE"}
    assert run(log) == first
    w = FacilityWindows()
    out, changelog = [], {}
    for i, r in enumerate(log):
        out.extend(w.feed(r))
        facilities, marks = w.take_changes()
        changelog.update(facilities)
        if marks is not None:
            changelog["\x00marks"] = msgspec.json.encode(marks)
        if i == len(log) // 2:  # restart: a new instance from the changelog alone
            w = FacilityWindows()
            for k, v in changelog.items():
                if k == "\x00marks":
                    w.restore_marks(msgspec.json.decode(v))
                else:
                    w.restore_facility(k, v)
            w.restored()
    assert out == first


def test_partitions_interleaved_in_any_order_give_the_same_flags() -> None:
    """Live, the stage reads several settlements partitions: how they interleave must not
    matter, only each partition's own order."""
    log = mixed_log(2)
    part = {getattr(r, "visit_id", ""): hash(getattr(r, "household_id", "x")) % 3 for r in log
            if isinstance(r, ClaimSettled)}
    rng = random.Random(5)
    per = [[r for r in log if part[r.visit_id] == p] for p in range(3)]  # type: ignore[attr-defined]
    expected = run(log, 3, part)
    assert expected
    for _ in range(5):
        queues, shuffled = [list(q) for q in per], []
        while any(queues):
            q = rng.choice([q for q in queues if q])
            k = rng.randint(1, 40)
            shuffled += q[:k]
            del q[:k]
        assert sorted(run(shuffled, 3, part), key=lambda f: f.event_id) == sorted(
            expected, key=lambda f: f.event_id)


# -- file mode -----------------------------------------------------------------------------


def test_file_mode_flags_of_a_generated_log_are_deterministic(tmp_path: Path) -> None:
    r = CliRunner()
    gen = r.invoke(main, ["generate", "--households", "300", "--seed", "4",
                          "-o", str(tmp_path / "e.jsonl")])
    assert gen.exit_code == 0, gen.output
    settled = r.invoke(main, ["settle", str(tmp_path / "e.jsonl")])
    assert settled.exit_code == 0
    # a group admission after the generated year, and claims closing its window
    opened = dt.date(2026, 1, 10)
    extra = [*admissions(5, 3, opened=opened, facility="F-group"),
             claim(opened + dt.timedelta(days=ADMISSION_HORIZON_DAYS + 1))]
    (tmp_path / "s.jsonl").write_text(
        settled.stdout + "".join(msgspec.json.encode(c).decode() + "\n" for c in extra))
    runs = [r.invoke(main, ["audit", "facilities", str(tmp_path / "s.jsonl"), "--partitions", "1"])
            for _ in range(2)]
    assert runs[0].exit_code == 0, runs[0].output
    assert runs[0].stdout == runs[1].stdout
    flags = [msgspec.json.decode(x, type=FacilityFlagRaised) for x in runs[0].stdout.splitlines()]
    assert len({f.event_id for f in flags}) == len(flags)
    assert ("GROUP_ADMISSION", "F-group", opened) in {
        (f.rule, f.facility_id, f.window_start) for f in flags}
    assert all(json.loads(x)["type"] == "FacilityFlagRaised" for x in runs[0].stdout.splitlines())
