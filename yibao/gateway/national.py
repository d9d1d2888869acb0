"""The national interface on the gateway (gateway.md "The national interface",
医疗保障信息平台 定点医药机构接口规范): ``POST /fsi/api/rsfComIfsService/callService``.

Pure translation around the native commands, dispatched on ``infno``: the envelope's
``input`` becomes one native event (``msgid`` is its ``event_id``, so a re-sent message is
idempotent), the pipeline's answer becomes ``output`` (``setlinfo`` for the settlement
transactions). Every failure is ``infcode`` -1 with ``err_msg`` saying what and where; the
HTTP status stays the native one so proxies and monitors see refusals. Field mappings:
docs/gateway.md "The national interface".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response

from yibao.clock import OFFSET_TEXT, UTC8
from yibao.gateway.credentials import Client
from yibao.gateway.exceptions import GatewayError, Invalid
from yibao.gateway.fhir import parse_json
from yibao.gateway.money import fen_of_yuan, yuan_of_fen
from yibao.gateway.service import Answer, Command, Service
from yibao.schemas.events import (
    Amounts,
    AuditFlagRaised,
    ClaimPreviewed,
    ClaimRejected,
    ClaimReversed,
    ClaimSettled,
    EventRejected,
    OutputEvent,
    PreviewRejected,
)
from yibao.settings import Settings

_OUTPUT = msgspec.json.Decoder(OutputEvent)
_JSON = msgspec.json.Encoder(decimal_format="number")

#: ``infno`` -> (native command, event type); 2201-2208 outpatient, 2401/23xx inpatient.
TRANSACTIONS: dict[str, tuple[Command, str]] = {
    "2201": ("events", "VisitOpened"), "2401": ("events", "VisitOpened"),
    "2204": ("events", "ItemsCharged"), "2301": ("events", "ItemsCharged"),
    "2205": ("events", "ChargeReversed"), "2302": ("events", "ChargeReversed"),
    "2206": ("presettle", "PreSettlementRequested"),
    "2303": ("presettle", "PreSettlementRequested"),
    "2207": ("settle", "VisitClosed"), "2304": ("settle", "VisitClosed"),
    "2208": ("refund", "VisitRefunded"), "2305": ("refund", "VisitRefunded"),
}
INPATIENT = frozenset({"2401", "2301", "2302", "2303", "2304", "2305"})
#: ``med_type`` (医疗类别) -> visit kind.
MED_TYPE = {"11": "outpatient", "12": "outpatient", "13": "emergency",
            "14": "outpatient_special", "21": "inpatient"}
#: ``list_type`` first digit (目录类别) -> line category; ``chrgitm_lv`` (收费项目等级) -> class.
LIST_TYPE = {"1": "drug", "2": "service", "3": "consumable"}
CHRGITM_LV = {"01": "A", "02": "B", "03": "C"}
#: ``setlinfo`` field -> ``Amounts`` field (gateway.md).
SETLINFO = {"medfee_sumamt": "total", "fulamt_ownpay_amt": "self_pay_full",
            "overlmt_selfpay": "over_cap", "preselfpay_amt": "first_self_pay",
            "inscp_scp_amt": "eligible", "act_pay_dedc": "deductible", "hifp_pay": "basic_fund",
            "hifmi_pay": "major_illness", "maf_pay": "assistance",
            "acct_pay": "personal_account", "acct_mulaid_pay": "family_account",
            "psn_cash_pay": "cash_due"}


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A translated ``callService`` message: the native command and event, and for 2208 /
    2305 the ``setl_id`` it cancels (checked before anything is published)."""

    infno: str
    msgid: str
    command: Command
    event: dict[str, Any]
    setl_id: str | None = None


# ------------------------------------------------------------------------- request


def field(obj: Any, name: str, path: str, *, required: bool = True) -> Any:
    value = obj.get(name) if isinstance(obj, dict) else None
    if required and (value is None or value == ""):
        raise Invalid(f"{path}.{name} is required", path=f"{path}.{name}")
    return value


def timestamp(value: Any, path: str) -> str:
    """The interface's local ``yyyy-MM-dd HH:mm:ss`` (UTC+08:00) as RFC 3339."""
    if not isinstance(value, str):
        raise Invalid(f"{path} must be a time (yyyy-MM-dd HH:mm:ss)", path=path)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{path} must be a time (yyyy-MM-dd HH:mm:ss), not {value!r}",
                      path=path) from None
    return parsed.isoformat() if parsed.tzinfo else parsed.isoformat() + OFFSET_TEXT


