"""FHIR R4 on the gateway (gateway.md "FHIR R4"): ``POST /fhir/r4/Claim/$submit``.

Pure translation around the native commands: a ``Claim`` (alone or in a ``Bundle``) becomes
one native event and its command, the pipeline's answer becomes a ``ClaimResponse``. The
native path does everything else (credentials, facility scoping, idempotency, waiting), so
both dialects settle a visit the same way. Money is parsed as ``Decimal`` (never a float)
and written back as yuan with exactly two decimals.

The ``event_id`` is the ``Claim.id`` plus the command (``<id>:presettle``, ``:settle``,
``:refund``): a HIS that re-sends the same ``Claim`` (a retry) gets the same answer and
publishes nothing; a pre-settlement and a settlement of the same ``Claim`` do not collide; a
new settlement after a cancellation needs a new ``Claim.id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response

from yibao.gateway.credentials import Client
from yibao.gateway.exceptions import GatewayError, Invalid
from yibao.gateway.money import fen_of_yuan, yuan_of_fen
from yibao.gateway.service import Answer, Command, Service
from yibao.rules.steps import split_lines
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

STANDARD = "http://terminology.hl7.org/CodeSystem/adjudication"
LOCAL = "https://yibao.example/fhir/CodeSystem/adjudication-cn"
CARIN = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication"
FUND_PAY_TYPE = "https://yibao.example/fhir/CodeSystem/nhsa-fund-pay-type"
REJECTION = "https://yibao.example/fhir/CodeSystem/rejection-reason"
SETL_ID = "https://yibao.example/fhir/sid/setl-id"
PSN_NO = "https://yibao.example/fhir/sid/psn-no"
EXT = "https://yibao.example/fhir/StructureDefinition/"
ISSUE_TYPE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
              409: "conflict", 413: "too-costly", 422: "invalid", 503: "transient"}

_OUTPUT = msgspec.json.Decoder(OutputEvent)
_JSON = msgspec.json.Encoder(decimal_format="number")
_USE = {"predetermination": "presettle", "claim": "settle"}
_LETTER = {"presettle": "p", "settle": "s", "refund": "r"}


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """A translated ``$submit``: the native command, its event, and the ``Claim`` the
    answer refers to."""

    command: Command
    event: dict[str, Any]
    claim: dict[str, Any]


# ------------------------------------------------------------------------- money


def fen_of(money: Any, path: str) -> int:
    """A FHIR ``Money`` in yuan as fen: CNY, at most two decimals, exact."""
    if not isinstance(money, dict):
        raise Invalid(f"{path} must be a Money object", path=path)
    currency = money.get("currency", "CNY")
    if currency != "CNY":
        raise Invalid(f"{path}.currency must be CNY, not {currency!r}", path=f"{path}.currency")
    value = money.get("value")
    if isinstance(value, str):
        raise Invalid(f"{path}.value must be a number", path=f"{path}.value")
    return fen_of_yuan(value, f"{path}.value")


def yuan(fen: int) -> dict[str, Any]:
    """Fen as a FHIR ``Money``: yuan with exactly two decimals, no float on the way."""
    return {"value": yuan_of_fen(fen), "currency": "CNY"}


# ------------------------------------------------------------------------- request


def parse_json(raw: bytes) -> Any:
    """JSON with every decimal number kept exact (``Decimal``)."""
    try:
        return json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"the body is not valid JSON: {exc}", path="$") from None


def claim_and_patient(doc: Any) -> tuple[dict[str, Any], str]:
    """The ``Claim`` and the patient's ``person_id``, from a ``Claim`` or a ``Bundle``."""
    if not isinstance(doc, dict):
        raise Invalid("the body must be a FHIR Claim or Bundle", path="$")
    kind = doc.get("resourceType")
    if kind == "Claim":
        return doc, person_of(doc, {})
    if kind != "Bundle":
        raise Invalid(f"resourceType must be Claim or Bundle, not {kind!r}",
                      path="resourceType")
    entries = doc.get("entry") or []
    resources: dict[str, dict[str, Any]] = {}
    claims = []
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            continue
        ref = f"{res.get('resourceType')}/{res.get('id')}"
        resources[ref] = res
        if entry.get("fullUrl"):
            resources[str(entry["fullUrl"])] = res
        if res.get("resourceType") == "Claim":
            claims.append(res)
    if len(claims) != 1:
        raise Invalid(f"a Bundle must hold exactly one Claim, not {len(claims)}",
                      path="Bundle.entry")
    return claims[0], person_of(claims[0], resources)


