"""Wiring: runtime (NATS, PostgreSQL), the projection leader and the ticker jobs, the routers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gridloop_events.clock import Clock, OffsetClock, SystemClock
from gridloop_events.logging import get_logger
from gridloop_events.service import Runtime, create_service_app

from .admin import create_clock_router
from .api import create_router
from .leadership import ProjectionLeader, ensure_tables
from .projection import EscalationProjection
from .settings import SERVICE, EscalationSettings
from .ticker import Ticker

log = get_logger(__name__)


def _clock(settings: EscalationSettings, clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    return OffsetClock() if settings.test_clock else SystemClock()


def create_app(settings: EscalationSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or EscalationSettings.from_env()
    schema = settings.schema or SERVICE
    clock = _clock(settings, clock)
    projection = EscalationProjection(schema)
    # The runner is started by the leader job, not by the runtime: see leadership.py.
    runtime = Runtime(settings, [], clock=clock)
    ticker = Ticker(settings, clock, schema, registry=runtime.metrics.registry)
    leader = ProjectionLeader(projection, settings.leader_retry_seconds)

    async def supervise(rt: Runtime) -> None:
        while True:
            try:
                await ensure_tables(rt, projection)
                break
            except Exception as exc:  # noqa: BLE001 - the database may still be coming up
                log.warning("escalation.tables_not_ready", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)
        await asyncio.gather(leader.run(rt), ticker.run(rt))

    runtime.background.append(supervise)

    routers = [create_router(runtime, schema)]
    if settings.test_clock and isinstance(clock, OffsetClock):
        routers.append(create_clock_router(clock))
    app = create_service_app(
        runtime,
        title="Gridloop escalation",
        description="Supervision (督办): deadline timers, DeadlineApproaching and DeadlineMissed, "
        "the overdue list and the department report-in rate (部门报到率).",
        routers=routers,
    )
    # The read API must find its tables on a standby too, before any leader ever ran.
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with started(a):
            await ensure_tables(runtime, projection)
            yield

    app.router.lifespan_context = lifespan
    app.state.ticker = ticker
    app.state.leader = leader
    app.state.clock = clock
    return app
