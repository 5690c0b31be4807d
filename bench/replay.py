"""Replay: a stream of whole cases prepared once (kept in bench/.data/nats), the raw drain
ceilings over it, and each projection rebuilt from it by `gridloop_events.rebuild.rebuild` in a
process of its own, so its peak memory is its own.

    python -m bench.replay <projection> <nats_url> <database_url> <prefix> [<cap> [<processes>]]

runs one rebuild and prints its figures as JSON (used by the benchmark, one process each).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from functools import partial
from typing import Any

import asyncpg
import nats
import nats.js.api as jsapi
import psutil
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects

from .events import interleaved_stream, publish_pipelined

PROJECTIONS = ("intake", "dispatch", "escalation", "feedback")


def replay_prefix(events: int, scheme: str) -> str:
    return f"benchreplay_{events}_{scheme}"


def replay_stream(events: int, scheme: str) -> str:
    return Subjects(replay_prefix(events, scheme)).stream_name


async def prepare_stream(nats_url: str, events: int, scheme: str, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Make sure the replay stream holds exactly `events` events; reuse it when it does."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=30)
        store = EventStore(nc, Subjects(replay_prefix(events, scheme)))
        try:
            info = await js.stream_info(store.stream)
            if info.state.messages == events:
                return {"stream": store.stream, "events": events, "prepared_now": False,
                        "bytes": info.state.bytes}
            log(f"replay stream {store.stream} has {info.state.messages} events, "
                f"wanted {events}: preparing it again")
            await js.delete_stream(store.stream)
        except NotFoundError:
            pass
        await store.ensure_stream()
        started = time.perf_counter()
        done = 0
        for chunk in interleaved_stream(store.subjects, events):
            await publish_pipelined(js, chunk)
            done += len(chunk)
            if done % 100_000 < len(chunk):
                log(f"  replay stream: {done:,}/{events:,} events")
        info = await js.stream_info(store.stream)
        assert info.state.messages == events, info.state
        return {"stream": store.stream, "events": events, "prepared_now": True,
                "prepare_seconds": round(time.perf_counter() - started, 1),
                "bytes": info.state.bytes}
    finally:
        await nc.close()


async def drain(nats_url: str, events: int, *, ack: bool, scheme: str,
                limit: int | None = None, batch: int = 1000) -> dict[str, Any]:
    """Pull every event of the replay stream: without acks (an ephemeral AckNone consumer, as
    `EventStore.read_all` does) or with an ack per message (a durable AckExplicit consumer)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=30)
        subjects = Subjects(replay_prefix(events, scheme))
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.ALL,
            ack_policy=jsapi.AckPolicy.EXPLICIT if ack else jsapi.AckPolicy.NONE,
            max_ack_pending=batch * 4 if ack else None,
            inactive_threshold=30.0,
            mem_storage=not ack,
            durable_name="bench_drain_ack" if ack else None,
        )
        if ack:
            try:
                await js.delete_consumer(subjects.stream_name, "bench_drain_ack")
            except NotFoundError:
                pass
        sub = await js.pull_subscribe(subjects.all, stream=subjects.stream_name, config=config,
                                      durable="bench_drain_ack" if ack else None)
        got = 0
        wanted = min(events, limit or events)
        started = time.perf_counter()
        try:
            while got < wanted:
                try:
                    msgs = await sub.fetch(batch, timeout=5.0)
                except NatsTimeout:
                    break
                for msg in msgs:
                    if ack:
                        await msg.ack()
                got += len(msgs)
            if ack:
                await nc.flush()
            seconds = time.perf_counter() - started
        finally:
            await sub.unsubscribe()
            if ack:
                await js.delete_consumer(subjects.stream_name, "bench_drain_ack")
        return {"events": got, "seconds": round(seconds, 3), "events_per_s": round(got / seconds)}
    finally:
        await nc.close()


async def drain_batched(nats_url: str, events: int, *, scheme: str,
                        limit: int | None = None, batch: int = 2000) -> dict[str, Any]:
    """The same no-ack drain through `pull_batches` (pull requests answered into a callback
    subscription), the way `EventStore.read_all` reads: the faster raw ceiling."""
    from gridloop_events.pull import pull_batches

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=30)
        subjects = Subjects(replay_prefix(events, scheme))
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.ALL, ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=30.0, mem_storage=True, filter_subjects=[subjects.all])
        wanted = min(events, limit or events)
        got = 0
        started = time.perf_counter()
        batches = pull_batches(nc, js, subjects.stream_name, config, batch=batch)
        try:
            async for msgs in batches:
                got += len(msgs)
                if got >= wanted:
                    break
        finally:
            await batches.aclose()
        seconds = time.perf_counter() - started
        return {"events": got, "seconds": round(seconds, 3), "events_per_s": round(got / seconds)}
    finally:
        await nc.close()


def _projection(name: str, schema: str):  # type: ignore[no-untyped-def]
    from gridloop_district import default_district

    district = default_district()
    if name == "intake":
        from gridloop_intake.projection import IntakeProjection

        return IntakeProjection(schema=schema)
    if name == "dispatch":
        from gridloop_dispatch.projection import DispatchProjection

        return DispatchProjection(district, schema=schema)
    if name == "escalation":
        from gridloop_escalation.projection import EscalationProjection

        return EscalationProjection(schema)
    if name == "feedback":
        from gridloop_feedback.domain import district_callback_limits
        from gridloop_feedback.projection import FeedbackProjection

        return FeedbackProjection(district_callback_limits(district), schema=schema)
    raise ValueError(name)


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and its children (a parallel rebuild's workers)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


async def rebuild_one(name: str, nats_url: str, database_url: str, prefix: str,
                      to_sequence: int | None, processes: int = 1) -> dict[str, Any]:
    """`rebuild` of one projection into an empty database: into fresh tables swapped in as the
    live ones, or, with `to_sequence`, the same replay of the log's first events into an
    as-of schema (nothing swapped); by `processes` processes, each a share of the partitions."""
    from gridloop_events.rebuild import Workers, rebuild

    projection = _projection(name, name)
    rss = psutil.Process()
    base_rss = rss.memory_info().rss
    samples = [base_rss]
    workers = Workers(processes, nats_url, database_url, partial(_projection, name, name))
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(_tree_rss(rss))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    try:
        store = EventStore(nc, Subjects(prefix))
        result = await rebuild(pool, store, projection, projection.tables,
                               to_sequence=to_sequence, workers=workers)
        async with pool.acquire() as conn:
            dead = await conn.fetchval(f"SELECT count(*) FROM {result.schema}.dead_letter")
    finally:
        stop.set()
        await sampler
        await pool.close()
        await nc.close()
    return {
        "projection": name,
        "processes": processes,
        "schema": result.schema,
        "events": result.events,
        "seconds": round(result.seconds, 2),
        "events_per_s": round(result.events_per_second),
        "dead_lettered": int(dead),
        "rss_before_mib": round(base_rss / 2**20, 1),
        # Sampled, not ru_maxrss: Linux carries ru_maxrss across exec from the parent. All the
        # rebuild's processes together.
        "peak_rss_mib": round(max(samples) / 2**20, 1),
    }


if __name__ == "__main__":
    name, nats_url, database_url, prefix = sys.argv[1:5]
    cap = int(sys.argv[5]) if len(sys.argv) > 5 and int(sys.argv[5]) > 0 else None
    processes = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    print(json.dumps(asyncio.run(
        rebuild_one(name, nats_url, database_url, prefix, cap, processes))))
