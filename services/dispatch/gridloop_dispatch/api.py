"""Dispatch's HTTP face: thin handlers that run a domain decision through `execute`.

Who may (gridloop_events.auth): the unit a case is with — its handlers, or the grid's workers
while the grid's team holds it — accepts, returns, asks for more time and closes it; dispatchers
of the case's area dispatch it; supervisors of its area decide extensions; all of them note
progress. The check runs inside the decision, on the state the events are appended to, so a
case that moved on in between is judged again. Queues and workload show the caller's units; the
triage queue the cases of the caller's area (all of it for district-wide staff and auditors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

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
    may_handle,
    may_note,
    may_supervise,
    require_self,
    sees_unit,
)
from gridloop_events.catalogue import ExtensionRequested
from gridloop_events.case_projection import projected_state
from gridloop_events.commands import execute
from gridloop_events.envelope import Envelope, Payload, StoredEvent
from gridloop_events.http import DomainError, correlation_id, http_error
from gridloop_events.lifecycle import CaseState, evolve, fold
from gridloop_events.logging import get_logger
from gridloop_events.service import Runtime

from . import queries
from .domain import commands as c
from .projection import DispatchProjection

log = get_logger(__name__)

CaseId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
UnitCode = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]  # beyond int64 PostgreSQL fails: 500
Rule = Callable[[Principal, CaseFacts], Verdict]


def _unknown_case() -> HTTPException:
    return http_error(DomainError("unknown case", status=404))


def dispatch_router(runtime: Runtime, projection: DispatchProjection, district: District,
                    auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["dispatch"])
    # Guards as parameter defaults: an annotation could not name these local values.
    as_handler = Depends(auth.allow(Role.unit_handler, Role.grid_worker))
    as_noter = Depends(auth.allow(
        Role.unit_handler, Role.grid_worker, Role.dispatcher, Role.supervisor))
    as_dispatcher = Depends(auth.allow(Role.dispatcher))
    as_supervisor = Depends(auth.allow(Role.supervisor))
    as_staff = Depends(auth.allow(*STAFF))
    as_triager = Depends(auth.allow(
        Role.grid_worker, Role.dispatcher, Role.supervisor, Role.auditor))

    district_units = {u.code for u in district.units}
    district_grids = tuple(g.code for g in district.grids)

    def grids_of(unit_code: str) -> tuple[str, ...]:
        try:
            return district.grids_covered_by(unit_code)
        except UnknownCodeError:
            return ()

    async def run(
        request: Request,
        principal: Principal,
        case_id: str,
        command: str,
        rule: Rule,
        decide: Callable[[CaseState, datetime, str], Sequence[Payload]],
        known: CaseState | None = None,
    ) -> dict[str, Any]:
        assert runtime.store is not None
        now = runtime.clock.now()
        actor = principal.actor()
        correlation = correlation_id(request)

        def to_events(state: CaseState) -> list[Envelope]:
            c.require_case(state)
            enforce(rule(principal, CaseFacts.from_state(state)), _unknown_case, command)
            return [
                Envelope.new(p, case_id=case_id, district=state.district, actor=actor,
                             correlation_id=correlation, occurred_at=now)
                for p in decide(state, now, actor.id)
            ]

        # The read model's fold saves reading the case from the log; when it lags, the append's
        # guard or a refusal sends execute to the log.
        may_lag = False
        if known is None and runtime.pool is not None:
            known = await projected_state(runtime.pool, projection.schema, case_id)
            may_lag = True
        try:
            outcome = await execute(runtime.store, case_id, to_events, known=known,
                                    may_lag=may_lag)
        except DomainError as exc:
            log.info("dispatch.refused", case_id=case_id, correlation_id=correlation,
                     command=command, status=exc.status, reason=exc.reason)
            raise http_error(exc) from None
        state = outcome.state
        for e in outcome.events:
            state = evolve(state, StoredEvent(sequence=outcome.version, subject="", envelope=e))
        log.info("dispatch.command", case_id=case_id, correlation_id=correlation,
                 command=command, emitted=[e.event_type for e in outcome.events])
        return {
            "case_id": case_id,
            "status": state.status.value,
            "unit_code": state.unit_code,
            "version": outcome.version,
            "events": [{"event_id": str(e.event_id), "event_type": e.event_type}
                       for e in outcome.events],
        }

    @router.post("/cases/{case_id}/accept")
    async def accept(case_id: CaseId, body: c.AcceptCase, request: Request,
                     principal: Principal = as_handler) -> dict[str, Any]:
        require_self(principal, "handler_id", body.handler_id)
        return await run(request, principal, case_id, "accept", may_handle,
                         lambda s, now, who: c.decide_accept(s, body))

    @router.post("/cases/{case_id}/return")
    async def return_case(case_id: CaseId, body: c.ReturnCase, request: Request,
                          principal: Principal = as_handler) -> dict[str, Any]:
        require_self(principal, "handler_id", body.handler_id)
        return await run(request, principal, case_id, "return", may_handle,
                         lambda s, now, who: c.decide_return(s, body, now, district))

    @router.post("/cases/{case_id}/extension")
    async def request_extension(
        case_id: CaseId, body: c.RequestExtension, request: Request,
        principal: Principal = as_handler,
    ) -> dict[str, Any]:
        require_self(principal, "handler_id", body.handler_id)
        return await run(request, principal, case_id, "extension", may_handle,
                         lambda s, now, who: c.decide_extension_request(s, body, now))

    @router.post("/cases/{case_id}/extension/decision")
    async def decide_extension(
        case_id: CaseId, body: c.DecideExtension, request: Request,
        principal: Principal = as_supervisor,
    ) -> dict[str, Any]:
        require_self(principal, "supervisor_id", body.supervisor_id)
        assert runtime.store is not None
        # The requested due time lives in the request event, not in the folded state.
        history = await runtime.store.read(case_id)
        pending: tuple[str, datetime] | None = None
        for stored in history:
            p = stored.envelope.payload
            if isinstance(p, ExtensionRequested):
                pending = (str(stored.envelope.event_id), p.requested_resolve_due)
        return await run(request, principal, case_id, "extension.decision", may_supervise,
                         lambda s, now, who: c.decide_extension(s, body, now, pending),
                         known=fold(history))

    @router.post("/cases/{case_id}/notes")
    async def note(case_id: CaseId, body: c.NoteProgress, request: Request,
                   principal: Principal = as_noter) -> dict[str, Any]:
        require_self(principal, "author_id", body.author_id)
        if principal.role is Role.unit_handler and body.unit_code not in (None, principal.unit):
            raise forbidden("unit_code must be your unit", "unit_code")
        return await run(request, principal, case_id, "note", may_note,
                         lambda s, now, who: c.decide_note(s, body))

    @router.post("/cases/{case_id}/close")
    async def close(case_id: CaseId, body: c.CloseCase, request: Request,
                    principal: Principal = as_handler) -> dict[str, Any]:
        require_self(principal, "closed_by", body.closed_by)
        return await run(request, principal, case_id, "close", may_handle,
                         lambda s, now, who: c.decide_close(s, body, who))

    @router.post("/cases/{case_id}/dispatch")
    async def dispatch(case_id: CaseId, body: c.DispatchCase, request: Request,
                       principal: Principal = as_dispatcher) -> dict[str, Any]:
        require_self(principal, "dispatcher", body.dispatcher)
        return await run(request, principal, case_id, "dispatch", may_supervise,
                         lambda s, now, who: c.decide_dispatch(s, body, now, district, who))

    @router.get("/queue/triage", description=(
        "Cases waiting for a dispatcher, oldest first. Grid workers, dispatchers and supervisors "
        "see the cases of their area's grids; district-wide staff and auditors all of them, "
        "cases without a grid included."))
    async def triage_queue(principal: Principal = as_triager, limit: Limit = 50,
                           offset: Offset = 0) -> dict[str, Any]:
        assert runtime.pool is not None
        return await queries.triage_queue(
            runtime.pool, projection.schema, runtime.clock.now(), limit, offset,
            grids=area_grids(principal, district.code, district_grids))

    @router.get("/units/workload")
    async def workload(principal: Principal = as_staff) -> dict[str, Any]:
        assert runtime.pool is not None
        result = await queries.workload(runtime.pool, projection.schema, runtime.clock.now())
        result["units"] = [u for u in result["units"]
                           if sees_unit(principal, u["unit_code"], grids_of(u["unit_code"]))]
        return result

    @router.get("/units/{unit_code}/queue")
    async def unit_queue(unit_code: UnitCode, principal: Principal = as_staff, limit: Limit = 50,
                         offset: Offset = 0) -> dict[str, Any]:
        assert runtime.pool is not None
        result = await queries.unit_queue(runtime.pool, projection.schema, unit_code,
                                          runtime.clock.now(), limit, offset)
        known = unit_code in district_units
        if result["total"] == 0 and not known:
            raise HTTPException(404, {"reason": f"unknown unit {unit_code}",
                                      "field": "unit_code"})
        if not sees_unit(principal, unit_code, grids_of(unit_code)):
            raise forbidden("this unit's queue lies outside your scope", "unit_code")
        return result

    return router
