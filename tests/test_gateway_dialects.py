"""The dialects' pure translations without a broker (gateway.md "FHIR R4", "The national
interface"): money both ways exactly, every transaction's event valid under the contract's
codec, refusals naming the field. The end-to-end flows are in test_gateway_dialects_kafka."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from yibao.gateway.exceptions import Invalid
from yibao.gateway.fhir import submission_of
from yibao.gateway.money import fen_of_yuan, yuan_of_fen
from yibao.gateway.national import TRANSACTIONS, message_of
from yibao.schemas.codec import Codec
from yibao.schemas.events import VisitClosed

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples" / "fhir" / (
    "claim-inpatient.json")


@pytest.mark.parametrize("fen", [0, 1, 9, 10, 99, 100, 97_750, -97_750, 10**15 + 7])
def test_fen_and_yuan_round_trip_exactly(fen: int) -> None:
    text = format(yuan_of_fen(fen))
    assert len(text.split(".")[1]) == 2
    assert fen_of_yuan(Decimal(text), "x") == fen_of_yuan(text, "x") == fen


@pytest.mark.parametrize("bad", ["1.001", "0.005", "NaN", "Infinity", "abc", True, 1.5, None])
def test_an_amount_that_is_not_whole_fen_is_refused(bad: Any) -> None:
    with pytest.raises(Invalid) as err:
        fen_of_yuan(bad, "$.input.data.medfee_sumamt")
    assert err.value.path == "$.input.data.medfee_sumamt"


def test_the_example_claim_is_a_valid_visit_closed() -> None:
    sub = submission_of(EXAMPLE.read_bytes())
    event = Codec().decode(json.dumps(sub.event).encode())
    assert sub.command == "settle" and isinstance(event, VisitClosed)
    assert (event.event_id, event.person_id, event.visit_id) == (
        "v-20250301-001:settle", "p-001", "v-20250301-001")
    assert (event.charged_total_fen, event.charged_lines) == (355_000, 3)


def envelope(infno: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"infno": infno, "msgid": f"m-{infno}", "mdtrtarea_admvs": "500000",
                       "insuplc_admdvs": "500000", "fixmedins_code": "F-1",
                       "inf_time": "2025-03-02 10:00:00", "input": data}).encode()


def input_of(infno: str) -> dict[str, Any]:
    ids = {"psn_no": "P-1", "mdtrt_id": "V-1"}
    if infno in ("2201", "2401"):
        key = "mdtrtinfo" if infno == "2401" else "data"
        return {key: {**ids, "begntime": "2025-03-01 10:00:00", "hosp_lv": 2,
                      "med_type": "21" if infno == "2401" else "11"},
                "diseinfo": [{"diag_code": "J18.9"}]}
    if infno in ("2204", "2301"):
        return {"feedetail": [{**ids, "feedetl_sn": "1", "list_type": "101", "chrgitm_lv": "02",
                               "med_list_codg": "X1", "cnt": 2, "pric": "12.34",
                               "det_item_fee_sumamt": "24.68", "pric_uplmt_amt": "20.00"}]}
    if infno in ("2205", "2302"):
        return {"data": {**ids, "feedetl_sn": ["1"]}}
    if infno in ("2208", "2305"):
        return {"data": {**ids, "setl_id": "m-2207/0"}}
    return {"data": {**ids, "medfee_sumamt": "24.68", "acct_used_flag": "0"}}


@pytest.mark.parametrize("infno", sorted(TRANSACTIONS))
def test_every_transaction_gives_a_valid_event_of_its_type(infno: str) -> None:
    msg = message_of(envelope(infno, input_of(infno)))
    event: Any = Codec().decode(json.dumps(msg.event).encode())  # the type varies by infno
    assert type(event).__name__ == TRANSACTIONS[infno][1] and msg.command == TRANSACTIONS[infno][0]
    assert (event.event_id, event.visit_id) == (f"m-{infno}", "V-1")
    if infno in ("2204", "2301"):
        line = event.items[0]
        assert (line.amount_fen, line.unit_price_fen, line.cap_fen, line.catalog_class) == (
            2468, 1234, 2000, "B")
    if infno in ("2206", "2207", "2303", "2304"):
        assert event.use_personal_account is False
        assert event.charged_total_fen == 2468
    if infno in ("2208", "2305"):
        assert msg.setl_id == "m-2207/0"


@pytest.mark.parametrize(("infno", "drop", "path"), [
    ("2207", "medfee_sumamt", "$.input.data.medfee_sumamt"),
    ("2208", "setl_id", "$.input.data.setl_id"),
    ("2204", "feedetl_sn", "$.input.feedetail[0].feedetl_sn")])
def test_a_missing_input_field_is_named(infno: str, drop: str, path: str) -> None:
    data = input_of(infno)
    for part in data.values():
        for row in part if isinstance(part, list) else [part]:
            row.pop(drop, None)
    with pytest.raises(Invalid) as err:
        message_of(envelope(infno, data))
    assert err.value.path == path and path in err.value.message
