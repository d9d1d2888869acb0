"""Events → Arrow tables: the one pure transform behind the live projector, replay and the
policy what-if (no I/O, no DuckDB; a batch of records in, one Arrow table per base table out).

Records are anything with ``partition``, ``offset``, ``timestamp`` (ms) and ``value``
(aiokafka's ``ConsumerRecord``, or :class:`Rec`). A batch of values is decoded with one
msgspec call (``[v1,v2,...]`` into flat Structs that read only the fields projected, so
line items and traces are skipped or kept raw), then each column is one list comprehension.
Rows depend only on the record, never on the batch, so any batching of the same log gives the
same tables: that is what makes a live projection equal a replay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import msgspec
import pyarrow as pa

from yibao.clock import ms_local_date
from yibao.projections.schema import AMOUNTS, ARROW_SCHEMAS, COPIED, TABLES
from yibao.schemas.events import Amounts, FacilityFlagRaised

LEDGER, SETTLEMENTS, DEADLETTER, AUDIT = "ledger", "settlements", "deadletter", "audit"
ROLES = (LEDGER, SETTLEMENTS, DEADLETTER, AUDIT)
DEV_PSEUDONYM_KEY = "yibao-dev-pseudonym-key"


class Record(Protocol):
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


class Rec(NamedTuple):
    partition: int
    offset: int
    timestamp: int
    value: bytes


class Pseudonyms:
    """``HMAC-SHA256(key, id)`` as 32 hex digits, cached (ids repeat a lot)."""

    def __init__(self, key: str | bytes) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        self._cache: dict[str, str] = {}

    def __call__(self, ident: str | None) -> str | None:
        if ident is None:
            return None
        v = self._cache.get(ident)
        if v is None:
            v = hmac.new(self._key, ident.encode(), hashlib.sha256).hexdigest()[:32]
            if len(self._cache) < 2_000_000:
                self._cache[ident] = v
        return v

    def many(self, idents: list[str]) -> list[str]:
        cache, make = self._cache, self.__call__
        return [cache.get(i) or make(i) for i in idents]  # type: ignore[misc]


# ------------------------------------------------------------------ flat decode structs


class _Item(msgspec.Struct):
    amount_fen: int = 0


class _L(msgspec.Struct):
    """Every ledger field the projections read (unknown fields are skipped by msgspec)."""

    type: str
    event_id: str
    person_id: str
    household_id: str | None = None
    scheme: str | None = None
    region: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    retired: bool | None = None
    assistance: str | None = None
    effective_from: dt.date | None = None
    personal_account_fen: int | None = None
    amount_fen: int | None = None
    beneficiary_id: str | None = None
    disease_code: str | None = None
    treatment_region: str | None = None
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    date_of_death: dt.date | None = None
    bank: str | None = None
    limit_fen: int | None = None
    visit_id: str | None = None
    facility_id: str | None = None
    facility_level: int | None = None
    facility_region: str | None = None
    kind: str | None = None
    opened_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    diagnoses: list[str] | None = None
    items: list[_Item] | None = None
    line_ids: list[str] | None = None
    use_personal_account: bool = True
    reason: str | None = None
    payment_id: str | None = None
    method: str | None = None
    flag_id: str | None = None
    outcome: str | None = None
    recovered_fen: int | None = None
    reviewer: str | None = None


class _Debit(msgspec.Struct):
    payer_id: str
    amount_fen: int


class _O(msgspec.Struct):
    type: str
    event_id: str
    caused_by: str
    person_id: str
    visit_id: str | None = None
    household_id: str | None = None
    settlement_seq: int | None = None
    policy_version: str | None = None
    benefit_year: int | None = None
    service_date: dt.date | None = None
    scheme: str | None = None
    kind: str | None = None
    insured_region: str | None = None
    treatment_region: str | None = None
    facility_id: str | None = None
    cross_province: bool | None = None
    amounts: Amounts | None = None
    family_debits: list[_Debit] | None = None
    trace: msgspec.Raw = msgspec.Raw(b"null")
    payment_id: str | None = None
    method: str | None = None
    amount_fen: int | None = None
    outstanding_fen: int | None = None
    reason: str | None = None
    rule: str | None = None
    severity: str | None = None
    detail: str | None = None
    related_visit_id: str | None = None


class _Origin(msgspec.Struct):
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class _DL(msgspec.Struct):
    origin: _Origin | None = None
    error: str | None = None
    path: str | None = None
    raw: str | None = None


_PY = {"string": str, "int64": int, "int32": int, "int16": int, "bool": bool,
       "date32[day]": dt.date, "timestamp[ms, tz=UTC]": dt.datetime}


def _reading_copied(base: type[msgspec.Struct], tables: Sequence[str]) -> Any:
    """``base`` plus every column ``tables`` copy from the contract that it lacks: a field
    added to the contract's Structs is decoded (and projected) without touching ``base``."""
    have = set(base.__struct_fields__)
    extra = {c.name: _PY[str(c.arrow)] for t in tables for c in TABLES[t][1]
             if c.name in COPIED[t] and c.name not in have}
    return msgspec.defstruct(base.__name__, [(n, tp | None, None) for n, tp in extra.items()],
                             bases=(base,))


