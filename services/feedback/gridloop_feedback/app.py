"""The feedback service: its projection (with the callback-scheduling reaction) and its API."""

from __future__ import annotations

import os

from fastapi import FastAPI
from gridloop_district import ENV_FILE, District, default_district, load_district
from gridloop_events.auth import Authenticator, bind
from gridloop_events.clock import Clock
from gridloop_events.service import Runtime, create_service_app

from .api import build_router
from .domain import DEFINITIONS, district_callback_limits
from .projection import FeedbackProjection
from .settings import FeedbackSettings

DESCRIPTION = (
    "爱心回访: after every closure the centre calls the resident back and records the rating with "
    "three checks (handled lawfully, measures carried out, party accepts); an unsatisfied "
    "rating reopens the case. Also the figures that judge the work, each with its counts:\n\n"
    + "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items())
)


def _district() -> District:
    path = os.environ.get(ENV_FILE)
    return load_district(path) if path else default_district()


def create_app(
    settings: FeedbackSettings | None = None,
    *,
    clock: Clock | None = None,
    district: District | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """`auth` defaults to the keys the environment names (GRIDLOOP_AUTH, GRIDLOOP_JWT_*)."""
    settings = settings or FeedbackSettings.from_env()
    auth = auth or Authenticator.from_env()
    district = district or _district()
    runtime = Runtime(settings, clock=clock)
    # The runtime opens its store only when it starts, after this; the projection asks for it
    # when it first reacts.
    projection = FeedbackProjection(
        district_callback_limits(district), store_source=lambda: runtime.store,
        schema=settings.schema,
    )
    runtime.projections.append(projection)
    app = create_service_app(
        runtime,
        title="Gridloop feedback",
        description=DESCRIPTION,
        routers=[build_router(runtime, projection, settings, district, auth)],
    )
    bind(app, auth)
    app.state.projection = projection
    return app
