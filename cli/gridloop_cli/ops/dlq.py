"""Dead letters across the services' schemas, found and retried through gridloop_events.deadletter."""

from __future__ import annotations

from typing import Any

from gridloop_events.deadletter import (
    DeadLetter,
    RetryResult,
    get_dead_letter,
    list_dead_letters,
    retry_dead_letter,
)

from . import projections
from .connection import Connected, Refused


async def listing(
    conn: Connected, services: tuple[str, ...], include_retried: bool
) -> list[tuple[str, DeadLetter]]:
    found = []
    async with conn.need_pool().acquire() as c:
        for service in services:
            schema = projections.service_schema(service)
            for letter in await list_dead_letters(c, schema, include_retried=include_retried):
                found.append((schema, letter))
    return sorted(found, key=lambda item: (item[1].sequence, item[0]))


async def locate(conn: Connected, sequence: int, service: str | None) -> tuple[str, DeadLetter]:
    """The one dead letter at `sequence`; with several services holding one, `service` picks."""
    services = (service,) if service else projections.SERVICES
    found = []
    async with conn.need_pool().acquire() as c:
        for name in services:
            letter = await get_dead_letter(c, projections.service_schema(name), sequence)
            if letter is not None:
                found.append((name, letter))
    if not found:
        where = service or "any service"
        raise Refused(f"no dead letter at sequence {sequence} in {where}")
    if len(found) > 1:
        names = ", ".join(n for n, _ in found)
        raise Refused(f"sequence {sequence} is dead-lettered in {names}: pick one with --projection")
    return found[0]


def row(schema: str, letter: DeadLetter) -> dict[str, Any]:
    return {
        "schema": schema,
        "projection": letter.projection,
        "sequence": letter.sequence,
        "case_id": letter.case_id,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "subject": letter.subject,
        "error": letter.error,
        "failed_at": letter.failed_at.isoformat(),
        "retried_at": letter.retried_at.isoformat() if letter.retried_at else None,
    }


async def detail(conn: Connected, sequence: int, service: str | None) -> dict[str, Any]:
    from .tail import shown

    name, letter = await locate(conn, sequence, service)
    store = conn.need_store()
    msg = await store.js.get_msg(store.stream, seq=sequence, direct=True)
    return {**row(projections.service_schema(name), letter),
            "event": shown(sequence, msg.subject, msg.data or b"", store)}


async def retry(conn: Connected, sequence: int, service: str | None, react: bool) -> RetryResult:
    name, _ = await locate(conn, sequence, service)
    store = conn.need_store()
    projection = projections.build(name, store)
    return await retry_dead_letter(conn.need_pool(), store, projection, sequence, react=react)
