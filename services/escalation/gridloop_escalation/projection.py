"""The escalation read model: timers, the overdue list and the report-in counters.

Everything here is derived from events (occurred_at and payload fields), never from the clock,
so a rebuild equals the live tables row for row. The ticker reads `timers`; the HTTP API reads
all four tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from gridloop_events.case_projection import CaseProjection
from gridloop_events.catalogue import CaseAccepted, DeadlineMissed
from gridloop_events.envelope import StoredEvent
from gridloop_events.lifecycle import CaseState
from gridloop_events.vocabulary import DeadlineKind
from gridloop_events.write_buffer import WriteBuffer

from .domain.overdue import OverdueCase, overdue_after
from .domain.report_in import EscalationDispatch, escalation_dispatch, reported_in
from .domain.timers import TimerChanges, TimerStatus, timer_changes

DDL = """
CREATE TABLE IF NOT EXISTS timers (
    deadline_id    text PRIMARY KEY,
    case_id        text NOT NULL,
    district       text NOT NULL,
    kind           text NOT NULL,
    set_at         timestamptz NOT NULL,
    due_at         timestamptz NOT NULL,
    warn_at        timestamptz NOT NULL,
    unit_code      text,
    correlation_id text NOT NULL,
    status         text NOT NULL,
    set_sequence   bigint NOT NULL,
    warned_at      timestamptz,
    ended_at       timestamptz,
    ended_by       text
);
-- The ticker's two scans: due (pending|warned, due_at <= now) and warnable (pending, warn_at).
CREATE INDEX IF NOT EXISTS timers_status_due ON timers (status, due_at);
CREATE INDEX IF NOT EXISTS timers_status_warn ON timers (status, warn_at);
CREATE INDEX IF NOT EXISTS timers_case ON timers (case_id);

CREATE TABLE IF NOT EXISTS overdue_case (
    case_id          text PRIMARY KEY,
    district         text NOT NULL,
    unit_code        text,
    tier             text,
    escalation_level integer NOT NULL,
    status           text NOT NULL,
    missed_count     integer NOT NULL,
    first_missed_at  timestamptz NOT NULL,
    last_missed_at   timestamptz NOT NULL,
    last_missed_kind text NOT NULL,
    last_deadline_id text NOT NULL
);
CREATE INDEX IF NOT EXISTS overdue_unit_level ON overdue_case (unit_code, escalation_level);
CREATE INDEX IF NOT EXISTS overdue_level ON overdue_case (escalation_level, first_missed_at);

CREATE TABLE IF NOT EXISTS escalation_dispatch (
    dispatch_id      text PRIMARY KEY,
    case_id          text NOT NULL,
    unit_code        text NOT NULL,
    tier             text NOT NULL,
    escalation_level integer NOT NULL,
    dispatched_at    timestamptz NOT NULL,
    accept_due       timestamptz NOT NULL,
    accepted_at      timestamptz,
    on_time          boolean
);
CREATE INDEX IF NOT EXISTS escalation_dispatch_case ON escalation_dispatch (case_id);

