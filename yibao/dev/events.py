"""Builders for valid input events as dicts (the wire form), for tests."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)


def envelope(
    type_: str, person_id: str, when: str = "2025-03-01T09:00:00+08:00", **fields: Any
) -> dict[str, Any]:
    return {
        "type": type_,
        "event_id": f"t-{next(_ids)}",
        "schema_version": 1,
        "occurred_at": when,
        "source": "test",
        "person_id": person_id,
        **fields,
    }


def item(
    line_id: str,
    cls: str = "A",
    amount: int = 10000,
    quantity: int = 1,
    cap: int | None = None,
    category: str = "drug",
) -> dict[str, Any]:
    unit = amount // quantity
    return {
        "line_id": line_id,
        "code": "X0001",
        "name": line_id,
        "category": category,
        "catalog_class": cls,
        "quantity": quantity,
        "unit_price_fen": unit,
        "amount_fen": unit * quantity,
        "cap_fen": cap,
    }


def registered(
    person_id: str,
    household: str = "H1",
    scheme: str = "employee",
    region: str = "500000",
    retired: bool = False,
    assistance: str | None = None,
    balance: int = 0,
    effective_from: str = "2020-01-01",
) -> dict[str, Any]:
    return envelope(
        "PersonRegistered",
        person_id,
        household_id=household,
        scheme=scheme,
        region=region,
        birth_date="1960-01-01",
        sex="F",
        retired=retired,
        assistance=assistance,
        effective_from=effective_from,
        personal_account_fen=balance if scheme == "employee" else 0,
    )


def opened(
    person_id: str,
    visit_id: str,
    kind: str = "outpatient",
    level: int = 1,
    region: str = "500000",
    opened_at: str = "2025-03-01T10:00:00+08:00",
    diagnoses: list[str] | None = None,
    special: str | None = None,
) -> dict[str, Any]:
    return envelope(
        "VisitOpened",
        person_id,
        visit_id=visit_id,
        facility_id=f"F-{level}",
        facility_level=level,
        facility_region=region,
        kind=kind,
        opened_at=opened_at,
        diagnoses=diagnoses or ["J18.9"],
        special_disease_code=special,
    )


def charged(person_id: str, visit_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return envelope("ItemsCharged", person_id, visit_id=visit_id, items=items)


def closed(
    person_id: str,
    visit_id: str,
    closed_at: str = "2025-03-02T10:00:00+08:00",
    use_account: bool = True,
) -> dict[str, Any]:
    return envelope(
        "VisitClosed",
        person_id,
        visit_id=visit_id,
        closed_at=closed_at,
        use_personal_account=use_account,
    )