def message_of(raw: bytes) -> Message:
    """Step one of ``callService``: the envelope, then the event of its ``infno``."""
    env = parse_json(raw)
    if not isinstance(env, dict):
        raise Invalid("the body must be a callService envelope (a JSON object)", path="$")
    infno = str(field(env, "infno", "$"))
    if infno not in TRANSACTIONS:
        raise Invalid(f"infno {infno} is not a transaction yibao implements "
                      f"({', '.join(sorted(TRANSACTIONS))})", path="$.infno")
    msgid = str(field(env, "msgid", "$"))
    command, kind = TRANSACTIONS[infno]
    inp = field(env, "input", "$")
    head = {"type": kind, "event_id": msgid, "schema_version": 1,
            "occurred_at": timestamp(field(env, "inf_time", "$"), "$.inf_time"),
            "source": "fsi"}
    build = {"VisitOpened": visit_opened, "ItemsCharged": items_charged,
             "ChargeReversed": charge_reversed, "PreSettlementRequested": settlement,
             "VisitClosed": settlement, "VisitRefunded": refund}[kind]
    event = {**head, **build(infno, env, inp)}
    setl_id = str(inp["data"]["setl_id"]) if command == "refund" else None
    return Message(infno=infno, msgid=msgid, command=command, event=event, setl_id=setl_id)


def visit_opened(infno: str, env: dict[str, Any], inp: Any) -> dict[str, Any]:
    """2201 (``input.data``) and 2401 (``input.mdtrtinfo`` + ``input.diseinfo``): the HIS
    names the visit (``mdtrt_id``) and the facility level (``hosp_lv``)."""
    key = "mdtrtinfo" if infno == "2401" else "data"
    data = field(inp, key, "$.input")
    path = f"$.input.{key}"
    med_type = str(data.get("med_type") or ("21" if infno == "2401" else "11"))
    kind = MED_TYPE.get(med_type)
    if kind is None or (infno == "2401") != (kind == "inpatient"):
        raise Invalid(f"{path}.med_type {med_type} is not a "
                      f"{'inpatient' if infno == '2401' else 'outpatient'} type of yibao",
                      path=f"{path}.med_type")
    level = field(data, "hosp_lv", path)
    diseinfo = inp.get("diseinfo") or data.get("diseinfo") or []
    return {"person_id": field(data, "psn_no", path), "visit_id": field(data, "mdtrt_id", path),
            "facility_id": field(env, "fixmedins_code", "$"),
            "facility_level": int(level) if str(level).isdigit() else level,
            "facility_region": field(env, "mdtrtarea_admvs", "$"), "kind": kind,
            "opened_at": timestamp(field(data, "begntime", path), f"{path}.begntime"),
            "diagnoses": [field(d, "diag_code", f"$.input.diseinfo[{i}]")
                          for i, d in enumerate(diseinfo)],
            "special_disease_code": data.get("dise_codg") if kind == "outpatient_special"
            else None}


def items_charged(infno: str, env: dict[str, Any], inp: Any) -> dict[str, Any]:
    """2204 / 2301 ``input.feedetail``: one line per fee detail, all of one visit."""
    details = field(inp, "feedetail", "$.input")
    if not isinstance(details, list) or not details:
        raise Invalid("$.input.feedetail must be a non-empty list", path="$.input.feedetail")
    items, visits, persons = [], set(), set()
    for i, d in enumerate(details):
        path = f"$.input.feedetail[{i}]"
        visits.add(field(d, "mdtrt_id", path))
        persons.add(field(d, "psn_no", path))
        list_type = str(field(d, "list_type", path))
        lv = str(field(d, "chrgitm_lv", path))
        if list_type[:1] not in LIST_TYPE:
            raise Invalid(f"{path}.list_type {list_type}: 1xx drug, 2xx service, "
                          "3xx consumable", path=f"{path}.list_type")
        if lv not in CHRGITM_LV:
            raise Invalid(f"{path}.chrgitm_lv {lv}: 01, 02 or 03", path=f"{path}.chrgitm_lv")
        cnt = field(d, "cnt", path)
        if isinstance(cnt, bool) or not str(cnt).isdigit():
            raise Invalid(f"{path}.cnt must be a whole number, not {cnt}", path=f"{path}.cnt")
        cap = d.get("pric_uplmt_amt")
        items.append({
            "line_id": str(field(d, "feedetl_sn", path)),
            "code": str(field(d, "med_list_codg", path)),
            "name": str(d.get("medins_list_name") or d["med_list_codg"]),
            "category": LIST_TYPE[list_type[0]], "catalog_class": CHRGITM_LV[lv],
            "quantity": int(str(cnt)),
            "unit_price_fen": fen_of_yuan(field(d, "pric", path), f"{path}.pric"),
            "amount_fen": fen_of_yuan(field(d, "det_item_fee_sumamt", path),
                                      f"{path}.det_item_fee_sumamt"),
            "cap_fen": None if cap in (None, "") else fen_of_yuan(cap, f"{path}.pric_uplmt_amt"),
        })
    if len(visits) != 1 or len(persons) != 1:
        raise Invalid("$.input.feedetail must be of one mdtrt_id and one psn_no",
                      path="$.input.feedetail")
    return {"person_id": persons.pop(), "visit_id": visits.pop(), "items": items}


