"""The projection schema: base tables (one row per event, appended by the projector and by
replay through :mod:`yibao.projections.transform`) and views (everything derived, computed by
DuckDB when queried, so a projection is a pure function of the log and never drifts).

Column lists are data (:data:`TABLES`): the same spec builds the Arrow schema of each batch
and the DuckDB DDL, so the two cannot disagree. Where a table copies its events' fields, the
columns come from the contract's Structs (:func:`copied`), so the contract and the tables
cannot disagree either. ``yibao projection-schema`` prints the DDL
(documentation included); docs/projections.md (Tables, Views) lists every table and view.

Privacy: no table holds a person or household id. ``person_key`` / ``household_key`` /
``payer_key`` / ``beneficiary_key`` are keyed pseudonyms, ``HMAC-SHA256(YIBAO_PSEUDONYM_KEY,
id)`` (32 hex digits): analysts join on them; only someone holding the key can go from an id
to its rows (``yibao explain`` does that). Exception: ``dead_letters.raw`` keeps the
rejected bytes as they arrived (operators need them to fix the source).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import pyarrow as pa

from yibao.clock import ZONE_NAME
from yibao.schemas.events import (
    Amounts,
    AuditFlagRaised,
    AuditFlagReviewed,
    ClaimRejected,
    EventRejected,
    FacilityFlagRaised,
    PaymentAccepted,
    PaymentMade,
    PaymentRejected,
)

TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class Col:
    name: str
    arrow: pa.DataType
    doc: str

    @property
    def sql(self) -> str:
        return _SQL[str(self.arrow)]


_SQL = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "int16": "SMALLINT",
    "bool": "BOOLEAN",
    "date32[day]": "DATE",
    "timestamp[ms, tz=UTC]": "TIMESTAMPTZ",
}

S, I64, I32, I16, B, D = pa.string(), pa.int64(), pa.int32(), pa.int16(), pa.bool_(), pa.date32()

_POS = [
    Col("src_partition", I32, "partition of the record in its topic"),
    Col("src_offset", I64, "offset of the record (with src_partition: the log position)"),
]
_LEDGER_HEAD = [
    Col("event_id", S, "input event id"),
    Col("type", S, "input event type"),
    Col("person_key", S, "pseudonym of person_id"),
    Col("occurred_at", TS, "occurred_at of the event (the ledger record timestamp)"),
]
_OUT_HEAD = [
    Col("event_id", S, "output event id (<input event_id>/<n>)"),
    Col("caused_by", S, "the input event id"),
    Col("type", S, "output event type"),
    Col("person_key", S, "pseudonym of person_id"),
    Col("event_time", TS, "settlements record timestamp = occurred_at of the input"),
]
#: the ``amounts`` of a settlement, in the contract's order (one column each)
AMOUNTS: tuple[str, ...] = Amounts.__struct_fields__

#: fields a table's head already holds (ids, pseudonym, timestamps), or that it never projects
_HEAD_FIELDS = frozenset({"event_id", "caused_by", "person_id", "schema_version",
                          "occurred_at", "source"})


def contract_fields(*types: type) -> tuple[str, ...]:
    """The fields of the contract's ``types``, each once, in the contract's order."""
    return tuple(dict.fromkeys(f for t in types for f in t.__struct_fields__))  # type: ignore[attr-defined]


def _arrow(tp: Any) -> pa.DataType:
    """The Arrow type of a contract field's annotation (constraints do not matter here)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _arrow(args[0])
    if origin in (Union, UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no single column type for {tp}")
        return _arrow(inner[0])
    if origin is Literal:
        return I64 if all(isinstance(a, int) for a in args) else S
    types = {str: S, int: I64, bool: B, dt.date: D, dt.datetime: TS}
    if tp not in types:
        raise TypeError(f"no column type for {tp}: project it by hand or skip it")
    return types[tp]


def copied(types: tuple[type, ...], docs: dict[str, str], *,
           skip: frozenset[str] = frozenset()) -> list[Col]:
    """The columns of a table that copies its events' fields as they are: every field of
    the contract's ``types`` but the ``head`` and ``skip``, in the contract's order, typed
    from its annotation. So a field added to those Structs becomes a column (and both
    transforms fill it); ``docs`` documents the known ones and may name no other."""
    hints: dict[str, Any] = {}
    for t in types:
        for name, hint in get_type_hints(t, include_extras=True).items():
            hints.setdefault(name, hint)
    names = [f for f in contract_fields(*types) if f not in _HEAD_FIELDS and f not in skip]
    if unknown := sorted(set(docs) - set(names)):
        raise KeyError(f"documented columns that are not fields of {types}: {unknown}")
    return [Col(f, _arrow(hints[f]), docs.get(f, f"{types[0].__name__}.{f}")) for f in names]

#: name -> (what a row is, columns). Every base table is append-only.
TABLES: dict[str, tuple[str, list[Col]]] = {
    "registrations": ("one row per PersonRegistered in the ledger (see view persons)", [
        *_LEDGER_HEAD,
        Col("household_key", S, "pseudonym of household_id"),
        Col("scheme", S, "employee | resident"),
        Col("region", S, "insured region (6-digit code)"),
        Col("birth_year", I16, "year of birth (the date itself is not projected)"),
        Col("sex", S, "M | F"),
        Col("retired", B, "retired employee"),
        Col("assistance", S, "assistance category at registration, or null"),
        Col("effective_from", D, "enrollment start"),
        Col("personal_account_fen", I64, "opening personal account balance"),
        *_POS,
    ]),
    "enrollment_events": ("one row per other enrollment event in the ledger", [
        *_LEDGER_HEAD,
        Col("effective_date", D, "effective_from / valid_from / date_of_death"),
        Col("end_date", D, "valid_to (certifications, cross-region filings)"),
        Col("assistance", S, "AssistanceStatusChanged: the new category (null: none)"),
        Col("amount_fen", I64, "credited / repaid amount, or credit limit"),
        Col("bank", S, "credit line bank"),
        Col("beneficiary_key", S, "family aid: pseudonym of the beneficiary (person_key pays)"),
        Col("code", S, "disease_code, or treatment_region of a cross-region filing"),
        *_POS,
    ]),
    "visit_events": ("one row per VisitOpened, PrescriptionIssued, ItemsCharged, "
                     "ChargeReversed, VisitClosed, VisitRefunded in the ledger", [
        *_LEDGER_HEAD,
        Col("visit_id", S, "visit id"),
        Col("facility_id", S, "VisitOpened: facility"),
        Col("facility_level", I16, "VisitOpened: 1 | 2 | 3"),
        Col("facility_region", S, "VisitOpened: treatment region"),
        Col("kind", S, "VisitOpened: visit kind"),
        Col("diagnoses", S, "VisitOpened: ICD-10 codes, comma-separated"),
        Col("lines", I32, "line items charged / prescribed, or line ids reversed"),
        Col("amount_fen", I64, "sum of the charged / prescribed line amounts"),
        Col("at_time", TS, "opened_at / closed_at"),
        Col("use_personal_account", B, "VisitClosed"),
        Col("reason", S, "VisitRefunded: reason"),
        *_POS,
    ]),
    "payment_events": ("one row per PaymentMade in the ledger (outcome: payment_outcomes)", [
        *_LEDGER_HEAD,
        *copied((PaymentMade,), {
            "visit_id": "visit id",
            "payment_id": "payment id",
            "method": "insurance_code_qr | face | mobile | bank_card | cash | credit",
            "amount_fen": "amount",
            "bank": "credit payments: the bank"}),
        *_POS,
    ]),
    "claims": ("one row per ClaimSettled / ClaimReversed (see view settlements)", [
        *_OUT_HEAD,
        Col("household_key", S, "ClaimSettled: pseudonym of household_id"),
        Col("visit_id", S, "visit id"),
        Col("settlement_seq", I32, "settlement sequence (of the reversed one, for a reversal)"),
        Col("policy_version", S, "ClaimSettled: policy version applied"),
        Col("benefit_year", I16, "ClaimSettled: benefit year"),
        Col("service_date", D, "ClaimSettled: service date"),
        Col("scheme", S, "ClaimSettled: employee | resident"),
        Col("kind", S, "ClaimSettled: benefit applied"),
        Col("insured_region", S, "ClaimSettled: insured region"),
        Col("treatment_region", S, "ClaimSettled: treatment region"),
        Col("facility_id", S, "ClaimSettled: facility"),
        Col("cross_province", B, "ClaimSettled: treated in another province"),
        Col("booked_on", D, "day the money moves: service_date, or the refund's date (UTC+8)"),
        *[Col(a, I64, f"amounts.{a} (fen; negated on a reversal)") for a in AMOUNTS],
        Col("trace", S, "ClaimSettled: the trace as JSON [{step, detail}] (ids pseudonymized)"),
        *_POS,
    ]),
    "family_debits": ("one row per family_debits entry of a ClaimSettled / ClaimReversed", [
        Col("claim_event_id", S, "the claim's event id"),
        Col("type", S, "ClaimSettled | ClaimReversed"),
        Col("beneficiary_key", S, "pseudonym of the patient"),
        Col("payer_key", S, "pseudonym of the family member whose account paid"),
        Col("amount_fen", I64, "amount (negative on a reversal)"),
        Col("visit_id", S, "visit id"),
        Col("event_time", TS, "settlements record timestamp"),
        *_POS,
    ]),
    "payment_outcomes": ("one row per PaymentAccepted / PaymentRejected", [
        *_OUT_HEAD,
        *copied((PaymentAccepted, PaymentRejected), {
            "visit_id": "visit id",
            "payment_id": "payment id",
            "method": "PaymentAccepted: method",
            "amount_fen": "PaymentAccepted: amount",
            "outstanding_fen": "PaymentAccepted: outstanding after it",
            "reason": "PaymentRejected: reason"}),
        *_POS,
    ]),
    "rejections": ("one row per ClaimRejected / EventRejected", [
        *_OUT_HEAD,
        *copied((ClaimRejected, EventRejected), {
            "visit_id": "visit id, if any",
            "reason": "reason code",
            "detail": "readable detail (the person's id replaced by its pseudonym)"}),
        *_POS,
    ]),
    "audit_flags": ("one row per AuditFlagRaised", [
        *_OUT_HEAD,
        *copied((AuditFlagRaised,), {
            "visit_id": "visit id",
            "rule": "rule",
            "severity": "info | warn | block",
            "facility_id": "facility",
            "detail": "detail",
            "related_visit_id": "the other visit a history rule points at, or null",
            "amount_fen": "the money at risk (audit.md, per rule)"},
            skip=frozenset({"line_ids"})),
        *_POS,
    ]),
    "audit_reviews": ("one row per AuditFlagReviewed in the ledger (see view audit_cases)", [
        *_LEDGER_HEAD,
        *copied((AuditFlagReviewed,), {
            "flag_id": "event_id of the AuditFlagRaised (or FacilityFlagRaised) reviewed",
            "outcome": "confirmed | dismissed",
            "recovered_fen": "confirmed: what the fund claws back from the facility",
            "reviewer": "reviewer id"}),
        *_POS,
    ]),
    "facility_flags": ("one row per FacilityFlagRaised record of the audit topic (tier B; "
                       "a repeat of an event_id is a redelivery: see facility_flags_current)", [
        Col("event_id", S, "derived from rule, facility and window"),
        *copied((FacilityFlagRaised,), {
            "rule": "GROUP_ADMISSION | FACILITY_DAILY_SPIKE",
            "severity": "info | warn",
            "facility_id": "facility",
            "window_start": "first date of the window",
            "window_end": "last date of the window",
            "count": "claims in the window",
            "amount_fen": "fund payout of the claims involved",
            "detail": "detail"}),
        Col("event_time", TS, "audit record timestamp"),
        *_POS,
    ]),
    "dead_letters": ("one row per deadletter record (malformed input)", [
        Col("origin_topic", S, "input topic it was read from"),
        Col("origin_partition", I32, "its partition"),
        Col("origin_offset", I64, "its offset"),
        Col("error", S, "readable error naming the field"),
        Col("path", S, "JSON path of the error"),
        Col("raw", S, "the rejected bytes (UTF-8, invalid bytes replaced)"),
        Col("event_time", TS, "deadletter record timestamp"),
        *_POS,
    ]),
}

#: table -> the contract Structs it copies fields of, as they are (see :func:`copied`); the
#: other tables derive their columns (pseudonyms, dates, sums) and list them by hand
COPIED_FROM: dict[str, tuple[type, ...]] = {
    "payment_events": (PaymentMade,),
    "payment_outcomes": (PaymentAccepted, PaymentRejected),
    "rejections": (ClaimRejected, EventRejected),
    "audit_flags": (AuditFlagRaised,),
    "audit_reviews": (AuditFlagReviewed,),
    "facility_flags": (FacilityFlagRaised,),
}

#: table -> its columns that are fields of :data:`COPIED_FROM`'s Structs (what both
#: transforms copy by name)
COPIED: dict[str, tuple[str, ...]] = {
    t: tuple(c.name for c in TABLES[t][1]
             if c.name in contract_fields(*types) and c.name not in _HEAD_FIELDS)
    for t, types in COPIED_FROM.items()
}

ARROW_SCHEMAS: dict[str, pa.Schema] = {
    name: pa.schema([pa.field(c.name, c.arrow) for c in cols]) for name, (_doc, cols) in TABLES.items()
}

#: Bookkeeping, not projections: excluded from `yibao verify`.
META_DDL = """
CREATE TABLE IF NOT EXISTS _offsets (
    topic VARCHAR,          -- ledger | settlements | deadletter (role, not the prefixed name)
    "partition" INTEGER,
    next_offset BIGINT,     -- the next offset to read: written in the batch's transaction
    PRIMARY KEY (topic, "partition"));
CREATE TABLE IF NOT EXISTS _meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""

#: name -> (doc, SELECT). Created in this order (later views use earlier ones).
VIEWS: dict[str, tuple[str, str]] = {
    "accepted_registrations": ("registrations the engine applied (not rejected)", """
        SELECT r.* FROM registrations r
        WHERE r.event_id NOT IN (SELECT caused_by FROM rejections WHERE type = 'EventRejected')
    """),
    "accepted_enrollment_events": ("enrollment events the engine applied", """
        SELECT e.* FROM enrollment_events e
        WHERE e.event_id NOT IN (SELECT caused_by FROM rejections WHERE type = 'EventRejected')
    """),
    "persons": (
        "person_key, household_key, scheme, region, birth_year, sex, retired, effective_from, "
        "registered_at, assistance (latest category), suspended (latest status), date_of_death", """
        WITH a AS (
            SELECT person_key, assistance, row_number() OVER (PARTITION BY person_key
                ORDER BY effective_date DESC, src_partition DESC, src_offset DESC) AS n
            FROM accepted_enrollment_events WHERE type = 'AssistanceStatusChanged'),
        s AS (
            SELECT person_key, type = 'EnrollmentSuspended' AS suspended,
                   row_number() OVER (PARTITION BY person_key
                       ORDER BY effective_date DESC, src_partition DESC, src_offset DESC) AS n
            FROM accepted_enrollment_events
            WHERE type IN ('EnrollmentSuspended', 'EnrollmentResumed')),
        d AS (SELECT person_key, max(effective_date) AS date_of_death
              FROM accepted_enrollment_events WHERE type = 'PersonDeceased' GROUP BY ALL)
        SELECT r.person_key, r.household_key, r.scheme, r.region, r.birth_year, r.sex, r.retired,
               r.effective_from, r.occurred_at AS registered_at,
               CASE WHEN a.person_key IS NULL THEN r.assistance ELSE a.assistance END
                   AS assistance,
               coalesce(s.suspended, false) AS suspended, d.date_of_death
        FROM accepted_registrations r
        LEFT JOIN a ON a.person_key = r.person_key AND a.n = 1
        LEFT JOIN s ON s.person_key = r.person_key AND s.n = 1
        LEFT JOIN d ON d.person_key = r.person_key
    """),
    "settlements": (
        "claims with a reversal's context (benefit_year, service_date, scheme, kind, regions, "
        "facility, policy_version) filled in from the settlement it reverses", """
        SELECT c.event_id, c.caused_by, c.type, c.person_key,
               coalesce(c.household_key, s.household_key) AS household_key,
               c.visit_id, c.settlement_seq,
               coalesce(c.policy_version, s.policy_version) AS policy_version,
               coalesce(c.benefit_year, s.benefit_year) AS benefit_year,
               coalesce(c.service_date, s.service_date) AS service_date,
               coalesce(c.scheme, s.scheme) AS scheme,
               coalesce(c.kind, s.kind) AS kind,
               coalesce(c.insured_region, s.insured_region) AS insured_region,
               coalesce(c.treatment_region, s.treatment_region) AS treatment_region,
               coalesce(c.facility_id, s.facility_id) AS facility_id,
               coalesce(c.cross_province, s.cross_province) AS cross_province,
               c.booked_on, c.event_time,
               c.total, c.self_pay_full, c.over_cap, c.first_self_pay, c.eligible, c.deductible,
               c.basic_fund, c.major_illness, c.assistance, c.personal_account,
               c.family_account, c.cash_due, c.trace, c.src_partition, c.src_offset
        FROM claims c
        LEFT JOIN claims s ON c.type = 'ClaimReversed' AND s.type = 'ClaimSettled'
             AND s.person_key = c.person_key AND s.visit_id = c.visit_id
             AND s.settlement_seq = c.settlement_seq
    """),
    "accumulators": (
        "per person_key and benefit_year: claims (settled minus reversed) and every amount, "
        "net of reversals", """
        SELECT person_key, benefit_year,
               sum(CASE WHEN type = 'ClaimSettled' THEN 1 ELSE -1 END) AS claims,
               sum(total) AS total, sum(eligible) AS eligible, sum(deductible) AS deductible,
               sum(basic_fund) AS basic_fund, sum(major_illness) AS major_illness,
               sum(assistance) AS assistance, sum(personal_account) AS personal_account,
               sum(family_account) AS family_account, sum(cash_due) AS cash_due
        FROM settlements GROUP BY ALL
    """),
    "visits": (
        "one row per opened visit: person_key, visit_id, facility, level, region, kind, "
        "diagnoses, opened_at, charged_fen (lines charged), closed_at (last close), "
        "settlement_seq (latest), status (open | settled | refunded | rejected)", """
        WITH o AS (
            SELECT person_key, visit_id, facility_id, facility_level, facility_region, kind,
                   diagnoses, at_time AS opened_at,
                   row_number() OVER (PARTITION BY person_key, visit_id
                                      ORDER BY src_partition, src_offset) AS n
            FROM visit_events WHERE type = 'VisitOpened'),
        ev AS (
            SELECT person_key, visit_id,
                   CAST(sum(amount_fen) FILTER (WHERE type IN ('PrescriptionIssued',
                                                               'ItemsCharged')) AS BIGINT)
                       AS charged_fen,
                   max(at_time) FILTER (WHERE type = 'VisitClosed') AS closed_at
            FROM visit_events GROUP BY ALL),
        c AS (
            SELECT person_key, visit_id, arg_max(type, src_offset) AS last_type,
                   max(settlement_seq) AS settlement_seq
            FROM claims GROUP BY ALL),
        r AS (SELECT DISTINCT person_key, visit_id FROM rejections WHERE type = 'ClaimRejected')
        SELECT o.person_key, o.visit_id, o.facility_id, o.facility_level, o.facility_region,
               o.kind, o.diagnoses, o.opened_at, coalesce(ev.charged_fen, 0) AS charged_fen,
               ev.closed_at, c.settlement_seq,
               CASE WHEN c.last_type = 'ClaimSettled' THEN 'settled'
                    WHEN c.last_type = 'ClaimReversed' THEN 'refunded'
                    WHEN r.visit_id IS NOT NULL THEN 'rejected' ELSE 'open' END AS status
        FROM o LEFT JOIN ev USING (person_key, visit_id) LEFT JOIN c USING (person_key, visit_id)
        LEFT JOIN r USING (person_key, visit_id)
        WHERE o.n = 1
    """),
    "payments": (
        "one row per PaymentMade with its outcome: status accepted | rejected | pending", f"""
        SELECT p.event_id, p.person_key, p.visit_id, p.payment_id, p.method, p.amount_fen, p.bank,
               p.occurred_at, CAST(timezone('{ZONE_NAME}', p.occurred_at) AS DATE) AS day,
               CASE WHEN o.type = 'PaymentAccepted' THEN 'accepted'
                    WHEN o.type = 'PaymentRejected' THEN 'rejected' ELSE 'pending' END AS status,
               o.reason, o.outstanding_fen, p.src_partition, p.src_offset
        FROM payment_events p LEFT JOIN payment_outcomes o ON o.caused_by = p.event_id
    """),
    "payments_by_method": ("per day (UTC+8), method and status: payments and amount_fen", """
        SELECT day, method, status, count(*) AS payments, sum(amount_fen) AS amount_fen
        FROM payments GROUP BY ALL
    """),
    "accounts": (
        "per registered person: opening_fen, credited_fen, own_claims_fen (paid from it for "
        "own claims), family_fen (paid from it for relatives), balance_fen", """
        WITH cr AS (SELECT person_key, sum(amount_fen) AS credited FROM accepted_enrollment_events
                    WHERE type = 'PersonalAccountCredited' GROUP BY ALL),
        own AS (SELECT person_key, sum(personal_account) AS own FROM claims GROUP BY ALL),
        fam AS (SELECT payer_key AS person_key, sum(amount_fen) AS fam FROM family_debits
                GROUP BY ALL)
        SELECT r.person_key, r.household_key, r.scheme, r.personal_account_fen AS opening_fen,
               coalesce(cr.credited, 0) AS credited_fen, coalesce(own.own, 0) AS own_claims_fen,
               coalesce(fam.fam, 0) AS family_fen,
               r.personal_account_fen + coalesce(cr.credited, 0) - coalesce(own.own, 0)
                   - coalesce(fam.fam, 0) AS balance_fen
        FROM accepted_registrations r LEFT JOIN cr USING (person_key)
        LEFT JOIN own USING (person_key) LEFT JOIN fam USING (person_key)
    """),
    "family_aid": (
        "family-aid authorisations in force: beneficiary_key, payer_key, authorized_at", """
        SELECT beneficiary_key, person_key AS payer_key, occurred_at AS authorized_at FROM (
            SELECT *, row_number() OVER (PARTITION BY beneficiary_key, person_key
                                         ORDER BY src_partition DESC, src_offset DESC) AS n
            FROM accepted_enrollment_events
            WHERE type IN ('FamilyAidAuthorized', 'FamilyAidRevoked'))
        WHERE n = 1 AND type = 'FamilyAidAuthorized'
    """),
    "credit_lines": (
        "per person and bank: limit_fen (latest grant), outstanding_fen (credit payments "
        "accepted - repaid - cancelled by refunds)", """
        WITH lim AS (
            SELECT person_key, bank, arg_max(amount_fen, src_offset) AS limit_fen
            FROM accepted_enrollment_events WHERE type = 'CreditLineGranted' GROUP BY ALL),
        paid AS (
            SELECT event_id, person_key, bank, visit_id, amount_fen
            FROM payments WHERE status = 'accepted' AND method = 'credit'),
        cancelled AS (   -- a refund cancels the credit paid while its settlement was current
            SELECT paid.person_key, paid.bank, sum(paid.amount_fen) AS amount
            FROM paid
            JOIN payment_outcomes o ON o.caused_by = paid.event_id
            JOIN claims s ON s.type = 'ClaimSettled' AND s.person_key = paid.person_key
                 AND s.visit_id = paid.visit_id
            JOIN claims r ON r.type = 'ClaimReversed' AND r.person_key = s.person_key
                 AND r.visit_id = s.visit_id AND r.settlement_seq = s.settlement_seq
            WHERE o.src_partition = s.src_partition
              AND o.src_offset > s.src_offset AND o.src_offset < r.src_offset
            GROUP BY ALL),
        rep AS (SELECT person_key, bank, sum(amount_fen) AS amount FROM accepted_enrollment_events
                WHERE type = 'CreditRepaid' GROUP BY ALL),
        pay AS (SELECT person_key, bank, sum(amount_fen) AS amount FROM paid GROUP BY ALL)
        SELECT lim.person_key, lim.bank, lim.limit_fen,
               coalesce(pay.amount, 0) - coalesce(rep.amount, 0) - coalesce(cancelled.amount, 0)
                   AS outstanding_fen
        FROM lim LEFT JOIN pay USING (person_key, bank) LEFT JOIN rep USING (person_key, bank)
        LEFT JOIN cancelled USING (person_key, bank)
    """),
    "audit_cases": (
        "one row per flag, and per review of an unknown flag: its state (open without a "
        "review, else the latest review's outcome; unknown_flag for a review naming no "
        "flag), the latest review, the claim's (or the person's) insured region and scheme, "
        "the money at risk", """
        WITH latest AS (
            SELECT *, row_number() OVER (PARTITION BY flag_id
                ORDER BY occurred_at DESC, src_partition DESC, src_offset DESC) AS n
            FROM audit_reviews),
        c AS (SELECT caused_by, any_value(insured_region) AS insured_region,
                     any_value(scheme) AS scheme, any_value(service_date) AS service_date
              FROM claims WHERE type = 'ClaimSettled' GROUP BY caused_by)
        SELECT f.event_id AS flag_id, f.rule, f.severity, f.facility_id, f.person_key,
               f.visit_id, f.related_visit_id, f.amount_fen, f.detail,
               f.event_time AS raised_at,
               coalesce(c.service_date, CAST(f.event_time AS DATE)) AS service_date,
               coalesce(c.insured_region, p.region) AS insured_region,
               coalesce(c.scheme, p.scheme) AS scheme,
               coalesce(r.outcome, 'open') AS state, r.reviewer,
               r.occurred_at AS reviewed_at,
               CASE WHEN r.outcome = 'confirmed' THEN r.recovered_fen ELSE 0 END
                   AS recovered_fen
        FROM audit_flags f
        LEFT JOIN latest r ON r.flag_id = f.event_id AND r.n = 1
        LEFT JOIN c ON c.caused_by = f.caused_by
        LEFT JOIN persons p ON p.person_key = f.person_key
        UNION ALL
        SELECT r.flag_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               'a review of a flag that was never raised', NULL, NULL, NULL, NULL,
               'unknown_flag', r.reviewer, r.occurred_at, 0
        FROM latest r WHERE r.n = 1
             AND r.flag_id NOT IN (SELECT event_id FROM audit_flags)
    """),
    "facility_flags_current": (
        "the tier-B flags, one per event_id (the first delivery: at-least-once repeats "
        "are dropped)", """
        SELECT * EXCLUDE (n) FROM (
            SELECT *, row_number() OVER (PARTITION BY event_id
                ORDER BY src_partition, src_offset) AS n FROM facility_flags)
        WHERE n = 1
    """),
    "recoveries": (
        "confirmed cases with money to claw back: the insured region's fund recovers "
        "recovered_fen from the facility on the review's date (UTC+08:00)", f"""
        SELECT insured_region, scheme, facility_id, flag_id, rule,
               CAST(timezone('{ZONE_NAME}', reviewed_at) AS DATE) AS day, recovered_fen
        FROM audit_cases WHERE state = 'confirmed' AND recovered_fen > 0
    """),
    "fund_ledger": (
        "per insured_region, fund, scheme and day (booked_on): amount_fen paid (net of "
        "reversals) and claims. Funds as the national platform types them: "
        "basic_pooled_employee | basic_pooled_resident (basic pooled fund per scheme), "
        "major_illness, medical_assistance, personal_account, family_aid, and audit_recovery "
        "(negative: what confirmed audit cases claw back from facilities)", """
        SELECT insured_region, fund, scheme, booked_on AS day, sum(amount) AS amount_fen,
               count(*) FILTER (WHERE amount <> 0) AS claims
        FROM (
            SELECT insured_region, scheme, booked_on, f.fund, f.amount FROM settlements,
            LATERAL (VALUES ('basic_pooled_' || scheme, basic_fund),
                            ('major_illness', major_illness),
                            ('medical_assistance', assistance),
                            ('personal_account', personal_account),
                            ('family_aid', family_account)) AS f(fund, amount)
            UNION ALL
            SELECT insured_region, scheme, day, 'audit_recovery', -recovered_fen
            FROM recoveries)
        GROUP BY ALL
    """),
    "clearing": (
        "cross-region clearing per insured_region x treatment_region x month (YYYY-MM of "
        "booked_on): claims, total_fen, the funds' parts, and owed_fen = what the insured "
        "region owes the treatment region (every fund and account, not the patient's cash)", """
        SELECT insured_region, treatment_region, strftime(booked_on, '%Y-%m') AS month,
               sum(CASE WHEN type = 'ClaimSettled' THEN 1 ELSE -1 END) AS claims,
               sum(total) AS total_fen, sum(basic_fund) AS basic_fund_fen,
               sum(major_illness) AS major_illness_fen, sum(assistance) AS assistance_fen,
               sum(personal_account) AS personal_account_fen,
               sum(family_account) AS family_aid_fen,
               sum(basic_fund + major_illness + assistance + personal_account + family_account)
                   AS owed_fen
        FROM settlements WHERE insured_region <> treatment_region
        GROUP BY ALL
    """),
}

_SUM = re.compile(r"\bsum\(((?:[^()]|\([^()]*\))*)\)(?=\s+AS\s)")
#: money sums as BIGINT (DuckDB's sum of BIGINT is HUGEINT, awkward in CSV/Parquet/pandas)
VIEWS = {name: (doc, _SUM.sub(r"CAST(sum(\1) AS BIGINT)", sql)) for name, (doc, sql) in VIEWS.items()}

PROJECTIONS = (*TABLES, *VIEWS)


def ddl() -> str:
    """The whole schema as SQL, with every table's and view's documentation as comments."""
    out = [META_DDL.strip(), ""]
    for name, (doc, cols) in TABLES.items():
        body = ",\n".join(f"    {c.name} {c.sql}" for c in cols)
        docs = "\n".join(f"--   {c.name}: {c.doc}" for c in cols)
        out.append(f"-- {name}: {doc}\n{docs}\nCREATE TABLE IF NOT EXISTS {name} (\n{body});\n")
    for name, (doc, select) in VIEWS.items():
        out.append(f"-- {name}: {doc}\nCREATE OR REPLACE VIEW {name} AS{_dedent(select)};\n")
    return "\n".join(out)


def _dedent(sql: str) -> str:
    import textwrap

    return "\n" + textwrap.dedent(sql).strip("\n")
