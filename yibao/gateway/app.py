"""The gateway over HTTP (FastAPI on uvicorn): gateway.md's native API, health and metrics.

Bodies are read as bytes and validated by the contract's own codec (not by pydantic
models), so a request is checked exactly as the sequencer checks a record, and a 422 names
the JSON path. Every request is logged with caller, command, ``event_id``, outcome and
latency, never with the body (it carries personal data).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from yibao.gateway.credentials import Client, Credentials
from yibao.gateway.exceptions import GatewayError, Invalid, TooLarge
from yibao.gateway.index import Index
from yibao.gateway.service import Answer, Command, Service
from yibao.logging import get_logger
from yibao.schemas.events import INPUT_TYPES, OUTPUT_TYPES
from yibao.settings import Settings

log = get_logger(__name__)

MAX_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 1 << 20
_HEAD = msgspec.json.Decoder(dict[str, Any])


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "yibao_gateway_request_seconds", "Gateway request latency by command and outcome.",
            ["command", "outcome"], registry=self.registry,
            buckets=(.005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30))
        self.in_flight = Gauge("yibao_gateway_in_flight", "Requests being served.",
                               registry=self.registry)
        self.timeouts = Counter("yibao_gateway_timeouts_total",
                                "Commands answered 202: the answer took longer than the wait.",
                                ["command"], registry=self.registry)
        self.publish_failures = Counter("yibao_gateway_publish_failures_total",
                                        "Requests refused 503: the broker did not take them.",
                                        registry=self.registry)


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    credentials = Credentials(settings.gateway_clients)
    svc = service or Service(settings, Index(settings.gateway_index))
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()
            svc.index.close()

    app = FastAPI(title="yibao gateway", version="1",
                  description="The hospitals' front door (gateway.md): publish care events, "
                  "pre-settle and settle while the patient waits, cancel, look up answers.",
                  lifespan=lifespan)
    app.state.service = svc
    app.state.metrics = metrics

    async def serve(request: Request, command: str,
                    run: Callable[[Client], Awaitable[Answer]], *,
                    render: Callable[[Answer], Response] | None = None,
                    render_error: Callable[[GatewayError], Response] | None = None
                    ) -> Response:
        """One request: authenticate, run, log, time; ``render``/``render_error`` shape the
        answer and the refusal in a dialect (FHIR, the national interface), native JSON
        without them."""
        started = time.perf_counter()
        metrics.in_flight.inc()
        caller, event_id, outcome, status = None, None, "error", 500
        try:
            client = credentials.authenticate(request.headers.get("authorization"))
            caller = client.client_id
            answer = await run(client)
            event_id = answer.event_id
            outcome = answer.answer or answer.status
            status = 200 if answer.status == "answered" else 202
            if answer.status == "pending":
                metrics.timeouts.labels(command).inc()
            if render is not None:
                return render(answer)
            headers = {} if status == 200 else {
                "Location": f"/v1/outcomes/{answer.event_id}"}
            return Response(answer.body(), status_code=status, headers=headers,
                            media_type="application/json")
        except GatewayError as exc:
            status, outcome = exc.status, f"http_{exc.status}"
            if exc.status == 503:
                metrics.publish_failures.inc()
            if render_error is not None:
                return render_error(exc)
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
            return JSONResponse({"error": exc.message, "path": exc.path}, status_code=status,
                                headers=headers)
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            metrics.latency.labels(command, outcome).observe(elapsed)
            log.info("gateway.request", caller=caller, command=command,
                     event_id=event_id or _event_id_of(request), outcome=outcome,
                     status=status, latency_ms=round(elapsed * 1000, 2))

    def command_route(command: Command, summary: str) -> None:
        async def handler(request: Request) -> Response:
            async def run(client: Client) -> Answer:
                body = await _body(request)
                request.state.body = body
                timeout = _timeout(request, settings.gateway_timeout_s)
                return await svc.submit(client, command, body, timeout)
            return await serve(request, command, run)

        handler.__name__ = f"post_{command}"
        app.add_api_route(f"/v1/{command}", handler, methods=["POST"], summary=summary,
                          openapi_extra=_request_body(command))

    command_route("events", "Publish an event (open a visit, upload charges, pay; bureau: "
                  "registrations and reviews); a payment waits for its answer")
    command_route("presettle", "Pre-settle a visit (PreSettlementRequested): the split "
                  "before paying, nothing changes")
    command_route("settle", "Settle a visit (VisitClosed) and wait for the settlement")
    command_route("refund", "Cancel a settlement (VisitRefunded)")

    @app.get("/v1/outcomes/{event_id:path}", summary="The outputs caused by an input")
    async def get_outcome(event_id: str, request: Request) -> Response:
        async def run(client: Client) -> Answer:
            return await svc.outcome(client, event_id, _timeout(request, 0.0))
        return await serve(request, "outcome", run)

    from yibao.gateway.fhir import add_fhir_routes
    from yibao.gateway.national import add_national_routes

    add_fhir_routes(app, serve, svc, settings)
    add_national_routes(app, serve, svc, settings)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Connected to the broker and the index caught up")
    async def readyz() -> Response:
        ready = svc.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _, components = msgspec.json.schema_components(
                (*INPUT_TYPES, *OUTPUT_TYPES), ref_template="#/components/schemas/{name}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _body(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES before more of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLarge(f"body of {declared} bytes: at most {MAX_BODY_BYTES}", path="$")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"body larger than {MAX_BODY_BYTES} bytes", path="$")
        chunks.append(chunk)
    return b"".join(chunks)


def _timeout(request: Request, default: float) -> float:
    raw = request.query_params.get("timeout")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise Invalid(f"timeout must be a number of seconds, not {raw!r}",
                      path="timeout") from None
    if not 0 <= value <= MAX_TIMEOUT_S:
        raise Invalid(f"timeout must be between 0 and {MAX_TIMEOUT_S:g} s", path="timeout")
    return value


def _request_body(command: str) -> dict[str, Any]:
    names = {"presettle": ["PreSettlementRequested"], "settle": ["VisitClosed"],
             "refund": ["VisitRefunded"]}.get(command, [t.__name__ for t in INPUT_TYPES])
    refs = [{"$ref": f"#/components/schemas/{n}"} for n in names]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _event_id_of(request: Request) -> str | None:
    """The ``event_id`` of a refused request's body, for the log line only."""
    body = getattr(request.state, "body", None)
    if not body:
        return None
    try:
        value = _HEAD.decode(body).get("event_id")
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None
