"""Each service's projection, constructed as the service's app.py constructs it.

Replays get no store, so nothing can react even by mistake (`rebuild` never calls `react`); a
dead-letter retry gets the store, because the live runner would have reacted to that event.
Service packages are imported only when asked for, so `gridloop --help` stays quick.
"""

from __future__ import annotations

from gridloop_events.case_projection import CaseProjection
from gridloop_events.service import ServiceSettings
from gridloop_events.store import EventStore

SERVICES: tuple[str, ...] = ("intake", "dispatch", "escalation", "feedback")


def service_schema(service: str) -> str:
    """The live schema: GRIDLOOP_<SERVICE>_SCHEMA, else the service's name — as the service reads it."""
    return ServiceSettings.from_env(service).schema or service


def build(service: str, store: EventStore | None = None) -> CaseProjection:
    schema = service_schema(service)
    if service == "intake":
        from gridloop_intake.projection import IntakeProjection

        return IntakeProjection(schema=schema)
    if service == "dispatch":
        from gridloop_district import default_district
        from gridloop_dispatch.projection import DispatchProjection

        return DispatchProjection(default_district(), store, schema=schema)
    if service == "escalation":
        from gridloop_escalation.projection import EscalationProjection

        return EscalationProjection(schema)
    if service == "feedback":
        from gridloop_district import default_district
        from gridloop_feedback.domain import district_callback_limits
        from gridloop_feedback.projection import FeedbackProjection

        return FeedbackProjection(district_callback_limits(default_district()), store,
                                  schema=schema)
    raise ValueError(f"unknown projection {service!r}; one of {', '.join(SERVICES)}")


def chosen(name: str) -> tuple[str, ...]:
    return SERVICES if name == "all" else (name,)
