"""The fast path of :mod:`yibao.projections.transform`: the same rows, computed by DuckDB.

Python only wraps each batch's records into an Arrow table per topic — ``src_partition``,
``src_offset``, ``ts`` (record timestamp), ``value`` (the JSON text) — one C-level pass; DuckDB
parses the JSON (``from_json`` into a typed struct, on all threads) and fills every base table
with ``INSERT ... SELECT`` inside the batch's transaction. The pseudonym is the same
``HMAC-SHA256(key, id)`` computed in SQL by a TEMP macro (the key is never stored in the file).

:class:`yibao.projections.transform.Transform` stays the readable reference: a test projects one
log both ways and ``verify`` finds them identical, table by table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import duckdb
import pyarrow as pa

from yibao.clock import OFFSET_MS
from yibao.projections.schema import AMOUNTS, COPIED, TS
from yibao.projections.transform import AUDIT, DEADLETTER, LEDGER, SETTLEMENTS, Record
from yibao.schemas.events import AUDIT_TYPES, INPUT_TYPES, OUTPUT_TYPES

RAW_SCHEMA = pa.schema([("src_partition", pa.int32()), ("src_offset", pa.int64()),
                        ("ts", TS), ("value", pa.string())])


def raw_table(recs: Sequence[Record]) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array([r.partition for r in recs], pa.int32()),
        pa.array([r.offset for r in recs], pa.int64()),
        pa.array([r.timestamp for r in recs], TS),
        pa.array([r.value for r in recs], pa.string()),
    ], schema=RAW_SCHEMA)


def _blob(b: bytes) -> str:
    return "'" + "".join(f"\\x{x:02X}" for x in b) + "'::BLOB"


def install_pseudonym_macro(con: duckdb.DuckDBPyConnection, key: str | bytes) -> None:
    """TEMP MACRO pseudo(id): HMAC-SHA256(key, id) as 32 hex digits (RFC 2104)."""
    k = key.encode() if isinstance(key, str) else key
    if len(k) > 64:
        import hashlib

        k = hashlib.sha256(k).digest()
    k = k.ljust(64, b"\0")
    ipad, opad = bytes(x ^ 0x36 for x in k), bytes(x ^ 0x5C for x in k)
    con.execute(
        "CREATE OR REPLACE TEMP MACRO pseudo(id) AS CASE WHEN id IS NOT NULL THEN "
        f"substr(sha256({_blob(opad)} || unhex(sha256({_blob(ipad)} || CAST(id AS BLOB)))), 1, 32)"
        " END")


_V, _I, _D, _T, _B = '"VARCHAR"', '"BIGINT"', '"DATE"', '"TIMESTAMPTZ"', '"BOOLEAN"'


def _duck(tp: Any) -> str:
    """The DuckDB JSON type of a contract field's annotation."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _duck(args[0])
    if origin in (Union, UnionType):
        inner = [a for a in args if a is not type(None)]
        return _duck(inner[0]) if len(inner) == 1 else _V
    if origin is Literal:
        return _I if all(isinstance(a, int) for a in args) else _V
    if origin is list:
        return f"[{_duck(args[0])}]"
    return {str: _V, int: _I, bool: _B, dt.date: _D, dt.datetime: _T}.get(tp, _V)


def _contract_struct(types: Sequence[type], names: Sequence[str],
                     given: Mapping[str, str]) -> str:
    """The DuckDB struct a JSON record is read as: the ``names`` the projection reads, each
    typed from its field in the contract's Structs (``given``: read otherwise), so a field
    renamed or retyped in the contract fails here rather than projecting nulls."""
    hints: dict[str, Any] = {}
    for t in types:
        for name, hint in get_type_hints(t, include_extras=True).items():
            hints.setdefault(name, hint)
    names = tuple(dict.fromkeys(names))
    missing = [n for n in names if n not in hints and n not in given]
    if missing:
        raise KeyError(f"not fields of the contract: {missing}")
    return "{" + ",".join(f'"{n}":{given.get(n) or _duck(hints[n])}' for n in names) + "}"


_LEDGER_STRUCT = _contract_struct(INPUT_TYPES, (
    "type", "event_id", "person_id", "household_id", "scheme", "region", "birth_date",
    "sex", "retired", "assistance", "effective_from", "personal_account_fen", "amount_fen",
    "beneficiary_id", "disease_code", "treatment_region", "valid_from", "valid_to",
    "date_of_death", "bank", "limit_fen", "visit_id", "facility_id", "facility_level",
    "facility_region", "kind", "opened_at", "closed_at", "diagnoses", "items", "line_ids",
    "use_personal_account", "reason", "payment_id", "method",
    *COPIED["payment_events"], *COPIED["audit_reviews"],
), {
    "type": _V, "birth_date": _V, "items": '[{"amount_fen":"BIGINT"}]'})
