"""GET requests: the spec's query parameters as one checked filter.

- service_request_id: comma-delimited ids; when given it overrides every other filter.
- service_code, status (open|closed): comma-delimited; absent means all.
- start_date, end_date: W3C date-times on requested_datetime, spanning at most 90 days. Without
  either, the last 90 days; with one, the 90 days that start or end there.
- Results: newest first, at most MAX_RESULTS (1000) per call. `page_size` (1..1000) and `page`
  (from 1) page further; they are this server's extension, as the spec leaves paging open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .errors import bad_request

MAX_RESULTS = 1000
MAX_SPAN = timedelta(days=90)
STATUSES = ("open", "closed")


@dataclass(frozen=True)
class RequestQuery:
    case_ids: tuple[str, ...] | None = None
    service_codes: tuple[str, ...] | None = None
    statuses: frozenset[str] | None = None  # None: both
    start: datetime | None = None
    end: datetime | None = None
    limit: int = MAX_RESULTS
    offset: int = 0


def _list(params: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = params.get(name)
    if raw is None:
        return None
    items = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    return items or None


def parse_w3c(raw: str, name: str) -> datetime:
    """A W3C date-time (2010-01-01T00:00:00Z, ...+08:00) or date; without an offset, UTC.

    A '+' that a client left unencoded arrives as a space; it is read back as '+'."""
    text = raw.strip().replace(" ", "+")
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        at = datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{name} is not a W3C date-time (e.g. 2010-01-01T00:00:00Z)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _positive(params: Mapping[str, str], name: str, default: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} is not a whole number") from None
    if value < 1 or (high is not None and value > high):
        raise bad_request(f"{name} must be from 1" + (f" to {high}" if high else ""))
    return value


def parse_query(params: Mapping[str, str], now: datetime) -> RequestQuery:
    page_size = _positive(params, "page_size", MAX_RESULTS, MAX_RESULTS)
    page = _positive(params, "page", 1, None)
    paging = {"limit": page_size, "offset": (page - 1) * page_size}

    case_ids = _list(params, "service_request_id")
    if case_ids is not None:
        return RequestQuery(case_ids=case_ids, **paging)

    statuses = _list(params, "status")
    if statuses is not None:
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise bad_request(f"status {unknown[0]!r} is not one of open, closed")

    raw_start, raw_end = params.get("start_date"), params.get("end_date")
    start = parse_w3c(raw_start, "start_date") if raw_start else None
    end = parse_w3c(raw_end, "end_date") if raw_end else None
    if start is not None and end is not None:
        if end < start:
            raise bad_request("end_date is before start_date")
        if end - start > MAX_SPAN:
            raise bad_request("start_date and end_date may span at most 90 days")
    elif start is not None:
        end = start + MAX_SPAN
    else:
        start = (end or now) - MAX_SPAN

    return RequestQuery(
        service_codes=_list(params, "service_code"),
        statuses=frozenset(statuses) if statuses is not None else None,
        start=start,
        end=end,
        **paging,
    )
