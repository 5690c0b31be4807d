"""What intake shows of a case: its current facts and its timeline, never the reporter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class TimelineEntry:
    sequence: int
    event_id: str
    event_type: str  # what
    occurred_at: datetime  # when
    actor_kind: str  # who
    actor_id: str
    caused_by: str | None  # the causing event's id
    summary: str  # short, without personal data


@dataclass(frozen=True)
class CaseView:
    case_id: str
    status: str
    category_code: str | None
    description: str | None
    channel: str | None
    lat: float | None
    lon: float | None
    address: str | None
    grid_code: str | None
    reported_at: datetime | None
    updated_at: datetime | None
    closed_at: datetime | None
    outcome: str | None
    resolution: str | None  # the text of the latest CaseClosed
    unit_code: str | None
    timeline: tuple[TimelineEntry, ...] = ()
    district: str | None = None
    severity: str | None = None
    street_code: str | None = None
    community_code: str | None = None
    tier: str | None = None
    urgent: bool = False
    escalation_level: int = 0
    accept_due: datetime | None = None
    resolve_due: datetime | None = None
    rating: str | None = None
    version: int = 0
