"""Validation per events.md "Malformed input": every rule names its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from yibao.cli import main
from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.schemas.codec import Codec
from yibao.schemas.events import (
    AUDIT_TYPES,
    INPUT_TYPES,
    OUTPUT_TYPES,
    PaymentMade,
    VisitClosed,
)
from yibao.schemas.exceptions import SchemaError

codec = Codec()


def enc(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def error_of(d: dict[str, Any] | bytes) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        codec.decode(d if isinstance(d, bytes) else enc(d))
    return info.value


def test_valid_events_decode_to_frozen_structs() -> None:
    e = codec.decode(enc(closed("P1", "V1")))
    assert isinstance(e, VisitClosed) and e.use_personal_account is True
    with pytest.raises(AttributeError):
        e.visit_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.pop("person_id"), "person_id"),
        (lambda d: d.update(event_id="has space"), "$.event_id"),
        (lambda d: d.update(event_id="x" * 65), "$.event_id"),
        (lambda d: d.update(event_id=""), "$.event_id"),
        (lambda d: d.update(schema_version=2), "$.schema_version"),
        (lambda d: d.update(occurred_at="2025-01-01T00:00:00"), "$.occurred_at"),
        (lambda d: d.update(closed_at="yesterday"), "$.closed_at"),
        (lambda d: d.update(use_personal_account="yes"), "$.use_personal_account"),
        (lambda d: d.update(type="VisitExploded"), "$.type"),
    ],
)
def test_envelope_and_field_rules_name_the_field(mutate: Any, field: str) -> None:
    d = closed("P1", "V1")
    mutate(d)
    assert field in str(error_of(d))


def test_region_codes_and_enums() -> None:
    assert "$.region" in str(error_of(registered("P1", region="5000")))
    assert "$.scheme" in str(error_of(registered("P1", scheme="farmer")))
    assert "$.facility_level" in str(error_of(opened("P1", "V1", level=4)))
    assert "$.facility_region" in str(error_of(opened("P1", "V1", region="50000A")))
    assert "$.diagnoses[0]" in str(error_of(opened("P1", "V1", diagnoses=["not icd"])))


def test_resident_cross_field_rules() -> None:
    r = registered("P1", scheme="resident")
    r["retired"] = True
    assert "retired" in str(error_of(r))
    r = registered("P1", scheme="resident")
    r["personal_account_fen"] = 5
    assert "personal_account_fen" in str(error_of(r))


def test_special_disease_code_rules() -> None:
    assert "special_disease_code" in str(error_of(opened("P1", "V1", kind="outpatient_special")))
    assert "special_disease_code" in str(error_of(opened("P1", "V1", special="DIALYSIS")))
    ok = codec.decode(enc(opened("P1", "V1", kind="outpatient_special", special="DIALYSIS")))
    assert ok.special_disease_code == "DIALYSIS"  # type: ignore[union-attr]


def test_line_item_rules() -> None:
    bad = item("L1", amount=300, quantity=3)
    bad["amount_fen"] = 301
    err = error_of(charged("P1", "V1", [item("L0"), bad]))
    assert "$.items[1]" in str(err) and "quantity" in str(err)
    neg = item("L1")
    neg["unit_price_fen"] = -1
    assert "$.items[0].unit_price_fen" in str(error_of(charged("P1", "V1", [neg])))
    zero = item("L1")
    zero["quantity"] = 0
    assert "$.items[0].quantity" in str(error_of(charged("P1", "V1", [zero])))
    assert "$.items[0].catalog_class" in str(
        error_of(charged("P1", "V1", [{**item("L1"), "catalog_class": "D"}]))
    )


def test_payment_rules() -> None:
    pay = envelope(
        "PaymentMade", "P1", visit_id="V1", payment_id="PAY1", method="credit", amount_fen=100
    )
    assert "$.bank" in str(error_of(pay))
    assert "$.amount_fen" in str(error_of({**pay, "bank": "B1", "amount_fen": 0}))
    assert "$.bank" in str(error_of({**pay, "method": "cash", "bank": "B1"}))
    ok = codec.decode(enc({**pay, "bank": "B1"}))
    assert isinstance(ok, PaymentMade) and ok.bank == "B1"


def test_not_json_and_wrong_shapes() -> None:
    assert "not valid JSON" in str(error_of(b'{"type": '))
    assert "not valid JSON" in str(error_of(b"\xff"))
    assert "$" in str(error_of(b"[1, 2]"))
    assert error_of(b"[1, 2]").path == "$"
    deep = b"[" * 5000 + b"]" * 5000
    assert isinstance(error_of(deep), SchemaError)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
        b"[" * 200_000 + b"]" * 200_000,
        b'{"type":"ItemsCharged","items":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        b'{"type":"VisitRefunded","reason":"\xff\xfe"}',
        b'{"type":"VisitRefunded","reason":"' + b"\xff" + b'"}',
    ],
)
def test_hostile_bytes_are_schema_errors_with_or_without_upcasters(raw: bytes) -> None:
    """Deep nesting and bad UTF-8 must be dead letters, never a crash (also on the upcast path)."""
    for codec_ in (Codec(), Codec(upcasters={0: lambda d: d})):
        with pytest.raises(SchemaError):
            codec_.decode(raw)


def test_upcaster_from_a_synthetic_older_version() -> None:
    # Pretend schema_version 0 named the flag `pay_from_account` instead.
    def v0_to_v1(d: dict[str, Any]) -> dict[str, Any]:
        d["use_personal_account"] = d.pop("pay_from_account")
        return d

    old = closed("P1", "V1", use_account=False)
    old["schema_version"] = 0
    old["pay_from_account"] = old.pop("use_personal_account")
    upcasting = Codec(upcasters={0: v0_to_v1})
    event = upcasting.decode(enc(old))
    assert isinstance(event, VisitClosed) and event.use_personal_account is False
    assert event.schema_version == 1
    # Without the upcaster the old event is malformed, naming the version field.
    assert "$.schema_version" in str(error_of(old))
    # An upcast event still has to be valid.
    broken = {**old, "visit_id": "bad id"}
    with pytest.raises(SchemaError, match="after upcasting"):
        upcasting.decode(enc(broken))


def test_outputs_round_trip() -> None:
    from yibao.rules.engine import Engine
    from yibao.rules.policy import load_policy
    from yibao.rules.state import State

    engine, state = Engine(load_policy()), State()
    outs = []
    for d in [
        registered("P1", balance=100),
        opened("P1", "V1"),
        charged("P1", "V1", [item("L1", amount=50000)]),
        closed("P1", "V1"),
    ]:
        outs += engine.apply(state, codec.decode(enc(d)))
    assert outs and all(codec.decode_output(codec.encode(o)) == o for o in outs)


def test_schema_export_writes_one_schema_per_event(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == len(INPUT_TYPES) + len(OUTPUT_TYPES) + len(AUDIT_TYPES)
    doc = json.loads((tmp_path / "ItemsCharged.schema.json").read_text())
    line = doc["$defs"]["LineItem"]
    assert "amount_fen" in line["required"] and line["additionalProperties"] is False
    assert "quantity × unit_price_fen" in doc["description"]
    assert msgspec.json.decode((tmp_path / "ClaimSettled.schema.json").read_bytes())["title"]


def test_a_dismissed_review_recovers_nothing() -> None:
    from yibao.schemas.codec import Codec
    from yibao.schemas.exceptions import SchemaError

    review = (
        b'{"type":"AuditFlagReviewed","event_id":"r1","schema_version":1,'
        b'"occurred_at":"2025-01-01T00:00:00+08:00","source":"bureau","person_id":"A",'
        b'"flag_id":"x/1","outcome":"dismissed","recovered_fen":5,"reviewer":"auditor-1"}'
    )
    with pytest.raises(SchemaError, match="recovered_fen"):
        Codec().decode(review)
    assert Codec().decode(review.replace(b'"recovered_fen":5', b'"recovered_fen":0'))


def test_charged_totals_are_optional_on_a_checkout() -> None:
    from yibao.schemas.codec import Codec

    close = (
        b'{"type":"VisitClosed","event_id":"c1","schema_version":1,'
        b'"occurred_at":"2025-01-01T00:00:00+08:00","source":"gw","person_id":"A",'
        b'"visit_id":"V1","closed_at":"2025-01-01T00:00:00+08:00"}'
    )
    event = Codec().decode(close)
    assert isinstance(event, VisitClosed)
    assert event.charged_total_fen is None and event.charged_lines is None
