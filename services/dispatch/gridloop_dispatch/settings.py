"""Dispatch's settings: the shared ones from the environment, plus the district file."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gridloop_district import ENV_FILE, District, default_district, load_district
from gridloop_events.service import ServiceSettings


@dataclass
class DispatchSettings(ServiceSettings):
    service: str = "dispatch"
    schema: str = "dispatch"
    # None: $GRIDLOOP_DISTRICT_FILE, else the shipped demo district.
    district_file: str | None = None

    @classmethod
    def from_env(cls, service: str = "dispatch") -> DispatchSettings:
        settings = super().from_env(service)
        assert isinstance(settings, DispatchSettings)
        settings.district_file = os.environ.get(ENV_FILE) or None
        return settings

    def load_district(self) -> District:
        return load_district(self.district_file) if self.district_file else default_district()
