"""The case register's query: filters, paging by offset or cursor, newest first."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from gridloop_events.http import DomainError
from gridloop_events.lifecycle import Status
from gridloop_events.vocabulary import Channel

from .views import CaseView

MAX_LIMIT = 200
MAX_OFFSET = 1_000_000
DEFAULT_LIMIT = 50
QUERY_FIELDS = frozenset({"status", "category", "grid", "community", "street", "unit", "channel",
                          "reported_from", "reported_to", "overdue", "limit", "offset", "cursor"})


@dataclass(frozen=True)
class Cursor:
    """The last row of a page, in the register's order (reported_at desc, case_id desc)."""

    reported_at: datetime
    case_id: str

    def encode(self) -> str:
        raw = json.dumps([self.reported_at.isoformat(), self.case_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, case_id = json.loads(raw)
            when = datetime.fromisoformat(at)
            if when.tzinfo is None or not isinstance(case_id, str):
                raise ValueError
            return cls(when, case_id)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise DomainError("not a cursor this service issued", 422, "cursor") from None


@dataclass(frozen=True)
class CaseQuery:
    statuses: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    grid: str | None = None
    community: str | None = None
    street: str | None = None
    unit: str | None = None
    channel: str | None = None
    reported_from: datetime | None = None  # inclusive
    reported_to: datetime | None = None  # inclusive
    overdue: bool | None = None
    case_ids: tuple[str, ...] | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    cursor: Cursor | None = None
    # "Overdue" compares live deadlines with the time of asking, which the caller passes.
    now: datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise DomainError(f"must be between 1 and {MAX_LIMIT}", 422, "limit")
        if not 0 <= self.offset <= MAX_OFFSET:  # past int64 PostgreSQL failed: a 500
            raise DomainError(f"must be between 0 and {MAX_OFFSET}", 422, "offset")
        if self.overdue is not None and self.now is None:
            raise ValueError("an overdue filter needs `now`")


@dataclass(frozen=True)
class CasePage:
    items: tuple[CaseView, ...]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


def _one(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value.isprintable():  # a NUL reached PostgreSQL as text and failed there: a 500
        raise DomainError("must not hold control characters", 422, name)
    return value or None


def _many(params: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    value = _one(params, name)
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip()) or None


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    value = _one(params, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DomainError("must be an integer", 422, name) from None


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    value = _one(params, name)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DomainError("must be an ISO 8601 date-time", 422, name) from None
    if when.tzinfo is None:
        raise DomainError("must carry a time zone (e.g. +08:00 or Z)", 422, name)
    return when


def _bool(params: Mapping[str, str], name: str) -> bool | None:
    value = _one(params, name)
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise DomainError("must be true or false", 422, name)


def parse_case_query(params: Mapping[str, str], now: datetime) -> CaseQuery:
    unknown = sorted(set(params) - QUERY_FIELDS)
    if unknown:
        raise DomainError("is not a known filter", 422, unknown[0])
    statuses = _many(params, "status")
    allowed = {s.value for s in Status}
    for s in statuses or ():
        if s not in allowed:
            raise DomainError(f"must be one of {', '.join(sorted(allowed))}", 422, "status")
    channel = _one(params, "channel")
    if channel is not None and channel not in {c.value for c in Channel}:
        raise DomainError(f"must be one of {', '.join(c.value for c in Channel)}", 422, "channel")
    token = _one(params, "cursor")
    cursor = Cursor.decode(token) if token else None
    offset = _int(params, "offset", 0)
    if cursor is not None and offset:
        raise DomainError("give an offset or a cursor, not both", 422, "offset")
    return CaseQuery(
        statuses=statuses,
        categories=_many(params, "category"),
        grid=_one(params, "grid"),
        community=_one(params, "community"),
        street=_one(params, "street"),
        unit=_one(params, "unit"),
        channel=channel,
        reported_from=_time(params, "reported_from"),
        reported_to=_time(params, "reported_to"),
        overdue=_bool(params, "overdue"),
        limit=_int(params, "limit", DEFAULT_LIMIT),
        offset=offset,
        cursor=cursor,
        now=now,
    )
