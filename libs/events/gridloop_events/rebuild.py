"""Rebuild a projection from the log into fresh tables, then swap them in atomically.

The live runner keeps running: it locks its checkpoint row for every batch, and the swap takes
the same lock, catches the shadow up to the live checkpoint, renames the schemas and commits. The
runner's next batch finds the rebuilt tables under the live name and carries on from their
checkpoint. With `to_sequence`/`to_time` the past is built into a separate schema for inspection
and nothing is swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

import asyncpg
import nats

from .codec import CodecError, Registry, content_hash, decode
from .envelope import StoredEvent
from .logging import get_logger
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
from .subjects import Subjects

CHUNK = 10000
TRANSIENT_RETRIES = 8

log = get_logger(__name__)


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
    share: Sequence[int],
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
        # Every partition of the share has seen the log up to the chunk's end, whether it had
        # events in it or not.
        await write_checkpoints(conn, projection.name, dict.fromkeys(share, pending[-1][0]))
    return count


@dataclass
class _Chunk:
    events: list[tuple[int, str, bytes]]
    partitions: Sequence[int]  # what the chunk's end is a checkpoint for
    until: int | None = None  # set on a read's last chunk: its partitions have seen the log to here


async def _read_chunks(
    store: EventStore,
    projection: Projection,
    share: Sequence[int],
    start: int,
    until: int,
    to_time: datetime | None,
    chunks: asyncio.Queue[_Chunk | None],
) -> None:
    """Fill `chunks` with the share's events start..until: the whole log in one read when the
    share is every partition, else one read per partition, each with a single filter (the
    server scans a one-filter consumer several times faster than a many-filter one)."""
    subjects = store.subjects
    types = projection.event_types
    reads = ([(list(share), subjects.all)] if len(set(share)) == subjects.partitions
             else [([p], subjects.of_partition(p)) for p in share])
    try:
        for partitions, subject_filter in reads:
            pending: list[tuple[int, str, bytes]] = []
            cut = False
            async with contextlib.aclosing(
                store.read_all(start, until, [subject_filter])
            ) as stored:
                async for seq, subject, data, _, stored_at in stored:
                    # Cut on the server's storage time: it follows the stream order, while
                    # envelope times do not (a reaction carries its cause's time, a moved clock
                    # its own).
                    if to_time is not None and stored_at is not None and stored_at > to_time:
                        cut = True
                        break
                    if types and subjects.parse(subject)[2] not in types:
                        continue
                    pending.append((seq, subject, data))
                    if len(pending) >= CHUNK:
                        await chunks.put(_Chunk(pending, partitions))
                        pending = []
            await chunks.put(_Chunk(pending, partitions, None if cut else until))
    except asyncio.CancelledError:
        raise  # the applier stopped first: nobody reads the queue any more
    except BaseException:
        await chunks.put(None)  # wake the applier, which raises this from `await reader`
        raise
    await chunks.put(None)


async def _apply_chunk_retrying(conn: asyncpg.Connection, store: EventStore,
                                projection: Projection, schema: str, chunk: _Chunk) -> int:
    """A chunk in one transaction, again after a transient failure: processes rebuilding
    partitions side by side deadlock now and then on rows they share (a unit's counters), and
    PostgreSQL rolls one back. A poison is found event by event, as the live runner does."""
    for attempt in range(TRANSIENT_RETRIES + 1):
        try:
            try:
                return await _apply_chunk(conn, store, projection, schema, chunk.partitions,
                                          chunk.events, isolate=False)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if is_transient(exc):
                    raise
                return await _apply_chunk(conn, store, projection, schema, chunk.partitions,
                                          chunk.events, isolate=True)
        except Exception as exc:  # noqa: BLE001 - only transient failures get here
            if not is_transient(exc) or attempt == TRANSIENT_RETRIES:
                raise
            log.warning("rebuild.retrying_chunk", projection=projection.name,
                        first_sequence=chunk.events[0][0], attempt=attempt + 1,
                        error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


async def _apply_share(
    conn: asyncpg.Connection,
    store: EventStore,
    projection: Projection,
    schema: str,
    share: Sequence[int],
    start: int,
    until: int,
    to_time: datetime | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Apply the share's events start..until into `schema`, one transaction per chunk, the
    next chunk read from NATS while this one is written. (count, last sequence seen)."""
    chunks: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=2)
    reader = asyncio.create_task(
        _read_chunks(store, projection, share, start, until, to_time, chunks))
    count = 0
    last = start - 1
    try:
        while (chunk := await chunks.get()) is not None:
            if chunk.events:
                applied = await _apply_chunk_retrying(conn, store, projection, schema, chunk)
                count += applied
                last = max(last, chunk.events[-1][0])
                if progress:
                    progress(len(chunk.events))
            if chunk.until is not None and chunk.until > start - 1:
                # The read is complete: its partitions have seen the log up to `until`, whether
                # their last events came earlier or were of types this projection skips.
                async with conn.transaction():
                    await use_schema(conn, schema)
                    await write_checkpoints(conn, projection.name,
                                            dict.fromkeys(chunk.partitions, chunk.until))
                last = max(last, chunk.until)
        await reader
    finally:
        await _stop_reader(reader, chunks)
    return count, last


async def _stop_reader(reader: asyncio.Task[None], chunks: asyncio.Queue[_Chunk | None]) -> None:
    """Cancel the reader and wait until it is gone. A library may swallow a cancellation
    (3.11's asyncio.wait_for does when its inner wait completes at the same moment): the
    reader then goes on into a full queue nobody reads. So the queue is emptied and the
    cancellation repeated until the task ends."""
    while not reader.done():
        reader.cancel()
        while not chunks.empty():
            chunks.get_nowait()
        await asyncio.wait([reader], timeout=0.1)
    if not reader.cancelled() and reader.exception() is not None:
        log.debug("rebuild.reader_stopped", error=repr(reader.exception()))


