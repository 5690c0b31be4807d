"""HTTP: record a callback rating, list callbacks due and a case's ratings, report the figures.

Thin: the rules are in `domain`, the counting in the projection, the SQL in `queries`.

Who may (gridloop_events.auth): a resident rates their own case, a callback operator (dispatcher)
the cases of their area; a case's ratings are read by its reporter and the staff who see the
case; the callbacks due by dispatchers, supervisors and grid workers for the grids of their
area (district-wide staff and auditors: all); the figures by staff, for their scope.
"""

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from gridloop_district import District, UnknownCodeError
from gridloop_events.auth import (
    STAFF,
    Authenticator,
    CaseFacts,
    Principal,
    Role,
    Verdict,
    area_grids,
    enforce,
    forbidden,
    may_see,
    may_supervise,
    reported_by,
    require_self,
    sees_unit,
)
from gridloop_events.case_projection import projected_state
from gridloop_events.commands import execute
from gridloop_events.envelope import Envelope
from gridloop_events.http import DomainError, correlation_id, http_error
from gridloop_events.lifecycle import CaseState, fold
from gridloop_events.logging import get_logger
from gridloop_events.service import Runtime
from gridloop_events.vocabulary import Rating
from pydantic import BaseModel

from . import queries
from .domain import DEFINITIONS, Rate, RateCallback, decide_rating
from .projection import FeedbackProjection
from .queries import GroupBy, StatsFilter
from .settings import FeedbackSettings

log = get_logger(__name__)

CaseId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Month = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
Code = r"^[A-Za-z0-9_-]{1,64}$"


class RatingRecorded(BaseModel):
    case_id: str
    event_id: str
    round: int
    rating: Rating
    reopened: bool
    version: int


STATS_DESCRIPTION = (
    "The four figures, each as `{numerator, denominator, rate}` (`rate` = numerator / "
    "denominator, null when the denominator is 0), per group and in total over what the "
    "filters select. Computed from the read model, which is derived only from events.\n\n"
    + "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items())
    + "\n\nGroups whose key is null hold what has no value for the dimension (e.g. a case "
    "never dispatched, grouped by unit)."
)


def may_rate(p: Principal, facts: CaseFacts) -> Verdict:
    """The resident who reported the case, or a callback operator of its area."""
    if p.role is Role.resident:
        return Verdict.allow if reported_by(p, facts) else Verdict.hide
    return may_supervise(p, facts)


