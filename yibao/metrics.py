"""Prometheus metrics of the long-running processes: the worker's stages and the projector.

One process, one registry (prometheus_client's default): ``yibao worker`` and ``yibao
project`` serve it on ``YIBAO_METRICS_PORT`` when that is set. The gateway keeps a registry
of its own (:mod:`yibao.gateway.app`). Names and labels are what docs/grafana-yibao.json
charts.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)

RECORDS_IN = Counter("yibao_worker_records_in_total", "Records a stage consumed.", ["stage"])
RECORDS_OUT = Counter("yibao_worker_records_out_total",
                      "Records a stage produced in its transactions, by topic.", ["topic"])
TRANSACTION_SECONDS = Histogram("yibao_worker_transaction_seconds",
                                "A stage's step: poll handed over to transaction committed.",
                                ["stage"], buckets=_LATENCY)
COMMIT_SECONDS = Histogram("yibao_worker_commit_seconds",
                           "commit_transaction round trip.", ["stage"], buckets=_LATENCY)
LAG = Gauge("yibao_worker_lag_records", "Records behind the partition's end, per input partition.",
            ["stage", "topic", "partition"])
DEAD_LETTERS = Counter("yibao_worker_dead_letters_total", "Input records dead-lettered.")
ABORTS = Counter("yibao_worker_aborts_total",
                 "Transactions a stage gave up (fenced, or handed over mid-transaction).",
                 ["stage"])
PROJECTOR_LAG = Gauge("yibao_projector_lag_records", "Records behind the end, per partition.",
                      ["topic", "partition"])
PROJECTOR_BATCH_SECONDS = Histogram("yibao_projector_batch_seconds",
                                    "Writing one batch (rows and positions) into DuckDB.",
                                    buckets=_LATENCY)
PROJECTOR_RECORDS = Counter("yibao_projector_records_total", "Records projected.", ["role"])


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve /metrics on ``port`` in a background thread (0: do nothing)."""
    if port:
        start_http_server(port, addr=host)
