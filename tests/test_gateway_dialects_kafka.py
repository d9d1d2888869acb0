"""FHIR R4 and the national interface through a real gateway process, a real worker and the
real broker (gateway.md "FHIR R4", "The national interface"): each dialect's answers equal
the native API's for the same visit; malformed requests publish nothing."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.claim import Claim
from fhir.resources.R4B.claimresponse import ClaimResponse
from fhir.resources.R4B.operationoutcome import OperationOutcome
from test_gateway_kafka import Stack, _count

from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.gateway.credentials import add_client
from yibao.gateway.process import free_port, spawn_gateway, wait_ready
from yibao.settings import Settings
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples" / "fhir"
FSI = "/fsi/api/rsfComIfsService/callService"
SUBMIT = "/fhir/r4/Claim/$submit"
FACILITY = "H50010300001"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from yibao.dev import testing

    tmp = tmp_path_factory.mktemp("dialects")
    s = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=testing.unique_prefix(),
                 partitions=2)
    asyncio.run(create_all(s))
    clients = tmp / "clients.json"
    keys = {"h1": add_client(clients, "hospital-1", "hospital", ("F-1", "F-3", FACILITY)),
            "h9": add_client(clients, "hospital-9", "hospital", ("F-9",)),
            "bureau": add_client(clients, "bureau", "bureau", ())}
    worker = spawn(s, worker_id="d", log_file=tmp / "worker.log")
    port = free_port()
    gw = spawn_gateway(s, port=port, clients=clients, index=tmp / "index.sqlite",
                       log_file=tmp / "gateway.log")
    st = Stack(s, f"http://127.0.0.1:{port}", keys, tmp, clients, tmp / "index.sqlite", gw,
               worker)
    try:
        wait_ready(st.url, gw)
        yield st
    finally:
        terminate(st.gateway)
        terminate(worker)


def dumps(doc: Any) -> bytes:
    """JSON with decimals written as numbers, exactly (what a HIS sends)."""
    return msgspec.json.Encoder(decimal_format="number").encode(doc)


def exact(response: httpx.Response) -> Any:
    return json.loads(response.content, parse_float=Decimal)


def fen(value: Any) -> int:
    assert isinstance(value, Decimal | int), value
    return int(Decimal(value) * 100)


def register(stack: Stack, *events: dict[str, Any]) -> None:
    with stack.client("bureau") as bureau:
        for e in events:
            assert bureau.post("/v1/events", json=e).status_code == 202


def publish(stack: Stack, *events: dict[str, Any]) -> None:
    with stack.client("h1") as h1:
        for e in events:
            r = h1.post("/v1/events", json=e)
            assert r.status_code == 202, r.text


def inpatient_household(stack: Stack, person: str, payer: str, visit: str) -> None:
    """The example's patient: an employee with 500 yuan, a relative with 200 who aids him;
    a level-3 admission with the example Claim's three lines."""
    register(stack, registered(person, f"HH-{person}", balance=50_000),
             registered(payer, f"HH-{person}", balance=20_000),
             envelope("FamilyAidAuthorized", payer, beneficiary_id=person))
    visit_open = opened(person, visit, kind="inpatient", level=3,
                        opened_at="2025-03-01T09:00:00+08:00", diagnoses=["S72.0"])
    visit_open["facility_id"] = FACILITY
    publish(stack, visit_open, charged(person, visit, [
        item("1", "A", 25_000, 5, category="service"),
        item("2", "B", 300_000, 1, cap=200_000, category="consumable"),
        item("3", "C", 30_000, 2)]))


def native_settle(stack: Stack, person: str, visit: str, closed_at: str) -> dict[str, Any]:
    with stack.client("h1") as h1:
        r = h1.post("/v1/settle", json=closed(person, visit, closed_at=closed_at))
    assert r.status_code == 200 and r.json()["answer"] == "ClaimSettled", r.text
    return r.json()["outputs"][0]  # type: ignore[no-any-return]


