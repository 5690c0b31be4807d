"""Escalation settings: the shared ones plus the ticker's pace and the test clock switch."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from gridloop_events.service import ServiceSettings

SERVICE = "escalation"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class EscalationSettings(ServiceSettings):
    # GRIDLOOP_TEST_CLOCK=1: an OffsetClock that POST /v1/admin/clock moves (never in production).
    test_clock: bool = False
    tick_seconds: float = 0.2
    # Due timers fetched per scan; a backlog (after an outage) drains batch by batch.
    tick_batch: int = 500
    # Cases worked on at once within one batch.
    tick_concurrency: int = 16
    # A timer handled but still showing as due (its event travelling back through the
    # projection, or a failed append) is looked at again after this long.
    retry_seconds: float = 30.0
    # How often a standby instance tries to take over the projection runner.

    @classmethod
    def from_env(cls, service: str = SERVICE) -> EscalationSettings:
        base = ServiceSettings.from_env(service)
        env = os.environ.get
        return cls(
            **{f.name: getattr(base, f.name) for f in fields(ServiceSettings)},
            test_clock=_flag(env("GRIDLOOP_TEST_CLOCK")),
            tick_seconds=float(env("GRIDLOOP_ESCALATION_TICK_SECONDS") or 0.2),
            tick_batch=int(env("GRIDLOOP_ESCALATION_TICK_BATCH") or 500),
            tick_concurrency=int(env("GRIDLOOP_ESCALATION_TICK_CONCURRENCY") or 16),
            retry_seconds=float(env("GRIDLOOP_ESCALATION_RETRY_SECONDS") or 30.0),
        )
