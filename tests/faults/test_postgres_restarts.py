"""PostgreSQL stopped and restarted, fast (open transactions rolled back) and immediate (no
checkpoint: crash recovery on start), while every projection is writing."""

from __future__ import annotations

import asyncio

from faultkit import faults, scenario


async def test_postgres_restarted_fast_and_immediate_under_load(cluster) -> None:
    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        for mode in ("fast", "immediate", "immediate"):
            await asyncio.sleep(2.0)
            await faults.restart_postgres(cluster, log, mode)

    outcome = await scenario.run(cluster, inject, rate=2.0, seed=31)
    print(outcome.describe())
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert [f.kind for f in outcome.faults.faults] == ["postgres-fast", "postgres-immediate",
                                                       "postgres-immediate"]
    assert outcome.faults.recoveries == 3
    assert len(outcome.load.stats.done) == len(outcome.load.stats.acknowledged) > 10