_OUT_STRUCT = _contract_struct(OUTPUT_TYPES, (
    "type", "event_id", "caused_by", "person_id", "visit_id", "household_id",
    "settlement_seq", "policy_version", "benefit_year", "service_date", "scheme", "kind",
    "insured_region", "treatment_region", "facility_id", "cross_province", "amounts",
    "family_debits", "trace", "payment_id", "method", "amount_fen", "outstanding_fen",
    "reason", "rule", "severity", "detail",
    *COPIED["payment_outcomes"], *COPIED["rejections"], *COPIED["audit_flags"],
), {
    "type": _V, "amounts": "{" + ",".join(f'"{a}":{_I}' for a in AMOUNTS) + "}",
    "family_debits": '[{"payer_id":"VARCHAR","amount_fen":"BIGINT"}]', "trace": '"JSON"'})
_DL_STRUCT = ('{"origin":{"topic":"VARCHAR","partition":"INTEGER","offset":"BIGINT"},'
              '"error":"VARCHAR","path":"VARCHAR","raw":"VARCHAR"}')

_ENROLLMENT = ("'AssistanceStatusChanged', 'PersonalAccountCredited', 'FamilyAidAuthorized', "
               "'FamilyAidRevoked', 'SpecialDiseaseCertified', 'CrossRegionFiled', "
               "'EnrollmentSuspended', 'EnrollmentResumed', 'PersonDeceased', "
               "'CreditLineGranted', 'CreditRepaid'")
_VISIT = ("'VisitOpened', 'PrescriptionIssued', 'ItemsCharged', 'ChargeReversed', "
          "'VisitClosed', 'VisitRefunded'")
_LHEAD = "j.event_id, j.type, pk, ts"
_OHEAD = "j.event_id, j.caused_by, j.type, pk, ts"
_POS = "src_partition, src_offset"
_ID = "[A-Za-z0-9._:-]"


def _scrub(col: str) -> str:
    """The person's id in a readable detail replaced by its pseudonym (whole ids only)."""
    return (f"CASE WHEN contains({col}, j.person_id) THEN regexp_replace({col}, "
            f"'(^|[^A-Za-z0-9._:-])' || regexp_escape(j.person_id) || '($|[^A-Za-z0-9._:-])', "
            f"'\\1' || pk || '\\2', 'g') ELSE {col} END")


def _copy(table: str) -> str:
    """The select list of the columns ``table`` copies from the contract (schema.COPIED); a
    flag's or rejection's readable detail has the person's id pseudonymized."""
    return ", ".join(_scrub("j.detail") if c == "detail" and table != "facility_flags"
                     else f"j.{c}" for c in COPIED[table])


LEDGER_SQL = [
    f"""INSERT INTO registrations SELECT {_LHEAD}, pseudo(coalesce(j.household_id, j.person_id)),
        j.scheme, j.region, CAST(substr(j.birth_date, 1, 4) AS SMALLINT), j.sex, j.retired,
        j.assistance, j.effective_from, j.personal_account_fen, {_POS}
        FROM _yibao_l WHERE j.type = 'PersonRegistered'""",
    f"""INSERT INTO enrollment_events SELECT {_LHEAD},
        coalesce(j.effective_from, j.valid_from, j.date_of_death), j.valid_to, j.assistance,
        coalesce(j.amount_fen, j.limit_fen), j.bank, pseudo(j.beneficiary_id),
        coalesce(j.disease_code, j.treatment_region), {_POS}
        FROM _yibao_l WHERE j.type IN ({_ENROLLMENT})""",
    f"""INSERT INTO visit_events SELECT {_LHEAD}, j.visit_id, j.facility_id, j.facility_level,
        j.facility_region, j.kind, array_to_string(j.diagnoses, ','),
        CASE WHEN j.items IS NOT NULL THEN len(j.items)
             WHEN j.line_ids IS NOT NULL THEN len(j.line_ids) END,
        CASE WHEN j.items IS NOT NULL THEN
             coalesce(list_sum(list_transform(j.items, lambda i: i.amount_fen)), 0) END,
        coalesce(j.opened_at, j.closed_at),
        CASE WHEN j.type = 'VisitClosed' THEN coalesce(j.use_personal_account, true) END,
        j.reason, {_POS}
        FROM _yibao_l WHERE j.type IN ({_VISIT})""",
    f"""INSERT INTO payment_events SELECT {_LHEAD}, {_copy("payment_events")}, {_POS}
        FROM _yibao_l WHERE j.type = 'PaymentMade'""",
    f"""INSERT INTO audit_reviews SELECT {_LHEAD}, {_copy("audit_reviews")}, {_POS}
        FROM _yibao_l WHERE j.type = 'AuditFlagReviewed'""",
]

