"""The case register's row, computed from the lifecycle state and the event alone, so a rebuild
from the log writes the same rows as the live projection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gridloop_events.catalogue import (
    CallbackRated,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseReturned,
    CaseTriageQueued,
    DeadlineMissed,
    ExtensionDecided,
)
from gridloop_events.envelope import StoredEvent
from gridloop_events.lifecycle import CaseState
from gridloop_events.vocabulary import DeadlineKind

# Events after which the case again has deadlines it has not missed.
_FRESH_DEADLINES = (CaseDispatched, CaseTriageQueued, CaseReturned, CaseClosed, CallbackRated)


def _due(state: CaseState, kind: DeadlineKind) -> datetime | None:
    d = state.deadline(kind)
    return d.due_at if d else None


def state_columns(state: CaseState) -> dict[str, Any]:
    dues = [d.due_at for d in state.deadlines.values()]
    return {
        "case_id": state.case_id,
        "district": state.district,
        "status": state.status.value,
        "category_code": state.category_code,
        "severity": state.severity.value if state.severity else None,
        "street": state.street,
        "community": state.community,
        "grid": state.grid,
        "tier": state.tier.value if state.tier else None,
        "kind": state.kind.value if state.kind else None,
        "unit_code": state.unit_code,
        "handler_id": state.handler_id,
        "urgent": state.urgent,
        "escalation_level": state.escalation_level,
        "accept_due": _due(state, DeadlineKind.accept),
        "resolve_due": _due(state, DeadlineKind.resolve),
        "dispatch_due": _due(state, DeadlineKind.dispatch),
        "callback_due": _due(state, DeadlineKind.callback),
        "next_due": min(dues) if dues else None,
        "reported_at": state.reported_at,
        "updated_at": state.last_event_at,
        "closed_at": state.closed_at,
        "outcome": state.outcome.value if state.outcome else None,
        "rating": state.rating.value if state.rating else None,
        "event_count": state.events,
        "dispatch_count": state.dispatch_count,
        "close_count": state.close_count,
        "unsatisfied_count": state.unsatisfied_count,
        "missed_count": len(state.missed),
        "version": state.version,
    }


def event_columns(stored: StoredEvent) -> dict[str, Any]:
    """Facts only an event holds: the report's text and place, who reported it, the latest
    resolution. Who reported it is the envelope's actor — a token subject, so a resident can
    list their own cases — never the sealed contact in the payload."""
    p = stored.envelope.payload
    if isinstance(p, CaseReported):
        path = p.location.grid_path
        actor = stored.envelope.actor
        return {
            # The kind too: a resident's subject may equal a staff id from another directory.
            "reported_by": actor.id,
            "reporter_kind": actor.kind.value,
            "channel": p.channel.value,
            "description": p.description,
            "lat": p.location.lat,
            "lon": p.location.lon,
            "address": p.location.address,
            "compound": path.compound if path else None,
        }
    if isinstance(p, CaseClosed):
        return {"resolution": p.resolution}
    return {}


def overdue_since(current: datetime | None, stored: StoredEvent, before: CaseState) -> datetime | None:
    """When the case last missed a live deadline and has not since been given fresh ones."""
    p = stored.envelope.payload
    if isinstance(p, DeadlineMissed):
        live = before.deadline(p.deadline)
        if live is not None and live.id == p.deadline_id:
            return current or p.detected_at
        return current
    if isinstance(p, _FRESH_DEADLINES):
        return None
    if isinstance(p, ExtensionDecided) and p.approved:
        return None
    return current
