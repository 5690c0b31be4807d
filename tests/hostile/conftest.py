"""One running system for the whole folder: starting four services is most of the cost.
The helper module is imported top-level, whatever pytest's import mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gridloop_events.deploy_security import deployed_servers

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from hostile_system import System  # noqa: E402


@pytest.fixture(scope="session")
def sut(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with deployed_servers(database_url, data_dir=tmp_path_factory.mktemp("hostile-nats")) as d:
        system = System(d)
        system.start()
        yield system
        system.stop()
