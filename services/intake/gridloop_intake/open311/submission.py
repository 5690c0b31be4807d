"""POST requests: a GeoReport form becomes the intake's ReportCase, or a 400/404 saying why.

The reporter's own details (first_name, last_name, phone, email, device_id, account_id) go into
ReporterContact, the one place the event catalogue keeps personal data; nothing that renders a
request reads it back.
"""

from __future__ import annotations

import math
import mimetypes
from collections.abc import Mapping
from urllib.parse import urlsplit

from gridloop_district import District
from gridloop_events.catalogue import AttachmentRef, ReporterContact
from gridloop_events.vocabulary import Channel, Severity

from ..domain.commands import ReportCase
from .catalogue import service_item
from .errors import bad_request

# Limits of the event catalogue (CaseReported, Location, ReporterContact, AttachmentRef).
MAX_DESCRIPTION = 4000
MAX_ADDRESS = 300
MAX_NAME = 100
MAX_PHONE = 40
MAX_CONTACT_NOTE = 300
MAX_URL = 1000


def _field(form: Mapping[str, str], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):  # a multipart file part where text belongs
        raise bad_request(f"{name} must be a text field")
    if any(not ch.isprintable() and ch not in "\t\r\n" for ch in value):
        # As the native API: a NUL in a recorded event is one no projection can store.
        raise bad_request(f"{name} must not hold control characters")
    value = value.strip()
    return value or None


def _limited(form: Mapping[str, str], name: str, limit: int) -> str | None:
    value = _field(form, name)
    if value is not None and len(value) > limit:
        raise bad_request(f"{name} is longer than {limit} characters")
    return value


def _coordinate(form: Mapping[str, str], name: str, bound: float) -> float:
    raw = _field(form, name)
    try:
        value = float(raw or "")
    except ValueError:
        raise bad_request(f"{name} is not a number") from None
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise bad_request(f"{name} must lie between -{bound:g} and {bound:g}")
    return value


def _coordinates(form: Mapping[str, str]) -> tuple[float | None, float | None]:
    has_lat, has_long = _field(form, "lat") is not None, _field(form, "long") is not None
    if not has_lat and not has_long:
        return None, None
    if has_lat != has_long:
        raise bad_request("lat and long must be sent together")
    return _coordinate(form, "lat", 90), _coordinate(form, "long", 180)


def grid_for_address_id(district: District, address_id: str) -> str:
    """An address_id is a grid code, or a micro-grid/building code that names its grid."""
    if district.is_grid_code(address_id):
        return address_id
    for grid in district.grids:
        if any(m.code == address_id for m in grid.micro_grids):
            return grid.code
    raise bad_request(f"address_id {address_id!r} not found")


def _attachment(form: Mapping[str, str]) -> tuple[AttachmentRef, ...]:
    url = _limited(form, "media_url", MAX_URL)
    if url is None:
        return ()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request("media_url must be an http or https URL")
    guessed, _ = mimetypes.guess_type(parts.path)
    return (AttachmentRef(uri=url, media_type=guessed or "application/octet-stream"),)


def _reporter(form: Mapping[str, str]) -> ReporterContact | None:
    first = _limited(form, "first_name", MAX_NAME)
    last = _limited(form, "last_name", MAX_NAME)
    name = " ".join(p for p in (first, last) if p) or None
    if name is not None and len(name) > MAX_NAME:
        raise bad_request(f"first_name and last_name together are longer than {MAX_NAME} characters")
    phone = _limited(form, "phone", MAX_PHONE)
    email = _field(form, "email")
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise bad_request("email is not an e-mail address")
    # The catalogue's contact has no e-mail or account fields: they travel in its free-text note.
    handles = [(k, _field(form, k)) for k in ("email", "account_id", "device_id")]
    note = "; ".join(f"{k}={v}" for k, v in handles if v is not None) or None
    if note is not None and len(note) > MAX_CONTACT_NOTE:
        raise bad_request(
            f"email, account_id and device_id together are longer than {MAX_CONTACT_NOTE} characters"
        )
    if name is None and phone is None and note is None:
        return None
    return ReporterContact(name=name, phone=phone, contact_note=note)


def report_from_form(
    district: District, form: Mapping[str, str], *, idempotency_key: str | None = None
) -> ReportCase:
    """The ReportCase a POST requests form asks for; api_key and attribute[...] are not read
    (authentication comes later; no service defines attributes, metadata is false)."""
    code = _field(form, "service_code")
    if code is None:
        raise bad_request("service_code was not provided")
    item = service_item(district, code)

    lat, lon = _coordinates(form)
    address = _limited(form, "address_string", MAX_ADDRESS)
    address_id = _field(form, "address_id")
    grid_code = grid_for_address_id(district, address_id) if address_id is not None else None
    if lat is None and address is None and grid_code is None:
        raise bad_request("a location is required: lat and long, address_string or address_id")

    # GeoReport makes description optional; a case needs one, and the service's name says it.
    description = _limited(form, "description", MAX_DESCRIPTION) or item.name
    return ReportCase(
        channel=Channel.open311,
        category_code=item.code,
        description=description,
        grid_code=grid_code,
        lat=lat,
        lon=lon,
        address=address,
        severity=Severity.normal,
        reporter=_reporter(form),
        attachments=_attachment(form),
        idempotency_key=idempotency_key,
        first_contact=None,
    )
