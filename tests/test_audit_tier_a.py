"""audit.md tier A in the engine: each rule at its boundaries, the emission order and ids,
AUDIT_BLOCK, pre-settlements and the catalog as data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from yibao.dev.events import envelope, item, registered
from yibao.rules.catalog import Catalog, load_catalog, parse_catalog
from yibao.rules.engine import Engine
from yibao.rules.exceptions import CatalogError
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.events import AuditFlagRaised

DAY = "2025-05-{:02d}T{}+08:00"


def _at(day: int, hour: str = "10:00:00") -> str:
    """A May 2025 instant (days past 31 run into June, July...)."""
    import datetime as dt

    d = dt.date(2025, 5, 1) + dt.timedelta(days=day - 1)
    return f"{d.isoformat()}T{hour}+08:00"


def _run(events: list[dict[str, Any]], catalog: Catalog | None = None) -> list[dict[str, Any]]:
    fold = Fold(Engine(load_policy(None), catalog))
    lines = [json.dumps(e).encode() for e in events]
    return [json.loads(json.dumps(o, default=str)) if isinstance(o, dict) else _b(o)
            for r in fold.run(lines) if isinstance(r, list) for o in r]


def _b(o: Any) -> dict[str, Any]:
    import msgspec

    return json.loads(msgspec.json.encode(o))


def _person(pid: str = "A", sex: str = "F", birth: str = "1970-01-01") -> dict[str, Any]:
    e = registered(pid, f"H{pid}", balance=0)
    e["sex"], e["birth_date"] = sex, birth
    return e


def _visit(pid: str, vid: str, *, kind: str = "outpatient", opened: str, closed: str,
           facility: str = "F1", level: int = 2, dx: str | None = "J18.9",
           codes: tuple[tuple[str, int, int], ...] = (("X0001", 1, 10_000),)
           ) -> list[dict[str, Any]]:
    """open, charge (one line per code: code, quantity, amount), close."""
    items = []
    for i, (code, qty, amount) in enumerate(codes, 1):
        it = item(f"L{i}", amount=amount, quantity=qty)
        it["code"] = code
        items.append(it)
    return [
        envelope("VisitOpened", pid, opened, visit_id=vid, facility_id=facility,
                 facility_level=level, facility_region="500000", kind=kind, opened_at=opened,
                 diagnoses=[dx] if dx else [], special_disease_code=None),
        envelope("ItemsCharged", pid, opened, visit_id=vid, items=items),
        {**envelope("VisitClosed", pid, closed, visit_id=vid, closed_at=closed),
         "event_id": f"{vid}-close"},
    ]


def _flags(outputs: list[dict[str, Any]], cause: str) -> list[tuple[str, str, str | None]]:
    return [(o["rule"], o["severity"], o["related_visit_id"]) for o in outputs
            if o["type"] == "AuditFlagRaised" and o["caused_by"] == cause]


def _rules(outputs: list[dict[str, Any]], cause: str) -> list[str]:
    return [r for r, _s, _v in _flags(outputs, cause)]


# ----------------------------------------------------------------------------- history


@pytest.mark.parametrize(("gap", "fires"), [(0, True), (15, True), (16, False)])
def test_split_admission_within_15_days_of_the_discharge(gap: int, fires: bool) -> None:
    events = [_person(), *_visit("A", "W", kind="inpatient", opened=_at(1), closed=_at(5)),
              *_visit("A", "V", kind="inpatient", opened=_at(5 + gap, "11:00:00"),
                      closed=_at(8 + gap))]
    out = _run(events)
    assert (_flags(out, "V-close")[:1] == [("SPLIT_ADMISSION", "warn", "W")]) is fires


def test_split_admission_picks_the_latest_discharge_and_is_info_elsewhere() -> None:
    events = [_person(),
              *_visit("A", "W1", kind="inpatient", opened=_at(1), closed=_at(4), facility="F2"),
              *_visit("A", "W2", kind="inpatient", opened=_at(4, "12:00:00"), closed=_at(6),
                      facility="F2", dx="J18.1"),
              *_visit("A", "V", kind="inpatient", opened=_at(10), closed=_at(12))]
    assert _flags(_run(events), "V-close")[0] == ("SPLIT_ADMISSION", "info", "W2")


def test_no_diagnosis_never_matches_on_dx3() -> None:
    events = [_person(), *_visit("A", "W", kind="inpatient", opened=_at(1), closed=_at(5), dx=None),
              *_visit("A", "V", kind="inpatient", opened=_at(6), closed=_at(8), dx=None)]
    assert "SPLIT_ADMISSION" not in _rules(_run(events), "V-close")


def test_overlapping_stays_at_other_facilities_each_in_opening_order() -> None:
    events = [_person(),
              *_visit("A", "W2", kind="inpatient", opened=_at(3), closed=_at(6), facility="F3",
                      dx="K35.0"),
              *_visit("A", "W1", kind="inpatient", opened=_at(2), closed=_at(4), facility="F2",
                      dx="K35.0"),
              *_visit("A", "S", kind="inpatient", opened=_at(2), closed=_at(9), facility="F1",
                      dx="K35.0"),  # same facility: never an overlap
              *_visit("A", "V", kind="inpatient", opened=_at(1), closed=_at(8), facility="F1",
                      dx="I10")]
    flags = [f for f in _flags(_run(events), "V-close") if f[0] == "OVERLAPPING_STAYS"]
    assert flags == [("OVERLAPPING_STAYS", "warn", "W1"), ("OVERLAPPING_STAYS", "warn", "W2")]


def test_outpatient_during_a_stay_both_ways_and_a_refund_leaves_the_history() -> None:
    stay = _visit("A", "W", kind="inpatient", opened=_at(1), closed=_at(10), facility="F2",
                  dx="I10")
    during = _visit("A", "O", opened=_at(3), closed=_at(3, "11:00:00"), facility="F2",
                    dx="J06.9")
    out = _run([_person(), *stay, *during])
    assert _flags(out, "O-close") == [("OUTPATIENT_DURING_STAY", "warn", "W")]
    # the other way round: the stay checked out after the outpatient visit, another facility
    out = _run([_person(), *during, *_visit("A", "W", kind="inpatient", opened=_at(1),
                                            closed=_at(10), facility="F9", dx="I10")])
    assert _flags(out, "W-close") == [("OUTPATIENT_DURING_STAY", "info", "O")]
    refund = envelope("VisitRefunded", "A", _at(11), visit_id="W", reason="test")
    out = _run([_person(), *stay, refund, *during])
    assert _rules(out, "O-close") == []


def test_frequency_boundary_and_the_90_day_history() -> None:
    """LAB-HBA1C: at most once in 60 days. Day 59 apart fires, day 60 does not."""
    def log(gap: int) -> list[dict[str, Any]]:
        return [_person(),
                *_visit("A", "W", opened=_at(1), closed=_at(1, "11:00:00"),
                        codes=(("LAB-HBA1C", 1, 5_000),)),
                *_visit("A", "V", opened=_at(1 + gap), closed=_at(1 + gap, "11:00:00"),
                        codes=(("X0001", 1, 100), ("LAB-HBA1C", 1, 5_000)))]
    assert _flags(_run(log(59)), "V-close") == [("FREQUENCY", "warn", "W")]
    assert _rules(_run(log(60)), "V-close") == []
    # with a 200-day window, the history's 90 days decide: d-90 is in, d-91 is out
    wide = _catalog_with({"LAB-HBA1C": {"freq_days": 200}})
    assert _rules(_run(log(90), wide), "V-close") == ["FREQUENCY"]
    assert _rules(_run(log(91), wide), "V-close") == []


def test_frequency_flag_carries_the_lines_of_the_code_and_their_amount() -> None:
    events = [_person(),
              *_visit("A", "W", opened=_at(1), closed=_at(1, "11:00:00"),
                      codes=(("IMG-CT-CHEST", 1, 30_000),)),
              *_visit("A", "V", opened=_at(3), closed=_at(3, "11:00:00"),
                      codes=(("IMG-CT-CHEST", 1, 30_000), ("X0001", 1, 100),
                             ("IMG-CT-CHEST", 1, 30_000)))]
    flag = next(o for o in _run(events) if o.get("rule") == "FREQUENCY")
    assert flag["line_ids"] == ["L1", "L3"] and flag["amount_fen"] == 60_000


def test_doctor_shopping_three_facilities_within_30_days() -> None:
    def log(third_day: int, kind: str = "outpatient") -> list[dict[str, Any]]:
        return [_person(),
                *_visit("A", "A1", opened=_at(1), closed=_at(1, "11:00:00"), facility="F1"),
                *_visit("A", "A2", opened=_at(2), closed=_at(2, "11:00:00"), facility="F2",
                        kind="emergency"),
                *_visit("A", "V", opened=_at(third_day), closed=_at(third_day, "11:00:00"),
                        facility="F3", kind=kind)]
    assert _rules(_run(log(30)), "V-close") == ["DOCTOR_SHOPPING"]  # day 1 = d - 29
    assert _rules(_run(log(31)), "V-close") == []  # day 1 = d - 30
    assert _rules(_run(log(10, "outpatient_chronic")), "V-close") == []


# ----------------------------------------------------------------------------- catalog


def test_audit_block_keeps_the_visit_open_and_raises_the_blocking_flags_only() -> None:
    events = [_person(sex="M"),
              *_visit("A", "V", opened=_at(1), closed=_at(1, "11:00:00"), level=1,
                      codes=(("LAB-HCG", 1, 2_000), ("SVC-BED-ICU", 1, 80_000),
                             ("LAB-HBA1C", 3, 9_000)))]
    out = _run(events)
    rejected = next(o for o in out if o["type"] == "ClaimRejected")
    assert rejected["reason"] == "AUDIT_BLOCK"
    assert rejected["detail"] == "SEX_RESTRICTED:L1, FACILITY_LEVEL:L2, CARE_SETTING:L2"
    assert [(o["event_id"], o["rule"], o["line_ids"]) for o in out
            if o["type"] == "AuditFlagRaised"] == [
        ("V-close/1", "SEX_RESTRICTED", ["L1"]), ("V-close/2", "FACILITY_LEVEL", ["L2"]),
        ("V-close/3", "CARE_SETTING", ["L2"])]  # the warn UNITS_PER_DAY of L3 is not raised
    # the hospital reverses the offending lines and closes again: settled, the visit was open
    again = [envelope("ChargeReversed", "A", _at(1, "12:00:00"), visit_id="V",
                      line_ids=["L1", "L2"]),
             {**envelope("VisitClosed", "A", _at(1, "12:00:00"), visit_id="V",
                         closed_at=_at(1, "12:00:00")), "event_id": "V-close2"}]
    out = _run([*events, *again])
    assert [o["type"] for o in out if o["caused_by"] == "V-close2"] == [
        "ClaimSettled", "AuditFlagRaised"]
    assert _flags(out, "V-close2") == [("UNITS_PER_DAY", "warn", None)]


def test_age_rules_and_a_person_born_after_the_service_date() -> None:
    child = _visit("A", "V", opened=_at(1), closed=_at(1, "11:00:00"),
                   codes=(("DRUG-PED-AMOX", 1, 1_000),))
    assert _rules(_run([_person(birth="2015-05-01"), *child]), "V-close") == []
    assert _rules(_run([_person(birth="2010-05-01"), *child]), "V-close") == ["AGE_RESTRICTED"]
    assert _rules(_run([_person(birth="2010-05-02"), *child]), "V-close") == []  # 14 still
    assert _rules(_run([_person(birth="2025-06-01"), *child]), "V-close") == ["AGE_RESTRICTED"]


def test_units_per_day_counts_the_days_of_the_visit() -> None:
    """A 3-day stay may bill 3 ward bed-days; 4 is blocked (absolute)."""
    def stay(days: int) -> list[dict[str, Any]]:
        return [_person(), *_visit("A", "V", kind="inpatient", opened=_at(1), closed=_at(3),
                                   codes=(("SVC-BED-WARD", days, 100 * days),))]
    assert next(o["type"] for o in _run(stay(3)) if o["caused_by"] == "V-close") == "ClaimSettled"
    assert next(o.get("reason") for o in _run(stay(4)) if o["caused_by"] == "V-close") == "AUDIT_BLOCK"


def test_a_preview_is_refused_for_a_block_and_lists_the_warnings_it_would_raise() -> None:
    blocked = _visit("A", "V", opened=_at(1), closed=_at(1, "11:00:00"),
                     codes=(("SVC-PROSTATECTOMY", 1, 1_000),))[:2]
    pre = {**envelope("PreSettlementRequested", "A", _at(1, "11:00:00"), visit_id="V",
                      closed_at=_at(1, "11:00:00")), "event_id": "pre"}
    out = _run([_person(sex="F"), *blocked, pre])
    assert [(o["type"], o.get("reason")) for o in out] == [("PreviewRejected", "AUDIT_BLOCK")]
    warned = _visit("A", "W", opened=_at(1), closed=_at(1, "11:00:00"),
                    codes=(("LAB-HBA1C", 2, 1_000),))[:2]
    pre_w = {**pre, "visit_id": "W"}
    out = _run([_person(), *warned, pre_w])
    assert [(o["type"], [a["rule"] for a in o["audit"]]) for o in out] == [
        ("ClaimPreviewed", ["UNITS_PER_DAY"])]


# ----------------------------------------------------------------------------- death


def test_claim_after_death_runs_on_every_accepted_death_in_settlement_order() -> None:
    events = [_person(),
              *_visit("A", "V2", opened=_at(20), closed=_at(20, "11:00:00"), facility="F2"),
              *_visit("A", "V1", opened=_at(10), closed=_at(10, "11:00:00"), facility="F1"),
              *_visit("A", "V0", opened=_at(2), closed=_at(2, "11:00:00"))]
    death = {**envelope("PersonDeceased", "A", _at(25), date_of_death="2025-05-05"),
             "event_id": "dead"}
    again = {**envelope("PersonDeceased", "A", _at(26), date_of_death="2025-05-15"),
             "event_id": "dead-again"}
    out = _run([*events, death, again])
    flags = [(o["event_id"], o["visit_id"], o["facility_id"]) for o in out
             if o.get("rule") == "CLAIM_AFTER_DEATH"]
    assert flags == [("dead/0", "V2", "F2"), ("dead/1", "V1", "F1"), ("dead-again/0", "V2", "F2")]
    unknown = {**envelope("PersonDeceased", "B", _at(25), date_of_death="2025-05-05")}
    assert [o["type"] for o in _run([unknown])] == ["EventRejected"]


# ----------------------------------------------------------------------------- the data


def _catalog_with(entries: dict[str, dict[str, Any]]) -> Catalog:
    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "yibao" / "rules" /
                         "catalog.toml").read_text())
    doc["version"].append({"id": "test", "inherits": "2020", "effective_from":
                           __import__("datetime").date(2021, 1, 1), "entries": entries})
    return parse_catalog(doc)


def test_the_catalog_is_validated_naming_the_bad_key() -> None:
    with pytest.raises(CatalogError, match=r"version\[2020\]\.entries\.LAB-PSA\.age_min"):
        parse_catalog({"version": [{"id": "2020", "effective_from": __import__(
            "datetime").date(2020, 1, 1), "entries": {"LAB-PSA": {"name": "x", "age_min": -1}}}]})
    with pytest.raises(CatalogError, match="unknown top-level key"):
        parse_catalog({"version": [], "overide": []})
    with pytest.raises(CatalogError, match="region"):
        parse_catalog({"version": [{"id": "v", "effective_from": __import__("datetime").date(
            2020, 1, 1), "entries": {}}], "override": [{"region": "50", "entries": {}}]})


def test_versions_and_region_overrides_apply_by_date_and_treatment_region() -> None:
    import datetime as dt

    catalog = parse_catalog({
        "version": [
            {"id": "2020", "effective_from": dt.date(2020, 1, 1),
             "entries": {"LAB-HBA1C": {"name": "hba1c", "max_per_day": 1}}},
            {"id": "2026", "inherits": "2020", "effective_from": dt.date(2026, 1, 1),
             "entries": {"LAB-HBA1C": {"removed": True}}}],
        "override": [{"region": "510000", "versions": ["2020"],
                      "entries": {"LAB-HBA1C": {"max_per_day": 3}}}]})
    assert catalog.in_force(dt.date(2019, 12, 31), "500000") is None
    v2025 = catalog.in_force(dt.date(2025, 6, 1), "500000")
    assert v2025 is not None and v2025.entries["LAB-HBA1C"].max_per_day == 1
    sichuan = catalog.in_force(dt.date(2025, 6, 1), "510100")
    assert sichuan is not None and sichuan.entries["LAB-HBA1C"].max_per_day == 3
    v2026 = catalog.in_force(dt.date(2026, 6, 1), "500000")
    assert v2026 is not None and "LAB-HBA1C" not in v2026.entries
    assert load_catalog().versions[0].entries["SVC-ANES-MONITOR"].max_per_day == 24


# ----------------------------------------------------------------------------- the state


def test_old_claims_shrink_to_what_claim_after_death_needs() -> None:
    """A claim more than 90 + late_checkout_days behind the person's newest settled service
    date keeps only the CLAIM_AFTER_DEATH fields: a checkout lagging by at most that still
    sees its whole history, one lagging more does not (the documented bound); deaths still
    see every settled visit and a refund takes a past claim out too."""
    from yibao.rules.audit import Thresholds

    old = _visit("A", "OLD", kind="inpatient", opened=_at(1), closed=_at(5), facility="F2")
    recent = _visit("A", "NEW", opened=_at(200), closed=_at(200, "11:00:00"), facility="F3")
    # checked out after NEW, 15 days after OLD's discharge (its service date lags NEW's)
    late = _visit("A", "LATE", kind="inpatient", opened=_at(20), closed=_at(22))

    def fold_with(lag: int) -> Fold:
        fold = Fold(Engine(load_policy(None), thresholds=Thresholds(late_checkout_days=lag)))
        list(fold.run(json.dumps(e).encode() for e in [_person(), *old, *recent]))
        return fold

    def outputs(fold: Fold, events: list[dict[str, Any]]) -> list[Any]:
        return [o for r in fold.run(json.dumps(e).encode() for e in events)
                if isinstance(r, list) for o in r]

    # OLD (service date day 5) is retired once 5 < 200 - 90 - lag, i.e. with a lag below 105
    within, beyond = fold_with(105), fold_with(104)
    assert [c.visit_id for c in within.state.persons["A"].claims] == ["OLD", "NEW"]
    assert [c.visit_id for c in beyond.state.persons["A"].claims] == ["NEW"]
    assert [(c.visit_id, c.facility_id, c.order) for c in
            beyond.state.persons["A"].past_claims] == [("OLD", "F2", 1)]
    assert [(o.rule, o.related_visit_id) for o in outputs(within, late)
            if isinstance(o, AuditFlagRaised)] == [("SPLIT_ADMISSION", "OLD")]
    assert [o.rule for o in outputs(beyond, late) if isinstance(o, AuditFlagRaised)] == []

    death = {**envelope("PersonDeceased", "A", _at(300), date_of_death="2025-04-01"),
             "event_id": "dead"}
    refund = envelope("VisitRefunded", "A", _at(300), visit_id="OLD", reason="test")
    fold = fold_with(0)
    person = fold.state.persons["A"]
    # the live processor keeps a household as msgpack of dict[person_id, Person]
    import msgspec

    from yibao.rules.state import Person
    raw = msgspec.msgpack.encode(fold.state.persons)
    assert msgspec.msgpack.Decoder(dict[str, Person]).decode(raw) == fold.state.persons
    payout = {c.visit_id: c.payout for c in person.claims}
    payout.update((c.visit_id, c.payout) for c in person.past_claims)
    after = outputs(fold, [death, refund, {**death, "event_id": "dead2"}])
    assert [(o.event_id, o.visit_id, o.amount_fen) for o in after
            if getattr(o, "rule", None) == "CLAIM_AFTER_DEATH"] == [
        ("dead/0", "OLD", payout["OLD"]), ("dead/1", "NEW", payout["NEW"]),
        ("dead2/0", "NEW", payout["NEW"])]
    assert fold.state.persons["A"].past_claims == []
