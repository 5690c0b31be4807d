"""Ceilings, measured in the same run on the same machine: what the broker and the database do
for raw clients, with nothing of Gridloop between them and the data.

- JetStream publish to a stream configured exactly as `EventStore.stream_config()` configures the
  log of record (file storage, fsync before every ack on this server): awaited one by one,
  awaited by many concurrent writers, and pipelined (publish_async, a window of acks in flight).
- Pull drains of the replay stream, with and without acks: in `replay.drain`.
- asyncpg COPY of the same event bodies into a jsonb table.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import nats

from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects

from .events import EncodedEvent, interleaved_stream
from .probes import percentiles


def sample_events(count: int, prefix: str) -> list[EncodedEvent]:
    out: list[EncodedEvent] = []
    for chunk in interleaved_stream(Subjects(prefix), count, seed=3):
        out.extend(chunk)
    return out


async def _fresh_stream(nc, prefix: str) -> EventStore:  # type: ignore[no-untyped-def]
    store = EventStore(nc, Subjects(prefix))
    await store.ensure_stream()
    return store


async def publish_ceilings(nats_url: str, events: list[EncodedEvent], awaited: int,
                           concurrent_writers: int, run_id: str) -> dict[str, Any]:
    """Raw `js.publish` of the benchmark's own event bodies, no headers beyond the subject."""
    nc = await nats.connect(nats_url)
    results: dict[str, Any] = {}
    try:
        js = nc.jetstream(timeout=30)
        # Awaited: one publish, wait for its (fsynced) ack, the next.
        prefix = f"benchceil_{run_id}_a"
        await _fresh_stream(nc, prefix)
        batch = _retarget(events[:awaited], prefix)
        seconds, lat = await _publish_awaited(js, batch, writers=1)
        results["publish_awaited"] = {"events": len(batch), "seconds": round(seconds, 2),
                                      "events_per_s": round(len(batch) / seconds),
                                      "latency_ms": percentiles(lat)}
        await js.delete_stream(Subjects(prefix).stream_name)

        # Many writers, each awaiting its own acks: what independent requests do.
        prefix = f"benchceil_{run_id}_c"
        await _fresh_stream(nc, prefix)
        batch = _retarget(events, prefix)
        seconds, lat = await _publish_awaited(js, batch, writers=concurrent_writers)
        results["publish_concurrent"] = {"writers": concurrent_writers, "events": len(batch),
                                         "seconds": round(seconds, 2),
                                         "events_per_s": round(len(batch) / seconds),
                                         "latency_ms": percentiles(lat)}
        await js.delete_stream(Subjects(prefix).stream_name)

        # Pipelined: publish_async with up to 4,000 acks outstanding (nats-py's default).
        prefix = f"benchceil_{run_id}_p"
        await _fresh_stream(nc, prefix)
        batch = _retarget(events, prefix)
        started = time.perf_counter()
        futures = [await js.publish_async(ev.subject, ev.data) for ev in batch]
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
        results["publish_pipelined"] = {"events": len(batch), "seconds": round(seconds, 2),
                                        "events_per_s": round(len(batch) / seconds)}
        await js.delete_stream(Subjects(prefix).stream_name)
    finally:
        await nc.close()
    return results


def _retarget(events: list[EncodedEvent], prefix: str) -> list[EncodedEvent]:
    """The same bodies under another prefix (the subject's tail names district, case, type)."""
    out = []
    for ev in events:
        tail = ev.subject.split(".", 1)[1]
        out.append(ev._replace(subject=f"{prefix}.{tail}"))
    return out


async def copy_ceiling(database_url: str, events: list[EncodedEvent]) -> dict[str, Any]:
    """COPY (sequence, subject, body::jsonb) rows in one go, and in 2,000-row transactions."""
    conn = await asyncpg.connect(database_url)
    table = f"bench_copy_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f"CREATE TABLE {table} (seq bigint PRIMARY KEY, subject text NOT NULL,"
                           " body jsonb NOT NULL)")
        records = [(i + 1, ev.subject, ev.data.decode()) for i, ev in enumerate(events)]
        started = time.perf_counter()
        for i in range(0, len(records), 2000):
            await conn.copy_records_to_table(table, records=records[i:i + 2000],
                                             columns=["seq", "subject", "body"])
        seconds = time.perf_counter() - started
        return {"events": len(records), "seconds": round(seconds, 2),
                "events_per_s": round(len(records) / seconds),
                "note": "2,000 rows per COPY, each its own (fsynced) transaction"}
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def _publish_awaited(js, batch, writers: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    """`writers` tasks each publishing and awaiting its ack, one event after another:
    (seconds in all, each publish's latency)."""
    queue = list(reversed(batch))
    lat: list[float] = []

    async def writer() -> None:
        while queue:
            ev = queue.pop()
            t = time.perf_counter()
            await js.publish(ev.subject, ev.data)
            lat.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return time.perf_counter() - started, lat
