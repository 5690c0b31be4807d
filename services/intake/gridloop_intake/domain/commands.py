"""The report command and the one way it is refused."""

from __future__ import annotations

from dataclasses import dataclass

from gridloop_events.catalogue import AttachmentRef, ReporterContact
from gridloop_events.vocabulary import Channel, Severity


@dataclass(frozen=True)
class ReportCase:
    """A resident's report, whatever channel brought it (native JSON or Open311)."""

    channel: Channel
    category_code: str
    description: str
    grid_code: str | None = None
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    severity: Severity = Severity.normal
    reporter: ReporterContact | None = None
    attachments: tuple[AttachmentRef, ...] = ()
    idempotency_key: str | None = None
    first_contact: str | None = None


class ReportRejected(Exception):
    """A report that cannot be right: `field` names the offending part of the request
    (dotted, e.g. "location.lat"), `reason` says why. `status` is the HTTP answer."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status
