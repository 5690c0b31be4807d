"""SQL over the case register (the projection's `cases` table)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from gridloop_events.projection import check_schema

from .domain.listing import CasePage, CaseQuery, Cursor
from .domain.views import CaseView

OPEN = ("reported", "triage", "dispatched", "accepted", "reopened")
RESIDENT = "resident"  # ActorKind.resident, as the register stores it


def where_clause(q: CaseQuery, resident: str | None = None) -> tuple[str, list[Any]]:
    """`resident`: only the cases that resident (a token subject) reported."""
    parts = ["reported_at IS NOT NULL"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if resident is not None:
        parts.append(f"reported_by = {arg(resident)} AND reporter_kind = {arg(RESIDENT)}")

    if q.statuses:
        parts.append(f"status = ANY({arg(list(q.statuses))}::text[])")
    if q.categories:
        parts.append(f"category_code = ANY({arg(list(q.categories))}::text[])")
    for column, value in (("grid", q.grid), ("community", q.community), ("street", q.street),
                          ("unit_code", q.unit), ("channel", q.channel)):
        if value is not None:
            parts.append(f"{column} = {arg(value)}")
    if q.reported_from is not None:
        parts.append(f"reported_at >= {arg(q.reported_from)}")
    if q.reported_to is not None:
        parts.append(f"reported_at <= {arg(q.reported_to)}")
    if q.case_ids is not None:
        parts.append(f"case_id = ANY({arg(list(q.case_ids))}::text[])")
    if q.overdue is not None:
        overdue = (f"(overdue_since IS NOT NULL OR COALESCE(next_due < {arg(q.now)}, false)) "
                   f"AND status = ANY({arg(list(OPEN) + ['closed'])}::text[])")
        parts.append(overdue if q.overdue else f"NOT ({overdue})")
    return " AND ".join(parts), args


def _view(r: asyncpg.Record) -> CaseView:
    return CaseView(
        case_id=r["case_id"], status=r["status"], category_code=r["category_code"],
        description=r["description"], channel=r["channel"], lat=r["lat"], lon=r["lon"],
        address=r["address"], grid_code=r["grid"], reported_at=r["reported_at"],
        updated_at=r["updated_at"], closed_at=r["closed_at"], outcome=r["outcome"],
        resolution=r["resolution"], unit_code=r["unit_code"], timeline=(),
        district=r["district"], severity=r["severity"], street_code=r["street"],
        community_code=r["community"], tier=r["tier"], urgent=r["urgent"],
        escalation_level=r["escalation_level"], accept_due=r["accept_due"],
        resolve_due=r["resolve_due"], rating=r["rating"], version=r["version"],
    )


async def fetch_page(pool: asyncpg.Pool, schema: str, q: CaseQuery, *,
                     resident: str | None = None) -> CasePage:
    table = f"{check_schema(schema)}.cases"
    where, args = where_clause(q, resident)
    async with pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        page_where = where
        page_args = list(args)
        if q.cursor is not None:
            page_args += [q.cursor.reported_at, q.cursor.case_id]
            page_where += f" AND (reported_at, case_id) < (${len(page_args) - 1}, ${len(page_args)})"
        page_args += [q.limit + 1, q.offset]
        rows = await conn.fetch(
            f"SELECT * FROM {table} WHERE {page_where} "
            f"ORDER BY reported_at DESC, case_id DESC "
            f"LIMIT ${len(page_args) - 1} OFFSET ${len(page_args)}",
            *page_args,
        )
    more = len(rows) > q.limit
    items = tuple(_view(r) for r in rows[: q.limit])
    cursor = Cursor(items[-1].reported_at, items[-1].case_id).encode() if more and items else None
    return CasePage(items=items, total=int(total), limit=q.limit, offset=q.offset,
                    next_cursor=cursor)


async def reported_by_resident(pool: asyncpg.Pool, schema: str, resident: str,
                               case_ids: Sequence[str]) -> set[str]:
    """Which of `case_ids` the resident reported, by the register."""
    if not case_ids:
        return set()
    rows = await pool.fetch(
        f"SELECT case_id FROM {check_schema(schema)}.cases WHERE case_id = ANY($1::text[]) "
        f"AND reported_by = $2 AND reporter_kind = $3",
        list(case_ids), resident, RESIDENT)
    return {r["case_id"] for r in rows}
