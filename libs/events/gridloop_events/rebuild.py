"""Rebuild a projection from the log into fresh tables, then swap them in atomically.

The live runner keeps running: it locks its checkpoint row for every batch, and the swap takes
the same lock, catches the shadow up to the live checkpoint, renames the schemas and commits. The
runner's next batch finds the rebuilt tables under the live name and carries on from their
checkpoint. With `to_sequence`/`to_time` the past is built into a separate schema for inspection
and nothing is swapped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .codec import CodecError, content_hash, decode
from .envelope import StoredEvent
from .projection import (
    Projection,
    check_schema,
    ensure_schema,
    read_checkpoints,
    record_dead_letter,
    use_schema,
    write_checkpoints,
)
from .runner import is_transient
from .store import EventStore

CHUNK = 10000


@dataclass(frozen=True)
class RebuildResult:
    schema: str
    events: int
    last_sequence: int
    seconds: float
    checksum: str

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


async def table_checksum(conn: asyncpg.Connection, schema: str, tables: tuple[str, ...]) -> str:
    """One digest over every row of the projection's tables, independent of physical order."""
    parts = []
    for table in tables:
        digest = await conn.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            f"FROM {check_schema(schema)}.{check_schema(table)} t"
        )
        parts.append(f"{table}:{digest}")
    return hashlib.md5(";".join(parts).encode()).hexdigest()


async def _apply_chunk(
    conn: asyncpg.Connection,
    store: EventStore,
    projection: Projection,
    schema: str,
    pending: list[tuple[int, str, bytes]],
    isolate: bool,
) -> int:
    """One transaction for the chunk. Savepoints per event only when a poison must be found:
    they cost two round trips an event, most of a replay's time otherwise."""
    count = 0
    batch_apply = None if isolate else getattr(projection, "apply_batch", None)
    async with conn.transaction():
        await use_schema(conn, schema)
        batch: list[StoredEvent] = []
        for seq, subject, data in pending:
            try:
                envelope = decode(data, store.registry)
            except CodecError as exc:
                await record_dead_letter(conn, projection.name, seq, subject, str(exc))
                continue
            stored = StoredEvent(sequence=seq, subject=subject, envelope=envelope,
                                 content_hash=content_hash(data))
            count += 1
            if batch_apply is not None:
                batch.append(stored)
                continue
            if not isolate:
                await projection.apply(conn, stored)
                continue
            try:
                async with conn.transaction():
                    await projection.apply(conn, stored)
            except Exception as exc:  # noqa: BLE001 - same poison rule as the live runner
                if is_transient(exc):
                    raise
                await record_dead_letter(conn, projection.name, seq, subject,
                                         f"{type(exc).__name__}: {exc}",
                                         str(envelope.event_id), envelope.event_type)
        if batch:
            assert batch_apply is not None
            await batch_apply(conn, batch)
        # Every partition has seen the log up to the chunk's end, whether it had events or not.
        await write_checkpoints(
            conn, projection.name, {p: pending[-1][0] for p in range(store.subjects.partitions)}
        )
    return count


async def _apply_range(
    conn: asyncpg.Connection,
    store: EventStore,
    projection: Projection,
    schema: str,
    start: int,
    until: int,
    to_time: datetime | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Apply events start..until into `schema`, one transaction per chunk. (count, last seq)."""
    filters = (
        [store.subjects.of_type(t) for t in sorted(projection.event_types)]
        if projection.event_types
        else None
    )
    count = 0
    last = start - 1
    pending: list[tuple[int, str, bytes]] = []

    async def flush() -> None:
        nonlocal count, last
        if not pending:
            return
        try:
            applied = await _apply_chunk(conn, store, projection, schema, pending, isolate=False)
        except Exception as exc:  # noqa: BLE001 - find the poison, as the live runner does
            if is_transient(exc):
                raise
            applied = await _apply_chunk(conn, store, projection, schema, pending, isolate=True)
        count += applied
        last = pending[-1][0]
        if progress:
            progress(len(pending))
        pending.clear()

    async for seq, subject, data, _, stored_at in store.read_all(start, until, filters):
        # Cut on the server's storage time: it follows the stream order, while envelope times
        # do not (a reaction carries its cause's time, a moved clock its own).
        if to_time is not None and stored_at is not None and stored_at > to_time:
            break
        pending.append((seq, subject, data))
        if len(pending) >= CHUNK:
            await flush()
    await flush()
    return count, last


async def rebuild(
    pool: asyncpg.Pool,
    store: EventStore,
    projection: Projection,
    tables: tuple[str, ...],
    *,
    to_sequence: int | None = None,
    to_time: datetime | None = None,
    target_schema: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RebuildResult:
    live = projection.schema
    historical = to_sequence is not None or to_time is not None
    shadow = check_schema(target_schema or (f"{live}_asof" if historical else f"{live}_rebuild"))
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
        await ensure_schema(conn, projection, shadow)
        tip = to_sequence if to_sequence is not None else await store.last_sequence()
        count, last = await _apply_range(
            conn, store, projection, shadow, 1, tip, to_time, progress
        )
        if historical:
            checksum = await table_checksum(conn, shadow, tables)
            return RebuildResult(shadow, count, last, time.perf_counter() - started, checksum)

        await ensure_schema(conn, projection, live)
        await conn.execute(f"DROP SCHEMA IF EXISTS {live}_retired CASCADE")
        async with conn.transaction():
            await use_schema(conn, live)
            # A table lock, not a row lock: a runner arriving meanwhile waits before it resolves
            # the table, then finds the renamed shadow under the live name. A row lock would
            # deadlock with the DROP below.
            await conn.execute("LOCK TABLE checkpoint IN ACCESS EXCLUSIVE MODE")
            live_cps = await read_checkpoints(conn, projection.name)
            await use_schema(conn, shadow)
            shadow_cps = await read_checkpoints(conn, projection.name)
            shadow_tip = max(shadow_cps.values(), default=0)
            live_tip = max(live_cps.values(), default=0)
            if live_tip > shadow_tip:
                # Events the live runners applied while the shadow was being built: exactly
                # those, partition by partition, so the swap changes nothing they did.
                subjects = store.subjects
                async for seq, subject, data, *_ in store.read_all(shadow_tip + 1, live_tip):
                    if seq > live_cps.get(subjects.partition_of_subject(subject), 0):
                        continue
                    envelope = decode(data, store.registry)
                    if projection.event_types and envelope.event_type not in projection.event_types:
                        continue
                    await projection.apply(conn, StoredEvent(
                        sequence=seq, subject=subject, envelope=envelope,
                        content_hash=content_hash(data)))
                    count += 1
                await write_checkpoints(conn, projection.name, live_cps)
                last = live_tip
            await conn.execute(f"ALTER SCHEMA {live} RENAME TO {live}_retired")
            await conn.execute(f"ALTER SCHEMA {shadow} RENAME TO {live}")
        await conn.execute(f"DROP SCHEMA {live}_retired CASCADE")
        checksum = await table_checksum(conn, live, tables)
    return RebuildResult(live, count, last, time.perf_counter() - started, checksum)
