"""Backtest an audit rule change: the same ledger settled twice, under the rules in force
and under the candidate (another catalog, other thresholds), and what differs.

A flag is identified by what it says, not by its event id (ids shift when a flag appears
before it): the checkout that raised it, its rule, the lines and the related visit. A
block (``ClaimRejected AUDIT_BLOCK``) changes what follows — the visit stays open and its
later checkout is another one — so both runs fold the whole ledger rather than re-judging
each claim alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.schemas.events import AuditFlagRaised, ClaimRejected

FlagKey = tuple[str, str, tuple[str, ...], str | None]  # caused_by, rule, lines, related


@dataclass
class RuleChange:
    """Per rule and facility: flags (or blocks) that appear and disappear, and their money."""

    rule: str
    facility_id: str
    appeared: int = 0
    appeared_fen: int = 0
    disappeared: int = 0
    disappeared_fen: int = 0


@dataclass
class Backtest:
    flags_before: int = 0
    flags_after: int = 0
    blocks_before: int = 0
    blocks_after: int = 0
    changes: dict[tuple[str, str], RuleChange] = field(default_factory=dict)

    def rows(self) -> list[RuleChange]:
        return sorted(self.changes.values(), key=lambda c: (
            -(c.appeared_fen + c.disappeared_fen), c.rule, c.facility_id))


def audit_outputs(engine: Engine, ledger: Iterable[bytes]
                  ) -> tuple[dict[FlagKey, AuditFlagRaised], dict[str, str]]:
    """The flags of a fold of ``ledger`` by what they say, and the AUDIT_BLOCK refusals
    (checkout id -> facility of its first blocking flag)."""
    flags: dict[FlagKey, AuditFlagRaised] = {}
    blocks: dict[str, str] = {}
    for result in Fold(engine).run(ledger):
        if not isinstance(result, list):
            continue
        blocked = any(isinstance(o, ClaimRejected) and o.reason == "AUDIT_BLOCK" for o in result)
        for o in result:
            if isinstance(o, AuditFlagRaised):
                flags[(o.caused_by, o.rule, tuple(o.line_ids), o.related_visit_id)] = o
                if blocked:
                    blocks.setdefault(o.caused_by, o.facility_id or "")
    return flags, blocks


def backtest(current: Engine, candidate: Engine, ledger: list[bytes]) -> Backtest:
    """What ``candidate`` would raise and block on ``ledger`` that ``current`` does not, and
    the other way round, per rule and facility, with the money at risk."""
    before, blocks_before = audit_outputs(current, ledger)
    after, blocks_after = audit_outputs(candidate, ledger)
    out = Backtest(len(before), len(after), len(blocks_before), len(blocks_after))

    def change(rule: str, facility: str) -> RuleChange:
        return out.changes.setdefault((rule, facility), RuleChange(rule, facility))

    for key in after.keys() - before.keys():
        f = after[key]
        c = change(f.rule, f.facility_id or "")
        c.appeared += 1
        c.appeared_fen += f.amount_fen
    for key in before.keys() - after.keys():
        f = before[key]
        c = change(f.rule, f.facility_id or "")
        c.disappeared += 1
        c.disappeared_fen += f.amount_fen
    for checkout in blocks_after.keys() - blocks_before.keys():
        change("AUDIT_BLOCK", blocks_after[checkout]).appeared += 1
    for checkout in blocks_before.keys() - blocks_after.keys():
        change("AUDIT_BLOCK", blocks_before[checkout]).disappeared += 1
    return out


