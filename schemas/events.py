"""The event contract of ../shared/spec/events.md (schema_version 1) as msgspec Structs.

Why msgspec: one decode both parses and validates, in C, with the JSON path of the first
error; the settlement fold runs at 100k+ events/s only if decoding is not the bottleneck.
Structs are frozen and keyword-only so an event, once decoded, is a value that no stage can
change; unknown fields are rejected so a gateway's typo fails loudly instead of settling
with a default. ``gc=False``: events are acyclic values, so keeping them out of the cyclic
garbage collector saves memory and collection time on a heap of millions of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

SCHEMA_VERSION = 1

Id = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
#: An output event id, ``<input event_id>/<n>`` (what a review names as its ``flag_id``).
OutputId = Annotated[str, Meta(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9._:/-]+$")]
Region = Annotated[str, Meta(pattern=r"^[0-9]{6}$")]
Timestamp = Annotated[dt.datetime, Meta(tz=True)]
Fen = Annotated[int, Meta(ge=0)]
PositiveFen = Annotated[int, Meta(gt=0)]
Icd10 = Annotated[str, Meta(pattern=r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")]
Version = Literal[1]

Scheme = Literal["employee", "resident"]
Assistance = Literal["extreme_poverty", "low_income", "marginal"]
VisitKind = Literal[
    "outpatient", "emergency", "outpatient_special", "outpatient_chronic", "inpatient"
]
PaymentMethod = Literal["insurance_code_qr", "face", "mobile", "bank_card", "cash", "credit"]


class Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Envelope shared by every input event (the tag ``type`` is added per class)."""

    event_id: Id
    schema_version: Version
    occurred_at: Timestamp
    source: Id
    person_id: Id


