"""Intake's native HTTP API: thin handlers over IntakeService and the pure domain.

Who may do what (the token decides, see gridloop_events.auth): residents report, read and list
their own cases (the register records who reported each); grid workers and hotline operators (dispatchers) report within their area; staff read
the cases of their area or unit; auditors read all; an integration reads a case's status only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from gridloop_district import District, UnknownCodeError
from gridloop_events.auth import (
    EVERYONE,
    Authenticator,
    CaseFacts,
    Principal,
    Role,
    enforce,
    forbidden,
    listing_area,
    may_handle,
    may_see,
    may_supervise,
    require_self,
)
from gridloop_events.envelope import ActorKind
from gridloop_events.http import DomainError, correlation_id, http_error
from gridloop_events.logging import get_logger
from gridloop_events.public_view import RESIDENT_ACTOR_ID

from .domain.commands import ReportCase, ReportRejected
from .domain.listing import CasePage, CaseQuery, parse_case_query
from .domain.location import resolve_location
from .domain.parsing import parse_report
from .domain.reference import categories_doc, grids_geojson
from .domain.views import CaseView, TimelineEntry
from .queries import fetch_page
from .reporting import CASE_ID_PATTERN, IntakeService

log = get_logger(__name__)


def _refused(field: str, reason: str, status: int) -> HTTPException:
    return HTTPException(status_code=status, detail={"reason": reason, "field": field})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def entry_json(e: TimelineEntry, *, resident_ids: bool = True) -> dict[str, Any]:
    """`resident_ids`: show a resident actor's account id; otherwise it reads "resident", as
    in the public view — staff need to know a resident acted, not which account."""
    actor_id = e.actor_id
    if e.actor_kind == ActorKind.resident.value and not resident_ids:
        actor_id = RESIDENT_ACTOR_ID
    return {
        "sequence": e.sequence,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "occurred_at": _time(e.occurred_at),
        "actor": {"kind": e.actor_kind, "id": actor_id},
        "caused_by": e.caused_by,
        "summary": e.summary,
    }


def case_json(v: CaseView, *, with_timeline: bool, resident_ids: bool = False
              ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "case_id": v.case_id,
        "status": v.status,
        "district": v.district,
        "category_code": v.category_code,
        "severity": v.severity,
        "channel": v.channel,
        "description": v.description,
        "location": {"grid_code": v.grid_code, "community_code": v.community_code,
                     "street_code": v.street_code, "lat": v.lat, "lon": v.lon,
                     "address": v.address},
        "tier": v.tier,
        "unit_code": v.unit_code,
        "urgent": v.urgent,
        "escalation_level": v.escalation_level,
        "accept_due": _time(v.accept_due),
        "resolve_due": _time(v.resolve_due),
        "reported_at": _time(v.reported_at),
        "updated_at": _time(v.updated_at),
        "closed_at": _time(v.closed_at),
        "outcome": v.outcome,
        "resolution": v.resolution,
        "rating": v.rating,
        "version": v.version,
        "status_url": f"/v1/cases/{v.case_id}",
    }
    if with_timeline:
        out["timeline"] = [entry_json(e, resident_ids=resident_ids) for e in v.timeline]
    return out


def status_json(v: CaseView) -> dict[str, Any]:
    """A case's status for other systems: codes, times and who holds it — nothing a resident
    wrote (description, address, resolution text) and no timeline of people."""
    return {
        "case_id": v.case_id,
        "status": v.status,
        "district": v.district,
        "category_code": v.category_code,
        "severity": v.severity,
        "grid_code": v.grid_code,
        "tier": v.tier,
        "unit_code": v.unit_code,
        "urgent": v.urgent,
        "escalation_level": v.escalation_level,
        "accept_due": _time(v.accept_due),
        "resolve_due": _time(v.resolve_due),
        "reported_at": _time(v.reported_at),
        "updated_at": _time(v.updated_at),
        "closed_at": _time(v.closed_at),
        "outcome": v.outcome,
        "version": v.version,
        "status_url": f"/v1/cases/{v.case_id}",
    }


def page_json(page: CasePage) -> dict[str, Any]:
    return {
        "items": [case_json(v, with_timeline=False) for v in page.items],
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
        "next_cursor": page.next_cursor,
    }


REPORTERS = (Role.resident, Role.grid_worker, Role.dispatcher)
LIST_DESCRIPTION = (
    "The case register, newest first. What a caller lists: a resident the cases they reported "
    "(whatever the filters); a grid worker, dispatcher or supervisor the cases of their area — "
    "without a place filter, their token's one area (a token of several areas must name one: "
    "grid=, community= or street=; a place outside the area is a 403); a unit handler their "
    "unit's cases; an auditor all. Who reported a case is recorded but never shown.")


def authorize_report(district: District, principal: Principal, cmd: ReportCase) -> ReportCase:
    """A resident reports anywhere in the district, for themselves; a grid worker on patrol
    within their grids and a hotline operator within their area, as the first-contact owner
    (首问责任人). Returns the command with first_contact set from the token."""
    if principal.role is Role.resident:
        if cmd.first_contact is not None:
            raise forbidden("first_contact names the worker who took a report", "first_contact")
        return cmd
    require_self(principal, "first_contact", cmd.first_contact)
    location = resolve_location(district, cmd.grid_code, cmd.lat, cmd.lon, cmd.address)
    grid = location.grid_path.grid if location.grid_path else None
    place = district.code if grid is None and principal.role is Role.dispatcher else grid
    if not principal.covers(place):
        raise forbidden("the report's location lies outside your area", "location")
    return dataclasses.replace(cmd, first_contact=principal.subject)


def _area_field(district: District, code: str) -> str | None:
    """Which register filter a place code is: None for the district itself."""
    if code == district.code:
        return None
    if district.is_grid_code(code):
        return "grid"
    for name, lookup in (("community", district.community), ("street", district.street)):
        try:
            lookup(code)
            return name
        except UnknownCodeError:
            pass
    raise forbidden(f"{code} is not a street, community or grid of district {district.code}")


def scoped_query(district: District, principal: Principal, query: CaseQuery) -> CaseQuery:
    """Narrow a register query to what the caller may list."""
    if principal.role is Role.auditor:
        return query
    if principal.role is Role.unit_handler:
        if query.unit is not None and query.unit != principal.unit:
            raise forbidden("you may list your own unit's cases only", "unit")
        return dataclasses.replace(query, unit=principal.unit)
    requested = query.grid or query.community or query.street
    area = listing_area(principal, requested, district.code)
    if area is None or area == requested:
        return query
    name = _area_field(district, area)
    return dataclasses.replace(query, **{name: area}) if name else query


def contact_guard(service: IntakeService, auth: Authenticator) -> Any:
    """Who may open a resident's contact (GET /v1/cases/{case_id}/reporter): the resident
    themselves, the hotline and callback operators (dispatchers) of the case's area, and whoever
    handles the case now. Not supervisors, not auditors: they judge the work, not the person."""
    allowed = auth.allow(Role.resident, Role.dispatcher, Role.unit_handler, Role.grid_worker)

    async def guard(case_id: str, principal: Principal = Depends(allowed)) -> Principal:
        def unknown() -> HTTPException:
            return _refused("case_id", f"no case {case_id}", 404)

        if not re.match(CASE_ID_PATTERN, case_id):
            raise unknown()
        facts = CaseFacts.from_history(await service.store.read(case_id))
        if facts is None:
            raise unknown()
        if principal.role is Role.resident:
            verdict = may_see(principal, facts)
        elif principal.role is Role.dispatcher:
            verdict = may_supervise(principal, facts)
        else:
            verdict = may_handle(principal, facts)
        enforce(verdict, unknown, "contact the reporter of")
        return principal

    guard.gridloop_roles = allowed.gridloop_roles  # type: ignore[attr-defined]
    return guard


def build_api(service: IntakeService, auth: Authenticator, *,
              max_body_bytes: int = 1_000_000) -> APIRouter:
    router = APIRouter(tags=["intake"])
    grids = grids_geojson(service.district)
    categories = categories_doc(service.district)

    # Guards as parameter defaults: an annotation could not name these local values.
    as_reporter = Depends(auth.allow(*REPORTERS))
    as_anyone = Depends(auth.allow(*EVERYONE))
    as_lister = Depends(auth.allow(
        Role.resident, Role.grid_worker, Role.unit_handler, Role.dispatcher, Role.supervisor,
        Role.auditor))

    def unknown(case_id: str) -> HTTPException:
        return _refused("case_id", f"no case {case_id}", 404)

    @router.post("/v1/cases", status_code=201)
    async def report_case(
        request: Request, principal: Principal = as_reporter
    ) -> JSONResponse:
        if not _is_json(request.headers.get("content-type", "")):
            raise _refused("Content-Type", "send the report as application/json", 415)
        body = await request.body()
        if len(body) > max_body_bytes:
            raise _refused("body", f"must be at most {max_body_bytes} bytes", 413)
        try:
            raw = json.loads(body, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError):
            raise _refused("body", "is not valid JSON", 400) from None
        except RecursionError:  # nesting deeper than the parser's stack: was a 500
            raise _refused("body", "is nested too deeply", 400) from None
        correlation = correlation_id(request)
        try:
            cmd = parse_report(raw, request.headers.get("idempotency-key"))
            cmd = authorize_report(service.district, principal, cmd)
            result = await service.report(cmd, principal.actor(), correlation)
        except ReportRejected as exc:
            # The field's name only: its value may be a resident's data.
            log.info("case.report_refused", field=exc.field, status=exc.status,
                     correlation_id=correlation)
            raise _refused(exc.field, exc.reason, exc.status) from None
        url = f"/v1/cases/{result.case_id}"
        return JSONResponse(
            {"case_id": result.case_id, "status_url": url,
             "reported_at": result.reported_at.isoformat(), "created": result.created},
            status_code=201 if result.created else 200,
            headers={"Location": url},
        )

    @router.get("/v1/cases/{case_id}")
    async def get_case(
        case_id: str, principal: Principal = as_anyone
    ) -> dict[str, Any]:
        view = await service.case_view(case_id)
        if view is None:
            raise unknown(case_id)
        if principal.role is Role.integration:
            return status_json(view)
        facts = CaseFacts.from_history(await service.store.read(case_id))
        if facts is None:
            raise unknown(case_id)
        enforce(may_see(principal, facts), lambda: unknown(case_id), "read")
        # A resident reads only their own case: the resident ids in it are theirs.
        return case_json(view, with_timeline=True,
                         resident_ids=principal.role is Role.resident)

    @router.get("/v1/cases", description=LIST_DESCRIPTION)
    async def list_cases(
        request: Request,
        principal: Principal = as_lister,
    ) -> dict[str, Any]:
        try:
            query = parse_case_query(request.query_params, service.clock.now())
        except DomainError as exc:
            raise http_error(exc) from None
        if principal.role is Role.resident:
            # Any filter, but over their own reports only.
            return page_json(await fetch_page(service.pool, service.schema, query,
                                              resident=principal.subject))
        query = scoped_query(service.district, principal, query)
        return page_json(await service.query_cases(query))

    # Documented as served: a contract naming only application/json misleads clients.
    @router.get("/v1/grids", dependencies=[as_anyone], responses={
        200: {"content": {"application/geo+json": {"schema": {"type": "object"}}}}})
    async def get_grids() -> JSONResponse:
        return JSONResponse(grids, media_type="application/geo+json")

    @router.get("/v1/categories", dependencies=[as_anyone])
    async def get_categories() -> dict[str, Any]:
        return categories

    return router