def amounts_of_claim_response(res: dict[str, Any]) -> dict[str, int]:
    """The yibao amounts a ClaimResponse shows, by gateway.md's table."""
    codes: dict[str, int] = {}
    for adj in res["adjudication"]:
        if "amount" in adj:
            for c in adj["category"]["coding"]:
                codes[c["code"]] = fen(adj["amount"]["value"])
    totals = {t["category"]["coding"][0]["code"]: fen(t["amount"]["value"])
              for t in res["total"]}
    items: dict[str, int] = {}
    for it in res.get("item", []):
        for adj in it["adjudication"]:
            code = adj["category"]["coding"][0]["code"]
            items[code] = items.get(code, 0) + fen(adj["amount"]["value"])
    return {"total": totals["submitted"], "self_pay_full": items.get("self-pay-full", 0),
            "over_cap": items.get("over-cap", 0), "first_self_pay": items.get("first-self-pay", 0),
            "eligible": totals["eligible"], "deductible": codes["deductible"],
            "basic_fund": codes["basic-fund"], "major_illness": codes["major-illness"],
            "assistance": codes["assistance"], "personal_account": codes["personal-account"],
            "family_account": codes["family-account"], "cash_due": codes["cash-due"]}


def test_the_fhir_example_claim_gives_the_example_claim_response(stack: Stack) -> None:
    """claim-inpatient.json after its visit's events: the ClaimResponse of
    claimresponse-inpatient.json (amounts, categories, payment), valid R4; pre-settlement
    first shows the same split; a retry publishes nothing; the native API settles the same
    visit of a twin household to the same amounts; the cancellation reverses it."""
    raw = (EXAMPLES / "claim-inpatient.json").read_bytes()
    claim = json.loads(raw, parse_float=Decimal)
    expected = json.loads((EXAMPLES / "claimresponse-inpatient.json").read_bytes(),
                          parse_float=Decimal)
    Claim.model_validate_json(raw)
    ClaimResponse.model_validate(expected)
    inpatient_household(stack, "p-001", "p-001-aid", "v-20250301-001")
    pre_claim = {**claim, "id": "v-20250301-001-pre", "use": "predetermination"}
    Claim.model_validate(pre_claim)
    with stack.client("h1") as h1:
        pre = h1.post(SUBMIT, content=dumps(pre_claim))
        got = h1.post(SUBMIT, content=raw)
        assert got.status_code == 200, got.text
        care_before = _count(stack.settings, "care")
        again = h1.post(SUBMIT, content=raw)
        assert again.status_code == 200 and again.json() == got.json()
        assert _count(stack.settings, "care") == care_before
    assert got.headers["content-type"].startswith("application/fhir+json")
    res = exact(got)
    ClaimResponse.model_validate_json(got.content)
    assert set(res) - set(expected) <= {"processNote"}
    for key in set(expected) - {"disposition"}:
        assert res[key] == expected[key], key
    assert b'"value":977.50' in got.content and b'"value":0.00' in got.content
    assert pre.status_code == 200, pre.text
    ClaimResponse.model_validate_json(pre.content)
    preview = exact(pre)
    assert preview["use"] == "predetermination" and preview["outcome"] == "complete"
    assert preview["adjudication"] == res["adjudication"] and "payment" not in preview

    inpatient_household(stack, "p-twin", "p-twin-aid", "v-twin")
    native = native_settle(stack, "p-twin", "v-twin", "2025-03-06T10:00:00+08:00")
    assert amounts_of_claim_response(res) == native["amounts"]
    # the example's free-text disposition says policy_version=2020, but settlement.md puts a
    # 2025-03-06 service date under version 2025 (greatest effective_from <= d), as the
    # native twin does: only the version may differ from the example's text
    assert res["disposition"] == expected["disposition"].replace(
        "policy_version=2020", f"policy_version={native['policy_version']}")

    cancel = {**claim, "id": "v-20250301-001-cancel", "status": "cancelled"}
    Claim.model_validate(cancel)
    with stack.client("h1") as h1:
        rev = h1.post(SUBMIT, content=dumps(cancel))
    assert rev.status_code == 200, rev.text
    ClaimResponse.model_validate_json(rev.content)
    reversed_ = exact(rev)
    assert reversed_["status"] == "cancelled" and reversed_["outcome"] == "complete"
    assert amounts_of_claim_response({**reversed_, "item": []})["basic_fund"] == -97_750


