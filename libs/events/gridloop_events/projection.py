"""What a projection is, and the tables every projection shares: checkpoint and dead letters.

A projection's SQL is written without schema names; the runner sets `search_path` for each
transaction, so the same code builds the live schema and a rebuild's shadow schema.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import asyncpg

from .envelope import StoredEvent

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")

COMMON_DDL = """
CREATE TABLE IF NOT EXISTS checkpoint (
    projection    text NOT NULL,
    partition     int NOT NULL,
    last_sequence bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);
CREATE TABLE IF NOT EXISTS dead_letter (
    projection  text NOT NULL,
    sequence    bigint NOT NULL,
    subject     text NOT NULL,
    event_id    text,
    event_type  text,
    error       text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    retried_at  timestamptz,
    PRIMARY KEY (projection, sequence)
);
"""


@runtime_checkable
class Projection(Protocol):
    """A read model built from the stream.

    `apply` runs inside the runner's transaction, once per event, in stream order. It may raise:
    a transient error (connection lost) makes the runner retry the batch; any other error
    dead-letters that one event and the runner moves on. A projection may also offer
    `apply_batch(conn, events)` (and `react_batch(applied)`): the runner and rebuilds then hand
    it a whole fetched batch, and fall back to `apply` per event, each in a savepoint, only to
    find a poison.
    """

    name: str
    schema: str
    event_types: frozenset[str] | None

    async def create_tables(self, conn: asyncpg.Connection) -> None: ...

    async def apply(self, conn: asyncpg.Connection, stored: StoredEvent) -> object: ...


def check_schema(name: str) -> str:
    if not SCHEMA_NAME.match(name):
        raise ValueError(f"bad schema name {name!r}")
    return name


async def use_schema(conn: asyncpg.Connection, schema: str, *, wait_for_disk: bool = True) -> None:
    """Point the transaction's unqualified names at `schema`.

    `wait_for_disk=False` lets its commit return before the WAL is flushed: for a runner's
    batch, whose every row is derived from the log. A PostgreSQL crash can then forget the
    last fraction of a second of batches — their rows and their checkpoint together, since
    they are one transaction — and the runner, positioned at its checkpoint when it reconnects,
    applies them again from the log (reactions included: their event ids make that a no-op).
    Anything not derived from the log (a resident's data key) is never written this way.
    """
    sql = f"SET LOCAL search_path TO {check_schema(schema)}, public"
    if not wait_for_disk:
        sql += "; SET LOCAL synchronous_commit TO off"  # one round trip: a simple query
    await conn.execute(sql)


async def ensure_schema(conn: asyncpg.Connection, projection: Projection, schema: str) -> None:
    async with conn.transaction():
        # Instances starting together would race on CREATE … IF NOT EXISTS (it is not atomic
        # in PostgreSQL's catalogue): one at a time.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"gridloop:ddl:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {check_schema(schema)}")
        await use_schema(conn, schema)
        await conn.execute(COMMON_DDL)
        await projection.create_tables(conn)


async def read_checkpoints(
    conn: asyncpg.Connection, projection: str, lock: bool = False
) -> dict[int, int]:
    """Last applied stream sequence per partition (a missing partition is at 0)."""
    rows = await conn.fetch(
        "SELECT partition, last_sequence FROM checkpoint WHERE projection = $1"
        + (" FOR UPDATE" if lock else ""),
        projection,
    )
    return {r["partition"]: int(r["last_sequence"]) for r in rows}


async def write_checkpoints(
    conn: asyncpg.Connection, projection: str, sequences: dict[int, int]
) -> None:
    if not sequences:
        return
    parts = sorted(sequences)
    await conn.execute(
        """INSERT INTO checkpoint (projection, partition, last_sequence, updated_at)
           SELECT $1, p, s, now() FROM unnest($2::int[], $3::bigint[]) AS t(p, s)
           ON CONFLICT (projection, partition) DO UPDATE
           SET last_sequence = GREATEST(checkpoint.last_sequence, EXCLUDED.last_sequence),
               updated_at = now()""",
        projection,
        parts,
        [sequences[p] for p in parts],
    )


async def record_dead_letter(
    conn: asyncpg.Connection,
    projection: str,
    sequence: int,
    subject: str,
    error: str,
    event_id: str | None = None,
    event_type: str | None = None,
) -> None:
    # Only ids and the cause: the event itself stays in the stream, where `dlq retry` reads it,
    # so no resident's data is copied into the dead-letter table.
    await conn.execute(
        """INSERT INTO dead_letter (projection, sequence, subject, event_id, event_type, error)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (projection, sequence) DO UPDATE SET error = EXCLUDED.error,
               failed_at = now()""",
        projection,
        sequence,
        subject,
        event_id,
        event_type,
        error[:2000],
    )
