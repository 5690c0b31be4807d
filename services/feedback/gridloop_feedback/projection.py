"""The feedback read model: callbacks due, ratings, and the facts the four figures count.

Facts, not running totals: each closure, rating and escalation dispatch is one row, and each case
one row with its current attribution, so `/v1/stats` can group and filter them any way with plain
COUNTs, and every figure can be traced back to the events behind it. Only event fields and folded
states go in, so a rebuild equals the live tables row for row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg
from gridloop_events.case_projection import CaseProjection
from gridloop_events.catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
)
from gridloop_events.commands import Decide
from gridloop_events.envelope import StoredEvent
from gridloop_events.lifecycle import CaseState
from gridloop_events.store import EventStore
from gridloop_events.vocabulary import DeadlineKind
from gridloop_events.write_buffer import WriteBuffer

from .domain import (
    CallbackLimits,
    closure_timing,
    is_resolved,
    report_month,
    schedule_callback,
)

DDL = """
CREATE TABLE IF NOT EXISTS feedback_case (
    case_id       text PRIMARY KEY,
    district      text NOT NULL,
    grid          text,
    category      text,
    severity      text,
    reported_at   timestamptz,
    report_month  text,
    unit_code     text,
    outcome       text,
    close_count   integer NOT NULL,
    resolved      boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_case_month ON feedback_case (report_month);

CREATE TABLE IF NOT EXISTS closure (
    event_id     text PRIMARY KEY,
    case_id      text NOT NULL,
    round        integer NOT NULL,
    closed_at    timestamptz NOT NULL,
    outcome      text NOT NULL,
    unit_code    text,
    resolve_due  timestamptz,
    timed        boolean NOT NULL,
    on_time      boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS closure_case ON closure (case_id, round);

CREATE TABLE IF NOT EXISTS callback (
    case_id       text NOT NULL,
    round         integer NOT NULL,
    event_id      text NOT NULL,
    due_at        timestamptz NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    state         text NOT NULL CHECK (state IN ('due', 'rated', 'withdrawn')),
    settled_at    timestamptz,
    PRIMARY KEY (case_id, round)
);
CREATE INDEX IF NOT EXISTS callback_due ON callback (due_at, case_id) WHERE state = 'due';

CREATE TABLE IF NOT EXISTS callback_rating (
    event_id              text PRIMARY KEY,
    case_id               text NOT NULL,
    round                 integer NOT NULL,
    rated_at              timestamptz NOT NULL,
    rating                text NOT NULL,
    handled_lawfully      boolean NOT NULL,
    measures_carried_out  boolean NOT NULL,
    party_accepts         boolean NOT NULL,
    method                text NOT NULL,
    comment               text,
    rated_by              text NOT NULL,
    unit_code             text
);
CREATE INDEX IF NOT EXISTS callback_rating_case ON callback_rating (case_id, round);

CREATE TABLE IF NOT EXISTS escalation_dispatch (
    event_id       text PRIMARY KEY,
    case_id        text NOT NULL,
    unit_code      text NOT NULL,
    level          integer NOT NULL,
    dispatched_at  timestamptz NOT NULL,
    accepted_at    timestamptz,
    handler_id     text
);
CREATE INDEX IF NOT EXISTS escalation_dispatch_case ON escalation_dispatch (case_id);
"""


class FeedbackProjection(CaseProjection):
    name = "feedback"
    schema = "feedback"
    # Every event: the folded state must see all of them (a missed deadline, a return) for the
    # closure timing and the resolution figure to be right.
    event_types = None
    tables = (
        "case_state",
        "feedback_case",
        "closure",
        "callback",
        "callback_rating",
        "escalation_dispatch",
    )

    def __init__(
        self,
        limits: CallbackLimits,
        store: EventStore | None = None,
        *,
        store_source: Callable[[], EventStore | None] | None = None,
        schema: str | None = None,
    ) -> None:
        self._store_source = store_source
        super().__init__(store)
        self.limits = limits
        if schema:
            self.schema = schema

    @property
    def store(self) -> EventStore | None:  # type: ignore[override]
        """The store reactions append to. Runtime opens its store in `start`, after the app and
        this projection are built, so a service hands over a source to ask it from instead."""
        if self._store is None and self._store_source is not None:
            # Asked each time: a restarted runtime opens a new store.
            return self._store_source()
        return self._store

    @store.setter
    def store(self, value: EventStore | None) -> None:
        self._store = value

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(DDL)

    def reactions(self, stored: StoredEvent, before: CaseState, after: CaseState) -> list[Decide]:
        if isinstance(stored.envelope.payload, CaseClosed):
            return [schedule_callback(stored, after, self.limits)]
        return []

    async def prepare_batch(self, writer: WriteBuffer, case_ids: Sequence[str]) -> None:
        # The unit that closed each round (a rating is attributed to it), kept current in memory.
        rows = await writer.fetch(
            """SELECT DISTINCT ON (case_id, round) case_id, round, unit_code FROM closure
               WHERE case_id = ANY($1::text[])
               ORDER BY case_id, round, closed_at DESC, event_id DESC""",
            case_ids,
        )
        writer.memo["closers"] = {(r["case_id"], r["round"]): r["unit_code"] for r in rows}
        writer.memo["cases"] = {}

    async def finish_batch(self, writer: WriteBuffer) -> None:
        # One row per case and batch: the latest state's.
        for case_id, state in writer.memo["cases"].items():
            writer.case = case_id
            await self._save_case(writer, state)

    async def on_event(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        e = stored.envelope
        p = e.payload
        eid = str(e.event_id)
        match p:
            case CaseClosed():
                timing = closure_timing(before, e.occurred_at)
                closer = p.unit_code or before.unit_code
                conn.memo["closers"][(e.case_id, after.close_count)] = closer
                await conn.execute(
                    """INSERT INTO closure (event_id, case_id, round, closed_at, outcome,
                           unit_code, resolve_due, timed, on_time)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                       ON CONFLICT (event_id) DO NOTHING""",
                    eid, e.case_id, after.close_count, e.occurred_at, p.outcome.value,
                    closer, timing.resolve_due, timing.timed,
                    timing.on_time,
                )
            case CaseDispatched() if p.escalation:
                await conn.execute(
                    """INSERT INTO escalation_dispatch (event_id, case_id, unit_code, level,
                           dispatched_at)
                       VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING""",
                    eid, e.case_id, p.unit_code, p.escalation_level, e.occurred_at,
                )
            case CaseAccepted() if before.last_dispatch_id is not None:
                await conn.execute(
                    """UPDATE escalation_dispatch SET accepted_at = $2, handler_id = $3
                       WHERE event_id = $1 AND accepted_at IS NULL""",
                    before.last_dispatch_id, e.occurred_at, p.handler_id,
                )
            case CallbackScheduled():
                await conn.execute(
                    """UPDATE callback SET state = 'withdrawn', settled_at = $3
                       WHERE case_id = $1 AND round < $2 AND state = 'due'""",
                    e.case_id, p.round, e.occurred_at,
                )
                await conn.execute(
                    """INSERT INTO callback (case_id, round, event_id, due_at, scheduled_at,
                           state)
                       VALUES ($1, $2, $3, $4, $5, 'due') ON CONFLICT (case_id, round) DO NOTHING""",
                    e.case_id, p.round, eid, p.due_at, e.occurred_at,
                )
            case CallbackRated():
                await self._record_rating(conn, stored, before, after)
        if (
            before.deadline(DeadlineKind.callback) is not None
            and after.deadline(DeadlineKind.callback) is None
            and not isinstance(p, CallbackRated)
        ):
            # The case went back to handling without a rating: that callback is no longer owed.
            await conn.execute(
                """UPDATE callback SET state = 'withdrawn', settled_at = $2
                   WHERE case_id = $1 AND state = 'due'""",
                e.case_id, e.occurred_at,
            )
        conn.memo["cases"][after.case_id] = after

    async def _record_rating(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        e = stored.envelope
        p = e.payload
        assert isinstance(p, CallbackRated)
        round_ = after.close_count
        closing_unit = conn.memo["closers"].get((e.case_id, round_))
        await conn.execute(
            """INSERT INTO callback_rating (event_id, case_id, round, rated_at, rating,
                   handled_lawfully, measures_carried_out, party_accepts, method, comment,
                   rated_by, unit_code)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (event_id) DO NOTHING""",
            str(e.event_id), e.case_id, round_, e.occurred_at, p.rating.value,
            p.handled_lawfully, p.measures_carried_out, p.party_accepts, p.method.value,
            p.comment, p.rated_by, closing_unit or before.unit_code,
        )
        await conn.execute(
            """UPDATE callback SET state = 'rated', settled_at = $3
               WHERE case_id = $1 AND round = $2 AND state = 'due'""",
            e.case_id, round_, e.occurred_at,
        )

    async def _save_case(self, conn: WriteBuffer, s: CaseState) -> None:
        await conn.execute(
            """INSERT INTO feedback_case (case_id, district, grid, category, severity,
                   reported_at, report_month, unit_code, outcome, close_count, resolved)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (case_id) DO UPDATE SET district = EXCLUDED.district,
                   grid = EXCLUDED.grid, category = EXCLUDED.category,
                   severity = EXCLUDED.severity, reported_at = EXCLUDED.reported_at,
                   report_month = EXCLUDED.report_month, unit_code = EXCLUDED.unit_code,
                   outcome = EXCLUDED.outcome, close_count = EXCLUDED.close_count,
                   resolved = EXCLUDED.resolved""",
            s.case_id, s.district, s.grid, s.category_code,
            s.severity.value if s.severity else None, s.reported_at, report_month(s.reported_at),
            s.unit_code, s.outcome.value if s.outcome else None, s.close_count, is_resolved(s),
        )
