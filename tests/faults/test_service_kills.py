"""SIGKILL of each service at random moments, several times, under a steady load."""

from __future__ import annotations

import asyncio
import random

from faultkit import faults, scenario
from faultkit.cluster import SERVICES


async def test_every_service_killed_repeatedly_loses_and_duplicates_nothing(cluster) -> None:
    rng = random.Random(11)

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        order = list(SERVICES) * 2
        rng.shuffle(order)
        for service in order:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await faults.kill_service(cluster, log, service, rng.uniform(0.2, 1.0))

    outcome = await scenario.run(cluster, inject, rate=2.0, seed=11)
    print(outcome.describe())
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert len(outcome.faults.faults) == 8 == outcome.faults.recoveries
    assert {f.target for f in outcome.faults.faults} == set(SERVICES)
    assert len(outcome.load.stats.done) == len(outcome.load.stats.acknowledged) > 10
    assert outcome.report.statuses == {"done": len(outcome.load.stats.done)}
