"""The read API: the supervision list, a case's timers, and the report-in rate (报到率)."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query

from gridloop_events.projection import check_schema
from gridloop_events.service import Runtime

from .domain.report_in import rate

CODE = r"^[A-Za-z0-9_-]{1,64}$"
TIERS = r"^(grid|community|street|district)$"

UnitQuery = Annotated[str | None, Query(pattern=CODE, description="assignee / receiving unit code")]
TierQuery = Annotated[str | None, Query(pattern=TIERS)]


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return {k: _iso(v) for k, v in dict(record).items()}


def create_router(runtime: Runtime, schema: str) -> APIRouter:
    s = check_schema(schema)
    router = APIRouter(prefix="/v1", tags=["escalation"])

    def pool() -> asyncpg.Pool:
        assert runtime.pool is not None
        return runtime.pool

    @router.get("/overdue")
    async def overdue(
        unit: UnitQuery = None,
        level: Annotated[int | None, Query(ge=0, le=1000)] = None,
        tier: TierQuery = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        """Open cases that missed a deadline in this handling round, highest level first."""
        where = "($1::text IS NULL OR unit_code = $1) AND ($2::int IS NULL OR escalation_level = $2)"
        where += " AND ($3::text IS NULL OR tier = $3)"
        async with pool().acquire() as conn:
            items = await conn.fetch(
                f"""SELECT case_id, district, unit_code, tier, escalation_level, status,
                           missed_count, first_missed_at, last_missed_at, last_missed_kind,
                           last_deadline_id
                    FROM {s}.overdue_case WHERE {where}
                    ORDER BY escalation_level DESC, first_missed_at, case_id
                    LIMIT $4 OFFSET $5""",
                unit, level, tier, limit, offset,
            )
            groups = await conn.fetch(
                f"""SELECT unit_code, escalation_level, count(*) AS cases
                    FROM {s}.overdue_case WHERE {where}
                    GROUP BY unit_code, escalation_level
                    ORDER BY escalation_level DESC, unit_code NULLS LAST""",
                unit, level, tier,
            )
        return {
            "items": [_row(r) for r in items],
            "total": sum(g["cases"] for g in groups),
            "limit": limit,
            "offset": offset,
            "by_unit_and_level": [_row(g) for g in groups],
        }

    @router.get("/cases/{case_id}/timers")
    async def timers(case_id: Annotated[str, Path(pattern=CODE)]) -> dict[str, Any]:
        async with pool().acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT deadline_id, kind, status, set_at, due_at, warn_at, unit_code,
                           warned_at, ended_at, ended_by
                    FROM {s}.timers WHERE case_id = $1 ORDER BY set_sequence, kind""",
                case_id,
            )
            if not rows:
                known = await conn.fetchval(
                    f"SELECT true FROM {s}.case_state WHERE case_id = $1", case_id
                )
                if not known:
                    raise HTTPException(404, {"reason": f"unknown case {case_id}",
                                              "field": "case_id"})
        return {"case_id": case_id, "timers": [_row(r) for r in rows]}

    @router.get("/report-in")
    async def report_in(unit: UnitQuery = None, tier: TierQuery = None) -> dict[str, Any]:
        """Per unit: cases escalated to it, how many it accepted (报到), and the rate."""
        async with pool().acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT unit_code, tier, dispatched, reported_in, on_time
                    FROM {s}.report_in
                    WHERE ($1::text IS NULL OR unit_code = $1) AND ($2::text IS NULL OR tier = $2)
                    ORDER BY unit_code""",
                unit, tier,
            )
        units = [
            {
                "unit_code": r["unit_code"],
                "tier": r["tier"],
                "dispatched": r["dispatched"],
                "reported_in": r["reported_in"],
                "reported_in_on_time": r["on_time"],
                "awaiting_or_missed": r["dispatched"] - r["reported_in"],
                "rate": rate(r["reported_in"], r["dispatched"]),
            }
            for r in rows
        ]
        dispatched = sum(u["dispatched"] for u in units)
        reported = sum(u["reported_in"] for u in units)
        return {
            "units": units,
            "total": {"dispatched": dispatched, "reported_in": reported,
                      "reported_in_on_time": sum(u["reported_in_on_time"] for u in units),
                      "rate": rate(reported, dispatched)},
        }

    return router
