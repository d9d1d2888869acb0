"""JSON Schema for every event, generated from the Structs so it can never drift from them.

Gateway teams in Java, Go or C# validate against these files; the cross-field rules that
JSON Schema cannot express (amount = quantity × unit price, …) are listed in each schema's
description. An input schema also says where the event goes (events.md, "Topics and
order"): its description and the annotations ``x-kafka-topic`` (the topic, under the
deployment's prefix) and ``x-kafka-key`` (the field whose UTF-8 bytes are the record key);
that is all a producer sends — no headers, and the record timestamp does not matter.
"""

from __future__ import annotations

from typing import Any

import msgspec

from yibao.schemas.events import AUDIT_TYPES, INPUT_TYPES, OUTPUT_TYPES, TOPIC_OF

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
            topic = TOPIC_OF.get(t.__name__) if direction == "input" else None
            schema["description"] = (
                f"yibao {direction} event {t.__name__} (events.md, schema_version 1)."
                + (f" Also: {note}" if note else "")
                + (f" Publish it to the Kafka topic `{topic}` (under the deployment's topic "
                   "prefix), record key = `person_id` as UTF-8 bytes, value = this JSON; "
                   "no headers; the record timestamp is the broker's (it does not decide the "
                   "order)." if topic else "")
            )
            if topic:
                schema["x-kafka-topic"] = topic
                schema["x-kafka-key"] = "person_id"
            out[t.__name__] = schema
    return out