_LX = _reading_copied(_L, ("payment_events", "audit_reviews"))
_OX = _reading_copied(_O, ("payment_outcomes", "rejections", "audit_flags"))
_LDEC = msgspec.json.Decoder(list[_LX])  # type: ignore[valid-type]  # built at import
_L1 = msgspec.json.Decoder(_LX)
_ODEC = msgspec.json.Decoder(list[_OX])  # type: ignore[valid-type]  # built at import
_O1 = msgspec.json.Decoder(_OX)
_DDEC = msgspec.json.Decoder(_DL)
_FDEC = msgspec.json.Decoder(FacilityFlagRaised)

_ENROLLMENT = frozenset({
    "AssistanceStatusChanged", "PersonalAccountCredited", "FamilyAidAuthorized",
    "FamilyAidRevoked", "SpecialDiseaseCertified", "CrossRegionFiled", "EnrollmentSuspended",
    "EnrollmentResumed", "PersonDeceased", "CreditLineGranted", "CreditRepaid"})
_VISIT = frozenset({"VisitOpened", "PrescriptionIssued", "ItemsCharged", "ChargeReversed",
                    "VisitClosed", "VisitRefunded"})
_CLAIMS = frozenset({"ClaimSettled", "ClaimReversed"})
_PAYMENTS = frozenset({"PaymentAccepted", "PaymentRejected"})
_REJECTIONS = frozenset({"ClaimRejected", "EventRejected"})
_ID_CHARS = rb"A-Za-z0-9._:-"


def _copy(table: str, events: Sequence[Any]) -> dict[str, list[Any]]:
    """The columns ``table`` copies from its events' contract fields, by name."""
    return {c: [getattr(e, c) for e in events] for c in COPIED[table]}


def _table(name: str, cols: dict[str, list[Any]]) -> pa.Table:
    schema = ARROW_SCHEMAS[name]
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in schema],
                                schema=schema)


def _decode_many(values: list[bytes], many: Any, one: Any) -> list[tuple[int, Any]]:
    """(index, struct) for every value that decodes; one msgspec call when all do."""
    if not values:
        return []
    try:
        return list(enumerate(many.decode(b"[" + b",".join(values) + b"]")))
    except msgspec.DecodeError:
        out = []
        for i, v in enumerate(values):
            with contextlib.suppress(msgspec.DecodeError):
                out.append((i, one.decode(v)))
        return out


def _ms(t: dt.datetime | None) -> int | None:
    return None if t is None else int(t.timestamp() * 1000)


