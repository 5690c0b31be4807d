"""The feedback service's settings: the shared ones, read from the environment as every service's."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gridloop_events.service import ServiceSettings

SERVICE = "feedback"


@dataclass
class FeedbackSettings(ServiceSettings):
    service: str = SERVICE
    # Upper bound of one page of `/v1/callbacks/due`: the list is a work queue, not an export.
    due_page_max: int = 1000

    @classmethod
    def from_env(cls, service: str = SERVICE) -> FeedbackSettings:
        base = ServiceSettings.from_env(service)
        settings = cls(**{k: v for k, v in vars(base).items()})
        settings.due_page_max = int(os.environ.get("GRIDLOOP_FEEDBACK_DUE_PAGE_MAX", "1000"))
        return settings
