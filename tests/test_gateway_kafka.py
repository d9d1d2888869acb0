"""The HTTP gateway through a real server (uvicorn in its own process), a real client
(httpx), a real worker and the real broker: gateway.md's native API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_pipeline_kafka import settle

from yibao.dev.events import charged, closed, envelope, item, opened, registered
from yibao.gateway.credentials import add_client
from yibao.gateway.process import free_port, spawn_gateway, wait_ready
from yibao.settings import Settings
from yibao.streams.kafka.options import client_options
from yibao.streams.topics import create_all
from yibao.streams.worker import spawn, terminate

PARTITIONS = 2


@dataclass
class Stack:
    settings: Settings
    url: str
    keys: dict[str, str]
    tmp: Path
    clients: Path
    index: Path
    gateway: Any
    worker: Any
    worker_metrics: str = ""

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=40)

    def restart_gateway(self, index: Path | None = None) -> None:
        terminate(self.gateway)
        self.index = index or self.index
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = spawn_gateway(self.settings, port=port, clients=self.clients,
                                     index=self.index, log_file=self.tmp / "gateway.log")
        wait_ready(self.url, self.gateway)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from yibao.dev import testing

    tmp = tmp_path_factory.mktemp("gateway")
    s = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=testing.unique_prefix(),
                 partitions=PARTITIONS)
    asyncio.run(create_all(s))
    clients = tmp / "clients.json"
    keys = {
        "h1": add_client(clients, "hospital-1", "hospital", ("F-1", "F-2")),
        "h3": add_client(clients, "hospital-3", "hospital", ("F-3",)),
        "bureau": add_client(clients, "bureau", "bureau", ()),
    }
    metrics_port = free_port()
    worker = spawn(s, worker_id="g", log_file=tmp / "worker.log",
                   env={"YIBAO_METRICS_PORT": str(metrics_port)})
    port = free_port()
    gw = spawn_gateway(s, port=port, clients=clients, index=tmp / "index.sqlite",
                       log_file=tmp / "gateway.log")
    st = Stack(s, f"http://127.0.0.1:{port}", keys, tmp, clients, tmp / "index.sqlite", gw,
               worker, f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        wait_ready(st.url, gw)
        yield st
    finally:
        terminate(st.gateway)
        terminate(worker)


def _count(settings: Settings, short: str) -> int:
    async def run() -> int:
        c = AIOKafkaConsumer(**client_options(settings), group_id=None)
        await c.start()
        try:
            tps = [TopicPartition(settings.topic_prefix + short, p) for p in range(PARTITIONS)]
            end = await c.end_offsets(tps)
            return sum(end.values())
        finally:
            await c.stop()
    return asyncio.run(run())


def _presettle(person: str, visit: str, closed_at: str = "2025-03-02T10:00:00+08:00"
               ) -> dict[str, Any]:
    return envelope("PreSettlementRequested", person, closed_at, visit_id=visit,
                    closed_at=closed_at)


def test_a_visit_through_the_gateway_equals_file_mode(stack: Stack) -> None:
    """Register (bureau), open, charge, pre-settle, settle (hospital): the answers are the
    pipeline's, equal to `yibao settle` of the same events; the pre-settlement shows the
    settlement's amounts and settlement_seq before it happens."""
    reg = registered("P-G1", "H-G1", scheme="employee", balance=50_000)
    care = [opened("P-G1", "V-G1"), charged("P-G1", "V-G1", [item("L1", amount=80_000),
                                                          item("L2", cls="B", amount=20_000)])]
    pre = _presettle("P-G1", "V-G1")
    close = closed("P-G1", "V-G1")
    with stack.client("bureau") as bureau, stack.client("h1") as h1:
        r = bureau.post("/v1/events", json=reg)
        assert r.status_code == 202 and r.json()["status"] == "published", r.text
        for e in care:
            r = h1.post("/v1/events", json=e)
            assert r.status_code == 202, r.text
        preview = h1.post("/v1/presettle", json=pre)
        settled = h1.post("/v1/settle", json=close)
    assert preview.status_code == 200, preview.text
    assert preview.json()["answer"] == "ClaimPreviewed"
    assert settled.status_code == 200, settled.text
    body = settled.json()
    assert body["answer"] == "ClaimSettled" and body["status"] == "answered"
    claim = body["outputs"][0]
    shown = preview.json()["outputs"][0]
    assert shown["amounts"] == claim["amounts"]
    assert shown["settlement_seq"] == claim["settlement_seq"]
    expected = settle([json.dumps(e).encode() for e in [reg, *care, pre, close]], stack.tmp)
    assert [o for o in expected if o["caused_by"] == close["event_id"]] == body["outputs"]
    assert [o for o in expected if o["caused_by"] == pre["event_id"]] == preview.json()["outputs"]


