"""The spec's worked and sample logs, through the CLI, compared on the listed fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from yibao.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"


def _settle(path: Path, *extra: str) -> tuple[list[dict], str]:
    result = CliRunner().invoke(main, ["settle", str(path), *extra])
    assert result.exit_code == 0, result.output
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return outputs, result.stderr


@pytest.mark.parametrize("name", ["worked", "sample"])
def test_example_log_reproduces_expected_outputs(name: str) -> None:
    events = EXAMPLES / f"{name}-events.jsonl"
    if not events.exists():
        pytest.skip(f"spec examples not found at {EXAMPLES}")
    expected = [
        json.loads(x) for x in (EXAMPLES / f"{name}-expected.jsonl").read_text().splitlines()
    ]
    outputs, _ = _settle(events)
    compared = [o for o in outputs if o["type"] != "AuditFlagRaised"]
    assert len(compared) == len(expected)
    for i, (got, want) in enumerate(zip(compared, expected, strict=True)):
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not diff, f"output {i} ({want['type']} caused by {want['caused_by']}): {diff}"


@pytest.mark.parametrize("name", ["audit-charges-presettle", "audit-catalog-block",
                                  "audit-split-admission"])
def test_audit_example_reproduces_expected_outputs_flags_included(name: str) -> None:
    """In the audit-* examples the flags are listed too, with their event ids (the emission
    order); every expected record must be there, in order, with its listed fields."""
    events = EXAMPLES / f"{name}-events.jsonl"
    expected = [json.loads(x) for x in (EXAMPLES / f"{name}-expected.jsonl").read_text().splitlines()]
    outputs, _ = _settle(events)
    assert [(o["type"], o["caused_by"]) for o in outputs] == [
        (e["type"], e["caused_by"]) for e in expected]
    for got, want in zip(outputs, expected, strict=True):
        if "audit" in got:  # a preview's entries: their detail is free text, not listed
            got = {**got, "audit": [{k: v for k, v in a.items() if k != "detail"}
                                    for a in got["audit"]]}
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not diff, f"{want['type']} caused by {want['caused_by']}: {diff}"


def test_checked_bills_and_previews_of_the_audit_example() -> None:
    """The records of audit-charges-presettle that need no tier-A rule: checked bills
    (CHARGES_MISMATCH on previews and checkouts), previews before and after a settlement,
    a refund and a second settlement."""
    expected = [json.loads(x) for x in
                (EXAMPLES / "audit-charges-presettle-expected.jsonl").read_text().splitlines()]
    outputs, _ = _settle(EXAMPLES / "audit-charges-presettle-events.jsonl")
    got = {(o["type"], o["caused_by"]): o for o in outputs}
    checked = 0
    for want in expected:
        if want["type"] == "AuditFlagRaised" or want.get("reason") == "AUDIT_BLOCK" or want.get("audit"):
            continue  # tier A
        o = got[(want["type"], want["caused_by"])]
        assert {k: o.get(k) for k in want} == want
        checked += 1
    assert checked >= 9


def test_outputs_carry_deterministic_ids_and_traces() -> None:
    outputs, _ = _settle(EXAMPLES / "worked-events.jsonl")
    ids = [o["event_id"] for o in outputs]
    assert len(set(ids)) == len(ids)
    assert all(o["event_id"].startswith(o["caused_by"] + "/") for o in outputs)
    settled = [o for o in outputs if o["type"] == "ClaimSettled"]
    assert all(
        {t["step"] for t in s["trace"]} >= {"lines", "basic_fund", "accounts"} for s in settled
    )
    # The trace alone recomputes the first worked case: fund = pct(38,500 - 500 yuan, 75%).
    fund_step = next(t["detail"] for t in settled[0]["trace"] if t["step"] == "basic_fund")
    assert "pct(3800000, 7500) = 2850000" in fund_step


def test_malformed_lines_are_dead_lettered_and_change_nothing_else(tmp_path: Path) -> None:
    source = (EXAMPLES / "worked-events.jsonl").read_bytes().splitlines(keepends=True)
    bad = [
        b'{"type": "VisitClosed", "event_id": "b1"\n',  # truncated
        b"\xff\xfe not utf-8\n",  # invalid bytes
        b'{"type": "Nope", "event_id": "b2"}\n',  # unknown type
        source[6].replace(b'"amount_fen": 100', b'"amount_fen": -100'),  # negative money
        source[4].replace(b'"amount_fen": 3000000', b'"amount_fen": 3000001'),
        source[3].replace(b'"kind": "inpatient"', b'"kind": "outpatient_special"'),
    ]
    mixed = []
    for i, line in enumerate(source):
        mixed.append(line)
        if i < len(bad):
            mixed.append(bad[i])
    log = tmp_path / "mixed.jsonl"
    log.write_bytes(b"".join(mixed))
    dead = tmp_path / "dead.jsonl"
    clean, _ = _settle(EXAMPLES / "worked-events.jsonl")
    got, stderr = _settle(log, "--deadletter", str(dead))
    assert got == clean
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert [d["line"] for d in letters] == [2, 4, 6, 8, 10, 12]
    errors = [d["error"] for d in letters]
    assert "truncated" in errors[0]
    assert "raw_base64" in letters[1]
    assert "$.type" in errors[2]
    assert "$.amount_fen" in errors[3]
    assert "$.items[0]" in errors[4] and "amount_fen" in errors[4]
    assert "special_disease_code" in errors[5]
    assert "dead-lettered 6" in stderr and "read 23" in stderr


def test_unreadable_input_exits_nonzero(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["settle", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0


def test_generated_log_dead_letters_exactly_its_malformed_lines(tmp_path: Path) -> None:
    """Every malformed line of a generated log is dead-lettered with a reason naming a field,
    and removing them changes no other output."""
    import datetime as dt
    import io

    from yibao.dev.generate import GenerateConfig, generate

    buf = io.BytesIO()
    stats = generate(GenerateConfig(households=150, seed=11, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 6, 30), bad_rate=0.01), buf)
    lines = buf.getvalue().splitlines(keepends=True)
    assert stats.malformed > 20
    full, clean = tmp_path / "full.jsonl", tmp_path / "clean.jsonl"
    full.write_bytes(b"".join(lines))
    bad = set(stats.bad_lines)
    clean.write_bytes(b"".join(x for i, x in enumerate(lines) if i not in bad))
    dead = tmp_path / "dead.jsonl"
    got, stderr = _settle(full, "--deadletter", str(dead))
    want, _ = _settle(clean)
    assert got == want
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert sorted(d["line"] - 1 for d in letters) == sorted(bad)
    for d in letters:
        assert d["error"] and d["path"], d
        assert "`" in d["error"] or d["error"].startswith("not valid JSON"), d
    assert f"dead-lettered {stats.malformed}" in stderr
