"""The pool's reset against a real PostgreSQL: a connection that took session state is reset in
full when released, any other goes back without a round trip, and nothing leaks either way."""

from __future__ import annotations

import asyncpg

from gridloop_events.database import create_pool, holds_session_state


class Queries:
    """The statements a connection sent, as asyncpg's query logger saw them."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, record) -> None:  # type: ignore[no-untyped-def]
        self.sent.append(record.query)


async def test_only_a_connection_marked_as_holding_session_state_is_reset(
    fresh_database: str,
) -> None:
    pool = await create_pool(fresh_database, min_size=1, max_size=1)
    other = await asyncpg.connect(fresh_database)
    queries = Queries()
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(queries)
            async with conn.transaction():
                await conn.execute("SET LOCAL search_path TO pg_catalog")
                await conn.execute("SELECT pg_advisory_xact_lock(41)")
        assert not any("RESET" in q for q in queries.sent), queries.sent
        async with pool.acquire() as conn:
            # Same connection (max_size=1): the transaction's settings ended with it.
            assert await conn.fetchval("SHOW search_path") == '"$user", public'
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock(41)")

            holds_session_state(conn)
            assert await conn.fetchval("SELECT pg_try_advisory_lock(42)")
            await conn.execute("SET application_name TO 'runner-lock'")
        assert await other.fetchval("SELECT pg_try_advisory_lock(42)"), "lock leaked"
        await other.execute("SELECT pg_advisory_unlock(42)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") != "runner-lock"

            # Reset once: the mark does not outlive the release.
            queries.sent.clear()
            conn.add_query_logger(queries)
        assert not any("RESET" in q for q in queries.sent), queries.sent
    finally:
        await other.close()
        await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(fresh_database: str) -> None:
    pool = await create_pool(fresh_database, min_size=1, max_size=1)
    try:
        await pool.execute("CREATE TABLE left_open (n int)")
        conn = await pool.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO left_open VALUES (1)")
        await pool.release(conn)  # asyncpg rolls back before the reset hook runs
        assert await pool.fetchval("SELECT count(*) FROM left_open") == 0
    finally:
        await pool.close()

