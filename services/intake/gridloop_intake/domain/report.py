"""A report becomes a CaseReported payload, or is refused with the field at fault.

The reporter's contact is checked here but never put in the payload in clear: the caller seals it
with the case's data key (`with_reporter`), which takes the key store, which is I/O.
"""

from __future__ import annotations

import re

from gridloop_district import District, UnknownCodeError
from gridloop_events.catalogue import CaseReported, ReporterContact, SealedContact
from gridloop_events.vocabulary import Channel, Severity
from pydantic import ValidationError

from .commands import ReportCase, ReportRejected
from .location import resolve_location

MAX_DESCRIPTION = 4000
MAX_ATTACHMENTS = 20
MAX_FIRST_CONTACT = 128
# Mobile (11 digits), landline with area code and extension, or a short service number (12345):
# digits with the usual separators, an optional leading +.
PHONE = re.compile(r"^\+?[0-9][0-9 ()-]*[0-9]$")
PHONE_DIGITS = (5, 20)


def check_phone(phone: str) -> str:
    phone = phone.strip()
    digits = sum(ch.isdigit() for ch in phone)
    if not PHONE.match(phone) or not PHONE_DIGITS[0] <= digits <= PHONE_DIGITS[1]:
        raise ReportRejected("reporter.phone", "is not a phone number (digits, spaces, -, (), leading +)")
    return phone


def reporter_contact(cmd: ReportCase) -> ReporterContact | None:
    """The report's contact, trimmed and checked; None when it says nothing."""
    contact = cmd.reporter
    if contact is None:
        return None
    values = {k: (v.strip() or None) if isinstance(v, str) else v
              for k, v in contact.model_dump().items()}
    if all(v is None for v in values.values()):
        return None
    if values["phone"] is not None:
        values["phone"] = check_phone(values["phone"])
    return ReporterContact(**values)


def _enum(enum: type, value: object, field: str):  # type: ignore[no-untyped-def]
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ReportRejected(field, f"must be one of {allowed}") from None


def with_reporter(payload: CaseReported, sealed: SealedContact | None) -> CaseReported:
    return payload.model_copy(update={"reporter": sealed})


def prepare_report(
    cmd: ReportCase, district: District, *, idempotency_digest: str | None = None
) -> CaseReported:
    """The payload, without the reporter (see `reporter_contact` and `with_reporter`)."""
    channel = _enum(Channel, cmd.channel, "channel")
    severity = _enum(Severity, cmd.severity, "severity")

    category = (cmd.category_code or "").strip()
    try:
        district.category(category)
    except UnknownCodeError:
        raise ReportRejected("category_code", f"unknown category {category!r}") from None

    description = (cmd.description or "").strip()
    if not description:
        raise ReportRejected("description", "must not be empty")
    if len(description) > MAX_DESCRIPTION:
        raise ReportRejected("description", f"must be at most {MAX_DESCRIPTION} characters")

    first_contact = (cmd.first_contact or "").strip() or None
    if first_contact is not None and len(first_contact) > MAX_FIRST_CONTACT:
        raise ReportRejected("first_contact", f"must be at most {MAX_FIRST_CONTACT} characters")
    if len(cmd.attachments) > MAX_ATTACHMENTS:
        raise ReportRejected("attachments", f"at most {MAX_ATTACHMENTS} attachments")

    location = resolve_location(district, cmd.grid_code, cmd.lat, cmd.lon, cmd.address)
    reporter_contact(cmd)  # refused here with the rest, before a key is made for it
    try:
        return CaseReported(
            channel=channel,
            category_code=category,
            description=description,
            location=location,
            severity=severity,
            attachments=tuple(cmd.attachments),
            first_contact=first_contact,
            idempotency_digest=idempotency_digest,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise ReportRejected(field, err["msg"]) from None
