"""A case as a GeoReport service request. Built only from the public CaseView, which carries
no reporter data, so no contact detail can reach a GET answer.

The free text of a case (description, address, resolution) is shown as written only to those
the native API shows it to — whoever may read the case (gridloop_events.auth.may_see). Anyone
else gets the public view's text: phone numbers, id numbers and e-mail addresses masked, exactly
as on the public event stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridloop_district import District, UnknownCodeError
from gridloop_events.lifecycle import Status
from gridloop_events.public_view import mask_contacts

from .catalogue import service_name
from .documents import PostedDoc, RequestDoc

# Closed until the callback, or done after it: either way the handling is over.
CLOSED_STATUSES = frozenset({Status.closed.value, Status.done.value})

# What an open case's lifecycle status tells a resident (status_notes).
_OPEN_NOTES = {
    "reported": "Received; being routed to the unit that handles it.",
    "triage": "Waiting for a dispatcher to assign it.",
    "dispatched": "Assigned to the responsible unit.",
    "accepted": "The responsible unit is handling it.",
    "reopened": "Reopened after the callback; being handled again.",
}


def open311_status(status: str) -> str:
    return "closed" if status in CLOSED_STATUSES else "open"


def _agency(district: District, unit_code: str | None) -> str | None:
    if unit_code is None:
        return None
    try:
        return district.unit(unit_code).name
    except UnknownCodeError:
        return unit_code


def _status_notes(view: Any, text: Callable[[str | None], str | None]) -> str | None:
    if view.status in CLOSED_STATUSES:
        return text(view.resolution) or view.outcome
    return _OPEN_NOTES.get(view.status)


def _as_written(value: str | None) -> str | None:
    return value


def _masked(value: str | None) -> str | None:
    return mask_contacts(value) if value else value


def request_doc(district: District, view: Any, *, free_text: bool = True) -> RequestDoc:
    """`view` is intake's CaseView; `free_text`: the caller may read what people wrote as
    written (the HTTP handlers always decide it per caller)."""
    status = open311_status(view.status)
    text = _as_written if free_text else _masked
    return RequestDoc(
        service_request_id=view.case_id,
        status=status,
        status_notes=_status_notes(view, text),
        service_name=service_name(district, view.category_code),
        service_code=view.category_code,
        description=text(view.description),
        agency_responsible=_agency(district, view.unit_code),
        service_notice=None,
        requested_datetime=view.reported_at,
        updated_datetime=view.updated_at,
        expected_datetime=view.resolve_due if status == "open" else None,
        address=text(view.address),
        address_id=view.grid_code,
        zipcode=None,
        lat=view.lat,
        long=view.lon,
        media_url=None,
    )


def service_notice(district: District, service_code: str) -> str:
    """What a resident is told on submitting: the category's time limit for resolution."""
    seconds = district.category(service_code).limits_for("normal").resolve_seconds
    hours, rest = divmod(seconds, 3600)
    span = f"{hours} hour{'s' if hours != 1 else ''}" if hours and not rest else f"{seconds // 60} minutes"
    return f"Recorded. The time limit for resolving this kind of request is {span}."


def posted_doc(
    district: District, case_id: str, service_code: str, account_id: str | None
) -> PostedDoc:
    return PostedDoc(
        service_request_id=case_id,
        service_notice=service_notice(district, service_code),
        account_id=account_id,
    )