def charge_reversed(infno: str, env: dict[str, Any], inp: Any) -> dict[str, Any]:
    """2205 / 2302 ``input.data``: the fee details (``feedetl_sn``, one or a list) to undo."""
    data = field(inp, "data", "$.input")
    sn = field(data, "feedetl_sn", "$.input.data")
    return {"person_id": field(data, "psn_no", "$.input.data"),
            "visit_id": field(data, "mdtrt_id", "$.input.data"),
            "line_ids": [str(s) for s in sn] if isinstance(sn, list) else [str(sn)]}


def settlement(infno: str, env: dict[str, Any], inp: Any) -> dict[str, Any]:
    """2206/2303 pre-settle, 2207/2304 settle: ``medfee_sumamt`` (required to settle) is the
    hospital's bill, checked against the visit's lines; ``acct_used_flag`` 0 keeps the
    personal account out; ``endtime`` (else ``inf_time``) is the checkout."""
    data = field(inp, "data", "$.input")
    path = "$.input.data"
    settle = TRANSACTIONS[infno][0] == "settle"
    total = field(data, "medfee_sumamt", path, required=settle)
    end = data.get("endtime") or field(env, "inf_time", "$")
    return {"person_id": field(data, "psn_no", path), "visit_id": field(data, "mdtrt_id", path),
            "closed_at": timestamp(end, f"{path}.endtime"),
            "use_personal_account": str(data.get("acct_used_flag", "1")) != "0",
            "charged_total_fen": None if total is None
            else fen_of_yuan(total, f"{path}.medfee_sumamt")}


def refund(infno: str, env: dict[str, Any], inp: Any) -> dict[str, Any]:
    data = field(inp, "data", "$.input")
    path = "$.input.data"
    setl_id = field(data, "setl_id", path)
    return {"person_id": field(data, "psn_no", path), "visit_id": field(data, "mdtrt_id", path),
            "reason": f"{infno} cancels setl_id {setl_id}"}


def current_setl_id(outputs: list[tuple[str, bytes]]) -> str | None:
    """The visit's settlement still in force: the last ``ClaimSettled`` not reversed."""
    settled: dict[int, str] = {}
    reversed_: set[int] = set()
    for _t, body in outputs:
        out = _OUTPUT.decode(body)
        if isinstance(out, ClaimSettled):
            settled[out.settlement_seq] = out.event_id
        elif isinstance(out, ClaimReversed):
            reversed_.add(out.settlement_seq)
    live = [seq for seq in settled if seq not in reversed_]
    return settled[max(live)] if live else None


async def check_setl_id(svc: Service, client: Client, msg: Message) -> None:
    """2208 / 2305 must name the visit's current settlement (else nothing is published).
    The caller's role and facility are checked first, like the native path does, so the
    refusal never shows another facility's ``setl_id``."""
    if msg.command != "refund":
        return
    event = svc.decode(msgspec.json.encode(msg.event))
    svc.check_role(client, type(event).__name__)
    await svc.check_facility(client, event)
    named = msg.setl_id
    visit = msg.event["visit_id"]
    current = current_setl_id(svc.index.outputs_of_visit(visit, ("ClaimSettled",
                                                                 "ClaimReversed")))
    known = svc.index.known_input(msg.msgid)
    if named != current and known is None:
        raise Invalid(f"setl_id {named} is not the current settlement of mdtrt_id {visit} "
                      f"(current: {current or 'none'})", path="$.input.data.setl_id")


