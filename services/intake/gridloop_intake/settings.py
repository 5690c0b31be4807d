"""Intake's settings: the shared service settings plus where the district file lives."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gridloop_district import ENV_FILE
from gridloop_events.service import ServiceSettings

SERVICE = "intake"


@dataclass
class IntakeSettings(ServiceSettings):
    # None: the district named by $GRIDLOOP_DISTRICT_FILE, else the shipped demo district.
    district_file: str | None = None
    max_body_bytes: int = 1_000_000

    @classmethod
    def from_env(cls, service: str = SERVICE) -> IntakeSettings:
        base = ServiceSettings.from_env(service)
        return cls(**{**base.__dict__, "district_file": os.environ.get(ENV_FILE) or None})
