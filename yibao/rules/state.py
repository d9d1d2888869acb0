"""The settlement state, as explicit data.

Why mutable slotted classes rather than frozen values: the fold applies ~10^5 events a
second and copying a person's state per event would dominate. Ownership makes it safe:
only ``yibao.rules.engine.evolve`` mutates state, ``decide`` only reads it, and a stream processor
persists the household state after ``evolve`` (the table is the durable copy).

State is keyed by person; a household is just the set of persons sharing a
``household_id``, which is what the live processor keeps per Kafka key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from yibao.schemas.events import Amounts, PersonRegistered, VisitOpened

T = TypeVar("T")

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(tuple[VisitOpened, dict[str, tuple[str, int, int | None]],
                                         dict[str, tuple[str, int]]])

ACCUMULATORS = (
    "outpatient_deductible_used",
    "outpatient_fund_paid",
    "inpatient_admissions",
    "pooled_fund_paid",
    "major_oop",
    "major_paid",
    "assistance_deductible_used",
    "assistance_paid",
)
# plus "special_paid:<disease>" and "chronic_paid:<condition>"


@dataclass(slots=True)
class Settlement:
    """A visit's current settlement: what it added, so a refund can take exactly that back."""

    seq: int
    event_id: str
    amounts: Amounts
    year: int
    acc_deltas: tuple[tuple[str, int], ...]
    own: int
    family: list[tuple[str, int]]
    outstanding: int
    credit: dict[str, int] | None = None  # bank -> credit advanced toward this settlement


@dataclass(slots=True)
class Visit:
    """A visit. Once settled, its opening and lines are packed into ``packed`` (msgpack):
    they are needed again only if the visit is refunded, and packed they take a fraction of
    the memory, which matters with millions of settled visits in a worker's state."""

    opened: VisitOpened | None
    opened_date: dt.date
    #: line_id -> (catalog_class, amount_fen, cap_fen): all settlement needs of a line item,
    #: a third of the memory of the decoded item (codes and names are not kept).
    lines: dict[str, tuple[str, int, int | None]] = field(default_factory=dict)
    seq: int = 0
    current: Settlement | None = None
    packed: bytes | None = None
    #: line_id -> (code, quantity): what the audit catalog rules read, beside ``lines``
    codes: dict[str, tuple[str, int]] = field(default_factory=dict)

    def pack(self) -> None:
        self.packed = _PACK.encode((self.opened, self.lines, self.codes))
        self.opened = None
        self.lines = {}
        self.codes = {}

    def unpack(self) -> None:
        if self.packed is not None:
            self.opened, self.lines, self.codes = _UNPACK.decode(self.packed)
            self.packed = None


@dataclass(slots=True)
class Claim:
    """A visit's current settlement as the audit rules remember it (audit.md, "settled
    visits"): the history rules read the ones of the last 90 days, ``CLAIM_AFTER_DEATH``
    any of them. Kept in the person (not in the visit, which the live processor pages out),
    small, and dropped when the settlement is refunded."""

    order: int  # the person's settlements in the order they were made
    visit_id: str
    facility_id: str
    kind: str  # as opened
    opened_at: dt.datetime
    closed_at: dt.datetime  # of the current settlement's checkout
    opened_date: int  # local date, ordinal
    service_date: int  # local date of closed_at, ordinal
    dx3: str | None
    codes: tuple[str, ...]  # its current lines' codes that have a FREQUENCY window
    payout: int  # basic_fund + major_illness + assistance


class PastClaim(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """A settled visit too old for any history window (see :class:`Claim`): only what
    ``CLAIM_AFTER_DEATH`` reads, so a person's past costs a few bytes per visit."""

    order: int
    visit_id: str
    facility_id: str
    opened_date: int  # local date, ordinal
    payout: int


@dataclass(slots=True)
class Person:
    person_id: str
    registration: PersonRegistered | None = None
    assistance: list[tuple[dt.date, str | None]] = field(default_factory=list)
    suspended: list[tuple[dt.date, bool]] = field(default_factory=list)
    certifications: list[tuple[str, dt.date, dt.date]] = field(default_factory=list)
    filings: list[tuple[str, dt.date, dt.date]] = field(default_factory=list)
    date_of_death: dt.date | None = None
    balance: int = 0
    aid_payers: list[str] = field(default_factory=list)
    credit_limit: dict[str, int] = field(default_factory=dict)
    credit_outstanding: dict[str, int] = field(default_factory=dict)
    visits: dict[str, Visit] = field(default_factory=dict)
    accumulators: dict[int, dict[str, int]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)  # current settlements, in order made
    #: current settlements no history can reach any more (``Settled.keep_from``)
    past_claims: list[PastClaim] = field(default_factory=list)
    settlements_made: int = 0

    def acc(self, year: int) -> dict[str, int]:
        a = self.accumulators.get(year)
        return a if a is not None else {}


@dataclass(slots=True)
class State:
    """Everything the engine knows: persons by id (a whole log, or one household)."""

    persons: dict[str, Person] = field(default_factory=dict)


def in_force(history: list[tuple[dt.date, T]], d: dt.date, default: T) -> T:
    """The entry of greatest effective_from <= d; among equal dates the later one."""
    best: dt.date | None = None
    value = default
    for start, v in history:
        if start <= d and (best is None or start >= best):
            best, value = start, v
    return value
