"""A case's timeline: who did what, when, caused by what — in words that carry no personal data.

Summaries are built from codes, enums, ids and times only. Free text (descriptions, notes,
reasons, comments) may name people, so it never enters a summary; the reporter never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gridloop_events.catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseReturned,
    CaseTriageQueued,
    DeadlineApproaching,
    DeadlineMissed,
    ExtensionDecided,
    ExtensionRequested,
    ProgressNoted,
)
from gridloop_events.envelope import Envelope, StoredEvent
from gridloop_events.lifecycle import fold
from gridloop_events.vocabulary import DeadlineKind

from .views import CaseView, TimelineEntry


def _t(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def summarize(envelope: Envelope) -> str:
    p = envelope.payload
    match p:
        case CaseReported():
            path = p.location.grid_path
            where = f"grid {path.grid}" if path else "no grid (address only)"
            files = f", {len(p.attachments)} attachment(s)" if p.attachments else ""
            return (f"reported via {p.channel.value}: category {p.category_code}, "
                    f"severity {p.severity.value}, {where}{files}")
        case CaseTriageQueued():
            return f"queued for a dispatcher ({p.reason.value}); dispatch due {_t(p.dispatch_due)}"
        case CaseDispatched():
            how = "escalated" if p.escalation else "re-dispatched" if p.redispatch else "dispatched"
            extra = ", urgent" if p.urgent else ""
            if p.escalation_level:
                extra += f", escalation level {p.escalation_level}"
            return (f"{how} to {p.unit_code} at {p.tier.value} tier ({p.kind.value}{extra}); "
                    f"accept due {_t(p.deadlines.accept_due)}, "
                    f"resolve due {_t(p.deadlines.resolve_due)}")
        case CaseAccepted():
            return f"accepted by {p.unit_code}, handler {p.handler_id}"
        case CaseReturned():
            return f"returned by {p.unit_code} to triage; dispatch due {_t(p.dispatch_due)}"
        case ExtensionRequested():
            return f"{p.unit_code} asked to extend the resolve deadline to {_t(p.requested_resolve_due)}"
        case ExtensionDecided():
            if p.approved and p.resolve_due is not None:
                return f"extension approved by {p.supervisor_id}: resolve due {_t(p.resolve_due)}"
            return f"extension refused by {p.supervisor_id}"
        case ProgressNoted():
            return f"progress noted by {p.unit_code or p.author_id}"
        case DeadlineApproaching():
            return f"{p.deadline.value} deadline approaching (due {_t(p.due_at)})"
        case DeadlineMissed():
            unit = f" by {p.assignee_unit}" if p.assignee_unit else ""
            return (f"{p.deadline.value} deadline missed{unit} (due {_t(p.due_at)}); "
                    f"escalation level {p.escalation_level}")
        case CaseClosed():
            unit = f" by {p.unit_code}" if p.unit_code else ""
            dup = f", duplicate of {p.duplicate_of}" if p.duplicate_of else ""
            return f"closed as {p.outcome.value}{unit}{dup}"
        case CallbackScheduled():
            return f"callback round {p.round} due {_t(p.due_at)}"
        case CallbackRated():
            return f"rated {p.rating.value} by {p.method.value}"
        case _:
            return envelope.event_type


def timeline_entry(stored: StoredEvent) -> TimelineEntry:
    e = stored.envelope
    return TimelineEntry(
        sequence=stored.sequence,
        event_id=str(e.event_id),
        event_type=e.event_type,
        occurred_at=e.occurred_at,
        actor_kind=e.actor.kind.value,
        actor_id=e.actor.id,
        caused_by=e.causation_id,
        summary=summarize(e),
    )


def case_view_from_history(history: Sequence[StoredEvent]) -> CaseView:
    """The case as the log tells it; the status and deadlines are the shared lifecycle fold."""
    state = fold(history)
    reported = next((s.envelope.payload for s in history
                     if isinstance(s.envelope.payload, CaseReported)), None)
    closed = next((s.envelope.payload for s in reversed(history)
                   if isinstance(s.envelope.payload, CaseClosed)), None)
    location = reported.location if reported else None
    accept = state.deadline(DeadlineKind.accept)
    resolve = state.deadline(DeadlineKind.resolve)
    return CaseView(
        case_id=state.case_id,
        status=state.status.value,
        category_code=state.category_code,
        description=reported.description if reported else None,
        channel=reported.channel.value if reported else None,
        lat=location.lat if location else None,
        lon=location.lon if location else None,
        address=location.address if location else None,
        grid_code=state.grid,
        reported_at=state.reported_at,
        updated_at=state.last_event_at,
        closed_at=state.closed_at,
        outcome=state.outcome.value if state.outcome else None,
        resolution=closed.resolution if closed else None,
        unit_code=state.unit_code,
        timeline=tuple(timeline_entry(s) for s in history),
        district=state.district,
        severity=state.severity.value if state.severity else None,
        street_code=state.street,
        community_code=state.community,
        tier=state.tier.value if state.tier else None,
        urgent=state.urgent,
        escalation_level=state.escalation_level,
        accept_due=accept.due_at if accept else None,
        resolve_due=resolve.due_at if resolve else None,
        rating=state.rating.value if state.rating else None,
        version=state.version,
    )
