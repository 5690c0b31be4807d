"""The projections as the checker sees them: one consistent snapshot per schema.

Each schema is read in one repeatable-read transaction, so its checkpoint and its rows describe
the same moment: every row must then equal the fold of the log up to that checkpoint, exactly,
even while the services keep writing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from ..projection import check_schema

SERVICES = ("intake", "dispatch", "escalation", "feedback")


@dataclass(frozen=True)
class ProjectionSpec:
    service: str  # which read model the schema holds: intake, dispatch, escalation, feedback
    schema: str
    name: str = ""  # the checkpoint row's projection name (default: the service's)

    @property
    def projection(self) -> str:
        return self.name or self.service


def parse_specs(text: str) -> list[ProjectionSpec]:
    """`intake,dispatch` or `intake=shadow_intake,feedback=fb` (service=schema)."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        service, _, schema = part.partition("=")
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")
        specs.append(ProjectionSpec(service, check_schema(schema or service)))
    return specs


@dataclass(frozen=True)
class Timer:
    deadline_id: str
    case_id: str
    status: str
    due_at: datetime


@dataclass
class ReadModel:
    spec: ProjectionSpec
    present: bool = False
    # Last applied sequence per partition; key None when the schema has one checkpoint.
    checkpoints: dict[int | None, int] = field(default_factory=dict)
    states: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    dead_letters: list[tuple[int, str | None, str]] = field(default_factory=list)
    # intake: case_id -> (status, event_count, version)
    register: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # dispatch: where each case is held
    assigned: set[str] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)
    # escalation
    timers: dict[str, Timer] = field(default_factory=dict)
    overdue: set[str] = field(default_factory=set)
    # feedback: figure -> (numerator, denominator), counted from its tables
    figures: dict[str, tuple[int, int]] = field(default_factory=dict)

    def checkpoint(self, partition: int | None) -> int:
        if None in self.checkpoints:
            return self.checkpoints[None]
        return self.checkpoints.get(partition, 0)

    @property
    def highest(self) -> int:
        return max(self.checkpoints.values(), default=0)


FIGURE_SQL = {
    "satisfaction": """SELECT count(*) FILTER (WHERE r.rating IN ('satisfied',
        'basically_satisfied')), count(*) FROM callback_rating r
        JOIN feedback_case c ON c.case_id = r.case_id""",
    "resolution": """SELECT count(*) FILTER (WHERE c.resolved), count(*) FROM feedback_case c
        WHERE c.reported_at IS NOT NULL""",
    "on_time_closure": """SELECT count(*) FILTER (WHERE k.on_time), count(*) FROM closure k
        JOIN feedback_case c ON c.case_id = k.case_id WHERE k.timed""",
    "report_in": """SELECT count(*) FILTER (WHERE x.accepted_at IS NOT NULL), count(*)
        FROM escalation_dispatch x JOIN feedback_case c ON c.case_id = x.case_id""",
}


async def read_model(conn: asyncpg.Connection, spec: ProjectionSpec) -> ReadModel:
    model = ReadModel(spec)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        exists = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 "
            "AND table_name IN ('checkpoint', 'case_state')", spec.schema)
        if exists != 2:
            return model
        model.present = True
        await conn.execute(f"SET LOCAL search_path TO {check_schema(spec.schema)}, public")
        model.checkpoints = await read_checkpoints(conn, spec.projection)
        for row in await conn.fetch("SELECT case_id, version, state FROM case_state"):
            state = row["state"]
            model.states[row["case_id"]] = (
                int(row["version"]), json.loads(state) if isinstance(state, str) else state)
        model.dead_letters = [
            (r["sequence"], r["event_id"], r["error"]) for r in await conn.fetch(
                "SELECT sequence, event_id, error FROM dead_letter WHERE projection = $1 "
                "AND retried_at IS NULL ORDER BY sequence", spec.projection)
        ]
        await _service_rows(conn, model)
    return model


async def read_checkpoints(conn: asyncpg.Connection, projection: str) -> dict[int | None, int]:
    """Per partition when the checkpoint table has partitions, else one value under None
    (search_path must point at the projection's schema)."""
    partitioned = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'checkpoint' "
        "AND column_name = 'partition' AND table_schema = current_schema()")
    if partitioned:
        rows = await conn.fetch(
            "SELECT partition, last_sequence FROM checkpoint WHERE projection = $1", projection)
        return {int(r[0]): int(r[1]) for r in rows}
    value = await conn.fetchval(
        "SELECT last_sequence FROM checkpoint WHERE projection = $1", projection)
    return {None: int(value or 0)}


async def _service_rows(conn: asyncpg.Connection, model: ReadModel) -> None:
    service = model.spec.service
    if service == "intake":
        for r in await conn.fetch("SELECT case_id, status, event_count, version FROM cases"):
            model.register[r["case_id"]] = (r["status"], r["event_count"], r["version"])
    elif service == "dispatch":
        model.assigned = {r[0] for r in await conn.fetch("SELECT case_id FROM assignment")}
        model.queued = {r[0] for r in await conn.fetch("SELECT case_id FROM triage_queue")}
    elif service == "escalation":
        for r in await conn.fetch("SELECT deadline_id, case_id, status, due_at FROM timers"):
            model.timers[r["deadline_id"]] = Timer(r["deadline_id"], r["case_id"], r["status"],
                                                   r["due_at"])
        model.overdue = {r[0] for r in await conn.fetch("SELECT case_id FROM overdue_case")}
    elif service == "feedback":
        for name, sql in FIGURE_SQL.items():
            row = await conn.fetchrow(sql)
            model.figures[name] = (int(row[0]), int(row[1]))


async def read_models(pool_or_conn: asyncpg.Connection, specs: list[ProjectionSpec]
                      ) -> list[ReadModel]:
    return [await read_model(pool_or_conn, spec) for spec in specs]