def claim_item(seq: int, cls: str, net: str, cap: str | None = None) -> dict[str, Any]:
    """A ``Claim.item`` with the catalog class (and cap) extensions the answer adjudicates."""
    ext: list[dict[str, Any]] = [{
        "url": "https://yibao.example/fhir/StructureDefinition/catalog-class", "valueCode": cls}]
    if cap is not None:
        ext.append({"url": "https://yibao.example/fhir/StructureDefinition/line-cap",
                    "valueMoney": {"value": Decimal(cap), "currency": "CNY"}})
    return {"sequence": seq, "extension": ext,
            "productOrService": {"coding": [{"code": f"X{seq}"}]},
            "net": {"value": Decimal(net), "currency": "CNY"}}


def outpatient_bundle(person: str, visit: str, claim_id: str, total: str,
                      items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    money = {"value": Decimal(total), "currency": "CNY"}
    claim = {
        "resourceType": "Claim", "id": claim_id,
        "identifier": [{"system": "https://yibao.example/fhir/sid/visit-id", "value": visit}],
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                             "code": "professional"}]},
        "use": "claim", "patient": {"reference": "urn:uuid:patient-1"},
        "created": "2025-03-02T10:00:00+08:00",
        "billablePeriod": {"start": "2025-03-01T10:00:00+08:00",
                           "end": "2025-03-02T10:00:00+08:00"},
        "provider": {"reference": "urn:uuid:org-1"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True,
                       "coverage": {"reference": "urn:uuid:cov-1"}}],
        "total": money, **({"item": items} if items else {})}
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:claim-1", "resource": claim},
        {"fullUrl": "urn:uuid:patient-1", "resource": {
            "resourceType": "Patient", "id": "pat-1",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.1", "value": "ID-CARD-1"},
                           {"system": "https://yibao.example/fhir/sid/psn-no",
                            "value": person}]}},
        {"fullUrl": "urn:uuid:cov-1", "resource": {
            "resourceType": "Coverage", "id": "cov-1", "status": "active",
            "beneficiary": {"reference": "urn:uuid:patient-1"},
            "payor": [{"display": "500000"}]}},
        {"fullUrl": "urn:uuid:org-1", "resource": {
            "resourceType": "Organization", "id": "F-1", "name": "Clinic F-1"}}]}


def test_a_fhir_bundle_settles_an_outpatient_visit_like_the_native_api(stack: Stack) -> None:
    """Outpatient: a Bundle (Claim, Patient, Coverage, Organization) settles to the native
    API's amounts for a twin visit; a bill that is not the visit's lines is a ClaimResponse
    with outcome=error and error[] (a business answer, 200)."""
    lines = [item("L1", amount=50_000), item("L2", cls="B", amount=30_000, cap=20_000)]
    for person in ("P-FO1", "P-FO1T"):
        register(stack, registered(person, f"H-{person}", retired=True, balance=0))
        publish(stack, opened(person, f"V-{person}"), charged(person, f"V-{person}", lines))
    short = outpatient_bundle("P-FO1", "V-P-FO1", "claim-fo1-short", "700.00")
    full = outpatient_bundle("P-FO1", "V-P-FO1", "claim-fo1", "800.00",
                             [claim_item(1, "A", "500.00"), claim_item(2, "B", "300.00", "200.00")])
    for b in (short, full):
        Bundle.model_validate_json(dumps(b))
    with stack.client("h1") as h1:
        refused = h1.post(SUBMIT, content=dumps(short))
        got = h1.post(SUBMIT, content=dumps(full))
    assert refused.status_code == 200, refused.text
    ClaimResponse.model_validate_json(refused.content)
    body = refused.json()
    assert body["outcome"] == "error"
    assert body["error"][0]["code"]["coding"][0]["code"] == "CHARGES_MISMATCH"
    assert got.status_code == 200, got.text
    ClaimResponse.model_validate_json(got.content)
    res = exact(got)
    native = native_settle(stack, "P-FO1T", "V-P-FO1T", "2025-03-02T10:00:00+08:00")
    assert res["outcome"] == "complete"
    assert amounts_of_claim_response(res) == native["amounts"]
    assert [it["itemSequence"] for it in res["item"]] == [1, 2]
    a = native["amounts"]
    assert fen(res["payment"]["amount"]["value"]) == (
        a["basic_fund"] + a["major_illness"] + a["assistance"] + a["personal_account"]
        + a["family_account"])


