"""Two instances of every service as separate processes, sharing one database and one stream."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scale_fleet import SERVICES, Fleet

FleetFactory = Callable[[dict[int, str | None]], Fleet]


@pytest.fixture
def fleet_factory(nats_url: str, fresh_database: str, fresh_stream_prefix: str,
                  tmp_path: Path) -> Iterator[FleetFactory]:
    """Starts one process of each service per entry of `shares` (index -> `i/n` or None)."""
    fleets: list[Fleet] = []

    def start(shares: dict[int, str | None]) -> Fleet:
        fleet = Fleet(env={}, log_dir=tmp_path, shares=shares, nats_url=nats_url,
                      database_url=fresh_database, prefix=fresh_stream_prefix)
        fleet.env = {
            **os.environ,
            "GRIDLOOP_NATS_URL": nats_url,
            "GRIDLOOP_DATABASE_URL": fresh_database,
            "GRIDLOOP_SUBJECT_PREFIX": fresh_stream_prefix,
            "GRIDLOOP_TEST_CLOCK": "1",
            "GRIDLOOP_ENV": "production",
            "GRIDLOOP_LOG_LEVEL": "INFO",
            # The tests read `runner.claimed` from the logs while the processes run.
            "PYTHONUNBUFFERED": "1",
            "GRIDLOOP_AUTH": "required",
            "GRIDLOOP_JWT_PUBLIC_KEYS": fleet.issuer.trusted_keys_json(),
        }
        fleet.env.pop("GRIDLOOP_INSTANCE", None)
        fleets.append(fleet)
        for index in sorted(shares):
            for service in SERVICES:
                fleet.spawn(service, index)
            # Instance 0 first: in a standby pair it is the one that claims every partition.
            for service in SERVICES:
                fleet.wait_ready(service, index)
        return fleet

    try:
        yield start
    finally:
        for fleet in fleets:
            fleet.stop_all()