def test_retries_are_idempotent_and_a_changed_body_conflicts(stack: Stack) -> None:
    reg = registered("P-G2", "H-G2", balance=0)
    visit = [opened("P-G2", "V-G2"), charged("P-G2", "V-G2", [item("L1", amount=30_000)])]
    close = closed("P-G2", "V-G2")
    with stack.client("bureau") as bureau, stack.client("h1") as h1:
        bureau.post("/v1/events", json=reg)
        for e in visit:
            h1.post("/v1/events", json=e)
        first = h1.post("/v1/settle", json=close)
        assert first.status_code == 200, first.text
        care_before = _count(stack.settings, "care")
        again = h1.post("/v1/settle", content=json.dumps(close, indent=2))  # other whitespace
        assert again.status_code == 200 and again.json() == first.json()
        assert _count(stack.settings, "care") == care_before  # nothing new published
        changed = h1.post("/v1/settle", json={**close, "use_personal_account": False})
        assert changed.status_code == 409 and changed.json()["path"] == "$.event_id"
        # across a restart (same index file) and on another instance (its own, new index)
        stack.restart_gateway()
        with stack.client("h1") as h1b:
            assert h1b.post("/v1/settle", json=close).json() == first.json()
        stack.restart_gateway(stack.tmp / "other-instance.sqlite")
        with stack.client("h1") as h1c:
            assert h1c.post("/v1/settle", json=close).json() == first.json()
            got = h1c.get(f"/v1/outcomes/{close['event_id']}")
            assert got.status_code == 200 and got.json()["outputs"] == first.json()["outputs"]
            assert h1c.post("/v1/settle", json={**close, "use_personal_account": False}
                            ).status_code == 409
        assert _count(stack.settings, "care") == care_before
    assert _occurrences(stack.settings, "ledger", close["event_id"]) == 1


def _occurrences(settings: Settings, short: str, event_id: str) -> int:
    """How many records of a topic are the event ``event_id`` (read to the end)."""
    async def run() -> int:
        c = AIOKafkaConsumer(**client_options(settings), group_id=None,
                             isolation_level="read_committed", auto_offset_reset="earliest")
        await c.start()
        try:
            tps = [TopicPartition(settings.topic_prefix + short, p) for p in range(PARTITIONS)]
            c.assign(tps)
            end = await c.end_offsets(tps)
            n = 0
            needle = f'"event_id":"{event_id}"'.encode()
            while [tp for tp in tps if await c.position(tp) < end[tp]]:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    n += sum(1 for r in recs if needle in r.value)
            return n
        finally:
            await c.stop()
    return asyncio.run(run())


def test_bad_requests_get_4xx_and_publish_nothing(stack: Stack) -> None:
    reg = registered("P-G3", "H-G3", balance=0)
    with stack.client("bureau") as bureau:
        assert bureau.post("/v1/events", json=reg).status_code == 202
    with stack.client("h1") as h1:
        assert h1.post("/v1/events", json=opened("P-G3", "V-G3")).status_code == 202
    before = {t: _count(stack.settings, t) for t in ("registrations", "care", "reviews")}
    bad_item = charged("P-G3", "V-G3", [item("L1", amount=100)])
    bad_item["items"][0]["quantity"] = 0
    with stack.client("h1") as h1, stack.client("h3") as h3, stack.client(None) as anon:
        r = h1.post("/v1/events", json=bad_item)
        assert r.status_code == 422 and r.json()["path"] == "$.items[0].quantity", r.text
        r = h1.post("/v1/events", content=b"{not json")
        assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
        r = h1.post("/v1/settle", json=charged("P-G3", "V-G3", [item("L1")]))
        assert r.status_code == 422 and r.json()["path"] == "$.type"
        r = h1.post("/v1/events", json=registered("P-G4", "H-G4"))  # a hospital registering
        assert r.status_code == 403 and "registrations" in r.json()["error"]
        r = h3.post("/v1/events", json=charged("P-G3", "V-G3", [item("L1")]))  # not its visit
        assert r.status_code == 403 and r.json()["path"] == "$.visit_id"
        r = h3.post("/v1/events", json=opened("P-G3", "V-G3b"))  # F-1 is not h3's
        assert r.status_code == 403 and r.json()["path"] == "$.facility_id"
        r = anon.post("/v1/events", json=charged("P-G3", "V-G3", [item("L1")]))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = h1.post("/v1/settle?timeout=99", json=closed("P-G3", "V-G3"))
        assert r.status_code == 422 and r.json()["path"] == "timeout"
        r = h1.post("/v1/events", json={**opened("P-G3", "V-G3c"), "ward": "7"})  # unknown field
        assert r.status_code == 422 and "ward" in r.json()["error"]
        r = h1.post("/v1/events", json={**opened("P-G3", "V-G3c"), "facility_level": "two"})
        assert r.status_code == 422 and r.json()["path"] == "$.facility_level"
        big = {**opened("P-G3", "V-G3c"), "diagnoses": ["J18.9"] * 1_000_000}  # ~10 MB
        r = h1.post("/v1/events", json=big)
        assert r.status_code == 413, r.text
        credit = envelope("PersonalAccountCredited", "P-G3", amount_fen=500_000)
        r = h1.post("/v1/events", json=credit)  # a hospital crediting an account
        assert r.status_code == 403 and r.json()["path"] == "$.type"
        pay = envelope("PersonalAccountCredited", "P-G3", amount_fen=1)
        with stack.client("bureau") as bureau:
            r = bureau.post("/v1/events", json={**pay, "amount_fen": -5})
            assert r.status_code == 422 and r.json()["path"] == "$.amount_fen"
        # another hospital cannot read this hospital's answers
        assert h3.get(f"/v1/outcomes/{reg['event_id']}").status_code == 404
    assert {t: _count(stack.settings, t) for t in before} == before