# ------------------------------------------------------------------------- national


def envelope_of(infno: str, msgid: str, data: dict[str, Any], *, region: str = "500000",
                facility: str = "F-1") -> dict[str, Any]:
    return {"infno": infno, "msgid": msgid, "mdtrtarea_admvs": region,
            "insuplc_admdvs": "500000", "fixmedins_code": facility,
            "inf_time": "2025-03-02 10:00:00", "input": data}


def fee(visit: str, person: str, sn: str, lv: str, pric: str, cnt: int,
        cap: str | None = None) -> dict[str, Any]:
    return {"feedetl_sn": sn, "mdtrt_id": visit, "psn_no": person, "list_type": "101",
            "chrgitm_lv": lv, "med_list_codg": f"X{sn}", "medins_list_name": f"drug {sn}",
            "cnt": cnt, "pric": pric,
            "det_item_fee_sumamt": str(Decimal(pric) * cnt), "pric_uplmt_amt": cap}


def call(client: httpx.Client, env: dict[str, Any]) -> dict[str, Any]:
    r = client.post(FSI, json=env)
    body = exact(r)
    assert body["inf_refmsgid"] in (env.get("msgid", ""), ""), body
    return body  # type: ignore[no-any-return]


def setl_amounts(setlinfo: dict[str, Any]) -> dict[str, int]:
    from yibao.gateway.national import SETLINFO

    return {ours: fen(setlinfo[theirs]) for theirs, ours in SETLINFO.items()}


