"""Two instances of every service as separate processes, sharing one database and one stream,
each running as its service's NATS user and PostgreSQL role from deploy/ (as in a district)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scale_fleet import SERVICES, Fleet

from gridloop_events.deploy_security import Deployed
from gridloop_events.subjects import DEFAULT_PREFIX

FleetFactory = Callable[[dict[int, str | None]], Fleet]


@pytest.fixture
def fleet_factory(deployed: Deployed, tmp_path: Path) -> Iterator[FleetFactory]:
    """Starts one process of each service per entry of `shares` (index -> `i/n` or None).
    The checks read everything as the NATS operator and the database auditor."""
    fleets: list[Fleet] = []

    def start(shares: dict[int, str | None]) -> Fleet:
        fleet = Fleet(env={}, log_dir=tmp_path, shares=shares,
                      nats_url=deployed.nats_url_as("operator"),
                      database_url=deployed.database_url_as("auditor"), prefix=DEFAULT_PREFIX)
        fleet.env = {
            # Any server or prefix from the outside would override the deployed identities.
            **{k: v for k, v in os.environ.items()
               if not k.endswith(("NATS_URL", "DATABASE_URL"))
               and k != "GRIDLOOP_SUBJECT_PREFIX"},
            **deployed.service_env(),
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
