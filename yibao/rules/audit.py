"""Intelligent fund audit: cheap, explainable flags raised beside a settlement.

Flags never change money; they are ``AuditFlagRaised`` outputs a bureau's auditors triage.
"""

from __future__ import annotations

from yibao.schemas.events import AuditFlagRaised, ClaimSettled

#: A general outpatient claim above this total (fen) is unusual enough to look at.
LARGE_OUTPATIENT_FEN = 500_000
#: Class C (fully self-paid) share above which a claim may be shifting cost to patients.
SELF_PAY_SHARE_BP = 5000


def flags(
    s: ClaimSettled, filed: bool, oop: int, caused_by: str, first_index: int
) -> list[AuditFlagRaised]:
    out: list[AuditFlagRaised] = []
    a = s.amounts

    def flag(rule: str, severity: str, detail: str) -> None:
        out.append(
            AuditFlagRaised(
                event_id=f"{caused_by}/{first_index + len(out)}",
                caused_by=caused_by,
                person_id=s.person_id,
                visit_id=s.visit_id,
                rule=rule,
                severity=severity,  # type: ignore[arg-type]
                facility_id=s.facility_id,
                detail=detail,
                line_ids=[],
                related_visit_id=None,
                amount_fen=a.basic_fund + a.major_illness + a.assistance,
            )
        )

    if s.kind in ("outpatient", "outpatient_chronic") and a.total > LARGE_OUTPATIENT_FEN:
        flag(
            "LARGE_OUTPATIENT_CLAIM",
            "warn",
            f"outpatient total {a.total} fen > {LARGE_OUTPATIENT_FEN}",
        )
    if s.cross_province and not filed:
        flag(
            "CROSS_PROVINCE_UNFILED",
            "info",
            f"treated in {s.treatment_region}, insured in {s.insured_region}, no filing",
        )
    if a.total > 0 and a.self_pay_full * 10000 > a.total * SELF_PAY_SHARE_BP:
        flag("HIGH_SELF_PAY_SHARE", "info", f"class C {a.self_pay_full} of total {a.total} fen")
    if a.major_illness + a.assistance > oop or a.personal_account < 0:
        flag(
            "ASSISTANCE_ABOVE_OUT_OF_POCKET",
            "warn",
            f"major illness {a.major_illness} + assistance {a.assistance} > compliant "
            f"out-of-pocket {oop}; personal account {a.personal_account} (negative assistance "
            "deductible remainder after a category change)",
        )
    return out
