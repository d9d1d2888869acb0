"""The settlement engine: settlement.md as a pure fold.

``decide(state, event)`` reads the state and returns a :class:`Decision`: the output events
of events.md and the state changes they imply. ``evolve(state, decision)`` applies those
changes. Keeping them apart is what lets the same code settle a file, a Kafka stream, a
replay or a what-if: the caller owns ordering, deduplication, persistence and I/O, and this
module imports none of them (no Kafka, Faust, DuckDB, files or clock).

Every amount is integer fen and the only rounding is :func:`yibao.rules.steps.pct`, exactly
where the spec writes it, so an auditor recomputing a claim from its ``trace`` gets the same fen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from yibao.clock import local_date
from yibao.rules import audit, steps
from yibao.rules import changes as ch
from yibao.rules.audit import Checkout, Finding, Line
from yibao.rules.catalog import Catalog, CatalogVersion, load_catalog
from yibao.rules.changes import apply_change
from yibao.rules.policy import Policy, PolicyVersion, SchemePolicy
from yibao.rules.state import Claim, Person, Settlement, State, Visit, in_force
from yibao.schemas import events as ev
from yibao.schemas.events import (
    Amounts,
    AuditEntry,
    AuditFlagRaised,
    ClaimPreviewed,
    ClaimRejected,
    ClaimReversed,
    ClaimSettled,
    EventRejected,
    FamilyDebit,
    InputEvent,
    OutputEvent,
    PaymentAccepted,
    PaymentRejected,
    PreviewRejected,
)


@dataclass(slots=True)
class Decision:
    outputs: list[OutputEvent] = field(default_factory=list)
    changes: list[ch.Change] = field(default_factory=list)


_NOTHING = Decision()


class Engine:
    """Settles events under one policy. Stateless itself: state is passed in and out."""

    def __init__(self, policy: Policy, catalog: Catalog | None = None,
                 thresholds: audit.Thresholds = audit.DEFAULTS) -> None:
        self.policy = policy
        self.catalog = catalog if catalog is not None else load_catalog(None)
        self.thresholds = thresholds
        self._handlers: dict[type, Callable[[State, Any], Decision]] = {
            ev.PersonRegistered: self._registered,
            ev.AssistanceStatusChanged: self._enrollment_change,
            ev.PersonalAccountCredited: self._account_credited,
            ev.FamilyAidAuthorized: self._aid_authorized,
            ev.FamilyAidRevoked: self._aid_revoked,
            ev.SpecialDiseaseCertified: self._certified,
            ev.CrossRegionFiled: self._enrollment_change,
            ev.EnrollmentSuspended: self._enrollment_change,
            ev.EnrollmentResumed: self._enrollment_change,
            ev.PersonDeceased: self._deceased,
            ev.CreditLineGranted: self._enrollment_change,
            ev.CreditRepaid: self._credit_repaid,
            ev.VisitOpened: self._visit_opened,
            ev.PrescriptionIssued: self._items,
            ev.ItemsCharged: self._items,
            ev.ChargeReversed: self._charge_reversed,
            ev.VisitClosed: self._visit_closed,
            ev.VisitRefunded: self._visit_refunded,
            ev.PaymentMade: self._payment,
            ev.AuditFlagReviewed: self._reviewed,
            ev.PreSettlementRequested: self._presettled,
        }

    # ------------------------------------------------------------------ the fold

    def decide(self, state: State, event: InputEvent) -> Decision:
        """Outputs and state changes for one (deduplicated) input event. Reads state only.

        The events of nearly every line of a log are tested first, by exact type as the table
        is keyed: a compiled core then calls their handlers directly, not through the table."""
        t = type(event)
        if t is ev.ItemsCharged or t is ev.PrescriptionIssued:
            return self._items(state, cast("ev.ItemsCharged | ev.PrescriptionIssued", event))
        if t is ev.VisitClosed:
            return self._visit_closed(state, cast(ev.VisitClosed, event))
        if t is ev.VisitOpened:
            return self._visit_opened(state, cast(ev.VisitOpened, event))
        if t is ev.PaymentMade:
            return self._payment(state, cast(ev.PaymentMade, event))
        return self._handlers[t](state, event)

    @staticmethod
    def evolve(state: State, decision: Decision) -> State:
        """Apply a decision's changes. The only place state is mutated."""
        for change in decision.changes:
            apply_change(state, change)
        return state

    def apply(self, state: State, event: InputEvent) -> list[OutputEvent]:
        decision = self.decide(state, event)
        if decision.changes:
            self.evolve(state, decision)
        return decision.outputs

    @staticmethod
    def _reviewed(state: State, e: ev.AuditFlagReviewed) -> Decision:
        """audit.md: a review never gives an output, not even for an unknown person or flag;
        it is projected into the case queue straight from the ledger."""
        return _NOTHING

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _reject(e: InputEvent, reason: str, detail: str, visit_id: str | None = None) -> Decision:
        return Decision(
            [
                EventRejected(
                    event_id=f"{e.event_id}/0",
                    caused_by=e.event_id,
                    person_id=e.person_id,
                    visit_id=visit_id,
                    reason=reason,
                    detail=detail,
                )
            ]
        )

    @staticmethod
    def _claim_rejected(e: Any, reason: str, detail: str) -> Decision:
        return Decision(
            [
                ClaimRejected(
                    event_id=f"{e.event_id}/0",
                    caused_by=e.event_id,
                    person_id=e.person_id,
                    visit_id=e.visit_id,
                    reason=reason,
                    detail=detail,
                )
            ]
        )

    def _enrolled(self, state: State, e: InputEvent) -> Person | Decision:
        p = state.persons.get(e.person_id)
        if p is None or p.registration is None:
            return self._reject(e, "UNKNOWN_PERSON", f"person {e.person_id} is not registered")
        return p

    # ------------------------------------------------------------------ enrollment

    def _enrollment_change(self, state: State, e: Any) -> Decision:
        """Enrollment events whose only rule is that the person is registered."""
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        return Decision([], [_ENROLLMENT_CHANGES[type(e)](e)])

    def _deceased(self, state: State, e: ev.PersonDeceased) -> Decision:
        """Accepted like any enrollment change; then CLAIM_AFTER_DEATH (audit.md) over the
        person's settled visits opened after the date of death, ids from ``<id>/0``."""
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        flags = [
            AuditFlagRaised(
                event_id=f"{e.event_id}/{i}", caused_by=e.event_id, person_id=e.person_id,
                visit_id=c.visit_id, rule="CLAIM_AFTER_DEATH", severity="warn",
                facility_id=c.facility_id,
                detail=f"visit opened {dt.date.fromordinal(c.opened_date)} after the date of "
                f"death {e.date_of_death}", line_ids=[], related_visit_id=None,
                amount_fen=c.payout)
            for i, c in enumerate(audit.claim_after_death([*p.past_claims, *p.claims],
                                                          e.date_of_death))]
        return Decision(list(flags), [ch.Died(e.person_id, e.date_of_death)])

    def _registered(self, state: State, e: ev.PersonRegistered) -> Decision:
        p = state.persons.get(e.person_id)
        if p is not None and p.registration is not None:
            return self._reject(
                e, "DUPLICATE_PERSON", f"person {e.person_id} is already registered"
            )
        return Decision([], [ch.Registered(e)])

    def _account_credited(self, state: State, e: ev.PersonalAccountCredited) -> Decision:
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        assert p.registration is not None
        if p.registration.scheme != "employee":
            return self._reject(
                e, "NOT_AN_EMPLOYEE", f"{e.person_id} is in the {p.registration.scheme} scheme"
            )
        return Decision([], [ch.BalanceMoved(e.person_id, e.amount_fen)])

    def _aid_authorized(self, state: State, e: ev.FamilyAidAuthorized) -> Decision:
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        assert p.registration is not None
        if p.registration.scheme != "employee":
            return self._reject(
                e,
                "NOT_AN_EMPLOYEE",
                f"payer {e.person_id} is in the {p.registration.scheme} scheme",
            )
        if e.beneficiary_id == e.person_id:
            return self._reject(e, "FAMILY_AID_INVALID", "a payer cannot aid itself")
        b = state.persons.get(e.beneficiary_id)
        hh = p.registration.household_id
        # One detail for "unknown" and "in another household": the live processor holds only
        # the payer's household and cannot tell them apart, and live and file mode (and every
        # replay) must give the same output, detail included.
        if b is None or b.registration is None or b.registration.household_id != hh:
            return self._reject(
                e, "FAMILY_AID_INVALID",
                f"beneficiary {e.beneficiary_id} is not a registered member of household {hh}",
            )
        if e.person_id in b.aid_payers:
            return _NOTHING
        return Decision([], [ch.AidAuthorized(e.beneficiary_id, e.person_id)])

    def _aid_revoked(self, state: State, e: ev.FamilyAidRevoked) -> Decision:
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        b = state.persons.get(e.beneficiary_id)
        if b is None or e.person_id not in b.aid_payers:
            return self._reject(
                e,
                "FAMILY_AID_INVALID",
                f"{e.person_id} has no family-aid authorization for {e.beneficiary_id}",
            )
        return Decision([], [ch.AidRevoked(e.beneficiary_id, e.person_id)])

    def _certified(self, state: State, e: ev.SpecialDiseaseCertified) -> Decision:
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        assert p.registration is not None
        newest = self.policy.for_region(p.registration.region, len(self.policy.versions) - 1)
        if e.disease_code not in newest.special_diseases:
            return self._reject(
                e,
                "UNKNOWN_SPECIAL_DISEASE",
                f"{e.disease_code} is not in policy {newest.id}'s table",
            )
        return Decision([], [ch.Certified(e.person_id, e.disease_code, e.valid_from, e.valid_to)])

    def _credit_repaid(self, state: State, e: ev.CreditRepaid) -> Decision:
        p = self._enrolled(state, e)
        if isinstance(p, Decision):
            return p
        if e.bank not in p.credit_limit:
            return self._reject(e, "NO_CREDIT_LINE", f"no credit line from bank {e.bank}")
        owed = p.credit_outstanding.get(e.bank, 0)
        if e.amount_fen > owed:
            return self._reject(
                e,
                "REPAYMENT_EXCEEDS_BALANCE",
                f"repaid {e.amount_fen} but {owed} is owed to {e.bank}",
            )
        return Decision([], [ch.CreditMoved(e.person_id, e.bank, -e.amount_fen)])

    # ------------------------------------------------------------------ care

    def _visit_opened(self, state: State, e: ev.VisitOpened) -> Decision:
        p = state.persons.get(e.person_id)
        if p is not None and e.visit_id in p.visits:
            return self._reject(
                e, "DUPLICATE_VISIT", f"visit {e.visit_id} is already open", e.visit_id
            )
        return Decision([], [ch.VisitStarted(e)])

    def _open_visit(self, state: State, e: Any) -> Visit | Decision:
        p = state.persons.get(e.person_id)
        visit = p.visits.get(e.visit_id) if p is not None else None
        if visit is None:
            return self._reject(
                e, "UNKNOWN_VISIT", f"{e.person_id} has no visit {e.visit_id}", e.visit_id
            )
        if visit.current is not None:
            return self._reject(
                e, "VISIT_ALREADY_SETTLED", f"visit {e.visit_id} is settled", e.visit_id
            )
        return visit

    def _items(self, state: State, e: ev.ItemsCharged | ev.PrescriptionIssued) -> Decision:
        visit = self._open_visit(state, e)
        if isinstance(visit, Decision):
            return visit
        seen: set[str] = set()
        for item in e.items:
            if item.line_id in visit.lines or item.line_id in seen:
                return self._reject(
                    e,
                    "DUPLICATE_LINE",
                    f"line {item.line_id} is already on visit {e.visit_id}",
                    e.visit_id,
                )
            seen.add(item.line_id)
        return Decision([], [ch.LinesAdded(e.person_id, e.visit_id, e.items)])

    def _charge_reversed(self, state: State, e: ev.ChargeReversed) -> Decision:
        visit = self._open_visit(state, e)
        if isinstance(visit, Decision):
            return visit
        seen: set[str] = set()
        for line_id in e.line_ids:
            if line_id not in visit.lines or line_id in seen:
                return self._reject(
                    e,
                    "UNKNOWN_LINE",
                    f"line {line_id} is not a current line of visit {e.visit_id}",
                    e.visit_id,
                )
            seen.add(line_id)
        return Decision([], [ch.LinesRemoved(e.person_id, e.visit_id, tuple(e.line_ids))])

    def _visit_refunded(self, state: State, e: ev.VisitRefunded) -> Decision:
        p = state.persons.get(e.person_id)
        visit = p.visits.get(e.visit_id) if p is not None else None
        if visit is None:
            return self._claim_rejected(
                e, "UNKNOWN_VISIT", f"{e.person_id} has no visit {e.visit_id}"
            )
        s = visit.current
        if s is None:
            return self._claim_rejected(
                e, "VISIT_NOT_SETTLED", f"visit {e.visit_id} is not settled"
            )
        out = ClaimReversed(
            event_id=f"{e.event_id}/0",
            caused_by=e.event_id,
            person_id=e.person_id,
            visit_id=e.visit_id,
            settlement_seq=s.seq,
            amounts=s.amounts.negated(),
            family_debits=[FamilyDebit(payer_id=pid, amount_fen=-amt) for pid, amt in s.family],
        )
        return Decision([out], [ch.Reversed(e.person_id, e.visit_id)])

    def _payment(self, state: State, e: ev.PaymentMade) -> Decision:
        p = state.persons.get(e.person_id)
        visit = p.visits.get(e.visit_id) if p is not None else None
        s = visit.current if visit is not None else None
        reason = None
        if s is None or p is None:
            reason = "NOT_SETTLED"
        elif e.amount_fen > s.outstanding:
            reason = "OVERPAYMENT"
        elif e.method == "credit":
            assert e.bank is not None
            limit = p.credit_limit.get(e.bank)
            if limit is None:
                reason = "NO_CREDIT_LINE"
            elif limit - p.credit_outstanding.get(e.bank, 0) < e.amount_fen:
                reason = "CREDIT_LIMIT"
        if reason is not None:
            return Decision(
                [
                    PaymentRejected(
                        event_id=f"{e.event_id}/0",
                        caused_by=e.event_id,
                        person_id=e.person_id,
                        visit_id=e.visit_id,
                        payment_id=e.payment_id,
                        reason=reason,
                    )
                ]
            )
        assert s is not None
        out = PaymentAccepted(
            event_id=f"{e.event_id}/0",
            caused_by=e.event_id,
            person_id=e.person_id,
            visit_id=e.visit_id,
            payment_id=e.payment_id,
            method=e.method,
            amount_fen=e.amount_fen,
            outstanding_fen=s.outstanding - e.amount_fen,
        )
        bank = e.bank if e.method == "credit" else None
        return Decision([out], [ch.Paid(e.person_id, e.visit_id, e.amount_fen, bank)])

    # ------------------------------------------------------------------ settlement

    def _visit_closed(self, state: State, e: ev.VisitClosed) -> Decision:
        checked = self._can_settle(state, e)
        if isinstance(checked, Refusal):
            refused = self._claim_rejected(e, checked.reason, checked.detail)
            if checked.flags:  # AUDIT_BLOCK: the blocking flags are raised too
                refused.outputs.extend(_raise(checked.flags, e, checked.facility_id, 1))
            return refused
        p, reg, visit, d, pol, audited = checked
        return self._settle(state, p, reg, visit, d, pol, audited, e)

    def _presettled(self, state: State, e: ev.PreSettlementRequested) -> Decision:
        """settlement.md "Pre-settlement": Step 0 and Steps 1-6 as a checkout would run them
        now, with no state change and no flag raised: the decision's changes are dropped."""
        checked = self._can_settle(state, e)
        if isinstance(checked, Refusal):
            return Decision([PreviewRejected(
                event_id=f"{e.event_id}/0", caused_by=e.event_id, person_id=e.person_id,
                visit_id=e.visit_id, reason=checked.reason, detail=checked.detail)])
        p, reg, visit, d, pol, audited = checked
        would = self._settle(state, p, reg, visit, d, pol, audited, e)
        return Decision([preview_of(would.outputs)])

    def _can_settle(
        self, state: State, e: ev.VisitClosed | ev.PreSettlementRequested
    ) -> Refusal | tuple[Person, ev.PersonRegistered, Visit, dt.date, PolicyVersion, Audited]:
        """Step 0, checks 1-10 in the spec's order: the first that fails refuses the checkout."""
        p = state.persons.get(e.person_id)
        visit = p.visits.get(e.visit_id) if p is not None else None
        # Step 0: can the visit be settled?
        if p is None or visit is None:
            return Refusal(
                "UNKNOWN_VISIT", f"{e.person_id} has no visit {e.visit_id}"
            )
        if visit.current is not None:
            return Refusal(
                "VISIT_ALREADY_SETTLED", f"visit {e.visit_id} is settled (seq {visit.seq})"
            )
        reg = p.registration
        if reg is None:
            return Refusal(
                "UNKNOWN_PERSON", f"person {e.person_id} is not registered"
            )
        d = local_date(e.closed_at)
        vi = self.policy.version_index(d)
        if vi < 0:
            return Refusal(
                "NO_POLICY_IN_FORCE", f"no policy version in force on {d}"
            )
        pol = self.policy.for_region(reg.region, vi)
        if d < reg.effective_from:
            return Refusal(
                "NOT_YET_ENROLLED", f"service date {d} < enrollment {reg.effective_from}"
            )
        if in_force(p.suspended, d, False):
            return Refusal("ENROLLMENT_SUSPENDED", f"enrollment suspended on {d}")
        if p.date_of_death is not None and p.date_of_death < visit.opened_date:
            return Refusal(
                "PERSON_DECEASED",
                f"date of death {p.date_of_death} < visit opened {visit.opened_date}",
            )
        o = visit.opened
        assert o is not None  # an open visit is never packed
        if o.kind == "outpatient_special":
            code = o.special_disease_code
            if code not in pol.special_diseases or not any(
                c == code and f <= d <= t for c, f, t in p.certifications
            ):
                return Refusal(
                    "SPECIAL_DISEASE_NOT_CERTIFIED",
                    f"no certification of {code} covering {d} in policy {pol.id}",
                )
        mismatch = charges_mismatch(visit, e.charged_total_fen, e.charged_lines)
        if mismatch is not None:
            return Refusal("CHARGES_MISMATCH", mismatch)
        # check 10: no blocking audit rule on the current lines
        catalog = self.catalog.in_force(d, o.facility_region)
        v = checkout_of(visit, o, e, d, catalog.entries if catalog else {},
                        self.catalog.freq_codes)
        blocking, warnings = audit.catalog_findings(v, catalog, reg.sex, reg.birth_date,
                                                    o.facility_level)
        if blocking:
            return Refusal("AUDIT_BLOCK", audit.audit_block_detail(blocking, v),
                           tuple(blocking), o.facility_id)
        return p, reg, visit, d, pol, Audited(v, catalog, tuple(warnings))

    def _settle(
        self,
        state: State,
        p: Person,
        reg: ev.PersonRegistered,
        visit: Visit,
        d: dt.date,
        pol: PolicyVersion,
        audited: Audited,
        e: ev.VisitClosed | ev.PreSettlementRequested,
    ) -> Decision:
        """Steps 1-6 of settlement.md on a visit Step 0 accepted, composed from
        ``yibao.rules.steps``; the accumulator deltas are recorded, not applied."""
        sp: SchemePolicy = pol.scheme[reg.scheme]
        o = visit.opened
        assert o is not None
        year = d.year
        acc = p.acc(year)
        lines = steps.split_lines(visit.lines.values(), len(visit.lines), sp.b_first_self_pay)
        benefit = steps.benefit_that_applies(reg, o, pol, sp, p.filings, d)
        fund = steps.basic_fund(lines.eligible, benefit, o.special_disease_code, pol, sp, acc)
        oop = lines.eligible - fund.fund
        category = steps.category_on(p.assistance, d)
        major = steps.major_illness(oop, benefit, category, sp, acc)
        assistance = steps.medical_assistance(oop, major.paid, category, pol, acc)
        share = (lines.self_pay_full + lines.over_cap + lines.first_self_pay + oop - major.paid
                 - assistance.paid)
        balances = {pid: state.persons[pid].balance for pid in p.aid_payers if pid in state.persons}
        accounts = steps.accounts_and_cash(
            share, e.use_personal_account, p.balance, p.aid_payers, balances,
            (lines.self_pay_full, lines.over_cap, lines.first_self_pay, oop, major.paid,
             assistance.paid))
        trace = [lines.trace, benefit.trace, fund.trace]
        trace += [t for t in (major.trace, assistance.trace) if t is not None]
        trace.append(accounts.trace)
        deltas = dict((*fund.deltas, *major.deltas, *assistance.deltas))
        amounts = Amounts(
            total=lines.total,
            self_pay_full=lines.self_pay_full,
            over_cap=lines.over_cap,
            first_self_pay=lines.first_self_pay,
            eligible=lines.eligible,
            deductible=fund.deductible,
            basic_fund=fund.fund,
            major_illness=major.paid,
            assistance=assistance.paid,
            personal_account=accounts.own,
            family_account=accounts.family_total,
            cash_due=accounts.cash_due,
        )
        seq = visit.seq + 1
        settled = ClaimSettled(
            event_id=f"{e.event_id}/0",
            caused_by=e.event_id,
            person_id=e.person_id,
            visit_id=e.visit_id,
            household_id=reg.household_id,
            settlement_seq=seq,
            policy_version=pol.id,
            benefit_year=year,
            service_date=d,
            scheme=reg.scheme,
            kind=benefit.kind,
            insured_region=benefit.insured_region,
            treatment_region=benefit.treatment_region,
            facility_id=o.facility_id,
            cross_province=benefit.cross_province,
            amounts=amounts,
            family_debits=[FamilyDebit(payer_id=pid, amount_fen=amt) for pid, amt in accounts.family],
            trace=trace,
            # what tier B's GROUP_ADMISSION groups admissions by (nothing on other claims)
            opened_date=visit.opened_date if o.kind == "inpatient" else None,
            dx3=audit.dx3_of(o.diagnoses) if o.kind == "inpatient" else None,
        )
        record = Settlement(
            seq=seq,
            event_id=e.event_id,
            amounts=amounts,
            year=year,
            acc_deltas=tuple(deltas.items()),
            own=accounts.own,
            family=accounts.family,
            outstanding=accounts.cash_due,
        )
        payout = amounts.basic_fund + amounts.major_illness + amounts.assistance
        v = audited.checkout
        findings = [*audited.warnings,
                    *audit.history_findings(v, p.claims, audited.catalog, payout,
                                            self.thresholds),
                    *audit.claim_rules(settled, benefit.filed, oop, self.thresholds)]
        outputs: list[OutputEvent] = [settled, *_raise(findings, e, o.facility_id, 1)]
        freq_codes = self.catalog.freq_codes
        claim = Claim(
            order=p.settlements_made + 1, visit_id=e.visit_id, facility_id=o.facility_id,
            kind=o.kind, opened_at=o.opened_at, closed_at=e.closed_at,
            opened_date=visit.opened_date.toordinal(), service_date=d.toordinal(), dx3=v.dx3,
            codes=tuple(dict.fromkeys(ln.code for ln in v.lines if ln.code in freq_codes)),
            payout=payout)
        keep_from = audit.history_kept_from(p.claims, d, self.thresholds)
        return Decision(outputs, [ch.Settled(e.person_id, e.visit_id, record, claim, keep_from)])