def test_past_the_timeout_202_with_location_then_the_answer(stack: Stack) -> None:
    reg = registered("P-G5", "H-G5", balance=0)
    close = closed("P-G5", "V-G5")
    with stack.client("bureau") as bureau, stack.client("h1") as h1:
        bureau.post("/v1/events", json=reg)
        h1.post("/v1/events", json=opened("P-G5", "V-G5"))
        h1.post("/v1/events", json=charged("P-G5", "V-G5", [item("L1", amount=5_000)]))
        r = h1.post("/v1/settle?timeout=0", json=close)
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert r.headers["location"] == f"/v1/outcomes/{close['event_id']}"
        got = h1.get(r.headers["location"] + "?timeout=20")
        assert got.status_code == 200 and got.json()["answer"] == "ClaimSettled"


def test_health_metrics_openapi(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json() == {"ready": True}
        metrics = c.get("/metrics").text
        assert "yibao_gateway_request_seconds_bucket" in metrics
        assert "yibao_gateway_in_flight" in metrics
        spec = c.get("/openapi.json").json()
        assert {"/v1/events", "/v1/presettle", "/v1/settle", "/v1/refund",
                "/v1/outcomes/{event_id}"} <= set(spec["paths"])
        body = spec["paths"]["/v1/settle"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/VisitClosed"}
        assert "VisitClosed" in spec["components"]["schemas"]
    log = (stack.tmp / "gateway.log").read_text()
    lines = [json.loads(x) for x in log.splitlines() if '"gateway.request"' in x]
    assert lines and all({"caller", "command", "event_id", "outcome", "latency_ms"} <= set(x)
                         for x in lines)
    assert "P-G1" not in "".join(x for x in log.splitlines() if '"gateway.request"' in x)


def test_503_when_the_broker_cannot_be_reached(tmp_path: Path) -> None:
    s = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="nobroker.")
    clients = tmp_path / "clients.json"
    key = add_client(clients, "h", "hospital", ("F-1",))
    port = free_port()
    gw = spawn_gateway(s, port=port, clients=clients, index=tmp_path / "i.sqlite",
                       log_file=tmp_path / "gateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, gw, path="/healthz")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            assert c.get("/readyz").status_code == 503
            r = c.post("/v1/events", json=opened("P-X", "V-X"))
            assert r.status_code == 503 and "nothing was published" in r.json()["error"]
    finally:
        terminate(gw)


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_the_worker_serves_its_metrics(stack: Stack) -> None:
    """Records in and out, transaction latency, lag per partition and dead letters: a record
    a hospital sends straight to care with a registration type is counted dead-lettered."""
    import time

    from aiokafka import AIOKafkaProducer

    before = httpx.get(stack.worker_metrics).text
    async def send_bad() -> None:
        p = AIOKafkaProducer(**client_options(stack.settings))
        await p.start()
        try:
            await p.send_and_wait(stack.settings.topic_prefix + "care",
                                  json.dumps(registered("P-M1", "H-M1")).encode(), key=b"P-M1")
        finally:
            await p.stop()
    asyncio.run(send_bad())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = httpx.get(stack.worker_metrics).text
        if _metric(text, "yibao_worker_dead_letters_total") > _metric(
                before, "yibao_worker_dead_letters_total"):
            break
        time.sleep(0.3)
    assert _metric(text, "yibao_worker_dead_letters_total") == _metric(
        before, "yibao_worker_dead_letters_total") + 1
    assert _metric(text, "yibao_worker_records_in_total", stage="sequencer") > 0
    assert _metric(text, "yibao_worker_records_out_total",
                   topic=stack.settings.topic_prefix + "settlements") > 0
    assert _metric(text, "yibao_worker_transaction_seconds_count", stage="sequencer") > 0
    assert "yibao_worker_lag_records" in text


def test_the_grafana_dashboard_charts_metrics_that_exist() -> None:
    """Every metric docs/grafana-yibao.json queries is one the code defines (a rename
    would leave a blank panel)."""
    import re

    import yibao.metrics as worker_metrics
    from yibao.gateway.app import Metrics

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-yibao.json"
                            ).read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m)
            for e in exprs for m in re.findall(r"yibao_[a-z_]+", e)}
    defined = {c._name for c in vars(worker_metrics).values() if hasattr(c, "_name")}
    defined |= {c._name for c in vars(Metrics()).values() if hasattr(c, "_name")}
    defined = {re.sub(r"_total$", "", d) for d in defined}
    assert used and used <= defined, used - defined