class Transform:
    """Pure and stateless apart from the pseudonym cache: ``batch(...)`` → Arrow tables."""

    def __init__(self, pseudonym_key: str | bytes = DEV_PSEUDONYM_KEY) -> None:
        self.ps = Pseudonyms(pseudonym_key)
        self.undecodable = 0

    def batch(self, ledger: Sequence[Record] = (), settlements: Sequence[Record] = (),
              deadletter: Sequence[Record] = (), audit: Sequence[Record] = ()
              ) -> dict[str, pa.Table]:
        out: dict[str, pa.Table] = {}
        if audit:
            out["facility_flags"] = self.facility_flags(audit)
        if ledger:
            out.update(self.ledger(ledger))
        if settlements:
            out.update(self.settlements(settlements))
        if deadletter:
            out["dead_letters"] = self.dead_letters(deadletter)
        return {k: v for k, v in out.items() if v.num_rows}

    # -------------------------------------------------------------------------- ledger

    def ledger(self, recs: Sequence[Record]) -> dict[str, pa.Table]:
        values = [r.value or b"null" for r in recs]
        decoded = _decode_many(values, _LDEC, _L1)
        self.undecodable += len(values) - len(decoded)
        ps = self.ps.many
        reg: list[tuple[Record, _L]] = []
        enr: list[tuple[Record, _L]] = []
        vis: list[tuple[Record, _L]] = []
        pay: list[tuple[Record, _L]] = []
        rev: list[tuple[Record, _L]] = []
        for i, e in decoded:
            t = e.type
            if t in _VISIT:
                vis.append((recs[i], e))
            elif t == "PaymentMade":
                pay.append((recs[i], e))
            elif t == "PersonRegistered":
                reg.append((recs[i], e))
            elif t in _ENROLLMENT:
                enr.append((recs[i], e))
            elif t == "AuditFlagReviewed":
                rev.append((recs[i], e))

        def head(rows: list[tuple[Record, _L]]) -> dict[str, list[Any]]:
            return {
                "event_id": [e.event_id for _, e in rows],
                "type": [e.type for _, e in rows],
                "person_key": ps([e.person_id for _, e in rows]),
                "occurred_at": [r.timestamp for r, _ in rows],
                "src_partition": [r.partition for r, _ in rows],
                "src_offset": [r.offset for r, _ in rows],
            }

        tables: dict[str, pa.Table] = {}
        if reg:
            es = [e for _, e in reg]
            tables["registrations"] = _table("registrations", {
                **head(reg),
                "household_key": ps([e.household_id or e.person_id for e in es]),
                "scheme": [e.scheme for e in es],
                "region": [e.region for e in es],
                "birth_year": [int(e.birth_date[:4]) if e.birth_date else None for e in es],
                "sex": [e.sex for e in es],
                "retired": [e.retired for e in es],
                "assistance": [e.assistance for e in es],
                "effective_from": [e.effective_from for e in es],
                "personal_account_fen": [e.personal_account_fen for e in es],
            })
        if enr:
            es = [e for _, e in enr]
            p1 = self.ps
            tables["enrollment_events"] = _table("enrollment_events", {
                **head(enr),
                "effective_date": [e.effective_from or e.valid_from or e.date_of_death for e in es],
                "end_date": [e.valid_to for e in es],
                "assistance": [e.assistance for e in es],
                "amount_fen": [e.amount_fen if e.amount_fen is not None else e.limit_fen
                               for e in es],
                "bank": [e.bank for e in es],
                "beneficiary_key": [p1(e.beneficiary_id) for e in es],
                "code": [e.disease_code or e.treatment_region for e in es],
            })
        if vis:
            es = [e for _, e in vis]
            tables["visit_events"] = _table("visit_events", {
                **head(vis),
                "visit_id": [e.visit_id for e in es],
                "facility_id": [e.facility_id for e in es],
                "facility_level": [e.facility_level for e in es],
                "facility_region": [e.facility_region for e in es],
                "kind": [e.kind for e in es],
                "diagnoses": [",".join(e.diagnoses) if e.diagnoses is not None else None
                              for e in es],
                "lines": [len(e.items) if e.items is not None else
                          (len(e.line_ids) if e.line_ids is not None else None) for e in es],
                "amount_fen": [sum(i.amount_fen for i in e.items) if e.items is not None else None
                               for e in es],
                "at_time": [_ms(e.opened_at or e.closed_at) for e in es],
                "use_personal_account": [e.use_personal_account if e.type == "VisitClosed"
                                         else None for e in es],
                "reason": [e.reason for e in es],
            })
        if pay:
            es = [e for _, e in pay]
            tables["payment_events"] = _table("payment_events", {
                **head(pay), **_copy("payment_events", es)})
        if rev:
            es = [e for _, e in rev]
            tables["audit_reviews"] = _table("audit_reviews", {
                **head(rev), **_copy("audit_reviews", es)})
        return tables

    # -------------------------------------------------------------------------- settlements

    def settlements(self, recs: Sequence[Record]) -> dict[str, pa.Table]:
        values = [r.value or b"null" for r in recs]
        decoded = _decode_many(values, _ODEC, _O1)
        self.undecodable += len(values) - len(decoded)
        ps = self.ps.many
        claims: list[tuple[Record, _O]] = []
        pays: list[tuple[Record, _O]] = []
        rejs: list[tuple[Record, _O]] = []
        flags: list[tuple[Record, _O]] = []
        for i, o in decoded:
            t = o.type
            if t in _CLAIMS:
                claims.append((recs[i], o))
            elif t in _PAYMENTS:
                pays.append((recs[i], o))
            elif t in _REJECTIONS:
                rejs.append((recs[i], o))
            elif t == "AuditFlagRaised":
                flags.append((recs[i], o))

        def head(rows: list[tuple[Record, _O]]) -> dict[str, list[Any]]:
            return {
                "event_id": [o.event_id for _, o in rows],
                "caused_by": [o.caused_by for _, o in rows],
                "type": [o.type for _, o in rows],
                "person_key": ps([o.person_id for _, o in rows]),
                "event_time": [r.timestamp for r, _ in rows],
                "src_partition": [r.partition for r, _ in rows],
                "src_offset": [r.offset for r, _ in rows],
                "visit_id": [o.visit_id for _, o in rows],
            }

        tables: dict[str, pa.Table] = {}
        if claims:
            os_ = [o for _, o in claims]
            ams = [o.amounts for o in os_]
            cols = {
                **head(claims),
                "household_key": [self.ps(o.household_id) for o in os_],
                "settlement_seq": [o.settlement_seq for o in os_],
                "policy_version": [o.policy_version for o in os_],
                "benefit_year": [o.benefit_year for o in os_],
                "service_date": [o.service_date for o in os_],
                "scheme": [o.scheme for o in os_],
                "kind": [o.kind for o in os_],
                "insured_region": [o.insured_region for o in os_],
                "treatment_region": [o.treatment_region for o in os_],
                "facility_id": [o.facility_id for o in os_],
                "cross_province": [o.cross_province for o in os_],
                "booked_on": [o.service_date if o.service_date is not None else
                              ms_local_date(r.timestamp)
                              for r, o in claims],
                "trace": [self._trace(o) for o in os_],
            }
            for a in AMOUNTS:
                cols[a] = [getattr(m, a) if m is not None else None for m in ams]
            tables["claims"] = _table("claims", cols)
            debits = [(r, o, d) for r, o in claims for d in (o.family_debits or ())]
            if debits:
                tables["family_debits"] = _table("family_debits", {
                    "claim_event_id": [o.event_id for _, o, _ in debits],
                    "type": [o.type for _, o, _ in debits],
                    "beneficiary_key": ps([o.person_id for _, o, _ in debits]),
                    "payer_key": ps([d.payer_id for _, _, d in debits]),
                    "amount_fen": [d.amount_fen for _, _, d in debits],
                    "visit_id": [o.visit_id for _, o, _ in debits],
                    "event_time": [r.timestamp for r, _, _ in debits],
                    "src_partition": [r.partition for r, _, _ in debits],
                    "src_offset": [r.offset for r, _, _ in debits],
                })
        if pays:
            os_ = [o for _, o in pays]
            tables["payment_outcomes"] = _table("payment_outcomes", {
                **head(pays), **_copy("payment_outcomes", os_)})
        if rejs:
            tables["rejections"] = _table("rejections", {
                **head(rejs), **_copy("rejections", [o for _, o in rejs]),
                "detail": [self._scrub(o.detail, o.person_id) for _, o in rejs],
            })
        if flags:
            tables["audit_flags"] = _table("audit_flags", {
                **head(flags), **_copy("audit_flags", [o for _, o in flags]),
                "detail": [self._scrub(o.detail, o.person_id) for _, o in flags],
            })
        return tables

    def _trace(self, o: _O) -> str | None:
        raw = bytes(o.trace)
        if raw == b"null":
            return None
        for d in o.family_debits or ():  # "family <payer> pays <amount>" in the accounts step
            pid = d.payer_id
            raw = raw.replace(f" {pid} pays".encode(), f" {self.ps(pid)} pays".encode())
        return raw.decode()

    def _scrub(self, text: str | None, ident: str) -> str | None:
        if text is None or ident not in text:
            return text
        return _id_pattern(ident.encode()).sub((self.ps(ident) or "").encode(),
                                               text.encode()).decode()

    # -------------------------------------------------------------------------- dead letters

    def facility_flags(self, recs: Sequence[Record]) -> pa.Table:
        """The tier-B flags as the audit topic holds them, repeats included (the view
        facility_flags_current keeps one per event_id)."""
        rows = []
        for r in recs:
            try:
                rows.append((r, _FDEC.decode(r.value or b"null")))
            except msgspec.DecodeError:
                self.undecodable += 1
        return _table("facility_flags", {
            "event_id": [f.event_id for _, f in rows],
            **_copy("facility_flags", [f for _, f in rows]),
            "event_time": [r.timestamp for r, _ in rows],
            "src_partition": [r.partition for r, _ in rows],
            "src_offset": [r.offset for r, _ in rows],
        })

    def dead_letters(self, recs: Sequence[Record]) -> pa.Table:
        rows = []
        for r in recs:
            try:
                d = _DDEC.decode(r.value or b"null")
            except msgspec.DecodeError:
                d = _DL(error="dead letter is not JSON",
                        raw=(r.value or b"").decode("utf-8", errors="replace"))
            rows.append((r, d))
        return _table("dead_letters", {
            "origin_topic": [d.origin.topic if d.origin else None for _, d in rows],
            "origin_partition": [d.origin.partition if d.origin else None for _, d in rows],
            "origin_offset": [d.origin.offset if d.origin else None for _, d in rows],
            "error": [d.error for _, d in rows],
            "path": [d.path for _, d in rows],
            "raw": [d.raw for _, d in rows],
            "event_time": [r.timestamp for r, _ in rows],
            "src_partition": [r.partition for r, _ in rows],
            "src_offset": [r.offset for r, _ in rows],
        })


_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}


def _id_pattern(ident: bytes) -> re.Pattern[bytes]:
    p = _PATTERNS.get(ident)
    if p is None:
        p = re.compile(rb"(?<![" + _ID_CHARS + rb"])" + re.escape(ident) + rb"(?![" + _ID_CHARS
                       + rb"])")
        if len(_PATTERNS) < 100_000:
            _PATTERNS[ident] = p
    return p

