"""Fault tests: each module runs a whole Gridloop on its own nats-server and PostgreSQL, which
its tests kill, stop and restart (never the session's servers)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "soak"))

from faultkit.cluster import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("faults"))
    cluster.start_servers()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(own_servers: Cluster) -> Iterator[Cluster]:
    """The module's servers with a fresh database and stream, and the four services on them."""
    own_servers.new_system()
    own_servers.ports.clear()
    try:
        own_servers.start_services()
        yield own_servers
    finally:
        own_servers.stop_services()
