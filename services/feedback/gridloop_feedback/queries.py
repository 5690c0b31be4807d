"""Reads of the feedback read model. SQL only; what counts is decided in domain.rates and
recorded by the projection, so these queries just count rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from gridloop_events.projection import use_schema

from .domain import Rate


@asynccontextmanager
async def reading(pool: asyncpg.Pool, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A read-only snapshot of the read model."""
    async with pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await use_schema(conn, schema)
            yield conn


class GroupBy(StrEnum):
    grid = "grid"
    unit = "unit"
    category = "category"
    month = "month"
    district = "district"


@dataclass(frozen=True)
class StatsFilter:
    from_month: str | None = None
    to_month: str | None = None
    grid: str | None = None
    unit: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class _Figure:
    name: str
    source: str  # FROM ... joined with feedback_case as c
    unit_column: str
    numerator: str  # a boolean SQL condition on a counted row
    where: str = "TRUE"


FIGURES: tuple[_Figure, ...] = (
    _Figure(
        "satisfaction",
        "callback_rating r JOIN feedback_case c ON c.case_id = r.case_id",
        "r.unit_code",
        "r.rating IN ('satisfied', 'basically_satisfied')",
    ),
    _Figure(
        "resolution",
        "feedback_case c",
        "c.unit_code",
        "c.resolved",
        "c.reported_at IS NOT NULL",
    ),
    _Figure(
        "on_time_closure",
        "closure k JOIN feedback_case c ON c.case_id = k.case_id",
        "k.unit_code",
        "k.on_time",
        "k.timed",
    ),
    _Figure(
        "report_in",
        "escalation_dispatch x JOIN feedback_case c ON c.case_id = x.case_id",
        "x.unit_code",
        "x.accepted_at IS NOT NULL",
    ),
)

FIGURE_NAMES = tuple(f.name for f in FIGURES)


def _group_column(group_by: GroupBy, figure: _Figure) -> str:
    return {
        GroupBy.grid: "c.grid",
        GroupBy.unit: figure.unit_column,
        GroupBy.category: "c.category",
        GroupBy.month: "c.report_month",
        GroupBy.district: "c.district",
    }[group_by]


def _figure_sql(figure: _Figure, group_by: GroupBy, f: StatsFilter) -> tuple[str, list[Any]]:
    conditions = [figure.where]
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        conditions.append(sql.format(f"${len(args)}"))

    if f.from_month is not None:
        add("c.report_month >= {}", f.from_month)
    if f.to_month is not None:
        add("c.report_month <= {}", f.to_month)
    if f.grid is not None:
        add("c.grid = {}", f.grid)
    if f.unit is not None:
        add(figure.unit_column + " = {}", f.unit)
    if f.category is not None:
        add("c.category = {}", f.category)
    key = _group_column(group_by, figure)
    sql = (
        f"SELECT {key} AS key, count(*) FILTER (WHERE {figure.numerator}) AS numerator, "
        f"count(*) AS denominator FROM {figure.source} "
        f"WHERE {' AND '.join(conditions)} GROUP BY {key}"
    )
    return sql, args


async def stats(
    conn: asyncpg.Connection, group_by: GroupBy, f: StatsFilter
) -> tuple[dict[str | None, dict[str, Rate]], dict[str, Rate]]:
    """(figures per group key, figures over everything the filter selects).

    Run it in one repeatable-read transaction, so the four figures describe one moment of the log.
    """
    groups: dict[str | None, dict[str, Rate]] = {}
    total = {name: Rate(0, 0) for name in FIGURE_NAMES}
    for figure in FIGURES:
        sql, args = _figure_sql(figure, group_by, f)
        for row in await conn.fetch(sql, *args):
            rate = Rate(row["numerator"], row["denominator"])
            groups.setdefault(row["key"], {n: Rate(0, 0) for n in FIGURE_NAMES})
            groups[row["key"]][figure.name] = rate
            total[figure.name] = total[figure.name] + rate
    return groups, total


async def due_callbacks(conn: asyncpg.Connection, limit: int,
                        grids: Sequence[str] | None = None) -> list[asyncpg.Record]:
    """`grids`: only the cases of these grids; None: the whole district."""
    return await conn.fetch(
        """SELECT b.case_id, b.round, b.due_at, b.scheduled_at, c.grid, c.category,
                  c.unit_code, c.outcome
           FROM callback b JOIN feedback_case c ON c.case_id = b.case_id
           WHERE b.state = 'due' AND ($2::text[] IS NULL OR c.grid = ANY($2::text[]))
           ORDER BY b.due_at, b.case_id, b.round
           LIMIT $1""",
        limit,
        None if grids is None else list(grids),
    )


async def case_known(conn: asyncpg.Connection, case_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM case_state WHERE case_id = $1", case_id))


async def ratings_of(conn: asyncpg.Connection, case_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT event_id, round, rated_at, rating, handled_lawfully, measures_carried_out,
                  party_accepts, method, comment, rated_by, unit_code
           FROM callback_rating WHERE case_id = $1 ORDER BY round, rated_at, event_id""",
        case_id,
    )


def overdue(due_at: datetime, now: datetime) -> bool:
    return due_at < now
