"""The real system for the benchmark: NATS (fsync before ack, as deployed), PostgreSQL (fsync on)
and the four services as separate processes, started the way tests/e2e/conftest.py does.

NATS keeps its data in bench/.data/nats so the prepared replay streams survive between runs;
every other stream is named after the run and deleted when the run ends. PostgreSQL is a fresh
throw-away cluster per run: every database the benchmark reads is rebuilt from the log anyway.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import nats
import psutil

from gridloop_events.processes import ServiceProcess, stop_all
from gridloop_events.servers import (
    LocalNats,
    LocalPostgres,
    acreate_database,
    database_url_for,
    find_free_port,
)

SERVICES = ("intake", "dispatch", "escalation", "feedback")
BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / ".data"
REPO = BENCH_DIR.parent


class Credentials:
    """What the services need to start where the code has them: a master key for sealing
    residents' contacts, and a token issuer the services trust. Detected, not assumed, so the
    benchmark runs against the code before and after those features."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.issuer = None
        self._tokens: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}
        try:
            from gridloop_events.crypto import generate_master_key
        except ImportError:
            pass
        else:
            self.env["GRIDLOOP_MASTER_KEYS"] = json.dumps({"bench-1": generate_master_key()})
            self.env["GRIDLOOP_MASTER_KEY_ID"] = "bench-1"
        try:
            from gridloop_events.auth_keys import Issuer, SigningKey
        except ImportError:
            pass
        else:
            self.issuer = Issuer(SigningKey.generate("bench-1"))
            self.env["GRIDLOOP_AUTH"] = "required"
            self.env["GRIDLOOP_JWT_PUBLIC_KEYS"] = self.issuer.trusted_keys_json()

    def headers(self, role: str, scope: str, sub: str) -> dict[str, str]:
        """A bearer token for the role, cached (signing one per request would load the
        generator) and renewed well before its hour runs out."""
        if self.issuer is None:
            return {}
        key = (role, scope, sub)
        cached = self._tokens.get(key)
        if cached is None or time.monotonic() - cached[0] > 1800:
            cached = (time.monotonic(), self.issuer.headers(role, scope, sub=sub))
            self._tokens[key] = cached
        return cached[1]


CREDENTIALS = Credentials()


class Servers:
    """NATS + PostgreSQL for one benchmark run."""

    def __init__(self, data_dir: Path = DATA_DIR) -> None:
        self.data_dir = data_dir
        self.nats = LocalNats(data_dir / "nats")
        self.postgres = LocalPostgres(None, fsync=True, settings={"max_connections": "300"})

    def __enter__(self) -> Servers:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        try:
            self.postgres.start()
        except Exception:
            self.nats.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.postgres.stop()
        finally:
            self.nats.stop()

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def admin_url(self) -> str:
        return self.postgres.url

    async def database(self, name: str) -> str:
        conn = await asyncpg.connect(self.admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        finally:
            await conn.close()
        if exists:
            return database_url_for(self.admin_url, name)
        return await acreate_database(self.admin_url, name)

    def pids(self) -> dict[str, int]:
        return {"nats": self.nats.pid or 0, "postgres": self.postgres.pid or 0}


async def delete_streams(nats_url: str, keep: Iterable[str]) -> list[str]:
    """Delete every stream but the kept ones: leftovers of an interrupted run."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        names = await js.streams_info()
        keep_set = set(keep)
        deleted = []
        for info in names:
            name = info.config.name
            if name not in keep_set:
                await js.delete_stream(name)
                deleted.append(name)
        return deleted
    finally:
        await nc.close()


@dataclass
class ServiceGroup:
    """The services of one phase: processes, ports and logs."""

    nats_url: str
    database_url: str
    prefix: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GRIDLOOP_NATS_URL": self.nats_url,
            "GRIDLOOP_DATABASE_URL": self.database_url,
            "GRIDLOOP_SUBJECT_PREFIX": self.prefix,
            "GRIDLOOP_ENV": "production",
            "GRIDLOOP_LOG_LEVEL": "INFO",
            **{f"GRIDLOOP_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
            **CREDENTIALS.env,
            **self.extra_env,
        }

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self, services: Iterable[str] = SERVICES, timeout: float = 90.0) -> None:
        services = list(services)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in services:
            self.ports.setdefault(name, find_free_port())
        env = self.env()
        for name in services:
            process = ServiceProcess(name, self.ports[name], self.log_dir / f"{name}.log")
            process.start(env, cwd=REPO)
            self.procs[name] = process
        for name in services:
            self.wait_ready(name, timeout)

    def wait_ready(self, service: str, timeout: float) -> None:
        self.procs[service].wait_ready(timeout)

    def pid(self, service: str) -> int:
        return self.procs[service].pid

    def rss_mib(self) -> dict[str, float]:
        return {name: psutil.Process(p.pid).memory_info().rss / 2**20
                for name, p in self.procs.items() if p.alive}

    def alive(self) -> dict[str, bool]:
        return {name: p.alive for name, p in self.procs.items()}

    def log_tail(self, service: str, lines: int = 30) -> str:
        return ServiceProcess(service, 0, self.log_dir / f"{service}.log").log_tail(lines)

    def stop(self) -> None:
        stop_all(self.procs.values())
        self.procs.clear()


async def wait_until(check, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        await asyncio.sleep(interval)
