"""What every Gridloop service shares at run time: settings, connections, runners, health.

A service is a FastAPI app whose lifespan opens one NATS connection and one PostgreSQL pool,
makes sure the stream exists, starts its projection runners, and closes all of it in reverse
order on shutdown (SIGTERM/Ctrl-C), so an acknowledged batch is never half-applied.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NATS
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .asyncapi import asyncapi_router
from .clock import Clock, SystemClock
from .codec import REGISTRY, Registry
from .database import create_pool
from .logging import configure_logging, get_logger
from .projection import Projection
from .runner import ProjectionRunner
from .store import EventStore, StreamSettings
from .subjects import DEFAULT_PARTITIONS, DEFAULT_PREFIX, Subjects

log = get_logger(__name__)

DEFAULT_PORTS = {"intake": 8001, "dispatch": 8002, "escalation": 8003, "feedback": 8004}


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


@dataclass
class ServiceSettings:
    service: str
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/gridloop"
    subject_prefix: str = DEFAULT_PREFIX
    host: str = "127.0.0.1"
    port: int = 0
    schema: str = ""
    ready_max_lag: int = 1000
    stream_replicas: int = 1
    # Which partitions this instance projects: None = all of them (one instance), or a share
    # such as GRIDLOOP_INSTANCE=1/3. Advisory locks make a second claimant a standby.
    partitions: list[int] | None = None
    # Partitions outside an i/n share that this instance takes over while no one holds them
    # (GRIDLOOP_ABSORB=0 turns it off): a dead share is not stranded until its instance returns.
    spare_partitions: list[int] = field(default_factory=list)
    # How long a fetched batch may stay unacknowledged before the server redelivers it.
    ack_wait: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def nats_servers(self) -> list[str]:
        """`nats_url` may name every node of a cluster, comma-separated (as the nats CLI takes
        them): nats-py parses only a list, and with all of them a service that starts while
        one node is down still connects."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @classmethod
    def from_env(cls, service: str) -> ServiceSettings:
        upper = service.upper()
        return cls(
            service=service,
            nats_url=_env(f"GRIDLOOP_{upper}_NATS_URL", "GRIDLOOP_NATS_URL", "NATS_URL",
                          default=cls.nats_url),
            database_url=_env(f"GRIDLOOP_{upper}_DATABASE_URL", "GRIDLOOP_DATABASE_URL",
                              "DATABASE_URL", default=cls.database_url),
            subject_prefix=_env("GRIDLOOP_SUBJECT_PREFIX", default=DEFAULT_PREFIX),
            host=_env(f"GRIDLOOP_{upper}_HOST", "GRIDLOOP_HOST", default="127.0.0.1"),
            port=int(_env(f"GRIDLOOP_{upper}_PORT", default=str(DEFAULT_PORTS.get(service, 0)))),
            schema=_env(f"GRIDLOOP_{upper}_SCHEMA", default=service),
            ready_max_lag=int(_env("GRIDLOOP_READY_MAX_LAG", default="1000")),
            stream_replicas=int(_env("GRIDLOOP_STREAM_REPLICAS", default="1")),
            ack_wait=float(_env("GRIDLOOP_RUNNER_ACK_WAIT_SECONDS", default="60")),
            partitions=parse_partitions(
                _env(f"GRIDLOOP_{upper}_PARTITIONS", "GRIDLOOP_PARTITIONS"),
                _env(f"GRIDLOOP_{upper}_INSTANCE", "GRIDLOOP_INSTANCE"),
            ),
            spare_partitions=spare_partitions(
                _env(f"GRIDLOOP_{upper}_INSTANCE", "GRIDLOOP_INSTANCE"),
                _env("GRIDLOOP_ABSORB") or "1",
            ),
        )


def spare_partitions(instance: str | None, absorb: str,
                     total: int = DEFAULT_PARTITIONS) -> list[int]:
    """The other shares' partitions, for an i/n instance that absorbs them when orphaned."""
    share = parse_partitions(None, instance, total)
    if share is None or absorb.strip().lower() in ("0", "false", "no", "off"):
        return []
    return [p for p in range(total) if p not in share]


