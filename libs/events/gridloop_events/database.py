"""Connection pools whose released connections are reset only when they took session state.

asyncpg resets every connection it takes back with four statements (RESET ALL, an advisory
unlock of everything, UNLISTEN, CLOSE ALL) in one round trip. In the closed loop at 10 cases/s
that was 27 of the ~250 round trips a case costs, and RESET ALL was PostgreSQL's costliest
statement after the state upserts. Gridloop's SQL keeps its state inside transactions (SET LOCAL,
transaction-level advisory locks), which end at commit or rollback — and asyncpg rolls back a
transaction left open before it calls the reset hook. The one exception is a runner's partition
locks, session-level on purpose: a connection that takes session state says so with
`holds_session_state`, and only such a connection gets the full reset when it goes back.
"""

from __future__ import annotations

import weakref
from typing import Any

import asyncpg

_STATEFUL: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


def holds_session_state(conn: asyncpg.Connection) -> None:
    """Mark a (pooled) connection for the full reset when it is released."""
    # A pooled connection is a proxy; the reset hook is handed the connection behind it.
    _STATEFUL.add(getattr(conn, "_con", conn))


async def _reset(conn: asyncpg.Connection) -> None:
    if conn in _STATEFUL:
        _STATEFUL.discard(conn)
        await conn.execute(conn.get_reset_query())


async def create_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool:
    """`asyncpg.create_pool` with the reset above."""
    return await asyncpg.create_pool(dsn, reset=_reset, **kwargs)