# ------------------------------------------------------------------------- answer


def setlinfo(out: ClaimSettled | ClaimPreviewed | ClaimReversed) -> dict[str, Any]:
    a: Amounts = out.amounts
    info: dict[str, Any] = {"setl_id": out.event_id, "mdtrt_id": out.visit_id,
                            "psn_no": out.person_id}
    info.update({k: yuan_of_fen(getattr(a, v)) for k, v in SETLINFO.items()})
    info["fund_pay_sumamt"] = yuan_of_fen(a.basic_fund + a.major_illness + a.assistance)
    return info


def response(msgid: str, infcode: int, err_msg: str | None, output: dict[str, Any]
             ) -> dict[str, Any]:
    now = dt.datetime.now(UTC8).strftime("%Y-%m-%d %H:%M:%S")
    return {"infcode": infcode, "inf_refmsgid": msgid, "refmsg_time": now,
            "respond_time": now, "err_msg": err_msg, "output": output}


def answer_of(msg: Message, answer: Answer) -> dict[str, Any]:
    """The response envelope of a native answer."""
    outputs = [_OUTPUT.decode(body) for _t, body in answer.outputs]
    head = next((o for o in outputs if not isinstance(o, AuditFlagRaised)), None)
    flags = [{"rule": o.rule, "severity": o.severity, "detail": o.detail}
             for o in outputs if isinstance(o, AuditFlagRaised)]
    if isinstance(head, ClaimRejected | PreviewRejected | EventRejected):
        return response(msg.msgid, -1, f"{head.reason}: {head.detail}",
                        {"reason": head.reason})
    if isinstance(head, ClaimSettled | ClaimPreviewed | ClaimReversed):
        output: dict[str, Any] = {"setlinfo": setlinfo(head)}
        if isinstance(head, ClaimPreviewed):
            flags += [{"rule": e.rule, "severity": e.severity, "detail": e.detail}
                      for e in head.audit]
        if flags:
            output["audit"] = flags
        return response(msg.msgid, 0, None, output)
    if answer.status == "pending":
        return response(msg.msgid, -1, "no answer yet: send the same msgid again for it",
                        {})
    ev = msg.event
    if msg.event["type"] == "VisitOpened":
        return response(msg.msgid, 0, None, {"data": {"mdtrt_id": ev["visit_id"],
                                                      "psn_no": ev["person_id"]}})
    if msg.event["type"] == "ItemsCharged":
        return response(msg.msgid, 0, None, {"result": [
            {"feedetl_sn": i["line_id"], "det_item_fee_sumamt": yuan_of_fen(i["amount_fen"]),
             "cnt": i["quantity"], "pric": yuan_of_fen(i["unit_price_fen"])}
            for i in ev["items"]]})
    return response(msg.msgid, 0, None, {})


# ------------------------------------------------------------------------- HTTP

Serve = Callable[..., Awaitable[Response]]
PATH = "/fsi/api/rsfComIfsService/callService"


def add_national_routes(app: FastAPI, serve: Serve, svc: Service, settings: Settings
                        ) -> None:
    from yibao.gateway.app import _body, _timeout

    async def call_service(request: Request) -> Response:
        msgs: list[Message] = []
        head: dict[str, str] = {}

        async def run(client: Client) -> Answer:
            raw = await _body(request)
            with_id = parse_json(raw)
            if isinstance(with_id, dict) and with_id.get("msgid"):
                head["msgid"] = str(with_id["msgid"])
            msg = message_of(raw)
            msgs.append(msg)
            value = msgspec.json.encode(msg.event)
            request.state.body = value
            await check_setl_id(svc, client, msg)
            timeout = _timeout(request, settings.gateway_timeout_s)
            return await svc.submit(client, msg.command, value, timeout)

        def render(answer: Answer) -> Response:
            return Response(_JSON.encode(answer_of(msgs[0], answer)),
                            media_type="application/json")

        def render_error(exc: GatewayError) -> Response:
            where = f" (at {exc.path})" if exc.path else ""
            body = response(head.get("msgid", ""), -1, exc.message + where, {})
            return Response(_JSON.encode(body), status_code=exc.status,
                            media_type="application/json")

        return await serve(request, "national", run, render=render,
                           render_error=render_error)

    app.add_api_route(PATH, call_service, methods=["POST"],
                      summary="The national interface (callService), dispatched on infno")
