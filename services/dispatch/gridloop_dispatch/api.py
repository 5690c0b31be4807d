"""Dispatch's HTTP face: thin handlers that run a domain decision through `execute`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from gridloop_district import District
from gridloop_events.catalogue import ExtensionRequested
from gridloop_events.commands import execute
from gridloop_events.envelope import Envelope, Payload, StoredEvent
from gridloop_events.http import DomainError, actor_from, correlation_id, http_error
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
Offset = Annotated[int, Query(ge=0)]


def dispatch_router(runtime: Runtime, projection: DispatchProjection, district: District) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["dispatch"])

    async def run(
        request: Request,
        case_id: str,
        command: str,
        decide: Callable[[CaseState, datetime, str], Sequence[Payload]],
        known: CaseState | None = None,
    ) -> dict[str, Any]:
        assert runtime.store is not None
        now = runtime.clock.now()
        actor = actor_from(request)
        correlation = correlation_id(request)

        def to_events(state: CaseState) -> list[Envelope]:
            return [
                Envelope.new(p, case_id=case_id, district=state.district, actor=actor,
                             correlation_id=correlation, occurred_at=now)
                for p in decide(state, now, actor.id)
            ]

        try:
            outcome = await execute(runtime.store, case_id, to_events, known=known)
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
    async def accept(case_id: CaseId, body: c.AcceptCase, request: Request) -> dict[str, Any]:
        return await run(request, case_id, "accept", lambda s, now, who: c.decide_accept(s, body))

    @router.post("/cases/{case_id}/return")
    async def return_case(case_id: CaseId, body: c.ReturnCase, request: Request) -> dict[str, Any]:
        return await run(request, case_id, "return",
                         lambda s, now, who: c.decide_return(s, body, now, district))

    @router.post("/cases/{case_id}/extension")
    async def request_extension(
        case_id: CaseId, body: c.RequestExtension, request: Request
    ) -> dict[str, Any]:
        return await run(request, case_id, "extension",
                         lambda s, now, who: c.decide_extension_request(s, body, now))

    @router.post("/cases/{case_id}/extension/decision")
    async def decide_extension(
        case_id: CaseId, body: c.DecideExtension, request: Request
    ) -> dict[str, Any]:
        assert runtime.store is not None
        # The requested due time lives in the request event, not in the folded state.
        history = await runtime.store.read(case_id)
        pending: tuple[str, datetime] | None = None
        for stored in history:
            p = stored.envelope.payload
            if isinstance(p, ExtensionRequested):
                pending = (str(stored.envelope.event_id), p.requested_resolve_due)
        return await run(request, case_id, "extension.decision",
                         lambda s, now, who: c.decide_extension(s, body, now, pending),
                         known=fold(history))

    @router.post("/cases/{case_id}/notes")
    async def note(case_id: CaseId, body: c.NoteProgress, request: Request) -> dict[str, Any]:
        return await run(request, case_id, "note", lambda s, now, who: c.decide_note(s, body))

    @router.post("/cases/{case_id}/close")
    async def close(case_id: CaseId, body: c.CloseCase, request: Request) -> dict[str, Any]:
        return await run(request, case_id, "close", lambda s, now, who: c.decide_close(s, body, who))

    @router.post("/cases/{case_id}/dispatch")
    async def dispatch(case_id: CaseId, body: c.DispatchCase, request: Request) -> dict[str, Any]:
        return await run(request, case_id, "dispatch",
                         lambda s, now, who: c.decide_dispatch(s, body, now, district, who))

    @router.get("/queue/triage")
    async def triage_queue(limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
        assert runtime.pool is not None
        return await queries.triage_queue(runtime.pool, projection.schema, runtime.clock.now(),
                                          limit, offset)

    @router.get("/units/workload")
    async def workload() -> dict[str, Any]:
        assert runtime.pool is not None
        return await queries.workload(runtime.pool, projection.schema, runtime.clock.now())

    @router.get("/units/{unit_code}/queue")
    async def unit_queue(unit_code: UnitCode, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
        assert runtime.pool is not None
        result = await queries.unit_queue(runtime.pool, projection.schema, unit_code,
                                          runtime.clock.now(), limit, offset)
        if result["total"] == 0:
            try:
                district.unit(unit_code)
            except LookupError:
                raise HTTPException(404, {"reason": f"unknown unit {unit_code}",
                                          "field": "unit_code"}) from None
        return result

    return router
