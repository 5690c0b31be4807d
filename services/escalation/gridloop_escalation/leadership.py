"""One projection runner per database at a time, whatever the number of instances.

Two instances' runners on one stream share a durable consumer, and each skips a message at or
below the checkpoint the other just committed: delivered out of order across the two, an event
is skipped for good (a lost CaseDispatched would be a deadline nobody watches). So the runner
runs only on the instance holding a PostgreSQL advisory lock; the others are standbys that take
over when the holder's session ends. The ticker runs everywhere: it is safe to race.
"""

from __future__ import annotations

import asyncio

import asyncpg

from gridloop_events.logging import get_logger
from gridloop_events.projection import Projection, ensure_schema
from gridloop_events.runner import ProjectionRunner
from gridloop_events.service import Runtime

log = get_logger(__name__)


class ProjectionLeader:
    def __init__(self, projection: Projection, retry_seconds: float = 1.0) -> None:
        self.projection = projection
        self.retry_seconds = retry_seconds
        self.lock_key = f"gridloop:{projection.schema}:{projection.name}"
        self.runner: ProjectionRunner | None = None

    async def run(self, runtime: Runtime) -> None:
        while True:
            try:
                await self._lead(runtime)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - lost the lock session: stand by again
                log.warning("leader.lost", projection=self.projection.name,
                            error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.retry_seconds)

    async def _lead(self, runtime: Runtime) -> None:
        # A dedicated session: the lock lives exactly as long as this connection.
        conn = await asyncpg.connect(runtime.settings.database_url)
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                          self.lock_key):
                await asyncio.sleep(self.retry_seconds)
            assert runtime.nc is not None and runtime.pool is not None
            assert runtime.store is not None
            runner = ProjectionRunner(runtime.nc, runtime.pool, runtime.store, self.projection)
            await runner.start()
            self.runner = runner
            runtime.runners.append(runner)
            log.info("leader.acquired", projection=self.projection.name)
            try:
                while runner.running:
                    await conn.fetchval("SELECT 1")  # the lock's session is still ours
                    await asyncio.sleep(self.retry_seconds)
            finally:
                self.runner = None
                if runner in runtime.runners:
                    runtime.runners.remove(runner)
                await runner.stop()
        finally:
            await conn.close()


async def ensure_tables(runtime: Runtime, projection: Projection) -> None:
    """Create the schema once, serialised across instances (concurrent DDL can collide)."""
    assert runtime.pool is not None
    async with runtime.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"gridloop:ddl:{projection.schema}")
            await ensure_schema(conn, projection, projection.schema)  # a savepoint inside
