"""Step 0 check 9 (settlement.md): a checkout's own bill must match the visit's current lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy


def _outputs(events: list[dict[str, Any]]) -> list[Any]:
    fold = Fold(Engine(load_policy(None)))
    lines = [json.dumps(e).encode() for e in events]
    return [o for r in fold.run(lines) if isinstance(r, list) for o in r]


def _checkout(**bill: Any) -> list[Any]:
    """A visit with two lines (10,000 + 2,500 fen), one reversed line, then a checkout."""
    events = [
        registered("P1", "H1"),
        opened("P1", "V1"),
        charged("P1", "V1", [item("L1", amount=10_000), item("L2", amount=2_500)]),
        charged("P1", "V1", [item("L3", amount=700)]),
        envelope("ChargeReversed", "P1", visit_id="V1", line_ids=["L3"]),
        {**closed("P1", "V1"), **bill},
    ]
    return [o for o in _outputs(events) if o.caused_by == events[-1]["event_id"]]


@pytest.mark.parametrize("bill", [
    {},
    {"charged_total_fen": None, "charged_lines": None},
    {"charged_total_fen": 12_500, "charged_lines": 2},
    {"charged_total_fen": 12_500},
    {"charged_lines": 2},
])
def test_a_bill_that_matches_or_is_not_given_settles(bill: dict[str, Any]) -> None:
    out = _checkout(**bill)
    assert out[0].__class__.__name__ == "ClaimSettled", out[0]
    assert out[0].amounts.total == 12_500


@pytest.mark.parametrize(("bill", "says"), [
    ({"charged_total_fen": 12_501, "charged_lines": 2}, "charged_total_fen 12501"),
    ({"charged_total_fen": 12_499}, "charged_total_fen 12499"),
    ({"charged_lines": 3}, "charged_lines 3"),
    ({"charged_total_fen": 13_200, "charged_lines": 3}, "charged_lines 3"),  # the reversed line
    ({"charged_total_fen": 12_500, "charged_lines": 1}, "charged_lines 1"),
])
def test_a_bill_that_differs_is_charges_mismatch(bill: dict[str, Any], says: str) -> None:
    (out,) = _checkout(**bill)
    assert out.__class__.__name__ == "ClaimRejected"
    assert out.reason == "CHARGES_MISMATCH"
    assert says in out.detail and ("12500" in out.detail or "2 current lines" in out.detail)


def test_a_mismatch_changes_nothing_and_a_corrected_checkout_settles() -> None:
    base = [
        registered("P1", "H1"),
        opened("P1", "V1"),
        charged("P1", "V1", [item("L1", amount=10_000)]),
    ]
    early = {**closed("P1", "V1"), "event_id": "early", "charged_total_fen": 15_000,
             "charged_lines": 2}
    late_charge = charged("P1", "V1", [item("L2", amount=5_000)])
    again = {**closed("P1", "V1"), "event_id": "again", "charged_total_fen": 15_000,
             "charged_lines": 2}
    outs = _outputs([*base, early, late_charge, again])
    by_cause = {o.caused_by: o for o in outs if o.__class__.__name__.startswith("Claim")}
    assert by_cause["early"].reason == "CHARGES_MISMATCH"
    assert by_cause["again"].__class__.__name__ == "ClaimSettled"
    assert by_cause["again"].settlement_seq == 1
    assert by_cause["again"].amounts.total == 15_000


def test_check_9_comes_after_the_earlier_checks() -> None:
    """An unknown visit is UNKNOWN_VISIT (check 1) whatever its bill says."""
    events = [registered("P1", "H1"),
              {**closed("P1", "NOPE"), "charged_total_fen": 1, "charged_lines": 1}]
    (out,) = [o for o in _outputs(events) if o.caused_by == events[-1]["event_id"]]
    assert out.reason == "UNKNOWN_VISIT"