class _Tagged(Base, tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


# --------------------------------------------------------------------- enrollment


class PersonRegistered(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    household_id: Id
    scheme: Scheme
    region: Region
    birth_date: dt.date
    sex: Literal["M", "F"]
    retired: bool
    assistance: Assistance | None = None
    effective_from: dt.date
    personal_account_fen: Fen

    def __post_init__(self) -> None:
        if self.scheme == "resident":
            if self.retired:
                raise ValueError("`retired` must be false for a resident - at `$.retired`")
            if self.personal_account_fen != 0:
                raise ValueError(
                    "`personal_account_fen` must be 0 for a resident - at `$.personal_account_fen`"
                )


class AssistanceStatusChanged(
    _Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    assistance: Assistance | None = None
    effective_from: dt.date


class PersonalAccountCredited(
    _Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    amount_fen: PositiveFen


class FamilyAidAuthorized(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    beneficiary_id: Id


class FamilyAidRevoked(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    beneficiary_id: Id


class SpecialDiseaseCertified(
    _Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    disease_code: Id
    valid_from: dt.date
    valid_to: dt.date


class CrossRegionFiled(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    treatment_region: Region
    valid_from: dt.date
    valid_to: dt.date


class EnrollmentSuspended(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    effective_from: dt.date


class EnrollmentResumed(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    effective_from: dt.date


class PersonDeceased(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    date_of_death: dt.date


class CreditLineGranted(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bank: Id
    limit_fen: PositiveFen


class CreditRepaid(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bank: Id
    amount_fen: PositiveFen


# --------------------------------------------------------------------- care


class LineItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    line_id: Id
    code: str
    name: str
    category: Literal["drug", "service", "consumable"]
    catalog_class: Literal["A", "B", "C"]
    quantity: PositiveFen
    unit_price_fen: Fen
    amount_fen: Fen
    cap_fen: Fen | None = None

    def __post_init__(self) -> None:
        if self.amount_fen != self.quantity * self.unit_price_fen:
            raise ValueError(
                f"`amount_fen` {self.amount_fen} != `quantity` {self.quantity} × "
                f"`unit_price_fen` {self.unit_price_fen}"
            )


class VisitOpened(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    facility_id: Id
    facility_level: Literal[1, 2, 3]
    facility_region: Region
    kind: VisitKind
    opened_at: Timestamp
    diagnoses: list[Icd10]
    special_disease_code: Id | None = None

    def __post_init__(self) -> None:
        if self.kind == "outpatient_special":
            if self.special_disease_code is None:
                raise ValueError(
                    "`special_disease_code` is required for an outpatient_special visit"
                    " - at `$.special_disease_code`"
                )
        elif self.special_disease_code is not None:
            raise ValueError(
                f"`special_disease_code` must be null for a {self.kind} visit"
                " - at `$.special_disease_code`"
            )


class PrescriptionIssued(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    prescription_id: Id
    items: list[LineItem]


class ItemsCharged(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    items: list[LineItem]


class ChargeReversed(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    line_ids: list[Id]


class VisitClosed(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Checkout or discharge. ``charged_*`` are the hospital's own bill (settlement.md Step 0
    check 9): given, they must match the visit's current lines, so a checkout that overtook
    its last charge is refused instead of settled short."""

    visit_id: Id
    closed_at: Timestamp
    use_personal_account: bool = True
    charged_total_fen: Fen | None = None
    charged_lines: Fen | None = None


class VisitRefunded(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    reason: str


class PaymentMade(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: Id
    payment_id: Id
    method: PaymentMethod
    amount_fen: PositiveFen
    bank: Id | None = None

    def __post_init__(self) -> None:
        if self.method == "credit":
            if self.bank is None:
                raise ValueError("`bank` is required for a credit payment - at `$.bank`")
        elif self.bank is not None:
            raise ValueError(f"`bank` must be null for a {self.method} payment - at `$.bank`")


class PreSettlementRequested(
    _Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """预结算: what the split would be if the visit closed now; changes no state."""

    visit_id: Id
    closed_at: Timestamp
    use_personal_account: bool = True
    charged_total_fen: Fen | None = None
    charged_lines: Fen | None = None


# --------------------------------------------------------------------- audit review


class AuditFlagReviewed(_Tagged, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An auditor's verdict on a flag: no settlement changes, only the case queue and, when
    confirmed, a recovery in the fund ledger."""

    flag_id: OutputId
    outcome: Literal["confirmed", "dismissed"]
    recovered_fen: Fen
    reviewer: Id

    def __post_init__(self) -> None:
        if self.outcome == "dismissed" and self.recovered_fen != 0:
            raise ValueError(
                "`recovered_fen` must be 0 for a dismissed review - at `$.recovered_fen`"
            )


InputEvent = (
    PersonRegistered
    | AssistanceStatusChanged
    | PersonalAccountCredited
    | FamilyAidAuthorized
    | FamilyAidRevoked
    | SpecialDiseaseCertified
    | CrossRegionFiled
    | EnrollmentSuspended
    | EnrollmentResumed
    | PersonDeceased
    | CreditLineGranted
    | CreditRepaid
    | VisitOpened
    | PrescriptionIssued
    | ItemsCharged
    | ChargeReversed
    | VisitClosed
    | VisitRefunded
    | PaymentMade
    | PreSettlementRequested
    | AuditFlagReviewed
)

INPUT_TYPES: tuple[type[Base], ...] = InputEvent.__args__  # type: ignore[attr-defined]

ENROLLMENT_TYPES = (
    PersonRegistered,
    AssistanceStatusChanged,
    PersonalAccountCredited,
    FamilyAidAuthorized,
    FamilyAidRevoked,
    SpecialDiseaseCertified,
    CrossRegionFiled,
    EnrollmentSuspended,
    EnrollmentResumed,
    PersonDeceased,
    CreditLineGranted,
    CreditRepaid,
)

#: The care events a hospital gateway publishes (events.md, "Topics and order").
CARE_TYPES = (
    VisitOpened,
    PrescriptionIssued,
    ItemsCharged,
    ChargeReversed,
    VisitClosed,
    VisitRefunded,
    PaymentMade,
    PreSettlementRequested,
)

#: The input topic (without prefix) of each input type, chosen by the authority that
#: publishes it: bureau systems ``registrations``, hospital gateways ``care``, bureau
#: auditors ``reviews``. Every input is keyed by ``person_id``; a type on another topic is
#: malformed (dead-lettered), so a hospital that may write ``care`` can never register a
#: person, credit an account or grant a credit line.
TOPIC_OF: dict[str, str] = {
    **{t.__name__: "registrations" for t in ENROLLMENT_TYPES},
    **{t.__name__: "care" for t in CARE_TYPES},
    "AuditFlagReviewed": "reviews",
}
assert set(TOPIC_OF) == {t.__name__ for t in INPUT_TYPES}


# --------------------------------------------------------------------- outputs


class Amounts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    total: int
    self_pay_full: int
    over_cap: int
    first_self_pay: int
    eligible: int
    deductible: int
    basic_fund: int
    major_illness: int
    assistance: int
    personal_account: int
    family_account: int
    cash_due: int

    def negated(self) -> Amounts:
        return Amounts(**{f: -getattr(self, f) for f in self.__struct_fields__})


class FamilyDebit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    payer_id: str
    amount_fen: int


class TraceEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    step: str
    detail: str


class _Out(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    event_id: str
    caused_by: str
    person_id: str


class _SettlementFields(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a settlement says; shared by ``ClaimSettled`` and its preview."""

    visit_id: str
    household_id: str
    settlement_seq: int
    policy_version: str
    benefit_year: int
    service_date: dt.date
    scheme: str
    kind: str
    insured_region: str
    treatment_region: str
    facility_id: str
    cross_province: bool
    amounts: Amounts
    family_debits: list[FamilyDebit]
    trace: list[TraceEntry]
    # ``opened_date`` (local date of the visit's ``opened_at``) and ``dx3``: on an inpatient
    # claim only. Tier B's ``GROUP_ADMISSION`` groups admissions by them and reads nothing but
    # ``settlements``, so a replay of that topic alone gives its flags. Absent elsewhere
    # (``omit_defaults`` on the subclasses), so other claims read as before.
    opened_date: dt.date | None = None
    dx3: str | None = None


class ClaimSettled(
    _SettlementFields, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True,
    omit_defaults=True,
):
    pass


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A flag a checkout would raise, as listed in ``ClaimPreviewed.audit``."""

    rule: str
    severity: Literal["info", "warn", "block"]
    detail: str
    line_ids: list[str]
    related_visit_id: str | None
    amount_fen: int


class ClaimPreviewed(
    _SettlementFields, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True,
    omit_defaults=True,
):
    audit: list[AuditEntry]


class PreviewRejected(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str
    reason: str
    detail: str


class ClaimRejected(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str
    reason: str
    detail: str


class ClaimReversed(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str
    settlement_seq: int
    amounts: Amounts
    family_debits: list[FamilyDebit]


class PaymentAccepted(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str
    payment_id: str
    method: str
    amount_fen: int
    outstanding_fen: int


class PaymentRejected(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str
    payment_id: str
    reason: str


class AuditFlagRaised(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str | None = None
    rule: str
    severity: Literal["info", "warn", "block"]
    facility_id: str | None = None
    detail: str
    line_ids: list[str]
    related_visit_id: str | None
    amount_fen: int


class EventRejected(_Out, tag=True, frozen=True, kw_only=True, forbid_unknown_fields=True):
    visit_id: str | None = None
    reason: str
    detail: str


OutputEvent = (
    ClaimSettled
    | ClaimRejected
    | ClaimReversed
    | PaymentAccepted
    | PaymentRejected
    | AuditFlagRaised
    | EventRejected
    | ClaimPreviewed
    | PreviewRejected
)

OUTPUT_TYPES: tuple[type[_Out], ...] = OutputEvent.__args__  # type: ignore[attr-defined]


# --------------------------------------------------------------------- tier B (topic audit)


class FacilityFlagRaised(
    msgspec.Struct, tag_field="type", tag=True, frozen=True, kw_only=True,
    forbid_unknown_fields=True, gc=False,
):
    """A pattern across one facility's patients over a window (audit.md "Tier B").

    ``event_id`` derives from rule, facility and window, so a stage that delivers at least
    once repeats an id, and the projection drops the repeat.
    """

    event_id: str
    rule: str
    severity: Literal["info", "warn", "block"]
    facility_id: str
    window_start: dt.date
    window_end: dt.date
    count: int
    amount_fen: int
    detail: str


AUDIT_TYPES: tuple[type[FacilityFlagRaised], ...] = (FacilityFlagRaised,)
