"""The intake app: the native API, Open311, the case register projection, health and metrics."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from gridloop_district import District, default_district, load_district
from gridloop_events.auth import Authenticator, bind
from gridloop_events.clock import Clock
from gridloop_events.public_view import run_public_view
from gridloop_events.service import Runtime, ServiceSettings, create_service_app

from .api import build_api, contact_guard
from .open311 import build_router as build_open311_router
from .open311.api import refusal_handler
from .personal_data import reporter_router
from .projection import IntakeProjection
from .reporting import IntakeService
from .settings import SERVICE, IntakeSettings


def _district(settings: ServiceSettings) -> District:
    path = getattr(settings, "district_file", None)
    return load_district(path) if path else default_district()


def create_app(
    settings: ServiceSettings | None = None,
    *,
    district: District | None = None,
    clock: Clock | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """`auth` defaults to the keys the environment names (GRIDLOOP_AUTH, GRIDLOOP_JWT_*)."""
    settings = settings or IntakeSettings.from_env()
    auth = auth or Authenticator.from_env()
    # Loaded once: a district file that is wrong stops the start with every problem listed.
    district = district or _district(settings)
    projection = IntakeProjection(schema=settings.schema or SERVICE)
    runtime = Runtime(settings, [projection], clock=clock)
    # Intake owns residents' data, so it is the one that republishes the public view without it.
    runtime.background.append(run_public_view)
    service = IntakeService(runtime, district, schema=projection.schema, clock=runtime.clock)
    app = create_service_app(
        runtime,
        title="Gridloop intake",
        description="Residents' reports in (native JSON and Open311 GeoReport v2); "
        "the case register, case timelines, grids and the category catalogue out.",
        routers=[
            build_api(service, auth,
                      max_body_bytes=getattr(settings, "max_body_bytes", 1_000_000)),
            build_open311_router(service, auth),
            reporter_router(service, dependencies=[Depends(contact_guard(service, auth))]),
        ],
    )
    bind(app, auth, render=refusal_handler)
    app.state.intake = service
    return app
