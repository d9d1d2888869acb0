"""JSON Schema for every event, generated from the Structs so it can never drift from them.

Gateway teams in Java, Go or C# validate against these files; the cross-field rules that
JSON Schema cannot express (amount = quantity × unit price, …) are listed in each schema's
description.
"""

from __future__ import annotations

from typing import Any

import msgspec

from yibao.schemas.events import AUDIT_TYPES, INPUT_TYPES, OUTPUT_TYPES

CROSS_FIELD_RULES = {
    "PersonRegistered": "A resident must have retired=false and personal_account_fen=0.",
    "VisitOpened": "special_disease_code is required for kind outpatient_special, else null.",
    "PaymentMade": "bank is required for method credit, else null.",
    "ItemsCharged": "Each item's amount_fen must equal quantity × unit_price_fen.",
    "PrescriptionIssued": "Each item's amount_fen must equal quantity × unit_price_fen.",
    "AuditFlagReviewed": "recovered_fen must be 0 when outcome is dismissed.",
    "VisitClosed": "charged_total_fen / charged_lines, when given, must match the visit's "
    "current lines, else the checkout is rejected CHARGES_MISMATCH.",
}


def schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema per event type, keyed by the type tag."""
    out: dict[str, dict[str, Any]] = {}
    groups: tuple[tuple[str, tuple[type, ...]], ...] = (
        ("input", INPUT_TYPES), ("output", OUTPUT_TYPES), ("audit", AUDIT_TYPES)
    )
    for direction, types in groups:
        for t in types:
            schema = msgspec.json.schema(t)
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
            schema["title"] = t.__name__
            note = CROSS_FIELD_RULES.get(t.__name__)
            schema["description"] = (
                f"yibao {direction} event {t.__name__} (events.md, schema_version 1)."
                + (f" Also: {note}" if note else "")
            )
            out[t.__name__] = schema
    return out
