"""Pre-settlement (settlement.md): the split a checkout would get now, with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yibao.rules.engine import Engine
from yibao.rules.fold import Fold
from yibao.rules.policy import load_policy
from yibao.schemas.codec import Codec
from yibao.schemas.events import ClaimPreviewed, ClaimSettled, PreviewRejected
from yibao.schemas.exceptions import SchemaError

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "examples" / "sample-events.jsonl"
PREVIEW_FIELDS = ("visit_id", "closed_at", "use_personal_account", "charged_total_fen",
                  "charged_lines")


def _run(lines: list[bytes]) -> list[Any]:
    fold = Fold(Engine(load_policy(None)))
    return [o for r in fold.run(lines) if isinstance(r, list) for o in r]


def _preview_request(close: dict[str, Any]) -> dict[str, Any]:
    return {"type": "PreSettlementRequested", "event_id": f"pre-{close['event_id']}",
            "schema_version": 1, "occurred_at": close["occurred_at"], "source": close["source"],
            "person_id": close["person_id"],
            **{k: close[k] for k in PREVIEW_FIELDS if k in close}}


def _valid(line: bytes) -> bool:
    try:
        Codec().decode(line)
    except SchemaError:
        return False
    return True


def _without(obj: Any, *names: str) -> dict[str, Any]:
    d = msgspec.to_builtins(obj)
    for n in names:
        d.pop(n, None)
    return d


def test_a_preview_just_before_each_checkout_is_that_checkout_and_changes_nothing() -> None:
    """Over the sample log (both policy versions, every rejection path): a pre-settlement
    inserted right before every VisitClosed (a) leaves every other output byte-identical, so
    no state moved, and (b) says exactly what the checkout then says — amounts,
    settlement_seq, trace, every field — or rejects with the checkout's reason."""
    settled, rejected = _check_previews(SAMPLE.read_bytes().splitlines())
    assert settled > 1000 and rejected > 50


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**31), households=st.integers(20, 80),
       bad_rate=st.sampled_from([0.0, 0.02]))
def test_property_a_preview_then_the_checkout_with_nothing_between_agree(
        seed: int, households: int, bad_rate: float) -> None:
    """The same over generated logs of any seed: every preview equals its checkout's amounts
    and settlement_seq (every field), and no other output changes."""
    import datetime as dt
    import tempfile

    from yibao.dev.generate import GenerateConfig, generate_to_path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        generate_to_path(GenerateConfig(households=households, seed=seed,
                                        start=dt.date(2025, 1, 1), end=dt.date(2025, 3, 31),
                                        bad_rate=bad_rate), str(path))
        settled, _rejected = _check_previews(path.read_bytes().splitlines())
    assert settled > 0


def _check_previews(raw: list[bytes]) -> tuple[int, int]:
    plain = _run(raw)
    with_previews: list[bytes] = []
    for line in raw:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("type") == "VisitClosed" and _valid(line):
            with_previews.append(json.dumps(_preview_request(event)).encode())
        with_previews.append(line)
    outs = _run(with_previews)
    previews = [o for o in outs if isinstance(o, ClaimPreviewed | PreviewRejected)]
    assert [msgspec.to_builtins(o) for o in outs if o not in previews] == [
        msgspec.to_builtins(o) for o in plain]
    by_cause = {o.caused_by: o for o in plain if o.event_id.endswith("/0")}
    settled = rejected = 0
    for p in previews:
        checkout = by_cause.get(p.caused_by.removeprefix("pre-"))
        if checkout is None:  # a repeated checkout (dropped as a duplicate): nothing to compare
            continue
        if isinstance(p, ClaimPreviewed):
            assert isinstance(checkout, ClaimSettled), (p, checkout)
            assert _without(p, "type", "event_id", "caused_by", "audit") == _without(
                checkout, "type", "event_id", "caused_by")
            settled += 1
        else:
            assert checkout.reason == p.reason and checkout.detail == p.detail
            rejected += 1
    return settled, rejected


def test_a_preview_lists_the_non_blocking_flags_the_checkout_raises() -> None:
    raw = SAMPLE.read_bytes().splitlines()
    lines: list[bytes] = []
    for line in raw:
        event = json.loads(line) if line.startswith(b"{") else None
        if isinstance(event, dict) and event.get("type") == "VisitClosed" and _valid(line):
            lines.append(json.dumps(_preview_request(event)).encode())
        lines.append(line)
    outs = _run(lines)
    flags: dict[str, list[str]] = {}
    for o in outs:
        if type(o).__name__ == "AuditFlagRaised":
            flags.setdefault(o.caused_by, []).append(o.rule)
    listed = {o.caused_by.removeprefix("pre-"): [a.rule for a in o.audit]
              for o in outs if isinstance(o, ClaimPreviewed)}
    assert any(listed.values())
    for cause, rules in listed.items():
        assert rules == flags.get(cause, []), cause