# --- partitions rebuilt by several processes ---------------------------------------------------


@dataclass(frozen=True)
class Workers:
    """Rebuild with `count` processes, each taking a share of the partitions (a case's events
    stay in one partition, so each process keeps every case's order). The parent takes a share
    itself; the others open the log and the database again from these addresses and build the
    projection with `build`, which must be picklable (a module-level function or a partial of
    one) and make the same projection as the parent's."""

    count: int
    nats_url: str
    database_url: str
    build: Callable[[], Projection]


def _shares(partitions: int, count: int) -> list[list[int]]:
    count = max(1, min(count, partitions))
    return [list(range(k, partitions, count)) for k in range(count)]


async def _worker(workers: Workers, subjects: Subjects, registry: Registry, schema: str,
                  share: list[int], until: int, to_time: datetime | None,
                  done: Synchronized[int]) -> tuple[int, int]:
    def progress(n: int) -> None:
        with done.get_lock():
            done.value += n

    nc = await nats.connect(workers.nats_url, name="gridloop-rebuild")
    try:
        conn = await asyncpg.connect(workers.database_url)
        try:
            return await _apply_share(conn, EventStore(nc, subjects, registry=registry),
                                      workers.build(), schema, share, 1, until, to_time,
                                      progress)
        finally:
            await conn.close()
    finally:
        await nc.close()


def _worker_main(workers: Workers, subjects: Subjects, registry: Registry, schema: str,
                 share: list[int], until: int, to_time: datetime | None,
                 done: Synchronized[int], results: Connection) -> None:
    try:
        outcome: tuple[str, object] = (
            "ok", asyncio.run(_worker(workers, subjects, registry, schema, share, until,
                                      to_time, done)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    results.send(outcome)
    results.close()


async def _apply_in_workers(
    conn: asyncpg.Connection,
    store: EventStore,
    projection: Projection,
    schema: str,
    workers: Workers,
    until: int,
    to_time: datetime | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    shares = _shares(store.subjects.partitions, workers.count)
    # spawn, not fork: the parent holds live NATS and PostgreSQL connections and an event loop.
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Value("q", 0)
    started: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    outcomes: dict[str, tuple[str, object]] = {}
    reported = 0
    own: asyncio.Task[tuple[int, int]] | None = None

    def forward() -> None:
        nonlocal reported
        if progress is not None:
            now = done.value
            if now > reported:
                progress(now - reported)
                reported = now

    def collect() -> None:
        for proc, receive in started:
            if proc.name in outcomes:
                continue
            alive = proc.is_alive()  # before the poll: a result sent before exiting is there
            try:
                if receive.poll():
                    outcomes[proc.name] = receive.recv()
                    continue
            except (EOFError, OSError):
                alive = False  # killed (SIGKILL, the OOM killer) before it could report
            if not alive:
                outcomes[proc.name] = ("error", f"exited with {proc.exitcode} and no result")

    try:
        for share in shares[1:]:
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main, daemon=True, name=f"gridloop-rebuild-{share[0]}",
                args=(workers, store.subjects, store.registry, schema, share, until, to_time,
                      done, send))
            started.append((proc, receive))
            proc.start()
            send.close()
        own = asyncio.create_task(
            _apply_share(conn, store, projection, schema, shares[0], 1, until, to_time,
                         progress))
        while not own.done() or len(outcomes) < len(started):
            forward()
            collect()
            if any(status != "ok" for status, _ in outcomes.values()):
                break  # one share failed: the rebuild has failed, stop the others
            if own.done():
                if own.exception() is not None:
                    break
                await asyncio.sleep(0.2)
            else:
                await asyncio.wait([own], timeout=0.2)
        forward()
        failures = [f"{name}: {value}" for name, (status, value) in outcomes.items()
                    if status != "ok"]
        if own.done() and own.exception() is not None:
            if failures:
                raise RebuildError("; ".join(failures)) from own.exception()
            own.result()  # raises the parent's own failure
        if failures:
            raise RebuildError("; ".join(failures))
        count, last = own.result()
        for _, value in outcomes.values():
            n, share_last = value  # type: ignore[misc]
            count += n
            last = max(last, share_last)
        return count, last
    finally:
        if own is not None and not own.done():
            own.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await own
        for proc, receive in started:
            if proc.pid is None:  # its start failed
                receive.close()
                continue
            if proc.is_alive():
                proc.terminate()
            await asyncio.to_thread(proc.join, 5)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
            receive.close()


class RebuildError(RuntimeError):
    """A worker process of a parallel rebuild failed; the shadow tables are left unswapped."""


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
    workers: Workers | None = None,
) -> RebuildResult:
    live = projection.schema
    historical = to_sequence is not None or to_time is not None
    shadow = check_schema(target_schema or (f"{live}_asof" if historical else f"{live}_rebuild"))
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
        await ensure_schema(conn, projection, shadow)
        tip = await store.last_sequence()
        if to_sequence is not None:
            tip = min(tip, to_sequence)
        if workers is not None and workers.count > 1:
            count, last = await _apply_in_workers(
                conn, store, projection, shadow, workers, tip, to_time, progress)
        else:
            count, last = await _apply_share(
                conn, store, projection, shadow, range(store.subjects.partitions), 1, tip,
                to_time, progress)
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
                    types = projection.event_types
                    if types and subjects.parse(subject)[2] not in types:
                        continue
                    envelope = decode(data, store.registry)
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
