"""Wiring: runtime (NATS, PostgreSQL, the projection runner), the ticker job, the routers."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, FastAPI

from gridloop_district import ENV_FILE, District, default_district, load_district
from gridloop_events.auth import Authenticator, Role, bind
from gridloop_events.clock import Clock, OffsetClock, SystemClock
from gridloop_events.logging import get_logger
from gridloop_events.service import Runtime, create_service_app

from .admin import create_clock_router
from .api import create_router
from .projection import EscalationProjection
from .settings import SERVICE, EscalationSettings
from .ticker import Ticker

log = get_logger(__name__)


def _clock(settings: EscalationSettings, clock: Clock | None) -> Clock:
    if clock is not None:
        return clock
    return OffsetClock() if settings.test_clock else SystemClock()


def _district() -> District:
    path = os.environ.get(ENV_FILE)
    return load_district(path) if path else default_district()


def create_app(
    settings: EscalationSettings | None = None,
    *,
    clock: Clock | None = None,
    district: District | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """`auth` defaults to the keys the environment names (GRIDLOOP_AUTH, GRIDLOOP_JWT_*);
    the district (its units and places) scopes what each caller sees."""
    settings = settings or EscalationSettings.from_env()
    auth = auth or Authenticator.from_env()
    district = district or _district()
    schema = settings.schema or SERVICE
    clock = _clock(settings, clock)
    projection = EscalationProjection(schema)
    # Several instances: the runners split or stand by over partitions (advisory locks in the
    # library); every instance ticks, which is safe because a miss has one deterministic id.
    runtime = Runtime(settings, [projection], clock=clock)
    ticker = Ticker(settings, clock, schema, registry=runtime.metrics.registry)
    runtime.background.append(ticker.run)

    routers = [create_router(runtime, schema, district, auth)]
    if settings.test_clock and isinstance(clock, OffsetClock):
        # Moving the clock moves every deadline of the district: its supervisors only.
        district_supervisor = auth.allow(
            Role.supervisor, where=lambda p: p.covers(district.code),
            why="moving the clock needs a supervisor of the whole district")
        guarded = APIRouter(dependencies=[Depends(district_supervisor)])
        guarded.include_router(create_clock_router(clock))
        routers.append(guarded)
    app = create_service_app(
        runtime,
        title="Gridloop escalation",
        description="Supervision (督办): deadline timers, DeadlineApproaching and DeadlineMissed, "
        "the overdue list and the department report-in rate (部门报到率).",
        routers=routers,
    )
    bind(app, auth)
    app.state.ticker = ticker
    app.state.clock = clock
    return app