CREATE TABLE IF NOT EXISTS report_in (
    unit_code   text PRIMARY KEY,
    tier        text NOT NULL,
    dispatched  bigint NOT NULL DEFAULT 0,
    reported_in bigint NOT NULL DEFAULT 0,
    on_time     bigint NOT NULL DEFAULT 0
);
"""

_DISPATCH_COLUMNS = (
    "dispatch_id, case_id, unit_code, tier, escalation_level, dispatched_at, accept_due, "
    "accepted_at, on_time"
)
_OVERDUE_COLUMNS = (
    "case_id, district, unit_code, tier, escalation_level, status, missed_count, "
    "first_missed_at, last_missed_at, last_missed_kind, last_deadline_id"
)


class EscalationProjection(CaseProjection):
    name = "escalation"
    schema = "escalation"
    event_types = None  # nearly every event moves a deadline or the overdue list
    tables = ("case_state", "timers", "overdue_case", "escalation_dispatch", "report_in")

    def __init__(self, schema: str = "escalation") -> None:
        # No store: this projection never reacts; the ticker is what emits.
        super().__init__(None)
        self.schema = schema

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(DDL)

    async def prepare_batch(self, writer: WriteBuffer, case_ids: Sequence[str]) -> None:
        # The rows on_event compares with, read once per batch and kept current in memory.
        overdue = await writer.fetch(
            f"SELECT {_OVERDUE_COLUMNS} FROM overdue_case WHERE case_id = ANY($1::text[])",
            case_ids,
        )
        writer.memo["overdue"] = {
            r["case_id"]: OverdueCase(
                **{**dict(r), "last_missed_kind": DeadlineKind(r["last_missed_kind"])})
            for r in overdue
        }
        dispatches = await writer.fetch(
            f"SELECT {_DISPATCH_COLUMNS} FROM escalation_dispatch WHERE case_id = ANY($1::text[])",
            case_ids,
        )
        writer.memo["dispatches"] = {
            r["dispatch_id"]: EscalationDispatch(**dict(r)) for r in dispatches
        }

    async def on_event(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        await self._timers(conn, stored, timer_changes(before, after, stored.envelope))
        if before.missed or isinstance(stored.envelope.payload, DeadlineMissed):
            # No miss yet means no overdue row: skip the work for the common case.
            await self._overdue(conn, stored, after)
        await self._report_in(conn, stored, before)

    async def _timers(self, conn: WriteBuffer, stored: StoredEvent,
                      changes: TimerChanges) -> None:
        if changes.started:
            await conn.executemany(
                """INSERT INTO timers (deadline_id, case_id, district, kind, set_at, due_at,
                       warn_at, unit_code, correlation_id, status, set_sequence)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                   ON CONFLICT (deadline_id) DO NOTHING""",
                [
                    (t.deadline_id, t.case_id, t.district, t.kind.value, t.set_at, t.due_at,
                     t.warn_at, t.unit_code, t.correlation_id, t.status.value, stored.sequence)
                    for t in changes.started
                ],
            )
        for end in changes.ended:
            if end.status is TimerStatus.missed:
                # The log says missed: that wins over an earlier cancellation.
                await conn.execute(
                    """UPDATE timers SET status = 'missed', ended_at = $2, ended_by = $3
                       WHERE deadline_id = $1 AND status <> 'missed'""",
                    end.deadline_id, end.at, end.ended_by,
                )
            else:
                await conn.execute(
                    """UPDATE timers SET status = 'cancelled', ended_at = $2, ended_by = $3
                       WHERE deadline_id = $1 AND status IN ('pending', 'warned')""",
                    end.deadline_id, end.at, end.ended_by,
                )
        for deadline_id in changes.warned:
            await conn.execute(
                """UPDATE timers SET status = 'warned', warned_at = $2
                   WHERE deadline_id = $1 AND status = 'pending'""",
                deadline_id, stored.envelope.occurred_at,
            )

    async def _overdue(self, conn: WriteBuffer, stored: StoredEvent, after: CaseState) -> None:
        known: dict[str, OverdueCase] = conn.memo["overdue"]
        prev = known.get(after.case_id)
        entry = overdue_after(prev, stored.envelope, after)
        if entry is None:
            if prev is not None:
                del known[after.case_id]
                await conn.execute("DELETE FROM overdue_case WHERE case_id = $1", after.case_id)
            return
        known[after.case_id] = entry
        await conn.execute(
            f"""INSERT INTO overdue_case ({_OVERDUE_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                ON CONFLICT (case_id) DO UPDATE SET
                    unit_code = EXCLUDED.unit_code, tier = EXCLUDED.tier,
                    escalation_level = EXCLUDED.escalation_level, status = EXCLUDED.status,
                    missed_count = EXCLUDED.missed_count,
                    last_missed_at = EXCLUDED.last_missed_at,
                    last_missed_kind = EXCLUDED.last_missed_kind,
                    last_deadline_id = EXCLUDED.last_deadline_id""",
            entry.case_id, entry.district, entry.unit_code, entry.tier, entry.escalation_level,
            entry.status, entry.missed_count, entry.first_missed_at, entry.last_missed_at,
            entry.last_missed_kind.value, entry.last_deadline_id,
        )

    async def _report_in(self, conn: WriteBuffer, stored: StoredEvent, before: CaseState) -> None:
        event = stored.envelope
        known: dict[str, EscalationDispatch] = conn.memo["dispatches"]
        whistle = escalation_dispatch(event)
        if whistle is not None:
            if whistle.dispatch_id in known:
                return  # counted when it was first applied
            known[whistle.dispatch_id] = whistle
            await conn.execute(
                """INSERT INTO escalation_dispatch (dispatch_id, case_id, unit_code, tier,
                       escalation_level, dispatched_at, accept_due)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                whistle.dispatch_id, whistle.case_id, whistle.unit_code, whistle.tier,
                whistle.escalation_level, whistle.dispatched_at, whistle.accept_due,
            )
            await conn.execute(
                """INSERT INTO report_in (unit_code, tier, dispatched) VALUES ($1, $2, 1)
                   ON CONFLICT (unit_code) DO UPDATE
                   SET dispatched = report_in.dispatched + 1, tier = EXCLUDED.tier""",
                whistle.unit_code, whistle.tier,
            )
            return
        if not isinstance(event.payload, CaseAccepted) or before.last_dispatch_id is None:
            return
        answered = reported_in(before, event, known.get(before.last_dispatch_id))
        if answered is None:
            return
        known[answered.dispatch_id] = answered
        await conn.execute(
            "UPDATE escalation_dispatch SET accepted_at = $2, on_time = $3 WHERE dispatch_id = $1",
            answered.dispatch_id, answered.accepted_at, answered.on_time,
        )
        await conn.execute(
            """UPDATE report_in SET reported_in = reported_in + 1,
                   on_time = on_time + CASE WHEN $2 THEN 1 ELSE 0 END
               WHERE unit_code = $1""",
            answered.unit_code, bool(answered.on_time),
        )
