"""Benchmark `yibao settle`: events/s on one core and peak RSS, for a generated log.

Runs settle in a child process (so its peak RSS is its own) over a log of at least
--events input events, generated once and cached under var/bench/. A second, half-sized log
of the same households over half the period shows how memory splits between what grows
with people (registrations, accounts, accumulators) and what grows with their visits (line
items are kept while a visit can still be refunded and re-settled). Last, the same log only
decoded by the contract's Codec: the ceiling of any per-core rate, since every event is
decoded and validated before a rule sees it. Prints figures; asserts nothing: targets are
judged by a person reading them, never by a timed test.

    make bench-settle            # or: .venv/bin/python bench/bench_settle.py --households 20000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
YIBAO = [sys.executable, "-m", "yibao"]


def generate(households: int, start: str, end: str, seed: int) -> Path:
    out = ROOT / "var" / "bench" / f"log-h{households}-s{seed}-{start}-{end}.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run(
            [
                *YIBAO,
                "generate",
                "--households",
                str(households),
                "--seed",
                str(seed),
                "--from",
                start,
                "--to",
                end,
                "-o",
                str(out),
            ],
            check=True,
        )
        print(f"generated {out.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return out


def settle(log: Path, jobs: int) -> tuple[int, float, float, str]:
    """Run settle in a fresh child: (events, seconds, peak RSS MiB, settle's own count line)."""
    code = (
        "import resource, sys\n"
        "from yibao.cli import main\n"
        "try:\n"
        "    main(['settle', sys.argv[1], '--jobs', sys.argv[2], '--deadletter', '/dev/null'],\n"
        "         standalone_mode=False)\n"
        "finally:\n"
        "    sys.stderr.write('RSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(log), str(jobs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, "YIBAO_LOG_FORMAT": "json"},
    )
    secs = time.perf_counter() - t
    rss = next(int(x.split()[1]) for x in proc.stderr.splitlines() if x.startswith("RSS "))
    line = next(x for x in proc.stderr.splitlines() if x.startswith("settle: read "))
    events = int(line.split("read ")[1].split(",")[0])
    return events, secs, rss / 1024, line


def decode_floor(log: Path) -> tuple[int, float]:
    """(events, seconds) to decode every line of ``log`` with the contract's own Codec and
    nothing else: the per-core rate file mode cannot pass whatever its rules cost."""
    from yibao.schemas.codec import Codec
    from yibao.schemas.exceptions import SchemaError

    lines = log.read_bytes().splitlines()
    decode = Codec().decode
    t = time.process_time()
    for line in lines:
        try:  # noqa: SIM105 - a try costs nothing per line, a context manager does
            decode(line)
        except SchemaError:  # the generator's malformed lines: settle dead-letters them
            pass
    return len(lines), time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--households", type=int, default=int(os.environ.get("BENCH_HOUSEHOLDS", 11000))
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=1,
                    help="settle --jobs (default 1: the per-core rate; with N, RSS is the parent's)")
    ap.add_argument("--from", dest="start", default="2025-01-01")
    ap.add_argument("--to", dest="end", default="2025-12-31")
    args = ap.parse_args()
    import datetime as dt

    d0, d1 = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    mid = (d0 + (d1 - d0) / 2).isoformat()
    small = generate(args.households, args.start, mid, args.seed)
    full = generate(args.households, args.start, args.end, args.seed)
    print(f"{'log':<44} {'events':>10} {'seconds':>8} {'events/s':>10} {'peak RSS MiB':>13}")
    results = []
    for log in (small, full):
        n, secs, rss, line = settle(log, args.jobs)
        results.append((n, secs, rss))
        print(f"{log.name:<44} {n:>10,} {secs:>8.2f} {n / secs:>10,.0f} {rss:>13.0f}")
        print(f"  {line}")
    (n1, _, r1), (n2, s2, r2) = results
    print(
        f"same {args.households:,} households: half period {n1:,} events {r1:.0f} MiB, "
        f"full period {n2:,} events {r2:.0f} MiB; marginal {((r2 - r1) / max(1, n2 - n1)) * 1e6:.0f}"
        f" bytes/event"
    )
    n3, s3 = decode_floor(full)
    print(f"decode alone (Codec.decode of every line, no rules, CPU time): {n3 / s3:,.0f} "
          f"events/s, {s3 / n3 * 1e6:.1f} µs an event; settle is {(n2 / s2) / (n3 / s3):.2f} of it")
    print(f"user CPU of children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.1f} s")
    print(f"settle: {n2 / s2:,.0f} events/s, peak RSS {r2:.0f} MiB")


if __name__ == "__main__":
    main()
