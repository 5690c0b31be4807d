"""The GeoReport v2 HTTP surface under /open311/v2/: thin handlers over the intake service.

Every answer, refusals included, is in the format the path's extension names (.json or .xml);
a path or extension the spec does not know is a 404 in the spec's error format.

Every call needs a bearer token. The GETs are the public view, open to every role (an external
system's too): every case is listed, but what people wrote (description, address, resolution)
reads as written only for those the native API lets read the case — its reporter, the unit it is
with, staff of its area, auditors — and with contact details masked for everyone else. A request
is posted by a resident, or by a grid worker or hotline operator within their area, exactly as on
the native API.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from gridloop_events.auth import (
    EVERYONE,
    Authenticator,
    AuthRefused,
    CaseFacts,
    Principal,
    Role,
    Verdict,
    may_see,
)
from gridloop_events.http import DomainError, correlation_id
from gridloop_events.lifecycle import OPEN_STATUSES
from gridloop_events.logging import get_logger
from gridloop_events.vocabulary import Tier

from ..api import REPORTERS, authorize_report
from ..domain.commands import ReportRejected
from ..domain.listing import MAX_LIMIT as REGISTER_PAGE
from ..domain.timeline import case_view_from_history
from ..domain.views import CaseView
from ..queries import reported_by_resident
from ..reporting import CASE_ID_PATTERN
from . import catalogue
from .documents import (
    Format,
    Rendered,
    parse_format,
    render_errors,
    render_posted,
    render_requests,
    render_service_definition,
    render_services,
)
from .errors import Open311Error, bad_request, not_found
from .query import RequestQuery, parse_query
from .rendering import CLOSED_STATUSES, posted_doc, request_doc
from .submission import report_from_form

if TYPE_CHECKING:
    from ..reporting import IntakeService

log = get_logger(__name__)

PREFIX = "/open311/v2"
FREE_TEXT_RULE = (
    "Every case, to every signed-in caller. `description`, `address` and a closed case's "
    "`status_notes` read as written only for those the native API lets read the case (its "
    "reporter, the unit it is with, staff of its area, auditors); for anyone else phone numbers, "
    "id numbers and e-mail addresses in them read `***`, as on the public event stream.")
# The lifecycle statuses each Open311 status stands for, as the register filters on them.
_CASE_STATUSES = {
    "open": tuple(sorted(s.value for s in OPEN_STATUSES)),
    "closed": tuple(sorted(CLOSED_STATUSES)),
}


def _response(rendered: Rendered) -> Response:
    return Response(rendered.body, status_code=rendered.status, media_type=rendered.media_type)


def _error_format(extension: str) -> Format:
    try:
        return Format(extension)
    except ValueError:
        return Format.json


async def _answer(
    request: Request, extension: str, produce: Callable[[Format], Awaitable[Rendered]]
) -> Response:
    """Every endpoint's frame: pick the format, run, and turn refusals into spec errors."""
    try:
        return _response(await produce(parse_format(extension)))
    except Open311Error as e:
        error = e
    except ReportRejected as e:
        status = e.status if e.status in (404, 409) else 400
        error = Open311Error(status, f"{e.field}: {e.reason}")
    except DomainError as e:
        status = e.status if e.status in (404, 409) else 400
        error = Open311Error(status, f"{e.field}: {e.reason}" if e.field else e.reason)
    except HTTPException as e:  # a refusal by the authorisation rules
        reason = e.detail.get("reason") if isinstance(e.detail, dict) else str(e.detail)
        error = Open311Error(e.status_code, str(reason))
    except Exception:
        log.exception("open311.failed", path=request.url.path,
                      correlation_id=request.headers.get("x-correlation-id"))
        error = Open311Error(500, "the request could not be processed; try again later")
    if error.code < 500:
        # The code only: a description may quote what the resident sent.
        log.info("open311.refused", path=request.url.path, code=error.code,
                 correlation_id=request.headers.get("x-correlation-id"))
    return _response(render_errors(_error_format(extension), [error]))


def _check_jurisdiction(service: IntakeService, params: Mapping[str, Any]) -> None:
    """One deployment serves one district; jurisdiction_id, when sent, must name it."""
    jurisdiction = params.get("jurisdiction_id")
    if isinstance(jurisdiction, str) and jurisdiction.strip():
        if jurisdiction.strip() != service.district.code:
            raise not_found(f"jurisdiction_id {jurisdiction!r} not found")


def _case_statuses(query: RequestQuery) -> tuple[str, ...] | None:
    if query.statuses is None or len(query.statuses) == len(_CASE_STATUSES):
        return None
    return tuple(s for name in sorted(query.statuses) for s in _CASE_STATUSES[name])


async def _find(service: IntakeService, query: RequestQuery) -> list[Any]:
    """Up to query.limit register rows, newest first, fetched in the register's page size."""
    if query.case_ids is not None:
        filters: dict[str, Any] = {"case_ids": query.case_ids}
    else:
        filters = {"status": _case_statuses(query), "category": query.service_codes,
                   "since": query.start, "until": query.end}
    found: list[Any] = []
    while len(found) < query.limit:
        size = min(REGISTER_PAGE, query.limit - len(found))
        page = await service.list_cases(**filters, limit=size,
                                        offset=query.offset + len(found))
        found.extend(page)
        if len(page) < size:
            break
    return found


def _facts(view: CaseView, reporter: Principal | None) -> CaseFacts:
    """What the access rules need of a register row; `reporter`: the caller, when the register
    says they reported it."""
    return CaseFacts(view.case_id, view.district or "", view.grid_code, view.unit_code,
                     Tier(view.tier) if view.tier else None,
                     reporter.actor() if reporter else None)


