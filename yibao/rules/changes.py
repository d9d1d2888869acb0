"""The state changes a decision may carry, as typed values, and the one place they apply.

Each change is a frozen value naming what moves; ``apply_change`` matches on its type, so a
misspelt change is a type error mypy reports rather than a KeyError in production, and the
fold's only mutation stays in one function (eventsourcing's ``evolve``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from yibao.clock import local_date
from yibao.rules.state import Claim, PastClaim, Person, Settlement, State, Visit
from yibao.schemas import events as ev


@dataclass(frozen=True, slots=True)
class Registered:
    event: ev.PersonRegistered


@dataclass(frozen=True, slots=True)
class AssistanceFrom:
    person_id: str
    start: dt.date
    category: str | None


@dataclass(frozen=True, slots=True)
class BalanceMoved:
    person_id: str
    delta: int


@dataclass(frozen=True, slots=True)
class AidAuthorized:
    beneficiary_id: str
    payer_id: str


@dataclass(frozen=True, slots=True)
class AidRevoked:
    beneficiary_id: str
    payer_id: str


@dataclass(frozen=True, slots=True)
class Certified:
    person_id: str
    disease_code: str
    valid_from: dt.date
    valid_to: dt.date


@dataclass(frozen=True, slots=True)
class Filed:
    person_id: str
    treatment_region: str
    valid_from: dt.date
    valid_to: dt.date


@dataclass(frozen=True, slots=True)
class SuspendedFrom:
    person_id: str
    start: dt.date
    suspended: bool


@dataclass(frozen=True, slots=True)
class Died:
    person_id: str
    date_of_death: dt.date


@dataclass(frozen=True, slots=True)
class CreditLineSet:
    person_id: str
    bank: str
    limit_fen: int


@dataclass(frozen=True, slots=True)
class CreditMoved:
    person_id: str
    bank: str
    delta: int


@dataclass(frozen=True, slots=True)
class VisitStarted:
    event: ev.VisitOpened


@dataclass(frozen=True, slots=True)
class LinesAdded:
    person_id: str
    visit_id: str
    items: list[ev.LineItem]


@dataclass(frozen=True, slots=True)
class LinesRemoved:
    person_id: str
    visit_id: str
    line_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Settled:
    person_id: str
    visit_id: str
    settlement: Settlement
    claim: Claim
    #: claims with an older service date leave the history for good: kept as ``PastClaim``
    keep_from: int = 0


@dataclass(frozen=True, slots=True)
class Reversed:
    person_id: str
    visit_id: str


@dataclass(frozen=True, slots=True)
class Paid:
    person_id: str
    visit_id: str
    amount_fen: int
    bank: str | None


Change = (
    Registered | AssistanceFrom | BalanceMoved | AidAuthorized | AidRevoked | Certified | Filed
    | SuspendedFrom | Died | CreditLineSet | CreditMoved | VisitStarted | LinesAdded
    | LinesRemoved | Settled | Reversed | Paid
)


def apply_change(state: State, change: Change) -> None:
    """Apply one change: the only place the fold mutates state. The cases are tried in
    order, so the changes of nearly every event come first."""
    match change:
        case LinesAdded(person_id=pid, visit_id=vid, items=items):
            visit = state.persons[pid].visits[vid]
            lines, codes = visit.lines, visit.codes
            for item in items:
                lines[item.line_id] = (item.catalog_class, item.amount_fen, item.cap_fen)
                codes[item.line_id] = (item.code, item.quantity)
        case VisitStarted(event=e):
            _person(state, e.person_id).visits[e.visit_id] = Visit(e, local_date(e.opened_at))
        case Settled(person_id=pid, visit_id=vid, settlement=s, claim=claim, keep_from=keep):
            _settle(state, pid, vid, s)
            p = state.persons[pid]
            p.settlements_made = claim.order
            p.claims.append(claim)
            if any(c.service_date < keep for c in p.claims):
                _retire_claims(p, keep)
        case Paid(person_id=pid, visit_id=vid, amount_fen=amount, bank=bank):
            _pay(state, pid, vid, amount, bank)

        case Registered(event=e):
            p = _person(state, e.person_id)
            p.registration = e
            p.assistance.append((e.effective_from, e.assistance))
            p.suspended.append((e.effective_from, False))
            p.balance += e.personal_account_fen
        case AssistanceFrom(person_id=pid, start=start, category=category):
            state.persons[pid].assistance.append((start, category))
        case BalanceMoved(person_id=pid, delta=delta):
            state.persons[pid].balance += delta
        case AidAuthorized(beneficiary_id=beneficiary, payer_id=payer):
            state.persons[beneficiary].aid_payers.append(payer)
        case AidRevoked(beneficiary_id=beneficiary, payer_id=payer):
            state.persons[beneficiary].aid_payers.remove(payer)
        case Certified(person_id=pid, disease_code=code, valid_from=start, valid_to=end):
            state.persons[pid].certifications.append((code, start, end))
        case Filed(person_id=pid, treatment_region=region, valid_from=start, valid_to=end):
            state.persons[pid].filings.append((region, start, end))
        case SuspendedFrom(person_id=pid, start=start, suspended=on):
            state.persons[pid].suspended.append((start, on))
        case Died(person_id=pid, date_of_death=date):
            state.persons[pid].date_of_death = date
        case CreditLineSet(person_id=pid, bank=bank, limit_fen=limit):
            state.persons[pid].credit_limit[bank] = limit
        case CreditMoved(person_id=pid, bank=bank, delta=delta):
            p = state.persons[pid]
            p.credit_outstanding[bank] = p.credit_outstanding.get(bank, 0) + delta
        case LinesRemoved(person_id=pid, visit_id=vid, line_ids=ids):
            visit = state.persons[pid].visits[vid]
            for line_id in ids:
                del visit.lines[line_id]
                visit.codes.pop(line_id, None)
        case Reversed(person_id=pid, visit_id=vid):
            _reverse(state, pid, vid)

def _person(state: State, pid: str) -> Person:
    p = state.persons.get(pid)
    if p is None:
        p = state.persons[pid] = Person(pid)
    return p


def _add_accumulators(p: Person, year: int, deltas: tuple[tuple[str, int], ...], sign: int) -> None:
    acc = p.accumulators.setdefault(year, {})
    for k, v in deltas:
        acc[k] = acc.get(k, 0) + sign * v


def _settle(state: State, pid: str, vid: str, s: Settlement) -> None:
    p = state.persons[pid]
    _add_accumulators(p, s.year, s.acc_deltas, 1)
    p.balance -= s.own
    for payer, amt in s.family:
        state.persons[payer].balance -= amt
    visit = p.visits[vid]
    visit.seq = s.seq
    visit.current = s
    visit.pack()


def _reverse(state: State, pid: str, vid: str) -> None:
    """settlement.md "Refunds": every accumulator, account and credit line goes back by
    exactly what the settlement moved; the visit is open again."""
    p = state.persons[pid]
    visit = p.visits[vid]
    s = visit.current
    assert s is not None
    _add_accumulators(p, s.year, s.acc_deltas, -1)
    p.balance += s.own
    for payer, amt in s.family:
        state.persons[payer].balance += amt
    if s.credit:
        for bank, amt in s.credit.items():
            p.credit_outstanding[bank] -= amt
    visit.current = None
    visit.unpack()
    p.claims = [c for c in p.claims if c.visit_id != vid]
    if p.past_claims:
        p.past_claims = [c for c in p.past_claims if c.visit_id != vid]


def _retire_claims(p: Person, keep_from: int) -> None:
    """Claims whose service date is before ``keep_from`` shrink to what CLAIM_AFTER_DEATH
    needs: memory per person then grows with their recent visits, not with their past."""
    kept: list[Claim] = []
    for c in p.claims:
        if c.service_date < keep_from:
            p.past_claims.append(PastClaim(order=c.order, visit_id=c.visit_id,
                                           facility_id=c.facility_id,
                                           opened_date=c.opened_date, payout=c.payout))
        else:
            kept.append(c)
    p.claims = kept


def _pay(state: State, pid: str, vid: str, amount: int, bank: str | None) -> None:
    p = state.persons[pid]
    s = p.visits[vid].current
    assert s is not None
    s.outstanding -= amount
    if bank is not None:
        if s.credit is None:
            s.credit = {}
        s.credit[bank] = s.credit.get(bank, 0) + amount
        p.credit_outstanding[bank] = p.credit_outstanding.get(bank, 0) + amount
