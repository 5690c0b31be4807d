"""Intake's native HTTP API: thin handlers over IntakeService and the pure domain."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from gridloop_events.http import DomainError, actor_from, correlation_id, http_error
from gridloop_events.logging import get_logger

from .domain.commands import ReportRejected
from .domain.listing import CasePage, parse_case_query
from .domain.parsing import parse_report
from .domain.reference import categories_doc, grids_geojson
from .domain.views import CaseView, TimelineEntry
from .reporting import IntakeService

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


def entry_json(e: TimelineEntry) -> dict[str, Any]:
    return {
        "sequence": e.sequence,
        "event_id": e.event_id,
        "event_type": e.event_type,
        "occurred_at": _time(e.occurred_at),
        "actor": {"kind": e.actor_kind, "id": e.actor_id},
        "caused_by": e.caused_by,
        "summary": e.summary,
    }


def case_json(v: CaseView, *, with_timeline: bool) -> dict[str, Any]:
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
        out["timeline"] = [entry_json(e) for e in v.timeline]
    return out


def page_json(page: CasePage) -> dict[str, Any]:
    return {
        "items": [case_json(v, with_timeline=False) for v in page.items],
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
        "next_cursor": page.next_cursor,
    }


def build_api(service: IntakeService, *, max_body_bytes: int = 1_000_000) -> APIRouter:
    router = APIRouter(tags=["intake"])
    grids = grids_geojson(service.district)
    categories = categories_doc(service.district)

    @router.post("/v1/cases", status_code=201)
    async def report_case(request: Request) -> JSONResponse:
        if not _is_json(request.headers.get("content-type", "")):
            raise _refused("Content-Type", "send the report as application/json", 415)
        body = await request.body()
        if len(body) > max_body_bytes:
            raise _refused("body", f"must be at most {max_body_bytes} bytes", 413)
        try:
            raw = json.loads(body, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError):
            raise _refused("body", "is not valid JSON", 400) from None
        actor = actor_from(request)
        correlation = correlation_id(request)
        try:
            cmd = parse_report(raw, request.headers.get("idempotency-key"))
            result = await service.report(cmd, actor, correlation)
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
    async def get_case(case_id: str) -> dict[str, Any]:
        view = await service.case_view(case_id)
        if view is None:
            raise _refused("case_id", f"no case {case_id}", 404)
        return case_json(view, with_timeline=True)

    @router.get("/v1/cases")
    async def list_cases(request: Request) -> dict[str, Any]:
        try:
            query = parse_case_query(request.query_params, service.clock.now())
        except DomainError as exc:
            raise http_error(exc) from None
        return page_json(await service.query_cases(query))

    @router.get("/v1/grids")
    async def get_grids() -> JSONResponse:
        return JSONResponse(grids, media_type="application/geo+json")

    @router.get("/v1/categories")
    async def get_categories() -> dict[str, Any]:
        return categories

    return router
