"""A projection runner in its own process, for tests that SIGKILL it at random moments.

Usage: python crash_runner.py NATS_URL DATABASE_URL PREFIX [BATCH]
The projection tallies events per case and records every applied sequence in a table whose
primary key fails loudly if any event were ever applied twice.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
import nats

from gridloop_events.database import create_pool
from gridloop_events.envelope import StoredEvent
from gridloop_events.runner import ProjectionRunner
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects


class TallyProjection:
    name = "tally"
    schema = "tally"
    event_types = None
    tables = ("tally", "applied")

    async def create_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS tally (
                case_id text PRIMARY KEY, events int NOT NULL, last_seq bigint NOT NULL,
                types text NOT NULL);
            CREATE TABLE IF NOT EXISTS applied (
                seq bigint PRIMARY KEY, case_id text NOT NULL, event_type text NOT NULL);
            """
        )

    async def apply(self, conn: asyncpg.Connection, stored: StoredEvent) -> None:
        e = stored.envelope
        note = getattr(e.payload, "note", "")
        if note == "poison":
            raise ValueError("this note is poison")
        await conn.execute(
            "INSERT INTO applied (seq, case_id, event_type) VALUES ($1, $2, $3)",
            stored.sequence, e.case_id, e.event_type,
        )
        await conn.execute(
            """INSERT INTO tally (case_id, events, last_seq, types) VALUES ($1, 1, $2, $3)
               ON CONFLICT (case_id) DO UPDATE SET events = tally.events + 1,
               last_seq = EXCLUDED.last_seq, types = tally.types || ',' || EXCLUDED.types""",
            e.case_id, stored.sequence, e.event_type,
        )


def unbuildable() -> TallyProjection:
    """For a parallel rebuild whose worker process fails."""
    raise RuntimeError("this projection cannot be built here")


async def main(nats_url: str, database_url: str, prefix: str, batch: int) -> None:
    nc = await nats.connect(nats_url)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    store = EventStore(nc, Subjects(prefix))
    runner = ProjectionRunner(nc, pool, store, TallyProjection(), batch_size=batch)
    await runner.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.stop()
    await nc.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 64))
