"""The feedback service: its projection (with the callback-scheduling reaction) and its API."""

from __future__ import annotations

from fastapi import FastAPI
from gridloop_district import District, default_district
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


def create_app(
    settings: FeedbackSettings | None = None,
    *,
    clock: Clock | None = None,
    district: District | None = None,
) -> FastAPI:
    settings = settings or FeedbackSettings.from_env()
    district = district or default_district()
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
        routers=[build_router(runtime, projection, settings)],
    )
    app.state.projection = projection
    return app
