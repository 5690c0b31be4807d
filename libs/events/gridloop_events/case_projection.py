"""A projection that keeps each case's folded lifecycle state next to its own read model.

Services build on it: `on_event` updates the service's tables from (before, after) states, and
`reactions` returns the commands to run when the live runner — never a rebuild — sees an event.
The state row makes a reaction's decision cheap (no read of the log) and exact (it is the fold
of every event up to this one, at this event's sequence).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import asyncpg

from .commands import Decide, execute
from .envelope import StoredEvent
from .lifecycle import CaseState, Deadline, Status, evolve
from .logging import get_logger
from .projection import check_schema
from .store import EventStore
from .vocabulary import DeadlineKind, Outcome, ProblemKind, Rating, Severity, Tier
from .write_buffer import WriteBuffer

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


async def projected_state(pool: asyncpg.Pool, schema: str, case_id: str) -> CaseState | None:
    """The case as a projection last folded it, or None when it has not seen the case. It may
    lag the log: give it to `execute(..., may_lag=True)`, which saves the read of the log
    whenever it is current."""
    raw = await pool.fetchval(
        f"SELECT state FROM {check_schema(schema)}.case_state WHERE case_id = $1", case_id)
    return state_from_json(raw) if raw is not None else None


async def load_states(conn: asyncpg.Connection, case_ids: Sequence[str]) -> dict[str, CaseState]:
    rows = await conn.fetch(
        "SELECT case_id, state FROM case_state WHERE case_id = ANY($1::text[])", list(case_ids)
    )
    return {r["case_id"]: state_from_json(r["state"]) for r in rows}


async def save_states(conn: asyncpg.Connection, states: Iterable[CaseState]) -> None:
    rows = [(s.case_id, s.version, state_to_json(s)) for s in states]
    if not rows:
        return
    ids, versions, bodies = zip(*rows, strict=True)
    await conn.execute(
        """INSERT INTO case_state (case_id, version, state)
           SELECT c, v, s::jsonb FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(c, v, s)
           ON CONFLICT (case_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state""",
        list(ids), list(versions), list(bodies),
    )


@dataclass(frozen=True)
class Applied:
    """One event as a projection applied it: the case's state before and after. `after` is None
    for a copy of an event the case already holds (nothing was applied, nothing to react to)."""

    stored: StoredEvent
    before: CaseState
    after: CaseState | None


class CaseProjection:
    """Base for a service's projection. Subclasses set name/schema/event_types and override
    `create_service_tables`, `on_event` and, for services that act, `reactions`."""

    name: str = ""
    schema: str = ""
    event_types: frozenset[str] | None = None
    tables: tuple[str, ...] = ("case_state",)
    # Cases whose reactions run at the same time (each case's own reactions stay in order).
    reaction_concurrency: int = 32

    def __init__(self, store: EventStore | None = None) -> None:
        self.store = store

    async def create_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(STATE_DDL)
        await self.create_service_tables(conn)

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        """DDL of the service's own read model (unqualified names; IF NOT EXISTS)."""

    async def apply(self, conn: asyncpg.Connection, stored: StoredEvent) -> Applied:
        """One event on its own (a dead letter's retry, a poison hunt's savepoint)."""
        return (await self.apply_batch(conn, [stored]))[0]

    async def apply_batch(
        self, conn: asyncpg.Connection, batch: Sequence[StoredEvent]
    ) -> list[Applied]:
        """Apply events in stream order: every case state of the batch read in one query, folded
        in memory, the read model's statements buffered and pipelined, the states written back
        in one statement. Same rows as applying the events one at a time."""
        case_ids = list(dict.fromkeys(s.envelope.case_id for s in batch))
        states = await load_states(conn, case_ids)
        writer = WriteBuffer(conn)
        await self.prepare_batch(writer, case_ids)
        changed: dict[str, CaseState] = {}
        out: list[Applied] = []
        for stored in batch:
            case_id = stored.envelope.case_id
            before = states.get(case_id) or CaseState()
            after = evolve(before, stored)
            states[case_id] = changed[case_id] = after
            if str(stored.envelope.event_id) in before.event_ids:
                # A copy of an event already applied (its bytes republished under another
                # message id): nothing for the read model nor for reactions; the fold only
                # moves the version on. The audit names the copy.
                log.warning("projection.duplicate_event", case_id=case_id,
                            sequence=stored.sequence, event_id=str(stored.envelope.event_id),
                            event_type=stored.envelope.event_type)
                out.append(Applied(stored, before, None))
                continue
            writer.case = case_id
            await self.on_event(writer, stored, before, after)
            out.append(Applied(stored, before, after))
        await self.finish_batch(writer)
        await writer.flush()
        await save_states(conn, changed.values())
        return out

    async def prepare_batch(self, writer: WriteBuffer, case_ids: Sequence[str]) -> None:
        """Read, in one query into `writer.memo`, what `on_event` would otherwise read event by
        event."""

    async def finish_batch(self, writer: WriteBuffer) -> None:
        """Write what `on_event` gathered in `writer.memo` (e.g. one row per case, not per event)."""

    async def on_event(
        self, conn: WriteBuffer, stored: StoredEvent, before: CaseState, after: CaseState
    ) -> None:
        """Update the service's read model. Must use only the event and the states: a rebuild
        has to come out identical, so no wall clock, no randomness. `conn` buffers writes (see
        WriteBuffer): statements must touch only this case's rows or commutative counters."""

    def reactions(self, stored: StoredEvent, before: CaseState, after: CaseState) -> list[Decide]:
        """Decisions to run after this event (live only). Each returns events with ids derived
        from `stored`, so running one twice appends nothing new."""
        return []

    async def react(
        self, conn: asyncpg.Connection, stored: StoredEvent, applied: Applied | None
    ) -> None:
        if applied is not None:
            await self.react_batch([applied])

    async def react_batch(self, applied: Sequence[Applied]) -> None:
        """Run the batch's reactions: cases side by side, each case's in stream order."""
        store = self.store
        if store is None:
            return
        per_case: dict[str, list[tuple[CaseState, list[Decide]]]] = {}
        for a in applied:
            if a.after is None:
                continue
            decides = self.reactions(a.stored, a.before, a.after)
            if decides:
                per_case.setdefault(a.after.case_id, []).append((a.after, decides))
        if not per_case:
            return
        gate = asyncio.Semaphore(self.reaction_concurrency)

        async def run(case_id: str, items: list[tuple[CaseState, list[Decide]]]) -> None:
            async with gate:
                for state, decides in items:
                    known: CaseState | None = state
                    for decide in decides:
                        outcome = await execute(store, case_id, decide, known=known)
                        # A later reaction must see what an earlier one appended: let it read.
                        known = None if outcome.events else known

        try:
            async with asyncio.TaskGroup() as group:
                for case_id, items in per_case.items():
                    group.create_task(run(case_id, items))
        except BaseExceptionGroup as failed:
            # The runner tells outages from poison by the exception's class: hand it the first.
            raise failed.exceptions[0] from None