#: The state change of each enrollment event that needs nothing but a registered person.
_ENROLLMENT_CHANGES: dict[type, Callable[[Any], ch.Change]] = {
    ev.AssistanceStatusChanged: lambda e: ch.AssistanceFrom(e.person_id, e.effective_from, e.assistance),
    ev.CrossRegionFiled: lambda e: ch.Filed(e.person_id, e.treatment_region, e.valid_from, e.valid_to),
    ev.EnrollmentSuspended: lambda e: ch.SuspendedFrom(e.person_id, e.effective_from, True),
    ev.EnrollmentResumed: lambda e: ch.SuspendedFrom(e.person_id, e.effective_from, False),
    ev.CreditLineGranted: lambda e: ch.CreditLineSet(e.person_id, e.bank, e.limit_fen),
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why Step 0 refuses a checkout: a ``ClaimRejected`` for a checkout, a
    ``PreviewRejected`` for a pre-settlement, with the same reason; for ``AUDIT_BLOCK`` the
    blocking flags a checkout raises (a pre-settlement raises none)."""

    reason: str
    detail: str
    flags: tuple[Finding, ...] = ()
    facility_id: str = ""


@dataclass(frozen=True, slots=True)
class Audited:
    """What check 10 learnt, for Steps 1-6: the checkout's facts, the catalog in force and
    its non-blocking catalog flags (raised after the settlement)."""

    checkout: Checkout
    catalog: CatalogVersion | None
    warnings: tuple[Finding, ...]


def checkout_of(visit: Visit, o: ev.VisitOpened, e: ev.VisitClosed | ev.PreSettlementRequested,
                d: dt.date, entries: Mapping[str, object], freq_codes: frozenset[str]
                ) -> Checkout:
    """The visit being closed as the audit rules see it: its opening, the checkout's time
    and, in the order they were charged, the current lines whose code the catalog knows
    (in force, or with a FREQUENCY window in any version); no rule reads the others, and
    most lines are not in the catalog."""
    codes = visit.codes
    known = [lid for lid, (code, _qty) in codes.items() if code in entries or code in freq_codes]
    lines = tuple(Line(lid, *codes[lid], visit.lines[lid][1]) for lid in known)
    return Checkout(visit_id=e.visit_id, facility_id=o.facility_id, kind=o.kind,
                    opened_at=o.opened_at, closed_at=e.closed_at, opened_date=visit.opened_date,
                    service_date=d, dx3=audit.dx3_of(o.diagnoses), lines=lines)


def _raise(findings: Iterable[Finding], e: ev.VisitClosed | ev.PreSettlementRequested,
           facility_id: str, first: int) -> list[AuditFlagRaised]:
    """Findings as ``AuditFlagRaised`` outputs, ids continuing the checkout's sequence."""
    return [AuditFlagRaised(
        event_id=f"{e.event_id}/{first + i}", caused_by=e.event_id, person_id=e.person_id,
        visit_id=e.visit_id, rule=f.rule, severity=f.severity,  # type: ignore[arg-type]
        facility_id=facility_id, detail=f.detail, line_ids=list(f.line_ids),
        related_visit_id=f.related_visit_id, amount_fen=f.amount_fen)
        for i, f in enumerate(findings)]


def preview_of(settlement: list[OutputEvent]) -> ClaimPreviewed:
    """What a checkout's outputs would say, as one ``ClaimPreviewed``: the settlement's
    fields and its non-blocking flags as ``audit`` entries, in their emission order."""
    settled, *flags = settlement
    assert isinstance(settled, ClaimSettled)
    fields = {f: getattr(settled, f) for f in settled.__struct_fields__}
    audit = [
        AuditEntry(rule=f.rule, severity=f.severity, detail=f.detail, line_ids=f.line_ids,
                   related_visit_id=f.related_visit_id, amount_fen=f.amount_fen)
        for f in flags if isinstance(f, AuditFlagRaised) and f.severity != "block"
    ]
    return ClaimPreviewed(**fields, audit=audit)


def charges_mismatch(visit: Visit, total_fen: int | None, lines: int | None) -> str | None:
    """Step 0 check 9: the hospital's own bill, when it sends one, must be the visit's current
    lines. A checkout that overtook its last charge (two producers, two systems) is refused
    rather than settled short; the hospital sends the charges and closes again."""
    held_total = sum(amount for _cls, amount, _cap in visit.lines.values())
    held_lines = len(visit.lines)
    wrong = []
    if total_fen is not None and total_fen != held_total:
        wrong.append(f"charged_total_fen {total_fen} but the visit's lines total {held_total}")
    if lines is not None and lines != held_lines:
        wrong.append(f"charged_lines {lines} but the visit holds {held_lines} current lines")
    return "; ".join(wrong) if wrong else None