def person_of(claim: dict[str, Any], resources: dict[str, dict[str, Any]]) -> str:
    """``Claim.patient``: when the Bundle holds the ``Patient``, its identifier of system
    ``PSN_NO`` (a HIS often lists the ID card or the hospital's own number too), else its
    first identifier, else its id; alone, the id in ``Patient/<id>``."""
    patient = claim.get("patient")
    ref = patient.get("reference") if isinstance(patient, dict) else None
    if not isinstance(ref, str) or not ref:
        raise Invalid("Claim.patient is required (a reference to the Patient)",
                      path="Claim.patient")
    res = resources.get(ref)
    if res is not None:
        idents = [i for i in res.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
        ident = next((i for i in idents if i.get("system") == PSN_NO), idents[0] if idents else None)
        return str(ident["value"]) if ident is not None else str(res.get("id"))
    if not ref.startswith("Patient/") or len(ref) == len("Patient/"):
        raise Invalid(f"Claim.patient.reference must be Patient/<id>, not {ref!r}",
                      path="Claim.patient.reference")
    return ref.removeprefix("Patient/")


def command_of(claim: dict[str, Any]) -> Command:
    """``status=cancelled`` cancels; otherwise ``use`` says pre-settle or settle."""
    status = claim.get("status")
    if status == "cancelled":
        return "refund"
    if status != "active":
        raise Invalid(f"Claim.status must be active or cancelled, not {status!r}",
                      path="Claim.status")
    use = claim.get("use")
    if use not in _USE:
        raise Invalid(f"Claim.use must be predetermination or claim, not {use!r}",
                      path="Claim.use")
    return _USE[use]  # type: ignore[return-value]


def visit_of(claim: dict[str, Any]) -> str:
    for ident in claim.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    raise Invalid("Claim.identifier (the visit id) is required", path="Claim.identifier")


def billed(claim: dict[str, Any]) -> tuple[int | None, int | None]:
    """The hospital's bill (``total``, number of ``item``s), checked to the fen: the engine
    refuses a settlement whose bill is not the visit's current lines."""
    items = claim.get("item") or []
    for i, it in enumerate(items):
        for field in ("unitPrice", "net"):
            if isinstance(it, dict) and field in it:
                fen_of(it[field], f"Claim.item[{i}].{field}")
    total = fen_of(claim["total"], "Claim.total") if "total" in claim else None
    return total, (len(items) if items else None)


def extension(resource: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((x for x in resource.get("extension") or []
                 if isinstance(x, dict) and x.get("url") == EXT + name), None)


def submission_of(raw: bytes) -> Submission:
    """Step one of ``$submit``: the native event of a ``Claim`` (the codec validates it)."""
    claim, person = claim_and_patient(parse_json(raw))
    claim_id = claim.get("id")
    if not isinstance(claim_id, str) or not claim_id:
        raise Invalid("Claim.id is required (the idempotency key)", path="Claim.id")
    command = command_of(claim)
    created = claim.get("created")
    if not isinstance(created, str):
        raise Invalid("Claim.created is required", path="Claim.created")
    head = {"event_id": f"{claim_id}:{command}", "schema_version": 1, "occurred_at": created,
            "source": "fhir", "person_id": person, "visit_id": visit_of(claim)}
    if command == "refund":
        return Submission(command=command, claim=claim, event={
            **head, "type": "VisitRefunded", "reason": f"FHIR Claim {claim_id} cancelled"})
    total, lines = billed(claim)
    period = claim.get("billablePeriod") or {}
    account = extension(claim, "use-personal-account")
    event = {**head, "type": "PreSettlementRequested" if command == "presettle" else
             "VisitClosed", "closed_at": period.get("end") or created,
             "use_personal_account": True if account is None else account.get("valueBoolean"),
             "charged_total_fen": total, "charged_lines": lines}
    return Submission(command=command, claim=claim, event=event)


# ------------------------------------------------------------------------- answer


def category(*codes: tuple[str, str]) -> dict[str, Any]:
    return {"coding": [{"system": s, "code": c} for s, c in codes]}


def adjudication(cat: dict[str, Any], fen: int) -> dict[str, Any]:
    return {"category": cat, "amount": yuan(fen)}


SUBMITTED = category((STANDARD, "submitted"))
ELIGIBLE = category((STANDARD, "eligible"))


def trace_bp(claim: ClaimSettled | ClaimPreviewed, step: str, pattern: str) -> int | None:
    """A rate (basis points) the engine wrote in its trace for ``step``."""
    for entry in claim.trace:
        if entry.step == step:
            found = re.search(pattern, entry.detail)
            if found:
                return int(found.group(1))
    return None


def item_adjudications(claim: dict[str, Any], settled: ClaimSettled | ClaimPreviewed
                       ) -> list[dict[str, Any]]:
    """Each ``Claim.item`` split as the engine splits a line (Step 1, the same function), with
    the class B first self-pay rate the settlement used."""
    bp = trace_bp(settled, "lines", r"b_first_self_pay (\d+) bp")
    out = []
    for i, it in enumerate(claim.get("item") or []):
        cls_ext = extension(it, "catalog-class")
        cap_ext = extension(it, "line-cap")
        if bp is None or cls_ext is None or "net" not in it:
            continue
        cap = fen_of(cap_ext["valueMoney"], f"Claim.item[{i}].extension") if cap_ext else None
        line = split_lines([(str(cls_ext.get("valueCode")), fen_of(it["net"], "net"), cap)],
                           1, bp)
        adj = [adjudication(SUBMITTED, line.total)]
        if line.self_pay_full:
            adj.append(adjudication(category((LOCAL, "self-pay-full"), (CARIN, "noncovered")),
                                    line.self_pay_full))
        if line.over_cap:
            adj.append(adjudication(category((LOCAL, "over-cap")), line.over_cap))
        if line.first_self_pay:
            adj.append(adjudication(category((LOCAL, "first-self-pay")), line.first_self_pay))
        adj.append(adjudication(ELIGIBLE, line.eligible))
        out.append({"itemSequence": it.get("sequence", i + 1), "adjudication": adj})
    return out


def split_of(claim: dict[str, Any], settled: ClaimSettled | ClaimPreviewed | ClaimReversed
             ) -> dict[str, Any]:
    """gateway.md's amounts table: the split as ``adjudication`` and ``total``."""
    a = settled.amounts
    funds = a.basic_fund + a.major_illness + a.assistance
    adj = [adjudication(category((STANDARD, "deductible")), a.deductible)]
    if not isinstance(settled, ClaimReversed):
        rate = trace_bp(settled, "basic_fund", r"rate (\d+) bp")
        if rate is not None:
            adj.append({"category": category((STANDARD, "eligpercent")),
                        "value": Decimal(rate).scaleb(-4)})
    adj += [
        adjudication(category((STANDARD, "benefit"), (LOCAL, "basic-fund"),
                              (FUND_PAY_TYPE, "310100")), a.basic_fund),
        adjudication(category((LOCAL, "major-illness")), a.major_illness),
        adjudication(category((LOCAL, "assistance")), a.assistance),
        adjudication(category((LOCAL, "personal-account")), a.personal_account),
        adjudication(category((LOCAL, "family-account")), a.family_account),
        adjudication(category((LOCAL, "cash-due"), (CARIN, "paidbypatientcash")), a.cash_due),
    ]
    body: dict[str, Any] = {
        "adjudication": adj,
        "total": [adjudication(SUBMITTED, a.total), adjudication(ELIGIBLE, a.eligible),
                  adjudication(category((STANDARD, "benefit")), a.basic_fund),
                  adjudication(category((LOCAL, "patient-share")), a.total - funds)],
    }
    if not isinstance(settled, ClaimReversed):
        items = item_adjudications(claim, settled)
        if items and reconciles(items, a):
            body["item"] = items
    return body


def reconciles(items: list[dict[str, Any]], amounts: Amounts) -> bool:
    """The per-item split is computed from the classes and caps the ``Claim`` declares, so it
    is shown only when it adds up to the settlement's own ``total`` and ``eligible``: a
    ``Claim`` that mislabels a line gets no ``item[]`` rather than a split that contradicts
    the totals."""
    sums = {"submitted": 0, "eligible": 0}
    for it in items:
        for adj in it["adjudication"]:
            code = adj["category"]["coding"][0]["code"]
            if code in sums:
                sums[code] += fen_of_yuan(adj["amount"]["value"], "item")
    return sums == {"submitted": amounts.total, "eligible": amounts.eligible}


def claim_response(sub: Submission, answer: Answer) -> dict[str, Any]:
    """The ``ClaimResponse`` of an answer (or ``queued`` while it is pending)."""
    claim = sub.claim
    outputs = [_OUTPUT.decode(body) for _t, body in answer.outputs]
    head = next((o for o in outputs if not isinstance(o, AuditFlagRaised)), None)
    use = "predetermination" if sub.command == "presettle" else "claim"
    res: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "id": _fhir_id(f"{claim['id']}-{sub.command}"),
        "status": "cancelled" if sub.command == "refund" else "active",
        "type": claim.get("type") or category(
            ("http://terminology.hl7.org/CodeSystem/claim-type", "institutional")),
        "use": use,
        "patient": claim["patient"],
        "created": claim["created"],
        "insurer": claim.get("insurer") or {"display": "yibao"},
        "request": {"reference": f"Claim/{claim['id']}"},
        "outcome": "queued",
    }
    if claim.get("provider"):
        res["requestor"] = claim["provider"]
    if head is None:
        res["disposition"] = f"pending: GET /v1/outcomes/{answer.event_id}"
        return res
    if isinstance(head, ClaimRejected | PreviewRejected | EventRejected):
        res["outcome"] = "error"
        res["disposition"] = f"{type(head).__name__} {head.reason}"
        res["error"] = [{"code": {"coding": [{"system": REJECTION, "code": head.reason}],
                                  "text": head.detail}}]
    elif isinstance(head, ClaimSettled | ClaimPreviewed | ClaimReversed):
        res["outcome"] = "complete"
        seq = head.settlement_seq
        res["id"] = _fhir_id(f"{claim['id']}-{_LETTER[sub.command]}{seq}")
        res["identifier"] = [{"system": SETL_ID, "value": f"{head.visit_id}/{seq}"}]
        res["disposition"] = f"{type(head).__name__} settlement_seq={seq}" + (
            "" if isinstance(head, ClaimReversed)
            else f" policy_version={head.policy_version} kind={head.kind}")
        res.update(split_of(claim, head))
        if isinstance(head, ClaimSettled):
            a = head.amounts
            res["payment"] = {
                "type": category(("http://terminology.hl7.org/CodeSystem/ex-paymenttype",
                                  "complete")),
                "date": head.service_date.isoformat(),
                "amount": yuan(a.basic_fund + a.major_illness + a.assistance
                               + a.personal_account + a.family_account)}
    notes = [f"{o.severity} {o.rule}: {o.detail}" for o in outputs
             if isinstance(o, AuditFlagRaised)]
    if isinstance(head, ClaimPreviewed):
        notes += [f"{e.severity} {e.rule}: {e.detail}" for e in head.audit]
    if notes:
        res["processNote"] = [{"number": n, "type": "display", "text": t}
                              for n, t in enumerate(notes, 1)]
    return res


def operation_outcome(exc: GatewayError) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": ISSUE_TYPE.get(exc.status, "invalid"),
                             "diagnostics": exc.message}
    if exc.path:
        issue["expression"] = [exc.path]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _fhir_id(text: str) -> str:
    """A FHIR ``id`` ([A-Za-z0-9-.]{1,64}) from ours."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", text)[:64]


# ------------------------------------------------------------------------- HTTP

FHIR_JSON = "application/fhir+json"

Serve = Callable[..., Awaitable[Response]]


def add_fhir_routes(app: FastAPI, serve: Serve, svc: Service, settings: Settings) -> None:
    from yibao.gateway.app import _body, _timeout

    async def submit(request: Request) -> Response:
        subs: list[Submission] = []

        async def run(client: Client) -> Answer:
            raw = await _body(request)
            sub = submission_of(raw)
            subs.append(sub)
            request.state.body = msgspec.json.encode(sub.event)
            timeout = _timeout(request, settings.gateway_timeout_s)
            return await svc.submit(client, sub.command, msgspec.json.encode(sub.event),
                                    timeout)

        def render(answer: Answer) -> Response:
            pending = answer.status != "answered"
            headers = {"Location": f"/v1/outcomes/{answer.event_id}"} if pending else {}
            return Response(_JSON.encode(claim_response(subs[0], answer)),
                            status_code=202 if pending else 200, headers=headers,
                            media_type=FHIR_JSON)

        def render_error(exc: GatewayError) -> Response:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
            return Response(_JSON.encode(operation_outcome(exc)), status_code=exc.status,
                            headers=headers, media_type=FHIR_JSON)

        return await serve(request, "fhir", run, render=render, render_error=render_error)

    app.add_api_route("/fhir/r4/Claim/$submit", submit, methods=["POST"],
                      summary="FHIR R4 Claim/$submit: pre-settle (use=predetermination), "
                      "settle (use=claim) or cancel (status=cancelled); a ClaimResponse")