def national_flow(stack: Stack, person: str, visit: str, inpatient: bool) -> None:
    """Open, upload, reverse a line, pre-settle, settle (a short bill first), cancel with a
    wrong then the right setl_id; each answer against the native twin's."""
    no = dict(zip(("open", "up", "rev", "pre", "settle", "cancel"),
                  ("2401", "2301", "2302", "2303", "2304", "2305") if inpatient else
                  ("2201", "2204", "2205", "2206", "2207", "2208"), strict=True))
    level, kind = (3, "inpatient") if inpatient else (1, "outpatient")
    twin = f"{person}T"
    register(stack, registered(person, f"H-{person}", balance=30_000),
             registered(twin, f"H-{twin}", balance=30_000))
    # the native twin: the same visit after the same reversal
    publish(stack, opened(twin, f"V-{twin}", kind=kind, level=level),
            charged(twin, f"V-{twin}", [item("1", amount=200_000, quantity=2),
                                        item("2", "B", 50_000, cap=40_000)]))
    native = native_settle(stack, twin, f"V-{twin}", "2025-03-02T10:00:00+08:00")
    opening: dict[str, Any] = {"psn_no": person, "mdtrt_id": visit,
                               "begntime": "2025-03-01 10:00:00", "hosp_lv": level}
    open_input: dict[str, Any] = (
        {"mdtrtinfo": {**opening, "med_type": "21"}, "diseinfo": [{"diag_code": "J18.9"}]}
        if inpatient else
        {"data": {**opening, "med_type": "11"}, "diseinfo": [{"diag_code": "J18.9"}]})
    lines = [fee(visit, person, "1", "01", "1000.00", 2), fee(visit, person, "2", "02", "500.00", 1,
                                                               cap="400.00"),
             fee(visit, person, "3", "03", "12.34", 1)]
    m = f"{person}-"
    with stack.client("h1") as h1, stack.client("h9") as h9:
        assert call(h1, envelope_of(no["open"], m + "1", open_input, facility="F-3" if inpatient
                                    else "F-1"))["infcode"] == 0
        up = call(h1, envelope_of(no["up"], m + "2", {"feedetail": lines}))
        assert up["infcode"] == 0 and up["output"]["result"][2]["det_item_fee_sumamt"] == Decimal(
            "12.34")
        other = call(h9, envelope_of(no["up"], m + "2x", {"feedetail": lines}))
        assert other["infcode"] == -1 and "not opened at your facilities" in other["err_msg"]
        assert call(h1, envelope_of(no["rev"], m + "3", {"data": {
            "mdtrt_id": visit, "psn_no": person, "feedetl_sn": ["3"]}}))["infcode"] == 0
        pre = call(h1, envelope_of(no["pre"], m + "4", {"data": {
            "mdtrt_id": visit, "psn_no": person}}))
        assert pre["infcode"] == 0, pre
        short = call(h1, envelope_of(no["settle"], m + "5", {"data": {
            "mdtrt_id": visit, "psn_no": person, "medfee_sumamt": "2512.34"}}))
        assert short["infcode"] == -1 and short["err_msg"].startswith("CHARGES_MISMATCH")
        settled = call(h1, envelope_of(no["settle"], m + "6", {"data": {
            "mdtrt_id": visit, "psn_no": person, "medfee_sumamt": "2500.00"}}))
        assert settled["infcode"] == 0, settled
        info = settled["output"]["setlinfo"]
        assert setl_amounts(info) == native["amounts"]
        assert setl_amounts(pre["output"]["setlinfo"]) == native["amounts"]
        assert info["mdtrt_id"] == visit and info["psn_no"] == person
        assert fen(info["fund_pay_sumamt"]) == (native["amounts"]["basic_fund"]
                                                + native["amounts"]["major_illness"]
                                                + native["amounts"]["assistance"])
        again = call(h1, envelope_of(no["settle"], m + "6", {"data": {
            "mdtrt_id": visit, "psn_no": person, "medfee_sumamt": "2500.00"}}))
        assert again["output"] == settled["output"]
        care = _count(stack.settings, "care")
        wrong = call(h1, envelope_of(no["cancel"], m + "7", {"data": {
            "mdtrt_id": visit, "psn_no": person, "setl_id": m + "5/0"}}))
        assert wrong["infcode"] == -1 and info["setl_id"] in wrong["err_msg"]
        foreign = call(h9, envelope_of(no["cancel"], m + "7x", {"data": {
            "mdtrt_id": visit, "psn_no": person, "setl_id": m + "5/0"}}, facility="F-9"))
        assert foreign["infcode"] == -1 and "not opened at your facilities" in foreign["err_msg"]
        assert info["setl_id"] not in foreign["err_msg"]
        assert _count(stack.settings, "care") == care
        cancel = call(h1, envelope_of(no["cancel"], m + "8", {"data": {
            "mdtrt_id": visit, "psn_no": person, "setl_id": info["setl_id"]}}))
        assert cancel["infcode"] == 0, cancel
        assert setl_amounts(cancel["output"]["setlinfo"]) == {
            k: -v for k, v in native["amounts"].items()}
        stale = call(h1, envelope_of(no["cancel"], m + "9", {"data": {
            "mdtrt_id": visit, "psn_no": person, "setl_id": info["setl_id"]}}))
        assert stale["infcode"] == -1 and "current: none" in stale["err_msg"]


def test_national_outpatient_flow(stack: Stack) -> None:
    national_flow(stack, "P-NO1", "V-NO1", inpatient=False)


def test_national_inpatient_flow(stack: Stack) -> None:
    national_flow(stack, "P-NI1", "V-NI1", inpatient=True)


