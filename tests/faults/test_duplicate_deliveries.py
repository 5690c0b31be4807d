"""Duplicated and reordered deliveries at the consumer boundary: copies of stored events' bytes
republished under fresh Nats-Msg-Ids land in the stream as new messages, later than (so out of
order with) the events that followed the originals. Each projection must still apply each event
id once, and no service may act on a copy as if it were new."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import nats
import nats.js.api as jsapi

from faultkit import faults, scenario
from gridloop_events.invariants import ProjectionSpec, run_check
from gridloop_events.runner import ProjectionRunner
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_intake.projection import IntakeProjection


async def test_republished_copies_are_applied_once_and_cause_nothing(cluster) -> None:
    """Copies of stored events' bytes under fresh message ids, three times during the load:
    the stream holds them as new messages; no projection applies an event id twice and no
    service acts on a copy."""
    rng = random.Random(5)

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        for _ in range(3):
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            await faults.republish(cluster, log, rng, 8)

    outcome = await scenario.run(cluster, inject, rate=2.0, seed=5, drain_timeout=45.0)
    print(outcome.report.render())
    assert outcome.report.copies >= 20  # the copies are in the stream, as new messages
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert outcome.report.statuses == {"done": len(outcome.load.stats.done)}


async def test_runner_applies_each_event_once_when_deliveries_repeat_and_arrive_late(
        cluster) -> None:
    """At the consumer boundary itself: real deliveries handed to a runner of the intake
    projection in batches that also carry repeats of messages already applied, some in the same
    batch, some batches later (late, out of order) — as a redelivery after a lost ack would."""

    async def quiet(load, log) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(3.0)

    outcome = await scenario.run(cluster, quiet, rate=3.0, seed=43, warmup=1.0)
    assert outcome.report.ok, outcome.report.render()
    rng = random.Random(43)
    subjects = Subjects(cluster.prefix)
    nc = await nats.connect(cluster.nats_url)
    pool = await asyncpg.create_pool(cluster.database_url, min_size=1, max_size=2)
    try:
        store = EventStore(nc, subjects)
        side = IntakeProjection(schema="boundary_intake")
        side.name = "boundary_intake"
        runner = ProjectionRunner(nc, pool, store, side)
        await runner.prepare()
        sub = await nc.jetstream().pull_subscribe(
            subjects.all, stream=subjects.stream_name,
            config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE, mem_storage=True))
        delivered = []
        while len(delivered) < outcome.report.messages:
            delivered += await sub.fetch(500, timeout=5)
        repeats = 0
        for start in range(0, len(delivered), 12):
            batch = list(delivered[start:start + 12])
            seen = delivered[:start + len(batch)]
            for _ in range(4):  # a repeat of one of this batch's messages or an earlier one's
                copy = rng.choice(seen)
                # Never ahead of its first delivery: the broker delivers new messages in order.
                first = batch.index(copy) + 1 if copy in batch else 0
                batch.insert(rng.randrange(first, len(batch) + 1), copy)
                repeats += 1
            await runner._handle_batch(batch)
        await sub.unsubscribe()
    finally:
        await pool.close()
        await nc.close()
    assert repeats > 20
    assert runner.stats.skipped == repeats
    assert runner.stats.applied == outcome.report.messages
    report = await run_check(cluster.nats_url, cluster.database_url, prefix=cluster.prefix,
                             specs=[ProjectionSpec("intake", "boundary_intake",
                                                   "boundary_intake")])
    assert report.ok, report.render()
    assert report.projections["boundary_intake"]["lag"] == 0
