"""The fund audit end to end on the real broker: a generated log with audit patterns
(restricted codes, readmissions, repeat tests, doctor shopping, group admissions ...)
through one worker running all three stages gives file mode's outputs, tier-A flags and
AUDIT_BLOCK rejections included, and the tier-B stage raises the facility flags that
`yibao audit facilities` finds in the same settlements."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_pipeline_kafka import FAST, assert_same_outputs, publish, read, settle, wait_for

from yibao.cli import main as cli
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.settings import Settings
from yibao.streams.publish import read_topic
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

pytestmark = pytest.mark.kafka
PARTITIONS = 4


@pytest.mark.timeout(240)
def test_a_generated_log_with_audit_patterns_settles_live_as_in_file_mode(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    s = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=unique_prefix,
                 partitions=PARTITIONS)
    path = tmp_path / "log.jsonl"
    generate_to_path(GenerateConfig(households=400, seed=5, start=dt.date(2025, 1, 1),
                                    end=dt.date(2025, 4, 30), bad_rate=0.0), str(path))
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    expected = settle(lines, tmp_path)
    rules = Counter(o["rule"] for o in expected if o["type"] == "AuditFlagRaised")
    blocks = [o for o in expected
              if o["type"] == "ClaimRejected" and o["reason"] == "AUDIT_BLOCK"]
    assert len(rules) >= 6 and blocks, (rules, len(blocks))  # the patterns are there

    asyncio.run(create_all(s))
    publish(s, lines)
    log = tmp_path / "worker.log"
    proc = spawn(s, worker_id="a", log_file=log,
                 env={**FAST, "YIBAO_STAGES": "sequencer,processor,audit"})
    try:
        live = wait_for(s, len(expected), [proc], [log], timeout=150)
        assert_same_outputs(live, expected)  # every flag, block and settlement, every field
        assert Counter(o["rule"] for o in live if o["type"] == "AuditFlagRaised") == rules

        # tier B over the live settlements, in the order of their partitions
        records = asyncio.run(read_topic(s, s.topic_prefix + "settlements"))
        src = tmp_path / "settlements.jsonl"
        src.write_bytes(b"".join(v + b"\n" for _p, _o, _k, v in records))
        res = CliRunner().invoke(cli, ["audit", "facilities", str(src),
                                       "--partitions", str(PARTITIONS)])
        assert res.exit_code == 0, res.output
        want = sorted(res.stdout.splitlines())
        assert want, "the generated group admissions and spikes raise facility flags"
        got: list[dict[str, object]] = []
        for _ in range(60):
            got = read(s, "audit")
            if len(got) >= len(want):
                break
            asyncio.run(asyncio.sleep(0.5))
    finally:
        terminate(proc)
    assert sorted(json.dumps(f, separators=(",", ":")) for f in got) == sorted(
        json.dumps(json.loads(w), separators=(",", ":")) for w in want)