def build_router(
    runtime: Runtime, projection: FeedbackProjection, settings: FeedbackSettings,
    district: District, auth: Authenticator,
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["feedback"])
    # Guards as parameter defaults: an annotation could not name these local values.
    as_rater = Depends(auth.allow(Role.resident, Role.dispatcher))
    as_reader = Depends(auth.allow(Role.resident, *STAFF))
    as_staff = Depends(auth.allow(*STAFF))
    as_area_staff = Depends(auth.allow(
        Role.grid_worker, Role.dispatcher, Role.supervisor, Role.auditor))
    district_grids = tuple(g.code for g in district.grids)

    def unknown_case() -> HTTPException:
        return HTTPException(404, detail={"reason": "unknown case", "field": "case_id"})

    def grids_of(unit_code: str) -> tuple[str, ...]:
        try:
            return district.grids_covered_by(unit_code)
        except UnknownCodeError:
            return ()

    def stats_scope(p: Principal, grid: str | None,
                    unit: str | None) -> tuple[str | None, str | None]:
        """The figures of the caller's scope: a grid or a unit of it, unless district-wide."""
        if p.role is Role.auditor or p.covers(district.code):
            return grid, unit
        if p.role is Role.unit_handler:
            if unit not in (None, p.unit):
                raise forbidden("you may see your own unit's figures only", "unit")
            return grid, p.unit
        if grid is not None and not p.covers(grid):
            raise forbidden(f"grid {grid} lies outside your area", "grid")
        if unit is not None and not sees_unit(p, unit, grids_of(unit)):
            raise forbidden(f"unit {unit} lies outside your area", "unit")
        if grid is None and unit is None:
            if len(p.scope) == 1 and district.is_grid_code(p.scope[0]):
                return p.scope[0], None
            raise forbidden("name a grid or a unit of your area (grid=, unit=)")
        return grid, unit

    def pool() -> asyncpg.Pool:
        if runtime.pool is None:
            raise HTTPException(503, detail={"reason": "the service is not started"})
        return runtime.pool

    @router.post(
        "/cases/{case_id}/callback",
        status_code=201,
        response_model=RatingRecorded,
        summary="Record the callback's rating (回访结果)",
        description=(
            "Allowed once per closure round, while the case is closed: 404 for an unknown case, "
            "409 when it is not closed or this round is already rated. An `unsatisfied` rating "
            "reopens the case (the dispatch service re-dispatches it). Emits CallbackRated."
        ),
    )
    async def rate(case_id: CaseId, body: RateCallback, request: Request,
                   principal: Principal = as_rater) -> RatingRecorded:
        if runtime.store is None:
            raise HTTPException(503, detail={"reason": "the service is not started"})
        require_self(principal, "rated_by", body.rated_by)

        def not_found() -> HTTPException:
            return http_error(DomainError(
                "unknown case: no event was ever recorded for it", status=404))

        known: CaseState | None
        if principal.role is Role.resident:
            # Who reported the case is in its first event, not in the folded state: the log.
            history = await runtime.store.read(case_id)
            known, may_lag = fold(history), False
            facts = CaseFacts.from_history(history)
            if facts is not None:
                # Who reported it and where it lies never change: checked once, before deciding.
                enforce(may_rate(principal, facts), not_found, "rate")
        else:
            # A callback operator's area is in the state: the read model's fold, which execute
            # checks against the log when it lags.
            known, may_lag = await projected_state(pool(), projection.schema, case_id), True
        actor = principal.actor()
        correlation = correlation_id(request)
        now = runtime.clock.now()

        def decide(state: CaseState) -> list[Envelope]:
            if may_lag and state.version:
                enforce(may_rate(principal, CaseFacts.from_state(state)), not_found, "rate")
            return decide_rating(state, body, actor=actor, correlation_id=correlation, now=now)

        try:
            outcome = await execute(runtime.store, case_id, decide, known=known, may_lag=may_lag)
        except DomainError as exc:
            log.info("callback.refused", case_id=case_id, correlation_id=correlation,
                     status=exc.status, reason=exc.reason)
            raise http_error(exc) from None
        event = outcome.events[0]
        runtime.metrics.appended.labels(event.event_type).inc()
        log.info("callback.rated", case_id=case_id, correlation_id=correlation,
                 round=outcome.state.close_count, rating=body.rating.value)
        return RatingRecorded(
            case_id=case_id,
            event_id=str(event.event_id),
            round=outcome.state.close_count,
            rating=body.rating,
            reopened=body.rating is Rating.unsatisfied,
            version=outcome.version,
        )

    @router.get(
        "/cases/{case_id}/ratings",
        summary="A case's callback ratings, by round",
        description="404 when no event was ever recorded for the case.",
    )
    async def ratings(case_id: CaseId, principal: Principal = as_reader) -> dict[str, Any]:
        if runtime.store is None:
            raise HTTPException(503, detail={"reason": "the service is not started"})
        facts = CaseFacts.from_history(await runtime.store.read(case_id))
        if facts is None:
            raise unknown_case()
        enforce(may_see(principal, facts), unknown_case, "read")
        async with queries.reading(pool(), projection.schema) as conn:
            known = await queries.case_known(conn, case_id)
            rows = await queries.ratings_of(conn, case_id)
        if not known and (runtime.store is None or await runtime.store.version(case_id) == 0):
            raise unknown_case()
        return {"case_id": case_id, "ratings": [_rating(r) for r in rows]}

    @router.get(
        "/callbacks/due",
        summary="Callbacks scheduled and not yet rated, oldest due first",
        description=(
            "`overdue` is true when `due_at` is before the service clock at the time of the "
            "query. A callback no longer owed (the case went back to handling unrated) is not "
            "listed. Grid workers, dispatchers and supervisors see the callbacks of their area's "
            "grids; district-wide staff and auditors all of them."
        ),
    )
    async def due(
        principal: Principal = as_area_staff,
        limit: Annotated[int, Query(ge=1, le=settings.due_page_max)] = 100,
    ) -> dict[str, Any]:
        now = runtime.clock.now()
        grids = area_grids(principal, district.code, district_grids)
        async with queries.reading(pool(), projection.schema) as conn:
            rows = await queries.due_callbacks(conn, limit, grids)
        return {
            "as_of": now.isoformat(),
            "callbacks": [
                {
                    "case_id": r["case_id"],
                    "round": r["round"],
                    "due_at": r["due_at"].isoformat(),
                    "scheduled_at": r["scheduled_at"].isoformat(),
                    "overdue": queries.overdue(r["due_at"], now),
                    "grid": r["grid"],
                    "category": r["category"],
                    "unit_code": r["unit_code"],
                    "outcome": r["outcome"],
                }
                for r in rows
            ],
        }

    @router.get(
        "/stats",
        summary="Satisfaction, resolution, on-time closure and report-in figures",
        description=STATS_DESCRIPTION,
    )
    async def stats(
        principal: Principal = as_staff,
        group_by: GroupBy = GroupBy.district,
        from_month: Annotated[
            str | None, Query(alias="from", pattern=Month, description="first report month, YYYY-MM")
        ] = None,
        to_month: Annotated[
            str | None, Query(alias="to", pattern=Month, description="last report month, YYYY-MM")
        ] = None,
        grid: Annotated[str | None, Query(pattern=Code)] = None,
        unit: Annotated[str | None, Query(pattern=Code)] = None,
        category: Annotated[str | None, Query(pattern=Code)] = None,
    ) -> dict[str, Any]:
        if from_month and to_month and from_month > to_month:
            raise http_error(DomainError(
                f"from {from_month} is after to {to_month}", status=422, field="from"))
        grid, unit = stats_scope(principal, grid, unit)
        f = StatsFilter(from_month, to_month, grid, unit, category)
        async with queries.reading(pool(), projection.schema) as conn:
            groups, total = await queries.stats(conn, group_by, f)
        keys = sorted(groups, key=lambda k: (k is None, k or ""))
        return {
            "group_by": group_by.value,
            "filters": {"from": from_month, "to": to_month, "grid": grid, "unit": unit,
                        "category": category},
            "groups": [{"key": k, **_figures(groups[k])} for k in keys],
            "total": _figures(total),
        }

    return router


def _figures(rates: dict[str, Rate]) -> dict[str, Any]:
    return {name: rate.as_dict() for name, rate in rates.items()}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _rating(r: Any) -> dict[str, Any]:
    return {
        "event_id": r["event_id"],
        "round": r["round"],
        "rated_at": _iso(r["rated_at"]),
        "rating": r["rating"],
        "handled_lawfully": r["handled_lawfully"],
        "measures_carried_out": r["measures_carried_out"],
        "party_accepts": r["party_accepts"],
        "method": r["method"],
        "comment": r["comment"],
        "rated_by": r["rated_by"],
        "unit_code": r["unit_code"],
    }