def test_audit_flags_are_process_notes_and_national_audit_entries(stack: Stack) -> None:
    """A visit whose bill is mostly class C (HIGH_SELF_PAY_SHARE) settled in each dialect:
    the native twin's audit flags come back as FHIR processNote[] and as the national
    output.audit, with the same amounts."""
    lines = [item("1", "C", 80_000), item("2", "A", 20_000)]
    for person in ("P-AF", "P-AN", "P-AT"):
        register(stack, registered(person, f"H-{person}", balance=0))
    for person in ("P-AF", "P-AT"):
        publish(stack, opened(person, f"V-{person}"), charged(person, f"V-{person}", lines))
    with stack.client("h1") as h1:
        r = h1.post("/v1/settle", json=closed("P-AT", "V-P-AT"))
        assert r.status_code == 200, r.text
        native = r.json()["outputs"]
        # the Claim calls the class C line class A: its per-item split would contradict the
        # settlement's eligible, so the answer has no item[]
        bundle = outpatient_bundle("P-AF", "V-P-AF", "claim-af", "1000.00",
                                   [claim_item(1, "A", "800.00"), claim_item(2, "A", "200.00")])
        Bundle.model_validate_json(dumps(bundle))
        got = h1.post(SUBMIT, content=dumps(bundle))
        fsi = [call(h1, envelope_of("2201", "P-AN-1", {"data": {
                   "psn_no": "P-AN", "mdtrt_id": "V-AN", "begntime": "2025-03-01 10:00:00",
                   "hosp_lv": 1, "med_type": "11"}, "diseinfo": [{"diag_code": "J18.9"}]})),
               call(h1, envelope_of("2204", "P-AN-2", {"feedetail": [
                   fee("V-AN", "P-AN", "1", "03", "800.00", 1),
                   fee("V-AN", "P-AN", "2", "01", "200.00", 1)]})),
               call(h1, envelope_of("2207", "P-AN-3", {"data": {
                   "mdtrt_id": "V-AN", "psn_no": "P-AN", "medfee_sumamt": "1000.00"}}))]
    assert [b["infcode"] for b in fsi] == [0, 0, 0], fsi
    flags = [(o["severity"], o["rule"]) for o in native if o["type"] == "AuditFlagRaised"]
    assert ("info", "HIGH_SELF_PAY_SHARE") in flags, native
    assert got.status_code == 200, got.text
    ClaimResponse.model_validate_json(got.content)
    res = exact(got)
    assert "item" not in res
    notes = res["processNote"]
    assert [n["number"] for n in notes] == list(range(1, len(notes) + 1))
    assert [tuple(n["text"].split(":", 1)[0].split(" ")) for n in notes] == flags
    assert amounts_of_claim_response({**res, "item": []})["cash_due"] == (
        native[0]["amounts"]["cash_due"])
    output = fsi[2]["output"]
    assert [(a["severity"], a["rule"]) for a in output["audit"]] == flags
    assert setl_amounts(output["setlinfo"]) == native[0]["amounts"]


def test_malformed_requests_get_clear_errors_and_publish_nothing(stack: Stack) -> None:
    register(stack, registered("P-BAD", "H-BAD"))
    publish(stack, opened("P-BAD", "V-BAD"), charged("P-BAD", "V-BAD", [item("L1")]))
    before = {t: _count(stack.settings, t) for t in ("registrations", "care", "reviews")}
    base = json.loads((EXAMPLES / "claim-inpatient.json").read_bytes(), parse_float=Decimal)
    base = {**base, "id": "bad-1", "identifier": [{"value": "V-BAD"}],
            "patient": {"reference": "Patient/P-BAD"}}
    no_patient = {k: v for k, v in base.items() if k != "patient"}
    wrong_use = {**base, "use": "preauthorization"}
    three_decimals = copy.deepcopy(base)
    three_decimals["item"][0]["net"]["value"] = Decimal("250.001")
    cases = [(no_patient, "Claim.patient"), (wrong_use, "Claim.use"),
             (three_decimals, "Claim.item[0].net.value")]
    with stack.client("h1") as h1, stack.client(None) as anon:
        for doc, where in cases:
            r = h1.post(SUBMIT, content=dumps(doc))
            assert r.status_code == 422, r.text
            OperationOutcome.model_validate_json(r.content)
            issue = r.json()["issue"][0]
            assert issue["expression"] == [where] and where in issue["diagnostics"]
        r = anon.post(SUBMIT, content=dumps(base))
        assert r.status_code == 401
        assert OperationOutcome.model_validate_json(r.content).issue[0].code == "login"
        bad = [({**envelope_of("9999", "bad-n1", {})}, "infno 9999"),
               ({k: v for k, v in envelope_of("2207", "x", {"data": {
                   "mdtrt_id": "V-BAD", "psn_no": "P-BAD", "medfee_sumamt": "100.00"}}).items()
                 if k != "msgid"}, "msgid is required"),
               (envelope_of("2207", "bad-n3", {"data": {"mdtrt_id": "V-BAD", "psn_no": "P-BAD",
                                                        "medfee_sumamt": "1.001"}}),
                "more than two decimals")]
        for env, says in bad:
            body = call(h1, env)
            assert body["infcode"] == -1 and says in body["err_msg"], body
        assert call(anon, envelope_of("2207", "bad-n4", {}))["infcode"] == -1
    assert {t: _count(stack.settings, t) for t in before} == before
