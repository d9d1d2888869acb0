"""`yibao settle --jobs N`: the fold split by household gives the one-process output byte
for byte (outputs, dead letters, counts), whatever the log: newborns treated before their
registration, family aid, an event id repeated by another person, a repeat beyond the
dedup window, malformed lines, standard input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

import yibao.cli.filemode as filemode
import yibao.cli.shards as shards
from yibao.cli import main as cli
from yibao.dev.generate import GenerateConfig, generate_to_path
from yibao.rules.shard import Router

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "examples"
WINDOW_MS = 7 * 86_400_000


def _line(**fields: object) -> bytes:
    return json.dumps({"type": "VisitOpened", "occurred_at": "2025-03-01T08:00:00+08:00",
                       **fields}).encode()


def _settle(tmp: Path, log: Path, jobs: int, *extra: str,
            stdin: bytes | None = None) -> tuple[str, str, str]:
    dl = tmp / f"dl-{jobs}-{len(extra)}"
    args = ["settle", "-" if stdin is not None else str(log), "--jobs", str(jobs),
            "--deadletter", str(dl), *extra]
    result = CliRunner().invoke(cli, args, input=stdin)
    assert result.exit_code == 0, result.output
    # Only the summary line: the pytest process may log unrelated warnings (an earlier
    # test's producer finalised by the collector) into the same captured stderr.
    summary = next(line for line in result.stderr.splitlines() if line.startswith("settle: read"))
    counts = summary.split(";")[0] + summary.split(";")[1].split("(")[0]
    return (hashlib.sha256(result.stdout_bytes).hexdigest(),
            hashlib.sha256(dl.read_bytes()).hexdigest(), counts)


@pytest.fixture
def shard_every_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard even a log of a few lines (the CLI folds small logs in one process)."""
    monkeypatch.setattr(filemode, "MIN_LINES_PER_JOB", 0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs") / "gen.jsonl"
    generate_to_path(GenerateConfig(households=300, seed=11, bad_rate=0.01), str(path))
    return path


@pytest.mark.usefixtures("shard_every_log")
@pytest.mark.parametrize("name", ["sample-events.jsonl", "worked-events.jsonl",
                                  "audit-split-admission-events.jsonl"])
def test_the_spec_examples_settle_the_same_in_any_number_of_processes(
        tmp_path: Path, name: str) -> None:
    log = SPEC / name
    one = _settle(tmp_path, log, 1)
    assert _settle(tmp_path, log, 2) == one
    assert _settle(tmp_path, log, 5) == one


@pytest.mark.usefixtures("shard_every_log")
def test_a_generated_log_with_malformed_and_repeated_lines_settles_the_same_sharded(
        tmp_path: Path, generated: Path) -> None:
    one = _settle(tmp_path, generated, 1)
    assert "dead-lettered 0" not in one[2] and "duplicates 0" not in one[2]
    assert _settle(tmp_path, generated, 2) == one
    assert _settle(tmp_path, generated, 3) == one
    assert _settle(tmp_path, generated, 3, stdin=generated.read_bytes()) == one


@pytest.mark.usefixtures("shard_every_log")
def test_repeats_beyond_the_dedup_window_agree_in_any_number_of_processes(
        tmp_path: Path, generated: Path) -> None:
    """With a one-day window, early events sent again weeks later in event time (some
    forgotten by the one fold, so settled again; some still remembered, so dropped) and a
    malformed copy: every shard keeps the whole log's window and the bytes agree."""
    lines = generated.read_bytes().splitlines(keepends=True)
    visits = [raw for raw in lines if b'"VisitOpened"' in raw or b'"ItemsCharged"' in raw]
    mixed = list(lines)
    rng = random.Random(5)
    for k, raw in enumerate(visits[:: max(1, len(visits) // 40)]):
        at = rng.randrange(len(mixed) // 3, len(mixed))
        mixed.insert(at, raw if k % 5 else raw.replace(b'"event_id"', b'"event_idx"'))
    mixed.append(visits[0])  # months later
    log = tmp_path / "late-repeats.jsonl"
    log.write_bytes(b"".join(mixed))
    router = Router(86_400_000)
    for raw in log.read_bytes().splitlines():
        router.add(raw)
    assert not router.window_safe
    one = _settle(tmp_path, log, 1, "--dedup-window-days", "1")
    result = CliRunner().invoke(cli, ["settle", str(log), "--jobs", "2", "--deadletter",
                                      str(tmp_path / "dl"), "--dedup-window-days", "1"])
    assert "keeps the whole log's dedup window" in result.stderr
    assert _settle(tmp_path, log, 2, "--dedup-window-days", "1") == one
    assert _settle(tmp_path, log, 3, "--dedup-window-days", "1") == one


def _visit_opened(event_id: str, person_id: str, at: str) -> bytes:
    return json.dumps({
        "type": "VisitOpened", "event_id": event_id, "schema_version": 1, "occurred_at": at,
        "source": "gw-500112-13", "person_id": person_id, "visit_id": f"V-{event_id}",
        "facility_id": "F50011231", "facility_level": 3, "facility_region": "500112",
        "kind": "outpatient", "opened_at": at, "diagnoses": ["J20.9"],
        "special_disease_code": None}).encode() + b"\n"


@pytest.mark.usefixtures("shard_every_log")
def test_a_shard_forgets_an_id_when_the_whole_log_has_moved_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Person A's event, then B's a day and an hour later, then A's event again: the one
    fold has forgotten A's id (its newest event is B's) and folds the repeat; A's shard
    alone would still remember it. Each shard passes the other's ids through its window."""
    lines = [_visit_opened("E1", "PA", "2025-03-01T10:00:00+08:00"),
             _visit_opened("E2", "PD", "2025-03-02T11:00:00+08:00"),
             _visit_opened("E1", "PA", "2025-03-01T10:00:00+08:00")]
    router = Router(86_400_000)
    for raw in lines:
        router.add(raw)
    assert not router.window_safe
    assert len(set(router.shards(2))) == 2  # A and B in shards of their own
    log = tmp_path / "two-persons.jsonl"
    log.write_bytes(b"".join(lines))
    one = _settle(tmp_path, log, 1, "--dedup-window-days", "1")
    assert "duplicates 0" in one[2]
    assert _settle(tmp_path, log, 2, "--dedup-window-days", "1") == one
    monkeypatch.setattr(shards, "pass_through_window", lambda fold, raw: None)
    assert "duplicates 1" in _settle(tmp_path, log, 2, "--dedup-window-days", "1")[2]


def test_a_newborn_treated_before_registration_goes_with_the_household() -> None:
    router = Router(WINDOW_MS)
    router.add(_line(event_id="e1", person_id="BABY"))
    router.add(_line(event_id="e2", person_id="MOTHER", type="PersonRegistered",
                     household_id="H1"))
    for n in range(50):
        router.add(_line(event_id=f"x{n}", person_id=f"OTHER{n}"))
    router.add(_line(event_id="e3", person_id="BABY", type="PersonRegistered",
                     household_id="H1"))
    for jobs in (2, 3, 7):
        shards = router.shards(jobs)
        assert shards[0] == shards[1] == shards[52]
        assert len(set(shards)) > 1  # the others spread


def test_family_aid_and_a_shared_event_id_join_persons_into_one_shard() -> None:
    router = Router(WINDOW_MS)
    router.add(_line(event_id="a1", person_id="PAYER", type="FamilyAidAuthorized",
                     beneficiary_id="CHILD"))
    router.add(_line(event_id="b1", person_id="CHILD"))
    router.add(_line(event_id="same", person_id="P1"))
    router.add(_line(event_id="same", person_id="P2"))  # a repeat: no effect, whoever's
    router.add(b"not json at all")
    router.add(b'{"type": "VisitOpened"}')
    for n in range(50):
        router.add(_line(event_id=f"x{n}", person_id=f"OTHER{n}"))
    assert router.window_safe
    for jobs in (2, 4):
        shards = router.shards(jobs)
        assert shards[0] == shards[1]
        assert shards[2] == shards[3]
        assert shards[4] == shards[5] == 0  # junk: dead-lettered wherever it goes
    with pytest.raises(ValueError, match="n must be within"):
        router.shards(0)
