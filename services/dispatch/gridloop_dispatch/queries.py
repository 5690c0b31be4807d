"""Reads of the dispatch read model. "Overdue" is decided here, against the caller's `now`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from gridloop_events.projection import check_schema

_ASSIGNMENT_COLUMNS = """case_id, unit_code, tier, kind, urgent, status, handler_id, category_code,
    severity, grid, dispatched_at, accepted_at, accept_due, resolve_due, escalation_level,
    redispatch, escalation, dispatch_count"""


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return {k: _iso(v) for k, v in record.items()}


def _assignment(record: asyncpg.Record, now: datetime) -> dict[str, Any]:
    out = _row(record)
    overdue = []
    if record["status"] == "dispatched" and record["accept_due"] < now:
        overdue.append("accept")
    if record["resolve_due"] < now:
        overdue.append("resolve")
    out["overdue"] = bool(overdue)
    out["overdue_deadlines"] = overdue
    return out


async def triage_queue(
    pool: asyncpg.Pool, schema: str, now: datetime, limit: int, offset: int,
    grids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`grids`: only the cases of these grids; None: the whole queue."""
    s = check_schema(schema)
    area: list[Any] = [] if grids is None else [list(grids)]
    where = "" if grids is None else "WHERE grid = ANY($1::text[])"
    n = len(area)
    async with pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {s}.triage_queue {where}", *area)
        rows = await conn.fetch(
            f"""SELECT case_id, reason, detail, returned_by, category_code, severity, grid,
                       queued_at, dispatch_due, escalation_level
                FROM {s}.triage_queue {where}
                ORDER BY queued_at, case_id LIMIT ${n + 1} OFFSET ${n + 2}""",
            *area,
            limit,
            offset,
        )
    cases = []
    for r in rows:
        item = _row(r)
        item["overdue"] = r["dispatch_due"] < now
        cases.append(item)
    return {"now": now.isoformat(), "total": total, "limit": limit, "offset": offset,
            "cases": cases}


async def unit_queue(
    pool: asyncpg.Pool, schema: str, unit_code: str, now: datetime, limit: int, offset: int
) -> dict[str, Any]:
    s = check_schema(schema)
    async with pool.acquire() as conn:
        total = await conn.fetchval(
            f"SELECT count(*) FROM {s}.assignment WHERE unit_code = $1", unit_code
        )
        rows = await conn.fetch(
            f"""SELECT {_ASSIGNMENT_COLUMNS} FROM {s}.assignment WHERE unit_code = $1
                ORDER BY urgent DESC, resolve_due, case_id LIMIT $2 OFFSET $3""",
            unit_code,
            limit,
            offset,
        )
    return {
        "unit_code": unit_code,
        "now": now.isoformat(),
        "total": total,
        "limit": limit,
        "offset": offset,
        "cases": [_assignment(r, now) for r in rows],
    }


async def workload(pool: asyncpg.Pool, schema: str, now: datetime) -> dict[str, Any]:
    s = check_schema(schema)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"""SELECT unit_code, tier,
                       count(*) AS open,
                       count(*) FILTER (WHERE status = 'accepted') AS accepted,
                       count(*) FILTER (WHERE (status = 'dispatched' AND accept_due < $1)
                                           OR resolve_due < $1) AS overdue,
                       count(*) FILTER (WHERE urgent) AS urgent
                FROM {s}.assignment GROUP BY unit_code, tier ORDER BY unit_code""",
            now,
        )
    return {"now": now.isoformat(), "units": [dict(r) for r in rows]}
