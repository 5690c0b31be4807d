"""The case register: one row per case, rewritten from the folded state after every event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from gridloop_events.case_projection import CaseProjection
from gridloop_events.envelope import StoredEvent
from gridloop_events.lifecycle import CaseState
from gridloop_events.write_buffer import WriteBuffer

from .domain.register import event_columns, overdue_since, state_columns

REGISTER_DDL = """
CREATE TABLE IF NOT EXISTS cases (
    case_id           text PRIMARY KEY,
    district          text NOT NULL,
    status            text NOT NULL,
    category_code     text,
    severity          text,
    channel           text,
    reported_by       text,
    reporter_kind     text,
    description       text,
    lat               double precision,
    lon               double precision,
    address           text,
    street            text,
    community         text,
    compound          text,
    grid              text,
    tier              text,
    kind              text,
    unit_code         text,
    handler_id        text,
    urgent            boolean NOT NULL,
    escalation_level  integer NOT NULL,
    accept_due        timestamptz,
    resolve_due       timestamptz,
    dispatch_due      timestamptz,
    callback_due      timestamptz,
    next_due          timestamptz,
    overdue_since     timestamptz,
    reported_at       timestamptz,
    updated_at        timestamptz,
    closed_at         timestamptz,
    outcome           text,
    resolution        text,
    rating            text,
    event_count       integer NOT NULL,
    dispatch_count    integer NOT NULL,
    close_count       integer NOT NULL,
    unsatisfied_count integer NOT NULL,
    missed_count      integer NOT NULL,
    version           bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_newest ON cases (reported_at DESC, case_id DESC);
CREATE INDEX IF NOT EXISTS cases_status ON cases (status, reported_at DESC);
CREATE INDEX IF NOT EXISTS cases_grid ON cases (grid, reported_at DESC);
CREATE INDEX IF NOT EXISTS cases_community ON cases (community, reported_at DESC);
CREATE INDEX IF NOT EXISTS cases_unit ON cases (unit_code, reported_at DESC);
CREATE INDEX IF NOT EXISTS cases_category ON cases (category_code, reported_at DESC);
CREATE INDEX IF NOT EXISTS cases_next_due ON cases (next_due) WHERE next_due IS NOT NULL;
-- A register made before reporters were recorded gains the columns; its rows fill on a rebuild.
ALTER TABLE cases ADD COLUMN IF NOT EXISTS reported_by text;
ALTER TABLE cases ADD COLUMN IF NOT EXISTS reporter_kind text;
CREATE INDEX IF NOT EXISTS cases_reported_by ON cases (reported_by, reported_at DESC);
"""

# Columns only some events carry keep their value when a later event has none to give.
_KEPT = ("channel", "reported_by", "reporter_kind", "description", "lat", "lon", "address",
         "compound", "resolution")


class IntakeProjection(CaseProjection):
    name = "intake"
    schema = "intake"
    event_types = None  # every event moves a case's status, deadlines or counts
    tables = ("case_state", "cases")

    def __init__(self, schema: str = "intake") -> None:
        super().__init__(store=None)  # intake only records; it never reacts
        self.schema = schema

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(REGISTER_DDL)

    async def prepare_batch(self, writer: WriteBuffer, case_ids: Sequence[str]) -> None:
        rows = await writer.fetch(
            "SELECT case_id, overdue_since FROM cases WHERE case_id = ANY($1::text[])", case_ids
        )
        writer.memo["overdue"] = {r["case_id"]: r["overdue_since"] for r in rows}
        writer.memo["rows"] = {}

    async def on_event(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        overdue: dict[str, datetime | None] = conn.memo["overdue"]
        since = overdue[after.case_id] = overdue_since(overdue.get(after.case_id), stored, before)
        row = {
            **state_columns(after),
            "overdue_since": since,
            **{k: None for k in _KEPT},
            **event_columns(stored),
        }
        # One write per case and batch: the latest row, each kept column at its latest value.
        rows: dict[str, dict[str, Any]] = conn.memo["rows"]
        earlier = rows.get(after.case_id)
        if earlier is not None:
            for k in _KEPT:
                if row[k] is None:
                    row[k] = earlier[k]
        rows[after.case_id] = row

    async def finish_batch(self, writer: WriteBuffer) -> None:
        rows: dict[str, dict[str, Any]] = writer.memo["rows"]
        if not rows:
            return
        names = list(next(iter(rows.values())))
        placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        updates = ", ".join(
            f"{n} = COALESCE(EXCLUDED.{n}, cases.{n})" if n in _KEPT else f"{n} = EXCLUDED.{n}"
            for n in names
            if n != "case_id"
        )
        sql = (f"INSERT INTO cases ({', '.join(names)}) VALUES ({placeholders}) "
               f"ON CONFLICT (case_id) DO UPDATE SET {updates}")
        for case_id, row in rows.items():
            writer.case = case_id
            await writer.execute(sql, *(row[n] for n in names))
