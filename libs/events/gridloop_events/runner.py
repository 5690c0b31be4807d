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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import nats.errors
import nats.js.api as jsapi
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .codec import CodecError, content_hash, decode
from .database import holds_session_state
from .envelope import StoredEvent
from .logging import get_logger
from .projection import (
    Projection,
    ensure_schema,
    read_checkpoints,
    record_dead_letter,
    use_schema,
    write_checkpoints,
)
from .store import ConcurrencyError, EventStore

log = get_logger(__name__)


class LostCommits(RuntimeError):
    """The database's checkpoint is below what this runner committed: PostgreSQL forgot
    committed batches (a crash while batches commit without waiting for the disk, a failover to
    a replica behind, a restore). The messages were acknowledged, so the consumer would not
    deliver them again: the runner repositions at the checkpoint the database has."""

    def __init__(self, projection: str, lost: dict[int, tuple[int, int]]) -> None:
        shown = ", ".join(f"partition {p} at {have}, committed {had}"
                          for p, (have, had) in sorted(lost.items()))
        super().__init__(f"{projection}: checkpoints behind this runner's commits ({shown})")


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
    LostCommits,
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
        partitions: Sequence[int] | None = None,
        batch_size: int = 256,
        fetch_timeout: float = 1.0,
        ack_wait: float = 60.0,
        claim_interval: float = 2.0,
        spare: Sequence[int] = (),
        absorb_after: float | None = None,
        hand_back_after: float = 120.0,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.pool = pool
        self.store = store
        self.projection = projection
        self.wanted = sorted(partitions if partitions is not None
                             else range(store.subjects.partitions))
        self.owned: list[int] = []
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.claim_interval = claim_interval
        # Partitions of other instances' shares this one takes over while nobody holds them
        # (their instance and its standby are gone), and hands back after a while so a
        # returning owner gets them again.
        self.spare = sorted(set(spare) - set(self.wanted))
        # Long enough that instances started one after another do not take each other's share.
        self.absorb_after = absorb_after if absorb_after is not None else 30.0
        self.hand_back_after = hand_back_after
        self._absorbing: set[int] = set()
        self._free_since: dict[int, float] = {}
        self._hand_back_at = 0.0
        self.stats = RunnerStats()
        # What this runner has committed per partition since it positioned its consumer: the
        # database's checkpoint must never be found below it (see LostCommits).
        self._committed: dict[int, int] = {}
        self._after_commit = after_commit or _fault_pause_from_env()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Each runner has a consumer of its own: two runners never share one, so neither can
        # be handed a message out of order while the other holds the one before it.
        self._instance = uuid.uuid4().hex[:8]

    @property
    def durable(self) -> str:
        prefix = self.store.subjects.prefix.replace(".", "_")
        return f"{prefix}_{self.projection.name}_{self._instance}"

    @property
    def schema(self) -> str:
        return self.projection.schema

    def filter_subjects(self, partitions: Sequence[int]) -> list[str]:
        return self.store.subjects.filters(partitions)

    def _lock_key(self, partition: int) -> str:
        return f"gridloop:{self.schema}:{self.projection.name}:{partition}"

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
        try:
            await self.js.delete_consumer(self.store.stream, self.durable)
        except Exception:  # noqa: BLE001 - it expires on its own (inactive_threshold)
            pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_caught_up(self, sequence: int | None = None, timeout: float = 30.0) -> None:
        """Wait until every event of this runner's partitions up to `sequence` (default: the
        stream's tip now) is applied and committed."""
        target = sequence if sequence is not None else await self.store.last_sequence()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._caught_up_to(target):
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{self.projection.name} at {self.stats.checkpoint}, wanted {target}"
                )
            await asyncio.sleep(0.02)

    async def _caught_up_to(self, target: int) -> bool:
        if self.stats.checkpoint >= target:
            return True
        if not self.owned or not set(self.wanted) <= set(self.owned):
            return False
        if await self.store.last_sequence() < target:
            return False
        try:
            info = await self.js.consumer_info(self.store.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return False
        # The tip was past the target before this look, and a batch is acknowledged only after
        # its commit: nothing pending and nothing unacknowledged means all is applied.
        return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0

    async def lag(self) -> int:
        """Events of this runner's partitions not yet applied (the stream tip if it owns none)."""
        if not self.owned:
            return await self.store.last_sequence() if self.wanted else 0
        try:
            info = await self.js.consumer_info(self.store.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return await self.store.last_sequence()
        return (info.num_pending or 0) + (info.num_ack_pending or 0)

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                # A session of its own: the partition locks live exactly as long as it does.
                async with self.pool.acquire() as lock_conn:
                    holds_session_state(lock_conn)
                    try:
                        owned = await self._claim(lock_conn,
                                                  self.wanted + sorted(self._absorbing))
                        self._absorbing &= set(owned)
                        if not owned:
                            await self._watch_spares(lock_conn)
                            await asyncio.sleep(self.claim_interval)
                            continue
                        self.owned = owned
                        sub = await self._position_consumer(owned)
                        backoff = 0.1
                        await self._consume(sub, lock_conn)
                    finally:
                        self.owned = []
                        await _release_locks(lock_conn)
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

    async def _claim(self, lock_conn: asyncpg.Connection, partitions: Sequence[int]) -> list[int]:
        """Take the advisory lock of each partition that no other live instance holds."""
        got = []
        for p in partitions:
            if await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                        self._lock_key(p)):
                got.append(p)
        if got:
            # Rows exist before anyone applies, so the per-batch FOR UPDATE always has a row
            # to serialise on.
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await use_schema(conn, self.schema)
                    await conn.execute(
                        """INSERT INTO checkpoint (projection, partition, last_sequence)
                           SELECT $1, p, 0 FROM unnest($2::int[]) AS t(p)
                           ON CONFLICT DO NOTHING""",
                        self.projection.name, got,
                    )
            log.info("runner.claimed", projection=self.projection.name, partitions=got)
        return got

    async def _watch_spares(self, lock_conn: asyncpg.Connection) -> bool:
        """Note which spare partitions nobody holds; absorb those free for `absorb_after`."""
        if not self.spare:
            return False
        now = asyncio.get_running_loop().time()
        for p in self.spare:
            if p in self._absorbing:
                continue
            key = self._lock_key(p)
            if await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                await lock_conn.fetchval("SELECT pg_advisory_unlock(hashtext($1))", key)
                self._free_since.setdefault(p, now)
            else:
                self._free_since.pop(p, None)
        ready = [p for p, since in self._free_since.items() if now - since >= self.absorb_after]
        if not ready:
            return False
        for p in ready:
            del self._free_since[p]
        self._absorbing.update(ready)
        self._hand_back_at = now + self.hand_back_after
        log.warning("runner.absorbing", projection=self.projection.name, partitions=sorted(ready))
        return True

    def _hand_back(self, now: float) -> None:
        log.info("runner.handing_back", projection=self.projection.name,
                 partitions=sorted(self._absorbing))
        # Free from now: the owner (trying every claim interval) gets them first if it is back.
        for p in self._absorbing:
            self._free_since[p] = now
        self._absorbing.clear()

    async def _position_consumer(self, owned: Sequence[int]):  # type: ignore[no-untyped-def]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await use_schema(conn, self.schema)
                checkpoints = await read_checkpoints(conn, self.projection.name)
        start = min(checkpoints.get(p, 0) for p in owned)
        # Every owned partition is applied up to the lowest of them, not the highest: a share
        # absorbed from a gone instance is behind this one's own (wait_caught_up trusts this).
        self.stats.checkpoint = start
        self._committed = {p: checkpoints.get(p, 0) for p in owned}
        try:
            await self.js.delete_consumer(self.store.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        config = jsapi.ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start + 1,
            ack_policy=jsapi.AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.batch_size * 2,
            max_deliver=-1,
            inactive_threshold=300.0,
            filter_subjects=self.filter_subjects(owned),
        )
        await self.js.add_consumer(self.store.stream, config)
        return await self.js.pull_subscribe_bind(self.durable, self.store.stream)

    async def _consume(self, sub, lock_conn: asyncpg.Connection) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + self.claim_interval
        while not self._stopping.is_set():
            if loop.time() >= next_claim:
                next_claim = loop.time() + self.claim_interval
                # The lock session must be alive, or another instance may own these now.
                await lock_conn.fetchval("SELECT 1")
                missing = [p for p in self.wanted if p not in self.owned]
                if missing and await self._claim(lock_conn, missing):
                    return  # reposition with the larger set
                if self._absorbing and loop.time() >= self._hand_back_at:
                    self._hand_back(loop.time())
                    return  # release everything; the own share is claimed again at once
                if await self._watch_spares(lock_conn):
                    return  # reposition with the absorbed partitions
            try:
                msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # An idle stream: nats-py raises either class depending on where it waited.
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
        subjects = self.store.subjects
        types = self.projection.event_types
        partitions = [subjects.partition_of_subject(msg.subject) for msg in msgs]
        async with conn.transaction():
            await use_schema(conn, self.schema, wait_for_disk=False)
            # Row locks: a rebuild's swap or a second runner on a partition waits for this batch.
            # Every owned partition's, not only the batch's: a batch the database forgot may
            # be in a partition that gets nothing new for a long time.
            rows = await conn.fetch(
                """SELECT partition, last_sequence FROM checkpoint
                   WHERE projection = $1 AND partition = ANY($2::int[]) FOR UPDATE""",
                name, sorted(set(partitions) | self._committed.keys()),
            )
            checkpoints = {r["partition"]: int(r["last_sequence"]) for r in rows}
            lost = {p: (checkpoints.get(p, 0), seq) for p, seq in self._committed.items()
                    if checkpoints.get(p, 0) < seq}
            if lost:
                raise LostCommits(self.projection.name, lost)
            advanced: dict[int, int] = {}
            skipped = dead = 0
            last = 0
            todo: list[tuple[Msg, int]] = []
            for msg, p in zip(msgs, partitions, strict=True):
                seq = msg.metadata.sequence.stream
                last = max(last, seq)
                if seq <= checkpoints.get(p, 0):
                    skipped += 1
                    continue
                advanced[p] = seq
                checkpoints[p] = seq
                if types and subjects.parse(msg.subject)[2] not in types:
                    continue
                todo.append((msg, seq))
            batch_apply = getattr(self.projection, "apply_batch", None)
            if isolate or batch_apply is None:
                for msg, seq in todo:
                    if await self._apply_one(conn, msg, seq, isolate) == "dead":
                        dead += 1
            else:
                events = []
                for msg, seq in todo:
                    stored = await self._decode(conn, msg, seq)
                    if stored is None:
                        dead += 1
                    else:
                        events.append(stored)
                if events:
                    applied_events = await batch_apply(conn, events)
                    # Reactions run before the commit: a crash after them re-runs them on
                    # redelivery, and their derived event ids make that a no-op. A rebuild
                    # never calls them.
                    await self.projection.react_batch(applied_events)  # type: ignore[attr-defined]
            await write_checkpoints(conn, name, advanced)
        for p, seq in advanced.items():
            self._committed[p] = max(self._committed.get(p, 0), seq)
        self.stats.applied += len(todo) - dead
        self.stats.skipped += skipped
        self.stats.dead_lettered += dead
        return last

    async def _decode(self, conn: asyncpg.Connection, msg: Msg, seq: int) -> StoredEvent | None:
        try:
            envelope = decode(msg.data, self.store.registry)
        except CodecError as exc:
            await self._dead_letter(conn, msg, seq, f"undecodable: {exc}")
            return None
        return StoredEvent(sequence=seq, subject=msg.subject, envelope=envelope,
                           content_hash=content_hash(msg.data))

    async def _apply_one(self, conn: asyncpg.Connection, msg: Msg, seq: int, isolate: bool) -> str:
        stored = await self._decode(conn, msg, seq)
        if stored is None:
            return "dead"
        envelope = stored.envelope
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


async def _release_locks(conn: asyncpg.Connection) -> None:
    try:
        await conn.execute("SELECT pg_advisory_unlock_all()")
    except Exception:  # noqa: BLE001 - a dead session released them already
        pass


def _fault_pause_from_env() -> Callable[[], Awaitable[None]] | None:
    """Widen the commit→ack window on purpose, for the crash tests that kill a runner there."""
    pause = float(os.environ.get("GRIDLOOP_FAULT_PAUSE_AFTER_COMMIT", "0") or 0)
    if pause <= 0:
        return None

    async def sleep() -> None:
        await asyncio.sleep(pause)

    return sleep
