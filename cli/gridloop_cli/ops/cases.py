"""A case as the log tells it: its timeline (who, when, what, caused by what) and its state at
any moment, the shared lifecycle fold of the events the log held at that moment."""

from __future__ import annotations

import json
from contextlib import aclosing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import takewhile
from typing import Any

from gridloop_events.case_projection import state_to_json
from gridloop_events.codec import content_hash, decode
from gridloop_events.envelope import StoredEvent
from gridloop_events.lifecycle import CaseState, fold
from gridloop_events.store import EventStore

from .redaction import public_payload
from .tail import raw_events


def summarize(stored: StoredEvent) -> str:
    # The intake service's words for each event: codes, enums, ids and times, never free text
    # or the reporter, so the same sentence appears in the API's timeline and here.
    from gridloop_intake.domain.timeline import summarize as intake_summary

    return intake_summary(stored.envelope)


@dataclass(frozen=True)
class CaseAsOf:
    case_id: str
    as_of: datetime | None
    shown: tuple[StoredEvent, ...]
    stored_at: tuple[datetime | None, ...]  # when the server stored each event shown
    later: int  # events of the case stored after `as_of`
    state: CaseState


async def load(store: EventStore, case_id: str, as_of: datetime | None = None) -> CaseAsOf:
    """The case as the log held it at `as_of`: its events the server had stored by then.

    The server's storage time, not an envelope's own: it follows the stream order, so the
    events shown are always a prefix of the case's history (an envelope's times do not — a
    reaction carries its cause's time), and it is the same cut `gridloop replay --to-time` makes.
    """
    history: list[tuple[StoredEvent, datetime | None]] = []
    async with aclosing(raw_events(store, store.subjects.case(case_id))) as stored:
        async for raw in stored:
            history.append((StoredEvent(sequence=raw.sequence, subject=raw.subject,
                                        envelope=decode(raw.data, store.registry),
                                        content_hash=content_hash(raw.data)), raw.stored_at))
    shown = list(history if as_of is None else takewhile(
        lambda item: item[1] is not None and item[1] <= as_of, history))
    events = tuple(s for s, _ in shown)
    return CaseAsOf(case_id, as_of, events, tuple(t for _, t in shown),
                    len(history) - len(shown), fold(events))


def caused_by(stored: StoredEvent, history: Sequence[StoredEvent]) -> str:
    cause = stored.envelope.causation_id
    if cause is None:
        return "a command"
    for earlier in history:
        if str(earlier.envelope.event_id) == cause:
            return f"#{earlier.sequence} {earlier.envelope.event_type}"
    return f"event {cause}"


def timeline(view: CaseAsOf) -> list[dict[str, Any]]:
    rows = []
    for s, stored_at in zip(view.shown, view.stored_at, strict=True):
        e = s.envelope
        rows.append({
            "sequence": s.sequence,
            "event_id": str(e.event_id),
            "event_type": e.event_type,
            "occurred_at": e.occurred_at.isoformat(),
            "recorded_at": e.recorded_at.isoformat(),
            "stored_at": stored_at.isoformat() if stored_at else None,
            "actor": {"kind": e.actor.kind.value, "id": e.actor.id, "role": e.actor.role},
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "caused_by": caused_by(s, view.shown),
            "summary": summarize(s),
            "payload": public_payload(e),
        })
    return rows


def state_dict(state: CaseState) -> dict[str, Any]:
    return json.loads(state_to_json(state))


def as_dict(view: CaseAsOf) -> dict[str, Any]:
    return {
        "case_id": view.case_id,
        "as_of": view.as_of.isoformat() if view.as_of else None,
        "events": len(view.shown),
        "later_events": view.later,
        "state": state_dict(view.state),
        "timeline": timeline(view),
    }
