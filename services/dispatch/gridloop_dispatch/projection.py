"""Dispatch's read model: who holds each open case, with its due times, and the triage queue.

Rows hold due times only; "overdue" is a comparison with the clock made at query time, so the
tables are a pure function of the log and a rebuild equals them row for row.
"""

from __future__ import annotations

import asyncpg
from gridloop_district import District
from gridloop_events.case_projection import CaseProjection
from gridloop_events.catalogue import (
    CaseAccepted,
    CaseDispatched,
    CaseReturned,
    CaseTriageQueued,
    DeadlineMissed,
    ExtensionDecided,
)
from gridloop_events.commands import Decide
from gridloop_events.envelope import Envelope, StoredEvent
from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.logging import get_logger
from gridloop_events.store import EventStore
from gridloop_events.write_buffer import WriteBuffer

from .domain.reactions import react

log = get_logger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS assignment (
    case_id          text PRIMARY KEY,
    unit_code        text NOT NULL,
    tier             text NOT NULL,
    kind             text NOT NULL,
    urgent           boolean NOT NULL,
    status           text NOT NULL,
    handler_id       text,
    category_code    text,
    severity         text,
    grid             text,
    dispatched_at    timestamptz NOT NULL,
    accepted_at      timestamptz,
    accept_due       timestamptz NOT NULL,
    resolve_due      timestamptz NOT NULL,
    escalation_level integer NOT NULL,
    redispatch       boolean NOT NULL,
    escalation       boolean NOT NULL,
    dispatch_count   integer NOT NULL,
    last_sequence    bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS assignment_unit ON assignment (unit_code, urgent DESC, resolve_due);
CREATE TABLE IF NOT EXISTS triage_queue (
    case_id          text PRIMARY KEY,
    reason           text NOT NULL,
    detail           text NOT NULL,
    returned_by      text,
    category_code    text,
    severity         text,
    grid             text,
    queued_at        timestamptz NOT NULL,
    dispatch_due     timestamptz NOT NULL,
    escalation_level integer NOT NULL,
    last_sequence    bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS triage_queue_age ON triage_queue (queued_at, case_id);
"""

HELD = frozenset({Status.dispatched, Status.accepted})


def _text(value: object) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


class DispatchProjection(CaseProjection):
    name = "dispatch"
    schema = "dispatch"
    event_types = None  # the folded state needs every event of a case
    tables = ("case_state", "assignment", "triage_queue")

    def __init__(
        self, district: District, store: EventStore | None = None, *, schema: str | None = None
    ) -> None:
        super().__init__(store)
        self.district = district
        if schema:
            self.schema = schema

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(DDL)

    async def on_event(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        e = stored.envelope
        p = e.payload
        seq = stored.sequence
        if isinstance(p, CaseDispatched):
            await conn.execute(
                """INSERT INTO assignment (case_id, unit_code, tier, kind, urgent, status,
                       handler_id, category_code, severity, grid, dispatched_at, accepted_at,
                       accept_due, resolve_due, escalation_level, redispatch, escalation,
                       dispatch_count, last_sequence)
                   VALUES ($1,$2,$3,$4,$5,'dispatched',NULL,$6,$7,$8,$9,NULL,$10,$11,$12,$13,$14,$15,$16)
                   ON CONFLICT (case_id) DO UPDATE SET unit_code = EXCLUDED.unit_code,
                       tier = EXCLUDED.tier, kind = EXCLUDED.kind, urgent = EXCLUDED.urgent,
                       status = 'dispatched', handler_id = NULL,
                       category_code = EXCLUDED.category_code, severity = EXCLUDED.severity,
                       grid = EXCLUDED.grid, dispatched_at = EXCLUDED.dispatched_at,
                       accepted_at = NULL, accept_due = EXCLUDED.accept_due,
                       resolve_due = EXCLUDED.resolve_due,
                       escalation_level = EXCLUDED.escalation_level,
                       redispatch = EXCLUDED.redispatch, escalation = EXCLUDED.escalation,
                       dispatch_count = EXCLUDED.dispatch_count,
                       last_sequence = EXCLUDED.last_sequence""",
                e.case_id, p.unit_code, p.tier.value, p.kind.value, p.urgent,
                after.category_code, _text(after.severity), after.grid, e.occurred_at,
                p.deadlines.accept_due, p.deadlines.resolve_due, after.escalation_level,
                p.redispatch, p.escalation, after.dispatch_count, seq,
            )
        elif isinstance(p, CaseAccepted):
            await conn.execute(
                """UPDATE assignment SET status = 'accepted', handler_id = $2,
                       accepted_at = coalesce(accepted_at, $3), last_sequence = $4
                   WHERE case_id = $1""",
                e.case_id, after.handler_id, e.occurred_at, seq,
            )
        elif isinstance(p, ExtensionDecided) and p.approved and p.resolve_due is not None:
            await conn.execute(
                "UPDATE assignment SET resolve_due = $2, last_sequence = $3 WHERE case_id = $1",
                e.case_id, p.resolve_due, seq,
            )
        elif isinstance(p, DeadlineMissed):
            for table in ("assignment", "triage_queue"):
                await conn.execute(
                    f"UPDATE {table} SET escalation_level = $2, last_sequence = $3"
                    " WHERE case_id = $1",
                    e.case_id, after.escalation_level, seq,
                )
        elif isinstance(p, CaseTriageQueued | CaseReturned):
            await conn.execute(
                """INSERT INTO triage_queue (case_id, reason, detail, returned_by, category_code,
                       severity, grid, queued_at, dispatch_due, escalation_level, last_sequence)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)
                   ON CONFLICT (case_id) DO UPDATE SET reason = EXCLUDED.reason,
                       detail = EXCLUDED.detail, returned_by = EXCLUDED.returned_by,
                       queued_at = EXCLUDED.queued_at, dispatch_due = EXCLUDED.dispatch_due,
                       escalation_level = EXCLUDED.escalation_level,
                       last_sequence = EXCLUDED.last_sequence""",
                e.case_id,
                p.reason.value if isinstance(p, CaseTriageQueued) else "returned",
                p.detail if isinstance(p, CaseTriageQueued) else p.reason,
                p.unit_code if isinstance(p, CaseReturned) else None,
                after.category_code, _text(after.severity), after.grid, e.occurred_at,
                p.dispatch_due, after.escalation_level, seq,
            )
        if after.status not in HELD:
            await conn.execute("DELETE FROM assignment WHERE case_id = $1", e.case_id)
        if after.status is not Status.triage:
            await conn.execute("DELETE FROM triage_queue WHERE case_id = $1", e.case_id)

    def reactions(self, stored: StoredEvent, before: CaseState, after: CaseState) -> list[Decide]:
        # `before` answers what the reaction must know of the past (was the missed deadline live?).
        district = self.district

        def decide(current: CaseState) -> list[Envelope]:
            events = react(stored, before, current, district)
            if events:
                log.info(
                    "dispatch.decided",
                    case_id=stored.envelope.case_id,
                    correlation_id=stored.envelope.correlation_id,
                    cause=stored.envelope.event_type,
                    events=[ev.event_type for ev in events],
                )
            return events

        return [decide]