def parse_partitions(spec: str | None, instance: str | None,
                     total: int = DEFAULT_PARTITIONS) -> list[int] | None:
    """`0-7`, `0,3,5` or `all`; or an instance share `i/n` (partitions p with p % n == i)."""
    if instance:
        index, _, count = instance.partition("/")
        i, n = int(index), int(count)
        if not 0 <= i < n:
            raise ValueError(f"GRIDLOOP_INSTANCE {instance!r}: want i/n with 0 <= i < n")
        return [p for p in range(total) if p % n == i]
    if not spec or spec == "all":
        return None
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    bad = [p for p in out if not 0 <= p < total]
    if bad:
        raise ValueError(f"partitions {bad} outside 0..{total - 1}")
    return sorted(out)


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.appended = Counter("gridloop_events_appended", "Events appended", ["event_type"],
                                registry=r)
        self.http_requests = Counter("gridloop_http_requests", "HTTP requests",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("gridloop_http_request_seconds", "HTTP latency",
                                      ["method", "route"], registry=r)
        self.applied = Gauge("gridloop_projection_applied", "Events applied since start",
                             ["projection"], registry=r)
        self.dead = Gauge("gridloop_projection_dead_lettered", "Events dead-lettered since start",
                          ["projection"], registry=r)
        self.checkpoint = Gauge("gridloop_projection_checkpoint", "Last applied stream sequence",
                                ["projection"], registry=r)
        self.lag = Gauge("gridloop_projection_lag", "Stream tip minus checkpoint",
                         ["projection"], registry=r)
        self.service = service


class Runtime:
    """Connections and runners of one service process."""

    def __init__(
        self,
        settings: ServiceSettings,
        projections: list[Projection] | None = None,
        *,
        registry: Registry = REGISTRY,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.projections = projections or []
        self.registry = registry
        self.clock = clock or SystemClock()
        self.metrics = Metrics(settings.service)
        self.nc: NATS | None = None
        self.pool: asyncpg.Pool | None = None
        self.store: EventStore | None = None
        self.runners: list[ProjectionRunner] = []
        self.background: list[Callable[[Runtime], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.subject_prefix)

    async def start(self) -> None:
        s = self.settings
        self.nc = await nats.connect(
            s.nats_servers,
            name=f"gridloop-{s.service}",
            # Replies to this service only: NATS permissions can then keep other services from
            # reading them (they carry whole case events).
            inbox_prefix=f"_INBOX_{s.service}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        self.pool = await create_pool(s.database_url, min_size=1, max_size=10)
        self.store = EventStore(
            self.nc, self.subjects, self.registry, StreamSettings(replicas=s.stream_replicas)
        )
        await self.store.ensure_stream()
        for projection in self.projections:
            # Projections that react need the store, which exists only from here on.
            if getattr(projection, "store", False) is None:
                projection.store = self.store  # type: ignore[attr-defined]
            runner = ProjectionRunner(self.nc, self.pool, self.store, projection,
                                      partitions=s.partitions, spare=s.spare_partitions,
                                      ack_wait=s.ack_wait)
            await runner.start()
            self.runners.append(runner)
        for job in self.background:
            self._tasks.append(asyncio.create_task(job(self), name=f"{s.service}:background"))
        log.info("service.started", port=s.port, projections=[p.name for p in self.projections])

    async def stop(self) -> None:
        log.info("service.stopping")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        for runner in self.runners:
            await runner.stop()
        self.runners.clear()
        if self.nc is not None:
            # Not drain(): runners are stopped and every append was acknowledged, so nothing is
            # in flight; drain() can wait on a cancelled pull request's inbox for ever.
            try:
                await asyncio.wait_for(self.nc.flush(), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            await self.nc.close()
        if self.pool is not None:
            await self.pool.close()
        log.info("service.stopped")

    async def readiness(self) -> dict[str, object]:
        checks: dict[str, object] = {}
        checks["nats"] = bool(self.nc and self.nc.is_connected)
        try:
            assert self.pool is not None
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            checks["postgres"] = True
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            checks["postgres"] = False
        lags: dict[str, int | None] = {}
        for runner in self.runners:
            try:
                lags[runner.projection.name] = await runner.lag()
            except Exception:  # noqa: BLE001
                lags[runner.projection.name] = None
        checks["lag"] = lags
        checks["ready"] = (
            checks["nats"] is True
            and checks["postgres"] is True
            and all(v is not None and v <= self.settings.ready_max_lag for v in lags.values())
            and all(r.running for r in self.runners)
        )
        return checks

    def refresh_metrics(self) -> None:
        for runner in self.runners:
            name = runner.projection.name
            self.metrics.applied.labels(name).set(runner.stats.applied)
            self.metrics.dead.labels(name).set(runner.stats.dead_lettered)
            self.metrics.checkpoint.labels(name).set(runner.stats.checkpoint)


def operations_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.settings.service}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = await runtime.readiness()
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        runtime.refresh_metrics()
        for runner in runtime.runners:
            try:
                runtime.metrics.lag.labels(runner.projection.name).set(await runner.lag())
            except Exception:  # noqa: BLE001
                pass
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def quiet_garbage_collector() -> None:
    """Hide what start-up left alive from the cyclic collector, and collect young objects less
    often.

    Measured in the closed loop (QUICK, 69 cases/s): the collector took 7-18% of each service's
    CPU (dispatch 3.1 s of 17.7 s), walking again and again the ~100k objects that imports,
    pydantic schemas and routes leave behind, and it found ~6k cycles in the whole run. Frozen
    objects are never scanned; the young generation is collected every 10,000 allocations
    instead of 700, so more of it has died by refcount before a scan. Cycles are still
    collected, and RSS stays flat (the bench's memory phase checks it).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def create_service_app(
    runtime: Runtime,
    *,
    title: str,
    description: str,
    routers: list[APIRouter],
) -> FastAPI:
    configure_logging(runtime.settings.service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        quiet_garbage_collector()
        try:
            yield
        finally:
            await runtime.stop()

    # FastAPI's OpenTelemetry hooks look up the global providers on every request (4.7% of
    # dispatch's CPU under load); metrics here are Prometheus' and the logs structlog's.
    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.runtime = runtime

    app.add_middleware(ObserveRequests, metrics=runtime.metrics)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(operations_router(runtime))
    app.include_router(asyncapi_router(runtime.settings.subject_prefix))
    for router in routers:
        app.include_router(router)
    return app


class ObserveRequests:
    """Binds the request's correlation id to every log line of its handling and records the
    request in the metrics. Plain ASGI: Starlette's BaseHTTPMiddleware runs each request in an
    extra task with its own streams, a large share of a command's CPU under load."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import structlog

        headers = dict(scope.get("headers") or ())
        raw = headers.get(b"x-request-id") or headers.get(b"x-correlation-id")
        correlation = raw.decode("latin-1") if raw else None
        status = 500

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        structlog.contextvars.bind_contextvars(correlation_id=correlation)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id")
            # The router put the matched route into this same scope.
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method, path, status).inc()
            self.metrics.http_latency.labels(method, path).observe(time.perf_counter() - started)


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """Bad input answers 422 naming the offending field, in the shape DomainError uses, so all
    four services answer bad input the same way."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")}
        for e in exc.errors()
    ] or [{"field": "body", "message": "invalid request"}]
    first = errors[0]
    detail = {"reason": f"{first['field']}: {first['message']}", "field": first["field"],
              "errors": errors}
    return JSONResponse({"detail": detail}, status_code=422)


def _field(loc: tuple[object, ...] | list[object]) -> str:
    """('body', 'rating') -> 'rating': which part of the request is the handler's business."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=10)
