"""Two instances of every service that both want every partition: the first owns them, the
second stands by. SIGKILL of each owner mid-load: the standby takes every partition over within
a few seconds, and no case is lost, repeated or reordered.

(A `GRIDLOOP_INSTANCE=i/n` instance wants only its own share, so it never takes over another
share's partitions: a standby for a share is a second instance with the same `i/n`.)
"""

from __future__ import annotations

import asyncio
import time

from gridloop_events.invariants import CheckOptions, run_check
from scale_checks import (
    advisory_holders,
    claimed_in_log,
    histories,
    order_violations,
    read_models,
    settled_models,
)
from scale_fleet import SERVICES
from scale_load import Load

CASES = 100
SECONDS = 16.0
KILL_AFTER = 7.0
# The standby re-claims every claim_interval (2 s); PostgreSQL drops a killed session's locks
# as soon as it sees the socket close.
TAKEOVER_WITHIN = 5.0


async def test_standby_takes_over_every_partition_of_a_killed_owner(fleet_factory) -> None:
    fleet = fleet_factory({0: None, 1: None})
    owners: dict[str, int] = {}
    for service in SERVICES:
        holders = await _wait_held(fleet, service, 10.0)
        owners[service] = _only(holders)
        # The first instance started owns every partition; the second owns none.
        assert claimed_in_log(fleet, service, 0) == list(range(16))
        assert claimed_in_log(fleet, service, 1) == []

    load = Load(fleet, seed=3)
    try:
        load_task = asyncio.create_task(load.run(CASES, SECONDS))
        await asyncio.sleep(KILL_AFTER)
        before = {s: (await read_models(fleet))[s]["checkpoints"] for s in SERVICES}
        killed_at = time.monotonic()
        for service in SERVICES:
            fleet.kill(service, 0)
        takeover: dict[str, float] = {}
        for service in SERVICES:
            holders = await _wait_held(fleet, service, TAKEOVER_WITHIN * 3,
                                       not_pid=owners[service])
            takeover[service] = time.monotonic() - killed_at
            assert _only(holders) != owners[service]
        print("takeover seconds:", {s: round(t, 2) for s, t in takeover.items()})
        assert all(t <= TAKEOVER_WITHIN for t in takeover.values()), takeover
        for service in SERVICES:
            assert claimed_in_log(fleet, service, 1) == list(range(16)), service
        tasks = await load_task
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        await load.close()

    assert load.stats.failures == []
    assert len(load.stats.reported) == CASES
    assert load.stats.done == set(load.stats.reported)

    logs = await histories(fleet, load.stats.reported)
    models = await settled_models(fleet, logs)
    assert order_violations(logs, models) == []
    for service, model in models.items():
        assert model["dead"] == [], (service, model["dead"])
        # The survivor carried on from where the killed owner's checkpoints stood.
        after = model["checkpoints"]
        assert sum(after.values()) > sum(before[service].values()), service
    report = await run_check(fleet.nats_url, fleet.database_url, prefix=fleet.prefix,
                             options=CheckOptions(settle_seconds=3600))
    assert report.ok, report.render()
    assert report.statuses == {"done": CASES}


async def _wait_held(fleet, service: str, timeout: float,  # type: ignore[no-untyped-def]
                     not_pid: int | None = None) -> dict[int, int]:
    """The lock holders once all 16 partitions are held (by someone other than `not_pid`)."""
    deadline = time.monotonic() + timeout
    while True:
        holders = await advisory_holders(fleet, service)
        if len(holders) == 16 and not_pid not in holders.values():
            return holders
        assert time.monotonic() < deadline, (service, holders)
        await asyncio.sleep(0.1)


def _only(holders: dict[int, int]) -> int:
    # A runner holds its partitions on one session of its own.
    pids = set(holders.values())
    assert len(pids) == 1, holders
    return pids.pop()