_AMOUNTS_SQL = ", ".join(f"j.amounts.{a}" for a in AMOUNTS)
_TRACE = ("CASE WHEN len(j.family_debits) > 0 THEN list_reduce(j.family_debits, "
          "lambda acc, d: replace(acc, ' ' || d.payer_id || ' pays', "
          "' ' || pseudo(d.payer_id) || ' pays'), CAST(j.trace AS VARCHAR)) "
          "ELSE CAST(j.trace AS VARCHAR) END")

SETTLEMENTS_SQL = [
    f"""INSERT INTO claims SELECT {_OHEAD}, pseudo(j.household_id), j.visit_id, j.settlement_seq,
        j.policy_version, j.benefit_year, j.service_date, j.scheme, j.kind, j.insured_region,
        j.treatment_region, j.facility_id, j.cross_province,
        coalesce(j.service_date, CAST(make_timestamp(epoch_us(ts) + {OFFSET_MS * 1000}) AS DATE)),
        {_AMOUNTS_SQL}, {_TRACE}, {_POS}
        FROM _yibao_s WHERE j.type IN ('ClaimSettled', 'ClaimReversed')""",
    f"""INSERT INTO family_debits SELECT event_id, type, pk, pseudo(d.payer_id),
        d.amount_fen, visit_id, ts, {_POS} FROM (
            SELECT j.event_id, j.type, pk, j.visit_id, ts, {_POS},
                   unnest(j.family_debits) AS d
            FROM _yibao_s WHERE j.type IN ('ClaimSettled', 'ClaimReversed')
                            AND len(j.family_debits) > 0)""",
    f"""INSERT INTO payment_outcomes SELECT {_OHEAD}, {_copy("payment_outcomes")}, {_POS}
        FROM _yibao_s WHERE j.type IN ('PaymentAccepted', 'PaymentRejected')""",
    f"""INSERT INTO rejections SELECT {_OHEAD}, {_copy("rejections")}, {_POS}
        FROM _yibao_s WHERE j.type IN ('ClaimRejected', 'EventRejected')""",
    f"""INSERT INTO audit_flags SELECT {_OHEAD}, {_copy("audit_flags")}, {_POS}
        FROM _yibao_s WHERE j.type = 'AuditFlagRaised'""",
]

_AUDIT_STRUCT = _contract_struct(AUDIT_TYPES, ("event_id", *COPIED["facility_flags"]), {})
AUDIT_SQL = f"""INSERT INTO facility_flags SELECT j.event_id, {_copy("facility_flags")}, ts, {_POS}
    FROM (
        SELECT src_partition, src_offset, ts, from_json(value, '{_AUDIT_STRUCT}') AS j
        FROM _yibao_raw_a)"""

DEADLETTER_SQL = [
    f"""INSERT INTO dead_letters SELECT j.origin.topic, j.origin.partition, j.origin.offset,
        CASE WHEN j IS NULL THEN 'dead letter is not JSON' ELSE j.error END, j.path,
        CASE WHEN j IS NULL THEN value ELSE j.raw END, ts, {_POS} FROM (
            SELECT *, try(from_json(value, '{_DL_STRUCT}')) AS j FROM _yibao_raw_d)""",
]


def insert(con: duckdb.DuckDBPyConnection, raw: dict[str, pa.Table]) -> None:
    """Fill the base tables from raw batches (call inside the batch's transaction)."""
    for role, alias, struct, statements in (
            (LEDGER, "_yibao_l", _LEDGER_STRUCT, LEDGER_SQL),
            (SETTLEMENTS, "_yibao_s", _OUT_STRUCT, SETTLEMENTS_SQL)):
        t = raw.get(role)
        if t is None or not t.num_rows:
            continue
        con.register("_yibao_raw", t)
        try:
            # person_id's pseudonym once per distinct person of the batch, not per row
            con.execute(f"""CREATE OR REPLACE TEMP TABLE {alias} AS
                WITH p AS (SELECT src_partition, src_offset, ts,
                                  try(from_json(value, '{struct}')) AS j FROM _yibao_raw),
                ids AS (SELECT id, pseudo(id) AS k FROM (
                    SELECT DISTINCT j.person_id AS id FROM p WHERE j IS NOT NULL))
                SELECT p.*, ids.k AS pk FROM p LEFT JOIN ids ON ids.id = p.j.person_id""")
        finally:
            con.unregister("_yibao_raw")
        for sql in statements:
            con.execute(sql)
        con.execute(f"DROP TABLE {alias}")
    t = raw.get(AUDIT)
    if t is not None and t.num_rows:
        con.register("_yibao_raw_a", t)
        try:
            con.execute(AUDIT_SQL)
        finally:
            con.unregister("_yibao_raw_a")
    t = raw.get(DEADLETTER)
    if t is not None and t.num_rows:
        con.register("_yibao_raw_d", t)
        try:
            for sql in DEADLETTER_SQL:
                con.execute(sql)
        finally:
            con.unregister("_yibao_raw_d")
