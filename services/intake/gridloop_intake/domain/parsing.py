"""The native JSON report, checked shape by shape; every refusal names its field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridloop_events.catalogue import AttachmentRef, ReporterContact
from gridloop_events.vocabulary import Channel, Severity
from pydantic import ValidationError

from .commands import ReportCase, ReportRejected

TOP_FIELDS = frozenset({"channel", "category_code", "description", "location", "severity",
                        "reporter", "attachments", "first_contact"})
LOCATION_FIELDS = frozenset({"grid_code", "lat", "lon", "address"})
REPORTER_FIELDS = frozenset({"name", "phone", "id_number", "contact_note"})
ATTACHMENT_FIELDS = frozenset({"uri", "media_type", "sha256"})


def _object(value: Any, field: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ReportRejected(field, "must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        prefix = f"{field}." if field != "body" else ""
        raise ReportRejected(f"{prefix}{unknown[0]}", "is not a known field")
    return value


def _text(data: Mapping[str, Any], key: str, field: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ReportRejected(field, "is required")
        return None
    if not isinstance(value, str):
        raise ReportRejected(field, "must be a string")
    if any(not ch.isprintable() and ch not in "\t\r\n" for ch in value):
        # A NUL was recorded, then no projection could store it (PostgreSQL text): refuse it
        # before it reaches the log, and the other control characters with it.
        raise ReportRejected(field, "must not hold control characters")
    return value


def _number(data: Mapping[str, Any], key: str, field: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportRejected(field, "must be a number")
    return float(value)


def _model(cls: type, data: Mapping[str, Any], field: str):  # type: ignore[no-untyped-def]
    try:
        return cls(**{k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ReportRejected(f"{field}.{where}" if where else field,
                             err["msg"].removeprefix("Value error, ")) from None


def parse_report(raw: Any, idempotency_key: str | None = None) -> ReportCase:
    body = _object(raw, "body", TOP_FIELDS)
    channel = _text(body, "channel", "channel", required=True)
    if channel not in {c.value for c in Channel}:
        raise ReportRejected("channel", f"must be one of {', '.join(c.value for c in Channel)}")
    severity = _text(body, "severity", "severity") or Severity.normal.value
    if severity not in {s.value for s in Severity}:
        raise ReportRejected("severity", f"must be one of {', '.join(s.value for s in Severity)}")

    if body.get("location") is None:
        raise ReportRejected("location", "is required")
    location = _object(body["location"], "location", LOCATION_FIELDS)

    reporter = None
    if body.get("reporter") is not None:
        raw_reporter = _object(body["reporter"], "reporter", REPORTER_FIELDS)
        for key in REPORTER_FIELDS:
            _text(raw_reporter, key, f"reporter.{key}")
        reporter = _model(ReporterContact, raw_reporter, "reporter")

    attachments: list[AttachmentRef] = []
    raw_attachments = body.get("attachments")
    if raw_attachments is not None:
        if not isinstance(raw_attachments, list):
            raise ReportRejected("attachments", "must be a list")
        for i, item in enumerate(raw_attachments):
            field = f"attachments[{i}]"
            entry = _object(item, field, ATTACHMENT_FIELDS)
            uri = _text(entry, "uri", f"{field}.uri", required=True) or ""
            if any(ch.isspace() or not ch.isprintable() for ch in uri):
                # No URI holds these; a CR/LF would split a header wherever the URI is echoed.
                raise ReportRejected(f"{field}.uri", "must not hold whitespace or control "
                                                     "characters")
            _text(entry, "media_type", f"{field}.media_type")
            sha = _text(entry, "sha256", f"{field}.sha256")
            entry = {**entry, "sha256": sha.lower() if sha else None}
            attachments.append(_model(AttachmentRef, entry, field))

    return ReportCase(
        channel=Channel(channel),
        category_code=_text(body, "category_code", "category_code", required=True) or "",
        description=_text(body, "description", "description", required=True) or "",
        grid_code=_text(location, "grid_code", "location.grid_code"),
        lat=_number(location, "lat", "location.lat"),
        lon=_number(location, "lon", "location.lon"),
        address=_text(location, "address", "location.address"),
        severity=Severity(severity),
        reporter=reporter,
        attachments=tuple(attachments),
        idempotency_key=idempotency_key,
        first_contact=_text(body, "first_contact", "first_contact"),
    )
