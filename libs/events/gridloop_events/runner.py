"""The projection runner: exactly-once in effect, strictly in stream order.

- The checkpoint (last applied stream sequence) lives in the projection's own schema and commits
  in the same transaction as the projection change, so a crash anywhere leaves the two agreeing.
- The durable pull consumer is (re)positioned at checkpoint + 1 whenever the runner starts or
  recovers, so the database — not the consumer's ack state — decides what comes next; a message
  at or below the checkpoint is skipped.
- One fetched batch is one transaction; it is acknowledged (AckPolicy.ALL, one ack per batch)
  only after the commit.
- An event that cannot be applied is dead-lettered with its sequence and cause, and the runner
  moves on; a database or broker outage is retried, never dead-lettered.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import nats.errors
import nats.js.api as jsapi
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .codec import CodecError, content_hash, decode
from .envelope import StoredEvent
from .logging import get_logger
from .projection import (
    Projection,
    ensure_schema,
    read_checkpoint,
    record_dead_letter,
    use_schema,
    write_checkpoint,
)
from .store import ConcurrencyError, EventStore

log = get_logger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    nats.errors.Error,
    nats.js.errors.Error,
    ConcurrencyError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass
class RunnerStats:
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0
    recoveries: int = 0
    checkpoint: int = 0


class ProjectionRunner:
    def __init__(
        self,
        nc: NATS,
        pool: asyncpg.Pool,
        store: EventStore,
        projection: Projection,
        *,
        batch_size: int = 256,
        fetch_timeout: float = 1.0,
        ack_wait: float = 60.0,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.pool = pool
        self.store = store
        self.projection = projection
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.stats = RunnerStats()
        self._after_commit = after_commit or _fault_pause_from_env()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()

    @property
    def durable(self) -> str:
        return f"{self.store.subjects.prefix.replace('.', '_')}_{self.projection.name}"

    @property
    def schema(self) -> str:
        return self.projection.schema

    def filter_subjects(self) -> list[str]:
        types = self.projection.event_types
        if not types:
            return [self.store.subjects.all]
        return sorted(self.store.subjects.of_type(t) for t in types)

    # --- lifecycle -------------------------------------------------------------------------

    async def prepare(self) -> None:
        async with self.pool.acquire() as conn:
            await ensure_schema(conn, self.projection, self.schema)

    async def start(self) -> None:
        await self.prepare()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"runner:{self.projection.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_caught_up(self, sequence: int | None = None, timeout: float = 30.0) -> None:
        """Wait until the checkpoint reaches `sequence` (default: the stream's tip now)."""
        target = sequence if sequence is not None else await self.store.last_sequence()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.stats.checkpoint < target:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{self.projection.name} at {self.stats.checkpoint}, wanted {target}"
                )
            await asyncio.sleep(0.02)

    async def lag(self) -> int:
        return max(0, await self.store.last_sequence() - self.stats.checkpoint)

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                sub = await self._position_consumer()
                backoff = 0.1
                await self._consume(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure here is retried, loudly
                self.stats.recoveries += 1
                log.warning(
                    "runner.recovering",
                    projection=self.projection.name,
                    error=f"{type(exc).__name__}: {exc}",
                    backoff=backoff,
                )
                await asyncio.sleep(backoff + random.random() * backoff)
                backoff = min(backoff * 2, 5.0)

    async def _position_consumer(self):  # type: ignore[no-untyped-def]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await use_schema(conn, self.schema)
                checkpoint = await read_checkpoint(conn, self.projection.name)
        self.stats.checkpoint = checkpoint
        try:
            await self.js.delete_consumer(self.store.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        config = jsapi.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=checkpoint + 1,
            ack_policy=jsapi.AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.batch_size * 2,
            max_deliver=-1,
            filter_subjects=self.filter_subjects(),
        )
        await self.js.add_consumer(self.store.stream, config)
        return await self.js.pull_subscribe_bind(self.durable, self.store.stream)

    async def _consume(self, sub) -> None:  # type: ignore[no-untyped-def]
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # An idle stream: nats-py raises either class depending on where it waited.
                self._caught_up.set()
                continue
            if msgs:
                await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        async with self.pool.acquire() as conn:
            try:
                last = await self._apply_batch(conn, msgs, isolate=False)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # Find the poison: redo the batch one savepoint per event.
                last = await self._apply_batch(conn, msgs, isolate=True)
        if self._after_commit is not None:
            await self._after_commit()
        await msgs[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
        self.stats.batches += 1
        self.stats.checkpoint = max(self.stats.checkpoint, last)

    async def _apply_batch(self, conn: asyncpg.Connection, msgs: list[Msg], isolate: bool) -> int:
        name = self.projection.name
        async with conn.transaction():
            await use_schema(conn, self.schema)
            # Row lock: a concurrent rebuild swap or a second instance waits for this batch.
            checkpoint = await conn.fetchval(
                "SELECT last_sequence FROM checkpoint WHERE projection = $1 FOR UPDATE", name
            )
            checkpoint = int(checkpoint or 0)
            last = checkpoint
            applied = skipped = dead = 0
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq <= checkpoint:
                    skipped += 1
                    continue
                outcome = await self._apply_one(conn, msg, seq, isolate)
                if outcome == "dead":
                    dead += 1
                else:
                    applied += 1
                last = seq
            if last > checkpoint:
                await write_checkpoint(conn, name, last)
        self.stats.applied += applied
        self.stats.skipped += skipped
        self.stats.dead_lettered += dead
        return last

    async def _apply_one(self, conn: asyncpg.Connection, msg: Msg, seq: int, isolate: bool) -> str:
        try:
            envelope = decode(msg.data, self.store.registry)
        except CodecError as exc:
            await self._dead_letter(conn, msg, seq, f"undecodable: {exc}")
            return "dead"
        stored = StoredEvent(sequence=seq, subject=msg.subject, envelope=envelope,
                             content_hash=content_hash(msg.data))
        if not isolate:
            await self._apply_and_react(conn, stored)
            return "applied"
        try:
            async with conn.transaction():  # a savepoint
                await self._apply_and_react(conn, stored)
            return "applied"
        except Exception as exc:
            if is_transient(exc):
                raise
            await self._dead_letter(
                conn,
                msg,
                seq,
                f"{type(exc).__name__}: {exc}",
                str(envelope.event_id),
                envelope.event_type,
            )
            return "dead"

    async def _apply_and_react(self, conn: asyncpg.Connection, stored: StoredEvent) -> None:
        result = await self.projection.apply(conn, stored)
        # Reactions run before the commit: a crash after them re-runs them on redelivery, and
        # their derived event ids make that a no-op. A rebuild never calls them.
        react = getattr(self.projection, "react", None)
        if react is not None:
            await react(conn, stored, result)

    async def _dead_letter(
        self,
        conn: asyncpg.Connection,
        msg: Msg,
        seq: int,
        error: str,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> None:
        log.error(
            "runner.dead_letter",
            projection=self.projection.name,
            sequence=seq,
            event_id=event_id,
            event_type=event_type,
            error=error,
        )
        await record_dead_letter(
            conn, self.projection.name, seq, msg.subject, error, event_id, event_type
        )


def _fault_pause_from_env() -> Callable[[], Awaitable[None]] | None:
    """Widen the commit→ack window on purpose, for the crash tests that kill a runner there."""
    pause = float(os.environ.get("GRIDLOOP_FAULT_PAUSE_AFTER_COMMIT", "0") or 0)
    if pause <= 0:
        return None

    async def sleep() -> None:
        await asyncio.sleep(pause)

    return sleep
