"""`yibao audit backtest`: what a catalog or threshold change would raise and block."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from click.testing import CliRunner

from yibao.cli import main as cli
from yibao.rules.audit import DEFAULTS
from yibao.rules.backtest import backtest
from yibao.rules.catalog import parse_catalog
from yibao.rules.engine import Engine
from yibao.rules.policy import load_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"


def _log(name: str) -> list[bytes]:
    return [ln for ln in (EXAMPLES / f"{name}-events.jsonl").read_bytes().splitlines()
            if ln.strip()]


def test_a_wider_split_admission_window_shows_the_readmissions_it_would_add() -> None:
    policy = load_policy()
    ledger = _log("audit-split-admission")
    same = backtest(Engine(policy), Engine(policy), ledger)
    assert same.changes == {} and same.flags_before == same.flags_after > 0
    wider = backtest(Engine(policy),
                     Engine(policy, thresholds=dataclasses.replace(DEFAULTS,
                                                                   split_admission_days=16)),
                     ledger)
    rows = wider.rows()
    assert rows and all(r.rule == "SPLIT_ADMISSION" and r.disappeared == 0 for r in rows)
    assert sum(r.appeared for r in rows) == wider.flags_after - wider.flags_before
    assert all(r.appeared_fen > 0 for r in rows)


def test_a_catalog_without_the_restrictions_lifts_the_block() -> None:
    import datetime as dt

    policy = load_policy()
    ledger = _log("audit-catalog-block")
    lenient = parse_catalog({"version": [{"id": "x", "effective_from": dt.date(2020, 1, 1),
                                          "entries": {}}]})
    result = backtest(Engine(policy), Engine(policy, lenient), ledger)
    assert (result.blocks_before, result.blocks_after) == (1, 0)
    gone = {(r.rule, r.disappeared) for r in result.rows() if r.disappeared}
    assert ("AUDIT_BLOCK", 1) in gone and ("CARE_SETTING", 1) in gone
    assert ("FACILITY_LEVEL", 1) in gone


def test_the_command_over_a_log(tmp_path: Path) -> None:
    catalog = tmp_path / "lenient.toml"
    catalog.write_text('[[version]]\nid = "x"\neffective_from = 2020-01-01\n[version.entries]\n')
    out = tmp_path / "bt.csv"
    r = CliRunner().invoke(cli, ["audit", "backtest", "--catalog", str(catalog), "--events",
                                 str(EXAMPLES / "audit-catalog-block-events.jsonl"),
                                 "--csv", str(out)])
    assert r.exit_code == 0, r.output
    assert "blocks 1 -> 0" in r.output
    assert out.read_text().splitlines()[0] == ("rule,facility_id,appeared,appeared_fen,"
                                               "disappeared,disappeared_fen")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[version]]\nid = "x"\neffective_from = 2020-01-01\n'
                   '[version.entries.A]\nname = "a"\nmin_level = 7\n')
    r = CliRunner().invoke(cli, ["audit", "backtest", "--catalog", str(bad), "--events",
                                 str(EXAMPLES / "audit-catalog-block-events.jsonl")])
    assert r.exit_code != 0 and "version[x].entries.A.min_level" in r.output