async def _readable(service: IntakeService, principal: Principal,
                    views: Sequence[CaseView]) -> set[str]:
    """The cases among `views` whose free text the caller may read as written: those the
    native API would show them (may_see)."""
    own: set[str] = set()
    if principal.role is Role.resident:
        own = await reported_by_resident(service.pool, service.schema, principal.subject,
                                         [v.case_id for v in views])
    return {v.case_id for v in views
            if may_see(principal, _facts(v, principal if v.case_id in own else None))
            is Verdict.allow}


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# A full form (4,000-character description, names, address, URL) percent-encoded stays far below.
MAX_FORM_BYTES = 100_000


async def _read_form(request: Request) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in FORM_TYPES:
        raise bad_request("send the request as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise Open311Error(413, f"the form must be at most {MAX_FORM_BYTES} bytes")
    body = await request.body()  # read once; the form parser reuses it
    if len(body) > MAX_FORM_BYTES:
        raise Open311Error(413, f"the form must be at most {MAX_FORM_BYTES} bytes")
    try:
        return await request.form()
    except Exception:  # the multipart parser's refusals have no common public base
        raise bad_request("the body is not a valid form") from None


def _extension(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[1] if "." in last else "json"


async def refusal_handler(request: Request, exc: AuthRefused) -> Response:
    """A missing or refused token under /open311/ answers in the spec's error format too."""
    if not request.url.path.startswith(PREFIX + "/"):
        return await http_exception_handler(request, exc)
    reason = exc.detail.get("reason") if isinstance(exc.detail, dict) else str(exc.detail)
    rendered = render_errors(_error_format(_extension(request.url.path)),
                             [Open311Error(exc.status_code, str(reason))])
    response = _response(rendered)
    response.headers.update(exc.headers or {})
    return response


def build_router(service: IntakeService, auth: Authenticator) -> APIRouter:
    """GeoReport v2 over the intake service: its district, clock, report, case_view, list_cases."""
    router = APIRouter(prefix=PREFIX, tags=["open311"])
    public = [Depends(auth.allow(*EVERYONE))]
    reader = Depends(auth.allow(*EVERYONE))
    reporter = Depends(auth.allow(*REPORTERS))

    @router.get("/services.{fmt}", dependencies=public)
    async def get_services(fmt: str, request: Request) -> Response:
        async def produce(f: Format) -> Rendered:
            _check_jurisdiction(service, request.query_params)
            return render_services(f, catalogue.services(service.district))

        return await _answer(request, fmt, produce)

    @router.get("/services/{service_code}.{fmt}", dependencies=public)
    async def get_service_definition(service_code: str, fmt: str, request: Request) -> Response:
        async def produce(f: Format) -> Rendered:
            _check_jurisdiction(service, request.query_params)
            definition = catalogue.service_definition(service.district, service_code)
            return render_service_definition(f, definition)

        return await _answer(request, fmt, produce)

    @router.post("/requests.{fmt}")
    async def post_request(fmt: str, request: Request,
                           principal: Principal = reporter) -> Response:
        async def produce(f: Format) -> Rendered:
            form = await _read_form(request)
            _check_jurisdiction(service, form)
            cmd = report_from_form(service.district, form,
                                   idempotency_key=request.headers.get("idempotency-key"))
            cmd = authorize_report(service.district, principal, cmd)
            result = await service.report(cmd, principal.actor(), correlation_id(request))
            account = form.get("account_id")
            account_id = account.strip() or None if isinstance(account, str) else None
            posted = posted_doc(service.district, result.case_id, cmd.category_code, account_id)
            return render_posted(f, [posted])

        return await _answer(request, fmt, produce)

    @router.get("/requests.{fmt}", description=FREE_TEXT_RULE)
    async def get_requests(fmt: str, request: Request,
                           principal: Principal = reader) -> Response:
        async def produce(f: Format) -> Rendered:
            _check_jurisdiction(service, request.query_params)
            query = parse_query(request.query_params, service.clock.now())
            views = await _find(service, query)
            readable = await _readable(service, principal, views)
            return render_requests(f, [
                request_doc(service.district, v, free_text=v.case_id in readable)
                for v in views])

        return await _answer(request, fmt, produce)

    @router.get("/requests/{service_request_id}.{fmt}", description=FREE_TEXT_RULE)
    async def get_request(service_request_id: str, fmt: str, request: Request,
                          principal: Principal = reader) -> Response:
        async def produce(f: Format) -> Rendered:
            _check_jurisdiction(service, request.query_params)
            known_shape = re.match(CASE_ID_PATTERN, service_request_id)
            history = await service.store.read(service_request_id) if known_shape else []
            facts = CaseFacts.from_history(history)
            if facts is None:
                raise not_found(f"service_request_id {service_request_id!r} not found")
            # By the log, as the native API decides: the register may not have the case yet.
            free_text = may_see(principal, facts) is Verdict.allow
            return render_requests(f, [request_doc(
                service.district, case_view_from_history(history), free_text=free_text)])

        return await _answer(request, fmt, produce)

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False, dependencies=public)
    async def unknown(rest: str, request: Request) -> Response:
        extension = _extension(rest)

        async def produce(_: Format) -> Rendered:
            raise not_found(f"{PREFIX}/{rest} is not a GeoReport v2 resource")

        return await _answer(request, extension, produce)

    return router
