"""Two instances of every service, each projecting half the partitions (GRIDLOOP_INSTANCE=i/2),
under a load sent to either instance at random: every case completes the loop, and every read
model holds, for every case, exactly the fold of its stream — each event applied once, in order.
"""

from __future__ import annotations

import asyncio
import time

from gridloop_events.invariants import CheckOptions, run_check
from scale_checks import (
    claimed_in_log,
    histories,
    order_violations,
    repeated_deadline_misses,
    settled_models,
)
from scale_load import Load

CASES = 160
SECONDS = 20.0


async def test_two_instances_per_service_keep_every_case_in_order(fleet_factory) -> None:
    started = time.monotonic()
    fleet = fleet_factory({0: "0/2", 1: "1/2"})
    phases = {"started": time.monotonic() - started}
    load = Load(fleet, seed=7, miss_share=0.1)
    try:
        tasks = await load.run(CASES, SECONDS)
        # The cases meant to miss a deadline wait; everything else completes first, so moving
        # the clocks a day on touches only them.
        deadline = time.monotonic() + 90
        while (len(load.stats.done) + len(load.stats.missing_deadline)
               + len(load.stats.failures) < CASES):
            assert time.monotonic() < deadline, (len(load.stats.done), load.stats.failures[:5])
            await asyncio.sleep(0.5)
        phases["loop done"] = time.monotonic() - started
        assert load.stats.failures == []
        assert len(load.stats.missing_deadline) >= 5
        supervisor = fleet.issuer.headers("supervisor", load.district.code, sub="sup-1")
        # Both escalation instances tick: both clocks move, so both race for every missed
        # deadline — the deterministic event id must make each land once.
        for index in fleet.live("escalation"):
            r = await load.client.post(f"{fleet.url('escalation', index)}/v1/admin/clock",
                                       json={"offset_seconds": 86400 + 120}, headers=supervisor)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:
            views = [await load.view(c) for c in load.stats.missing_deadline]
            if all(v["escalation_level"] >= 1 and v["status"] == "dispatched" for v in views):
                break
            assert time.monotonic() < deadline, [v["status"] for v in views]
            await asyncio.sleep(0.3)
        for index in fleet.live("escalation"):
            r = await load.client.post(f"{fleet.url('escalation', index)}/v1/admin/clock",
                                       json={"offset_seconds": 0}, headers=supervisor)
            assert r.status_code == 200, r.text
        load.deadlines_passed.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        phases["escalated done"] = time.monotonic() - started
    finally:
        await load.close()

    # Every case completed the loop, and each service's two instances both took requests.
    assert load.stats.failures == []
    assert len(load.stats.reported) == CASES
    assert load.stats.done == set(load.stats.reported)
    assert load.stats.escalated == load.stats.missing_deadline
    for service in ("intake", "dispatch", "feedback"):
        assert all(load.stats.served_by[(service, i)] > 0 for i in (0, 1)), load.stats.served_by

    # Per-case order: every read model equals the fold of the stream, for every case.
    logs = await histories(fleet, load.stats.reported)
    models = await settled_models(fleet, logs)
    assert order_violations(logs, models) == []
    for service, model in models.items():
        assert model["dead"] == [], (service, model["dead"])
        # Each instance claimed its half and advanced it: a partition's checkpoint moves only
        # under the runner that holds its lock, and instance i of 2 wants only p % 2 == i.
        checkpoints = model["checkpoints"]
        assert sorted(checkpoints) == list(range(16)), (service, checkpoints)
        for half in (0, 1):
            assert any(checkpoints[p] > 0 for p in range(half, 16, 2)), (service, half)
        assert claimed_in_log(fleet, service, 0) == list(range(0, 16, 2))
        assert claimed_in_log(fleet, service, 1) == list(range(1, 16, 2))

    missed, repeated = repeated_deadline_misses(logs)
    assert missed >= len(load.stats.missing_deadline) and repeated == []

    phases["checked"] = time.monotonic() - started
    # The independent invariant checker agrees: nothing lost, duplicated, stranded or stuck.
    report = await run_check(fleet.nats_url, fleet.database_url, prefix=fleet.prefix,
                             options=CheckOptions(settle_seconds=3600))
    assert report.ok, report.render()
    assert report.statuses == {"done": CASES}
    print("seconds:", {k: round(v, 1) for k, v in phases.items()},
          "missed deadlines:", missed)
