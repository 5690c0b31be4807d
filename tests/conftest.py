"""Shared, generic fixtures: one NATS + one PostgreSQL per test session.

Where the servers come from is decided by
``gridloop_events.servers.provide_servers``: ``NATS_URL``/``DATABASE_URL``
if set, else testcontainers when a Docker engine answers, else local binaries.
Feature-specific fixtures belong in ``tests/fixtures/*.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

try:
    import gridloop_events.servers  # noqa: F401
except ImportError:
    # Running from a checkout without `pip install -e libs/events`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs" / "events"))

from gridloop_events.deploy_security import Deployed, deployed_servers  # noqa: E402
from gridloop_events.servers import (  # noqa: E402
    Servers,
    create_database,
    drop_database,
    provide_servers,
)


# Intake seals residents' contacts with a master key from configuration; tests get a throwaway
# one (service processes started by tests inherit it).
os.environ.setdefault(
    "GRIDLOOP_MASTER_KEYS", json.dumps({"test-1": base64.b64encode(os.urandom(32)).decode()})
)
os.environ.setdefault("GRIDLOOP_MASTER_KEY_ID", "test-1")


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with provide_servers() as provided:
        yield provided


@pytest.fixture(scope="session")
def nats_url(servers: Servers) -> str:
    return servers.nats_url


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    """Admin URL of the session's server (its default database)."""
    return servers.database_url


@pytest.fixture
def deployed(database_url: str, tmp_path: Path) -> Iterator[Deployed]:
    """Servers configured as deployed, for running services as in a district: a nats-server of
    this test's own with deploy/nats/accounts.conf and a new database with
    deploy/postgres/init.sql's roles. Start service ``s`` with ``deployed.service_env()`` (its
    own NATS user and role; the production subject prefix, so no ``fresh_stream_prefix``).
    Harness code that inspects everything connects as ``deployed.nats_url_as("operator")``
    and ``deployed.database_url_as("auditor")``."""
    with deployed_servers(database_url, data_dir=tmp_path / "deployed-nats") as servers:
        yield servers


def _unique_name(request: pytest.FixtureRequest, max_slug: int) -> str:
    # The test name in the identifier makes leftovers traceable; the random
    # suffix keeps parametrised and repeated runs apart.
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    return f"{slug[:max_slug]}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_database(database_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty database for this test only; dropped afterwards.

    Sync on purpose, so it works whatever event-loop scope a test uses.
    """
    name = "t_" + _unique_name(request, 40)  # identifiers stop at 63 bytes
    url = create_database(database_url, name)
    try:
        yield url
    finally:
        drop_database(database_url, name)


@pytest.fixture
def fresh_stream_prefix(request: pytest.FixtureRequest) -> str:
    """Unique token for stream/consumer/subject names of this test.

    Letters, digits and ``_`` only: valid in stream names and subject tokens.
    """
    return "t_" + _unique_name(request, 24)
