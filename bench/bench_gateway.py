"""HTTP gateway benchmark (`make bench-gateway`): full visit flows at a constant offered rate.

wrk (a load generator yibao did not write) runs ``bench/gateway_flows.lua``: each flow is
four requests of a hospital — open the visit, upload charges, pre-settle, settle — each
with its own ``event_id``, the next one sent once the previous is answered. Requests are
paced per wrk thread at ``4 × --rate`` requests/s in all. Against them: ``yibao gateway
serve``, ``yibao worker`` and the broker, all on this machine. Settle latency is measured
by the script (send → answer, the pre-settle included in nothing); errors are non-2xx
answers, settles or pre-settles answered 202 (past the gateway's wait) and wrk timeouts.

Last line: ``gateway: <N> checkouts/s offered, settle p50 <A> ms, p99 <B> ms, errors <E>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from yibao.dev.testing import delete_topics_with_prefixes
from yibao.gateway.credentials import add_client
from yibao.gateway.process import free_port, spawn_gateway, wait_ready
from yibao.settings import Settings
from yibao.streams.publish import publish_lines
from yibao.streams.sequencer import read_books
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gateway_flows.lua"
THREADS = 2


def registrations(run: str, persons_per_thread: int) -> list[bytes]:
    """The persons the flows of ``run`` use: P-<run>-<thread>-<n>, employees with money on
    their personal account."""
    out = []
    for tid in range(1, THREADS + 1):
        for n in range(1, persons_per_thread + 1):
            pid = f"P-{run}-{tid}-{n}"
            out.append(json.dumps({
                "type": "PersonRegistered", "event_id": f"R-{pid}", "schema_version": 1,
                "occurred_at": "2025-01-01T08:00:00+08:00", "source": "bench",
                "person_id": pid, "household_id": f"H-{pid}", "scheme": "employee",
                "region": "500000", "birth_date": "1980-05-01", "sex": "F", "retired": False,
                "assistance": None, "effective_from": "2025-01-01",
                "personal_account_fen": 100_000}).encode())
    return out


def wait_sequenced(settings: Settings, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        books = asyncio.run(read_books(settings))
        if sum(c.read for c in books.values()) >= n:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not read {n} registrations in {timeout:g} s")


def run_wrk(url: str, run: str, token: str, rate: float, seconds: int, connections: int,
            dialect: str = "native") -> dict[str, float]:
    env = {**os.environ, "RATE": str(rate), "THREADS": str(THREADS), "RUN": run,
           "TOKEN": token, "DIALECT": dialect}
    cmd = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(SCRIPT), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"WRK-RESULT (.*)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    print(out.strip(), file=sys.stderr)
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="checkouts/s offered")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--dialect", choices=["native", "fhir", "national"], default="native",
                    help="how the flows are sent (fhir: pre-settle and settle as Claim/$submit)")
    args = ap.parse_args()
    bootstrap = Settings().bootstrap_servers
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-gw-{tag}."
    s = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=8)
    per_thread = math.ceil(args.rate * (args.seconds + 2) / THREADS * 1.5)
    warm_per_thread = math.ceil(args.rate * (args.warmup + 2) / THREADS * 1.5)
    runs = {"w" + tag: warm_per_thread, "m" + tag: per_thread}
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    asyncio.run(create_all(s))
    procs = []
    try:
        regs = [r for run, n in runs.items() for r in registrations(run, n)]
        asyncio.run(publish_lines(s, regs))
        worker = spawn(s, worker_id="bench", log_file=tmp / "worker.log")
        procs.append(worker)
        wait_sequenced(s, len(regs))
        token = add_client(tmp / "clients.json", "bench-hospital", "hospital", ("F-1",))
        port = free_port()
        gateway = spawn_gateway(s, port=port, clients=tmp / "clients.json",
                                index=tmp / "index.sqlite", log_file=tmp / "gateway.log")
        procs.append(gateway)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, gateway)
        if args.warmup:
            run_wrk(url, "w" + tag, token, args.rate, args.warmup, args.connections,
                    args.dialect)
        r = run_wrk(url, "m" + tag, token, args.rate, args.seconds, args.connections,
                    args.dialect)
        done = r["settles"] / r["duration_s"]
        errors = int(r["errors"] + r["unanswered"] + r["timeouts"])
        print(f"(wrk -t{THREADS} -c{args.connections} -d{args.seconds}s; {int(r['requests'])} "
              f"requests, {done:.0f} checkouts/s completed; logs in {tmp})")
        print(f"gateway{'' if args.dialect == 'native' else ' ' + args.dialect}: "
              f"{args.rate:g} checkouts/s offered, settle p50 {r['p50_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms, errors {errors}")
    finally:
        for p in reversed(procs):
            terminate(p)
        asyncio.run(delete_topics_with_prefixes(bootstrap, [prefix]))


if __name__ == "__main__":
    main()
