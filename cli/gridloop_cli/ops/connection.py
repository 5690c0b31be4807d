"""Where the log and the read models are, and opening them for one command.

The commands read; none of them creates the stream. A server that does not answer, a database
that refuses, or a stream that is not there is a `Unreachable` (exit code 2): the operator
pointed the command at the wrong place, which is different from finding something wrong (1).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from gridloop_events.database import create_pool
from gridloop_events.store import PARTITIONS_METADATA, EventStore
from gridloop_events.subjects import DEFAULT_PREFIX, Subjects

# The same places `gridloop up` starts the servers on.
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/gridloop"
CONNECT_TIMEOUT = 5.0


class Unreachable(Exception):
    """NATS, PostgreSQL or the stream could not be reached: exit code 2."""


class Refused(Exception):
    """The command ran and found a reason to say no (unknown case, retry out of order): exit 1."""


@dataclass(frozen=True)
class Target:
    nats_url: str = DEFAULT_NATS_URL
    database_url: str = DEFAULT_DATABASE_URL
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls) -> Target:
        return cls(
            os.environ.get("GRIDLOOP_NATS_URL") or DEFAULT_NATS_URL,
            os.environ.get("GRIDLOOP_DATABASE_URL") or DEFAULT_DATABASE_URL,
            os.environ.get("GRIDLOOP_SUBJECT_PREFIX") or DEFAULT_PREFIX,
        )

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)


async def _quiet(_: Exception) -> None:
    # nats-py logs every failed attempt by default; the command reports the failure once.
    return None


async def open_nats(url: str) -> NATS:
    try:
        # max_reconnect_attempts=1: with 0, nats-py waits for ever on a server that is down.
        return await asyncio.wait_for(
            nats.connect(url, name="gridloop-cli", connect_timeout=CONNECT_TIMEOUT,
                         max_reconnect_attempts=1, error_cb=_quiet),
            CONNECT_TIMEOUT * 2,
        )
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
        raise Unreachable(f"NATS at {url} does not answer: {type(exc).__name__}: {exc}") from exc


async def open_pool(url: str) -> asyncpg.Pool:
    try:
        pool = await create_pool(url, min_size=1, max_size=4, timeout=CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(
            f"PostgreSQL at {_safe(url)} refuses: {type(exc).__name__}: {exc}"
        ) from exc
    assert pool is not None
    return pool


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{tail}"


@dataclass
class Connected:
    target: Target
    nc: NATS | None = None
    store: EventStore | None = None
    pool: asyncpg.Pool | None = None

    def need_store(self) -> EventStore:
        assert self.store is not None, "opened without NATS"
        return self.store

    def need_pool(self) -> asyncpg.Pool:
        assert self.pool is not None, "opened without PostgreSQL"
        return self.pool


@asynccontextmanager
async def connected(
    target: Target, *, log: bool = True, database: bool = True
) -> AsyncIterator[Connected]:
    conn = Connected(target)
    try:
        if log:
            conn.nc = await open_nats(target.nats_url)
            conn.store = EventStore(conn.nc, target.subjects)
            try:
                info = await conn.store.js.stream_info(conn.store.stream)
            except NotFoundError:
                raise Unreachable(
                    f"no stream {conn.store.stream} on {target.nats_url} "
                    f"(is --prefix {target.prefix!r} right?)"
                ) from None
            # Subjects carry a partition of the case id; the stream records how many there are.
            recorded = (info.config.metadata or {}).get(PARTITIONS_METADATA)
            if recorded is not None:
                conn.store.subjects = Subjects(target.prefix, int(recorded))
        if database:
            conn.pool = await open_pool(target.database_url)
        yield conn
    finally:
        if conn.pool is not None:
            await conn.pool.close()
        if conn.nc is not None:
            await conn.nc.close()
