"""One running system for the whole folder: starting four services is most of the cost.
The helper module is imported top-level, whatever pytest's import mode."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gridloop_events.servers import create_database, drop_database

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from hostile_system import System  # noqa: E402


@pytest.fixture(scope="session")
def sut(nats_url: str, database_url: str) -> Iterator[System]:
    name = f"t_hostile_{uuid.uuid4().hex[:10]}"
    url = create_database(database_url, name)
    system = System(nats_url, url, name)
    try:
        system.start()
        yield system
        system.stop()
    finally:
        drop_database(database_url, name)
