"""Policy as data: defaults per settlement.md, inheritance, region overrides, clear errors."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from yibao.rules.exceptions import PolicyError
from yibao.rules.policy import load_policy, parse_policy

NATIONAL = Path(__file__).resolve().parents[1] / "yibao" / "rules" / "national.toml"


def doc() -> dict:
    return tomllib.loads(NATIONAL.read_text())


def test_default_versions_and_inheritance() -> None:
    p = load_policy()
    assert [v.id for v in p.versions] == ["2020", "2025"]
    assert p.version_index(dt.date(2019, 12, 31)) == -1
    assert p.versions[p.version_index(dt.date(2024, 12, 31))].id == "2020"
    v2020, v2025 = p.versions
    assert v2020.scheme["resident"].outpatient_cap == 30000
    assert v2025.scheme["resident"].outpatient_cap == 50000
    assert v2025.scheme["employee"] == v2020.scheme["employee"]
    assert "HEMOPHILIA" not in v2020.special_diseases
    assert v2025.special_diseases["HEMOPHILIA"].limit == 8000000
    assert v2025.special_diseases["DIALYSIS"].limit is None


def test_region_override_applies_only_to_its_region(tmp_path: Path) -> None:
    d = doc()
    d["override"] = [
        {
            "region": "500000",
            "versions": ["2025"],
            "scheme": {"resident": {"outpatient_cap": 70000}},
        },
        {"region": "500112", "scheme": {"resident": {"outpatient_cap": 90000}}},
    ]
    p = parse_policy(d)
    i2025 = p.version_index(dt.date(2025, 6, 1))
    assert p.for_region("500101", i2025).scheme["resident"].outpatient_cap == 70000  # province
    assert p.for_region("500112", i2025).scheme["resident"].outpatient_cap == 90000  # exact wins
    assert p.for_region("110000", i2025).scheme["resident"].outpatient_cap == 50000
    assert p.for_region("500101", 0).scheme["resident"].outpatient_cap == 30000  # 2020 untouched


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            lambda d: d["version"][0]["scheme"]["employee"].update(outpatient_cap=-1),
            "version[2020].scheme.employee.outpatient_cap",
        ),
        (
            lambda d: d["version"][0]["scheme"]["employee"].update(outpatient_capp=1),
            "outpatient_capp",
        ),
        (
            lambda d: d["version"][0]["scheme"]["resident"].update(inpatient_rate=[1, 2]),
            "inpatient_rate",
        ),
        (lambda d: d["version"][1].update(inherits="1999"), "inherits"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(override=[{"region": "5000", "scheme": {}}]), "override[0].region"),
        (
            lambda d: d.update(
                override=[{"region": "500000", "scheme": {"resident": {"chronic_rate": 20000}}}]
            ),
            "override[500000]",
        ),
    ],
)
def test_bad_policy_names_key_and_value(patch, message: str) -> None:  # type: ignore[no-untyped-def]
    d = doc()
    patch(d)
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(d)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)


def test_settle_with_a_regional_override_changes_only_that_region(tmp_path: Path) -> None:
    """`yibao settle --policy`: Chongqing raises the resident inpatient rate at level 2."""
    import json

    from click.testing import CliRunner

    from yibao.cli import main

    examples = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
    if not examples.exists():
        pytest.skip("spec examples not found")
    policy = tmp_path / "cq.toml"
    policy.write_text(
        NATIONAL.read_text()
        + '\n[[override]]\nregion = "500000"\nversions = ["2025"]\n'
        + "scheme.resident.inpatient_rate = [8500, 8000, 6000]\n"
    )
    runner = CliRunner()
    base = runner.invoke(main, ["settle", str(examples / "worked-events.jsonl")])
    what_if = runner.invoke(main, ["settle", str(examples / "worked-events.jsonl"), "--policy", str(policy)])
    assert base.exit_code == 0 and what_if.exit_code == 0, what_if.output
    first = json.loads(what_if.stdout.splitlines()[0])
    assert first["amounts"]["basic_fund"] == 3040000  # pct(3,800,000 fen, 80%) instead of 75%
    assert base.stdout.splitlines()[3:] == what_if.stdout.splitlines()[3:]  # EMP-1's claims unchanged
    bad = tmp_path / "bad.toml"
    bad.write_text(NATIONAL.read_text().replace("outpatient_cap = 300000", "outpatient_cap = -5"))
    result = runner.invoke(main, ["settle", str(examples / "worked-events.jsonl"), "--policy", str(bad)])
    assert result.exit_code == 2 and "outpatient_cap" in result.output
