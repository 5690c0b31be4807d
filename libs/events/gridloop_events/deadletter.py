"""Dead-lettered events: list them, look at one, and apply one again once its cause is fixed.

A dead-letter row holds only the stream sequence, the ids and the cause; the event itself stays in
the stream, so a retry reads it back from there by sequence and applies it exactly as the live
runner would have: in one transaction, under the runner's checkpoint row lock of the case's partition, with the
projection's `apply` (and, unless told not to, its reactions, so a case whose dispatch was
poisoned is still dispatched once the fix is in).

A retry is refused when applying the event now would fold the case out of order — the case's
state already holds a later event, or an earlier event of the same case is still dead-lettered —
because the result would differ from what a replay of the log gives. `gridloop replay` rebuilds
the projection in stream order instead, and is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nats.js.errors import NotFoundError

from .codec import CodecError, content_hash, decode
from .envelope import StoredEvent
from .projection import Projection, check_schema, record_dead_letter, use_schema
from .store import EventStore

_COLUMNS = "projection, sequence, subject, event_id, event_type, error, failed_at, retried_at"


@dataclass(frozen=True)
class DeadLetter:
    projection: str
    sequence: int
    subject: str
    event_id: str | None
    event_type: str | None
    error: str
    failed_at: datetime
    retried_at: datetime | None

    @property
    def case_id(self) -> str:
        # Subjects end in `<case_id>.<EventType>` whatever the prefix.
        parts = self.subject.split(".")
        return parts[-2] if len(parts) >= 2 else ""

    @property
    def pending(self) -> bool:
        return self.retried_at is None


class RetryRefused(Exception):
    """The retry would not give what a replay gives, or there is nothing to retry."""


class RetryFailed(Exception):
    """The projection still cannot apply the event; the row now carries the new cause."""


@dataclass(frozen=True)
class RetryResult:
    dead_letter: DeadLetter
    case_id: str
    event_type: str
    reacted: bool


def _row(record: asyncpg.Record) -> DeadLetter:
    return DeadLetter(**dict(record))


async def _has_table(conn: asyncpg.Connection, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                    f"{check_schema(schema)}.dead_letter"))


async def list_dead_letters(
    conn: asyncpg.Connection, schema: str, *, include_retried: bool = False
) -> list[DeadLetter]:
    """The schema's dead letters in stream order; an absent schema has none."""
    if not await _has_table(conn, schema):
        return []
    where = "" if include_retried else "WHERE retried_at IS NULL"
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {check_schema(schema)}.dead_letter {where} "
        "ORDER BY sequence, projection"
    )
    return [_row(r) for r in rows]


async def get_dead_letter(
    conn: asyncpg.Connection, schema: str, sequence: int, projection: str | None = None
) -> DeadLetter | None:
    if not await _has_table(conn, schema):
        return None
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {check_schema(schema)}.dead_letter "
        "WHERE sequence = $1 AND ($2::text IS NULL OR projection = $2) ORDER BY projection LIMIT 1",
        sequence,
        projection,
    )
    return _row(row) if row else None


async def read_stored(store: EventStore, sequence: int) -> StoredEvent:
    """The event at `sequence`, decoded, straight from the stream."""
    try:
        msg = await store.js.get_msg(store.stream, seq=sequence, direct=True)
    except NotFoundError:
        raise RetryRefused(f"sequence {sequence} is not in stream {store.stream}") from None
    data = msg.data or b""
    return StoredEvent(
        sequence=sequence,
        subject=msg.subject,
        envelope=decode(data, store.registry),
        content_hash=content_hash(data),
    )


async def retry_dead_letter(
    pool: asyncpg.Pool,
    store: EventStore,
    projection: Projection,
    sequence: int,
    *,
    react: bool = True,
) -> RetryResult:
    """Apply the dead-lettered event at `sequence` to `projection` and mark the row retried.

    Raises RetryRefused (nothing done) or RetryFailed (the row records the new error).
    """
    schema = check_schema(projection.schema)
    async with pool.acquire() as conn:
        letter = await get_dead_letter(conn, schema, sequence, projection.name)
        if letter is None:
            raise RetryRefused(f"no dead letter at sequence {sequence} in {schema}")
        if not letter.pending:
            raise RetryRefused(f"sequence {sequence} was already retried at {letter.retried_at}")
        try:
            stored = await read_stored(store, sequence)
        except CodecError as exc:
            raise RetryFailed(f"still undecodable: {exc}") from exc
        case_id = stored.envelope.case_id
        failure: str | None = None
        async with conn.transaction():
            await use_schema(conn, schema)
            # The live runner's batch lock on the case's partition: no batch that could touch
            # this case interleaves with us.
            await conn.fetchval(
                "SELECT last_sequence FROM checkpoint WHERE projection = $1 AND partition = $2 "
                "FOR UPDATE",
                projection.name,
                store.subjects.partition_of_subject(stored.subject),
            )
            await _check_in_order(conn, projection.name, letter, case_id)
            try:
                async with conn.transaction():  # a savepoint: a failure leaves no half-apply
                    result = await projection.apply(conn, stored)
                    reactor = getattr(projection, "react", None)
                    if react and reactor is not None:
                        await reactor(conn, stored, result)
            except Exception as exc:  # noqa: BLE001 - recorded on the row, reported to the caller
                failure = f"{type(exc).__name__}: {exc}"
                await record_dead_letter(conn, projection.name, sequence, letter.subject, failure,
                                         letter.event_id, letter.event_type)
            else:
                await conn.execute(
                    "UPDATE dead_letter SET retried_at = now() "
                    "WHERE projection = $1 AND sequence = $2",
                    projection.name,
                    sequence,
                )
        if failure is not None:
            raise RetryFailed(failure)
        marked = await get_dead_letter(conn, schema, sequence, projection.name)
    assert marked is not None
    return RetryResult(marked, case_id, stored.envelope.event_type,
                       react and getattr(projection, "react", None) is not None)


async def _check_in_order(
    conn: asyncpg.Connection, projection: str, letter: DeadLetter, case_id: str
) -> None:
    has_state = await conn.fetchval("SELECT to_regclass('case_state') IS NOT NULL")
    if has_state:
        version = await conn.fetchval(
            "SELECT version FROM case_state WHERE case_id = $1", case_id
        )
        if version is not None and int(version) > letter.sequence:
            raise RetryRefused(
                f"case {case_id} has moved on to sequence {version} since {letter.sequence} was "
                "dead-lettered: applying it now would fold the case out of order; replay the "
                "projection instead (it applies every event in stream order)"
            )
    earlier = await conn.fetch(
        "SELECT sequence, subject FROM dead_letter WHERE projection = $1 AND sequence < $2 "
        "AND retried_at IS NULL ORDER BY sequence",
        projection,
        letter.sequence,
    )
    blocking = [r["sequence"] for r in earlier if r["subject"].split(".")[-2:-1] == [case_id]]
    if blocking:
        raise RetryRefused(
            f"case {case_id} has an earlier dead letter at sequence {blocking[0]}: retry that first"
        )
