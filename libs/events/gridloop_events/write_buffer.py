"""Statements of one applied batch, sent as a few pipelined `executemany` calls.

A projection written one event at a time issues a handful of statements per event; sent one by
one, each costs a round trip and most of a replay's time. The buffer keeps them and, at a flush,
sends each run of identical SQL as one `executemany` (asyncpg pipelines its rows).

Order is kept where it matters and only there: a statement is ordered after every earlier
statement of the *same case*, and may move ahead of statements of other cases. That is sound
because a case projection's statements touch rows of their own case only, or add to counters
(commutative). A read (`fetch*`) sends everything buffered first, so it sees every write before it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg


class WriteBuffer:
    """Looks like the part of `asyncpg.Connection` a projection uses; `case` names the case whose
    event is being applied (set by the caller before each event)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.case: str = ""
        self._groups: list[tuple[str, list[Sequence[Any]]]] = []
        self._positions: dict[str, list[int]] = {}  # sql -> indexes of its groups, ascending
        self._last: dict[str, int] = {}  # case -> index of the group of its latest statement
        self.statements = 0
        self.round_trips = 0
        # What a projection read once for the whole batch and keeps current while it applies.
        self.memo: dict[str, Any] = {}

    def _add(self, sql: str, args: Sequence[Any]) -> None:
        after = self._last.get(self.case, -1)
        positions = self._positions.setdefault(sql, [])
        # The case's own latest group qualifies too: a group's rows run in the order added.
        i = bisect_left(positions, after)
        if i < len(positions):
            index = positions[i]
        else:
            index = len(self._groups)
            self._groups.append((sql, []))
            positions.append(index)
        self._groups[index][1].append(args)
        self._last[self.case] = index
        self.statements += 1

    async def execute(self, sql: str, *args: Any) -> None:
        self._add(sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self._add(sql, tuple(row))

    async def flush(self) -> None:
        groups, self._groups = self._groups, []
        self._positions.clear()
        self._last.clear()
        for sql, rows in groups:
            self.round_trips += 1
            if len(rows) == 1:
                await self.conn.execute(sql, *rows[0])
            else:
                await self.conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        await self.flush()
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        await self.flush()
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self.flush()
        return await self.conn.fetchval(sql, *args)
