"""A projection that keeps each case's folded lifecycle state next to its own read model.

Services build on it: `on_event` updates the service's tables from (before, after) states, and
`reactions` returns the commands to run when the live runner — never a rebuild — sees an event.
The state row makes a reaction's decision cheap (no read of the log) and exact (it is the fold
of every event up to this one, at this event's sequence).
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

import asyncpg

from .commands import Decide, execute
from .envelope import StoredEvent
from .lifecycle import CaseState, Deadline, Status, evolve
from .logging import get_logger
from .store import EventStore
from .vocabulary import DeadlineKind, Outcome, ProblemKind, Rating, Severity, Tier

log = get_logger(__name__)

STATE_DDL = """
CREATE TABLE IF NOT EXISTS case_state (
    case_id  text PRIMARY KEY,
    version  bigint NOT NULL,
    state    jsonb NOT NULL
);
"""

_ENUMS: dict[str, Any] = {
    "status": Status,
    "severity": Severity,
    "tier": Tier,
    "kind": ProblemKind,
    "outcome": Outcome,
    "rating": Rating,
}
_TIMES = {"reported_at", "closed_at", "last_event_at"}


def state_to_json(state: CaseState) -> str:
    out: dict[str, Any] = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if f.name == "deadlines":
            value = {
                k.value: {
                    "id": d.id,
                    "kind": d.kind.value,
                    "due_at": d.due_at.isoformat(),
                    "set_at": d.set_at.isoformat(),
                    "unit_code": d.unit_code,
                }
                for k, d in value.items()
            }
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[f.name] = value
    return json.dumps(out, sort_keys=True, default=str)


def state_from_json(raw: str | dict[str, Any]) -> CaseState:
    data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    kwargs: dict[str, Any] = {}
    for f in fields(CaseState):
        if f.name not in data:
            continue
        value = data[f.name]
        if value is None:
            kwargs[f.name] = None
        elif f.name == "deadlines":
            kwargs[f.name] = {
                DeadlineKind(k): Deadline(
                    id=d["id"],
                    kind=DeadlineKind(d["kind"]),
                    due_at=datetime.fromisoformat(d["due_at"]),
                    set_at=datetime.fromisoformat(d["set_at"]),
                    unit_code=d.get("unit_code"),
                )
                for k, d in value.items()
            }
        elif f.name in ("missed", "warned", "event_ids"):
            kwargs[f.name] = frozenset(value)
        elif f.name in _ENUMS:
            kwargs[f.name] = _ENUMS[f.name](value)
        elif f.name in _TIMES:
            kwargs[f.name] = datetime.fromisoformat(value)
        else:
            kwargs[f.name] = value
    return replace(CaseState(), **kwargs)


async def load_state(conn: asyncpg.Connection, case_id: str) -> CaseState:
    raw = await conn.fetchval("SELECT state FROM case_state WHERE case_id = $1", case_id)
    return state_from_json(raw) if raw is not None else CaseState()


async def save_state(conn: asyncpg.Connection, state: CaseState) -> None:
    await conn.execute(
        """INSERT INTO case_state (case_id, version, state) VALUES ($1, $2, $3::jsonb)
           ON CONFLICT (case_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state""",
        state.case_id,
        state.version,
        state_to_json(state),
    )


class CaseProjection:
    """Base for a service's projection. Subclasses set name/schema/event_types and override
    `create_service_tables`, `on_event` and, for services that act, `reactions`."""

    name: str = ""
    schema: str = ""
    event_types: frozenset[str] | None = None
    tables: tuple[str, ...] = ("case_state",)

    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store

    async def create_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(STATE_DDL)
        await self.create_service_tables(conn)

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        """DDL of the service's own read model (unqualified names; IF NOT EXISTS)."""

    async def apply(self, conn: asyncpg.Connection, stored: StoredEvent) -> CaseState | None:
        before = await load_state(conn, stored.envelope.case_id)
        if str(stored.envelope.event_id) in before.event_ids:
            # A copy of an event already applied (its bytes republished under another message
            # id): nothing for the read model nor for reactions; the fold only moves the
            # version on. The audit names the copy.
            log.warning("projection.duplicate_event", case_id=before.case_id,
                        sequence=stored.sequence, event_id=str(stored.envelope.event_id),
                        event_type=stored.envelope.event_type)
            await save_state(conn, evolve(before, stored))
            return None
        after = evolve(before, stored)
        await save_state(conn, after)
        await self.on_event(conn, stored, before, after)
        return after

    async def on_event(
        self, conn: asyncpg.Connection, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        """Update the service's read model. Must use only the event and the states: a rebuild
        has to come out identical, so no wall clock, no randomness."""

    def reactions(self, stored: StoredEvent, state: CaseState) -> list[Decide]:
        """Decisions to run after this event (live only). Each returns events with ids derived
        from `stored`, so running one twice appends nothing new."""
        return []

    async def react(
        self, conn: asyncpg.Connection, stored: StoredEvent, state: CaseState | None
    ) -> None:
        if self.store is None or state is None:
            return
        known: CaseState | None = state
        for decide in self.reactions(stored, state):
            outcome = await execute(self.store, state.case_id, decide, known=known)
            # A later reaction must see what an earlier one appended: let it read the log.
            known = None if outcome.events else known
