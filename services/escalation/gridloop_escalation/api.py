"""The read API: the supervision list, a case's timers, and the report-in rate (报到率).

Staff only (gridloop_events.auth): each sees the units and cases of their scope — a handler their
unit, a grid worker their grids' teams, dispatchers and supervisors the units of their area,
auditors everything.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query

from gridloop_district import District, UnknownCodeError
from gridloop_events.auth import (
    STAFF,
    Authenticator,
    CaseFacts,
    Principal,
    Role,
    enforce,
    forbidden,
    may_see,
    sees_unit,
)
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


def _unknown_case(case_id: str) -> HTTPException:
    return HTTPException(404, {"reason": f"unknown case {case_id}", "field": "case_id"})


def create_router(runtime: Runtime, schema: str, district: District,
                  auth: Authenticator) -> APIRouter:
    s = check_schema(schema)
    router = APIRouter(prefix="/v1", tags=["escalation"])
    # A guard as a parameter default: an annotation could not name this local value.
    as_staff = Depends(auth.allow(*STAFF))

    def pool() -> asyncpg.Pool:
        assert runtime.pool is not None
        return runtime.pool

    def grids_of(unit_code: str) -> tuple[str, ...]:
        try:
            return district.grids_covered_by(unit_code)
        except UnknownCodeError:
            return ()

    def unit_filter(principal: Principal, unit: str | None) -> str | None:
        """The overdue list holds no places, only units: a caller without the whole district
        lists one unit of their scope at a time."""
        if principal.role is Role.auditor or principal.covers(district.code):
            return unit
        if unit is not None:
            if sees_unit(principal, unit, grids_of(unit)):
                return unit
            raise forbidden(f"unit {unit} lies outside your scope", "unit")
        if principal.role is Role.unit_handler:
            return principal.unit
        if principal.role is Role.grid_worker and len(principal.scope) == 1:
            try:
                return district.grid_team(principal.scope[0]).code
            except UnknownCodeError:
                pass
        raise forbidden("name a unit of your area (unit=...)", "unit")

    @router.get("/overdue")
    async def overdue(
        principal: Principal = as_staff,
        unit: UnitQuery = None,
        level: Annotated[int | None, Query(ge=0, le=1000)] = None,
        tier: TierQuery = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        """Open cases that missed a deadline in this handling round, highest level first."""
        unit = unit_filter(principal, unit)
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
    async def timers(case_id: Annotated[str, Path(pattern=CODE)],
                     principal: Principal = as_staff) -> dict[str, Any]:
        assert runtime.store is not None
        facts = CaseFacts.from_history(await runtime.store.read(case_id))
        if facts is None:
            raise _unknown_case(case_id)
        enforce(may_see(principal, facts), lambda: _unknown_case(case_id), "read")
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
                    raise _unknown_case(case_id)
        return {"case_id": case_id, "timers": [_row(r) for r in rows]}

    @router.get("/report-in")
    async def report_in(principal: Principal = as_staff, unit: UnitQuery = None,
                        tier: TierQuery = None) -> dict[str, Any]:
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
            if sees_unit(principal, r["unit_code"], grids_of(r["unit_code"]))
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
