"""The gateway under load while its broker is stopped for 30 s (a broker of its own, so the
shared test broker is not disturbed): requests answer 503 or wait, a hospital retrying a 503
with the same request publishes nothing twice, and after the restart every accepted
request's answer can be fetched."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from yibao.dev.broker import BrokerConfig, LocalBroker, project_root
from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.gateway.credentials import add_client
from yibao.gateway.process import free_port, spawn_gateway, wait_ready
from yibao.settings import Settings
from yibao.streams.publish import export_topic
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

OUTAGE_S = 30.0


def _flow(n: int) -> list[tuple[str, dict[str, object]]]:
    pid, vid = f"P-O{n}", f"V-O{n}"
    return [("events", opened(pid, vid)),
            ("events", charged(pid, vid, [item("L1", amount=10_000 + n)])),
            ("presettle", envelope("PreSettlementRequested", pid, "2025-03-02T10:00:00+08:00",
                                   visit_id=vid, closed_at="2025-03-02T10:00:00+08:00")),
            ("settle", closed(pid, vid))]


@pytest.mark.timeout(420)
def test_a_broker_stopped_under_load(tmp_path: Path) -> None:
    base = Settings()
    config = BrokerConfig(host="127.0.0.1", port=free_port(), controller_port=free_port(),
                          home=tmp_path / "kafka", heap="512m",
                          libs=(base.kafka_libs or project_root() / "var" / "kafka" / "libs"
                                ).resolve())
    broker = LocalBroker(config)
    broker.up()
    s = Settings(bootstrap_servers=config.bootstrap, topic_prefix="outage.", partitions=2)
    procs = []
    try:
        asyncio.run(create_all(s))
        clients = tmp_path / "clients.json"
        hospital = add_client(clients, "h", "hospital", ("F-1",))
        bureau = add_client(clients, "b", "bureau", ())
        worker_log = tmp_path / "worker.log"
        procs.append(spawn(s, worker_id="o", log_file=worker_log))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(spawn_gateway(s, port=port, clients=clients, index=tmp_path / "i.sqlite",
                                   log_file=tmp_path / "gateway.log"))
        wait_ready(url, procs[-1])
        flows = 40
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bureau}"}) as c:
            for n in range(flows):
                assert c.post("/v1/events", json=registered(f"P-O{n}", f"H-O{n}")
                              ).status_code == 202
        statuses: Counter[int] = Counter()
        accepted: list[str] = []
        sent_ids: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30,
                              headers={"Authorization": f"Bearer {hospital}"}) as c:
                for n in range(flows):
                    for command, event in _flow(n):
                        sent_ids.append(str(event["event_id"]))
                        while not stop.is_set():  # a hospital retries a 503, same request
                            r = c.post(f"/v1/{command}?timeout=3", json=event)
                            statuses[r.status_code] += 1
                            if r.status_code in (200, 202):
                                accepted.append(str(event["event_id"]))
                                break
                            assert r.status_code == 503, r.text
                            time.sleep(0.5)
                    time.sleep(0.3)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(4)
        broker.down()
        time.sleep(OUTAGE_S)
        broker.up()
        restarts = 0
        deadline = time.monotonic() + 240
        while loader.is_alive() and time.monotonic() < deadline:
            if procs[0].poll() is not None:  # the worker gave up on the broker: its
                restarts += 1                # supervisor (here: the test) restarts it
                procs[0] = spawn(s, worker_id="o", log_file=worker_log)
            loader.join(timeout=1)
        stop.set()
        assert not loader.is_alive()
        if procs[0].poll() is not None:
            procs[0] = spawn(s, worker_id="o", log_file=worker_log)
        assert statuses[503] > 0, statuses  # the outage was seen
        assert len(set(accepted)) == flows * 4
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {hospital}"}) as c:
            for eid in accepted:
                r = c.get(f"/v1/outcomes/{eid}?timeout=30")
                assert r.status_code in (200, 202), r.text
                body = r.json()
                if body["type"] in ("VisitClosed", "PreSettlementRequested"):
                    assert body["status"] == "answered", body
                    assert body["answer"] in ("ClaimSettled", "ClaimPreviewed"), body
        ledger = tmp_path / "ledger.jsonl"
        with ledger.open("wb") as f:
            export_topic(s, s.topic_prefix + "ledger", f, timeout=60)
        ids = Counter(json.loads(line)["event_id"] for line in ledger.read_bytes().splitlines()
                      if line.strip())
        assert all(ids[e] == 1 for e in set(sent_ids)), [e for e in set(sent_ids) if ids[e] != 1]
    finally:
        for p in procs:
            terminate(p)
        broker.down()
