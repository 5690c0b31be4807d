"""Escalation's clock jumps forward (GRIDLOOP_TEST_CLOCK=1): every deadline now in the past
fires exactly once, however often the clock moves and even if escalation dies right after."""

from __future__ import annotations

import asyncio

from faultkit import faults, scenario
from gridloop_events.invariants import CheckOptions, run_check


async def test_deadlines_in_the_past_fire_once_each(cluster) -> None:
    fired_checks = []

    async def all_due_fired(log) -> None:  # type: ignore[no-untyped-def]
        # Judged on escalation's own (jumped) clock, re-read each time: every deadline known
        # for more than 2 s that is due by that clock must have its DeadlineMissed.
        # Escalation ticks every 0.2 s: asked twice a second, for up to 30 s.
        for _ in range(60):
            await asyncio.sleep(0.5)
            now = await faults.escalation_now(cluster)
            report = await run_check(cluster.nats_url, cluster.database_url,
                                     prefix=cluster.prefix,
                                     options=CheckOptions(now=now, late_tolerance_seconds=2.0,
                                                          settle_seconds=3600))
            if not [v for v in report.violations if v.check.startswith("deadline.")]:
                break
        fired_checks.append(report)

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(3.0)
        await faults.jump_clock(cluster, log, 3600)  # accept and dispatch deadlines are past
        await all_due_fired(log)
        await faults.jump_clock(cluster, log, 3600)  # set again: what fired must not fire twice
        await faults.kill_service(cluster, log, "escalation", 0.5)  # its clock is back at 0
        await asyncio.sleep(2.0)
        await faults.jump_clock(cluster, log, 2 * 86400)  # resolve and callback deadlines too
        await all_due_fired(log)
        await faults.jump_clock(cluster, log, 0)
        load.release_idle()

    outcome = await scenario.run(cluster, inject, rate=2.0, seed=41, idle_share=0.4)
    print(outcome.describe())
    for report in fired_checks:
        assert not [v for v in report.violations if v.check.startswith("deadline.")], \
            report.render()
    assert outcome.report.ok, outcome.report.render()
    assert outcome.report.missed_under_clock_jump > 5
    assert outcome.lost == [] and outcome.not_done == []
