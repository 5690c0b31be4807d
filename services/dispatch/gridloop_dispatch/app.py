"""Assembles the dispatch service: runtime, projection (with its reactions), HTTP routes."""

from __future__ import annotations

from fastapi import FastAPI
from gridloop_district import District
from gridloop_events.auth import Authenticator, bind
from gridloop_events.clock import Clock
from gridloop_events.service import Runtime, create_service_app

from .api import dispatch_router
from .projection import DispatchProjection
from .settings import DispatchSettings


def create_app(
    settings: DispatchSettings | None = None,
    *,
    district: District | None = None,
    clock: Clock | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """`auth` defaults to the keys the environment names (GRIDLOOP_AUTH, GRIDLOOP_JWT_*)."""
    settings = settings or DispatchSettings.from_env()
    auth = auth or Authenticator.from_env()
    district = district or settings.load_district()
    # The runtime hands the projection its store when it starts.
    projection = DispatchProjection(district, schema=settings.schema or None)
    runtime = Runtime(settings, [projection], clock=clock)
    app = create_service_app(
        runtime,
        title="Gridloop dispatch",
        description="Tiered triage (网上分级分流), deadlines, escalation up the ladder, "
        "the units' queues and the dispatchers' triage queue.",
        routers=[dispatch_router(runtime, projection, district, auth)],
    )
    bind(app, auth)
    app.state.projection = projection
    app.state.district = district
    return app
