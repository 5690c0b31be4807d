"""nats-server SIGKILLed and restarted (same port, same data, fsync before every ack), and
stalled with SIGSTOP long enough for acknowledgement waits to expire and redeliveries to come."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import nats

from faultkit import faults, scenario
from gridloop_events.invariants import ProjectionSpec, run_check
from gridloop_events.runner import ProjectionRunner
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_intake.projection import IntakeProjection


async def test_nats_killed_and_restarted_under_load(cluster) -> None:
    rng = random.Random(23)

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        for _ in range(3):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            await faults.kill_nats(cluster, log, rng.uniform(0.3, 2.0))

    outcome = await scenario.run(cluster, inject, rate=2.0, seed=23)
    print(outcome.describe())
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert len(outcome.faults.faults) == 3 == outcome.faults.recoveries
    assert len(outcome.load.stats.done) == len(outcome.load.stats.acknowledged) > 10


async def test_nats_stalled_past_ack_wait_applies_nothing_twice(cluster) -> None:
    """The services' runners wait 60 s for acks; a runner of the real intake projection with a
    1 s ack wait rides along on the same stream, so every stall outlasts its ack wait. (At
    bc73620 this caught an event applied twice: a fetched batch held a redelivered copy.)"""
    subjects = Subjects(cluster.prefix)
    nc = await nats.connect(cluster.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    pool = await asyncpg.create_pool(cluster.database_url, min_size=1, max_size=4)
    store = EventStore(nc, subjects)
    side = IntakeProjection(schema="stall_intake")
    side.name = "stall_intake"
    runner = ProjectionRunner(nc, pool, store, side, batch_size=8, ack_wait=1.0)
    await runner.start()
    stalls = 0

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        nonlocal stalls
        for seconds in (3.0, 6.0):
            await asyncio.sleep(2.0)
            await faults.stall_nats(cluster, log, seconds)
            stalls += 1

    try:
        outcome = await scenario.run(cluster, inject, rate=2.0, seed=29)
        await runner.wait_caught_up(timeout=60)
        info = await nc.jetstream().consumer_info(subjects.stream_name, runner.durable)
    finally:
        await runner.stop()
        await pool.close()
        await nc.close()
    print(outcome.describe())
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert stalls == 2 == outcome.faults.recoveries
    assert all(f.down_seconds > runner.ack_wait for f in outcome.faults.faults)
    print(f"side runner: {runner.stats}, server redeliveries {info.num_redelivered}")
    # Whatever the server redelivered, the side read model equals the log, event for event.
    side_report = await run_check(cluster.nats_url, cluster.database_url, prefix=cluster.prefix,
                                  specs=[ProjectionSpec("intake", "stall_intake",
                                                        "stall_intake")])
    assert side_report.ok, side_report.render()
    assert side_report.projections["stall_intake"]["lag"] == 0
