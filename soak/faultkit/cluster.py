"""A whole Gridloop on servers of its own: nats-server, PostgreSQL and the four services, each a
real process the faults may SIGKILL, SIGSTOP or restart. Each service runs as its own NATS user
and PostgreSQL role from deploy/ (accounts.conf, init.sql), as in a district; the harness (load,
checker, side projections) connects as the NATS operator and the database's superuser."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gridloop_district import default_district
from gridloop_events.deploy_security import Credentials, apply_roles, nats_security_config
from gridloop_events.processes import ServiceProcess, stop_all
from gridloop_events.servers import LocalNats, LocalPostgres, find_free_port
from gridloop_events.subjects import DEFAULT_PREFIX

try:  # services that check bearer tokens get them from a key of the run's own
    from gridloop_events.auth_keys import Issuer, SigningKey
except ImportError:  # a version of the services without authentication
    Issuer = SigningKey = None  # type: ignore[assignment,misc]

SERVICES = ("intake", "dispatch", "escalation", "feedback")


@dataclass
class Cluster:
    workdir: Path
    nats: LocalNats = field(init=False)
    postgres: LocalPostgres = field(init=False)
    database_url: str = ""
    prefix: str = "gridloop"
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.credentials = Credentials.local("gridloop-faults")
        self.nats = self._secured_nats("nats")
        self.postgres = LocalPostgres()
        self.issuer = Issuer(SigningKey.generate("faults-1")) if Issuer is not None else None
        # Intake seals residents' contacts: a throwaway master key unless one is configured.
        self.master_keys = {
            "GRIDLOOP_MASTER_KEYS": os.environ.get("GRIDLOOP_MASTER_KEYS") or json.dumps(
                {"faults-1": base64.b64encode(os.urandom(32)).decode()}),
            "GRIDLOOP_MASTER_KEY_ID": os.environ.get("GRIDLOOP_MASTER_KEY_ID") or "faults-1",
        }

    def token(self, role: str, scope: str, sub: str) -> str | None:
        return self.issuer.token(role, scope, sub=sub) if self.issuer is not None else None

    def headers(self, role: str, scope: str, sub: str) -> dict[str, str]:
        """A bearer token for `role` over `scope` (a district or unit code), if tokens exist."""
        if self.issuer is None:
            return {}
        return self.issuer.headers(role, scope, sub=sub)

    # --- servers -------------------------------------------------------------------------------

    def _secured_nats(self, name: str) -> LocalNats:
        return LocalNats(self.workdir / name, extra_config=nats_security_config(),
                         env=self.credentials.nats_server_env())

    def start_servers(self) -> None:
        self.nats.start()
        self.postgres.start()
        self.new_system()

    def new_system(self) -> None:
        """A fresh database and stream: the next services start from nothing."""
        token = uuid.uuid4().hex[:10]
        self.database_url = self.postgres.create_database(f"gridloop_{token}")
        apply_roles(self.database_url, self.credentials)
        # accounts.conf grants the production prefix only: a fresh stream means a fresh server.
        self.prefix = DEFAULT_PREFIX
        self._fresh_nats(token)

    def _fresh_nats(self, token: str) -> None:
        if self.nats.running:
            self.nats.stop()
            self.nats = self._secured_nats(f"nats-{token}")
            self.nats.start()

    @property
    def nats_url(self) -> str:
        """The harness's connection: the operator (a connection without a login is refused)."""
        return self.credentials.nats_url(self.nats.url, "operator")

    def env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items()
                     if not k.endswith(("NATS_URL", "DATABASE_URL"))
                     and k != "GRIDLOOP_SUBJECT_PREFIX"}
        return {
            **inherited,
            # (A subclass running other NATS servers gives the services their URLs itself.)
            **self.credentials.service_env(self.nats.url if self.nats.running else None,
                                           self.database_url, SERVICES),
            "GRIDLOOP_SUBJECT_PREFIX": self.prefix,
            "GRIDLOOP_TEST_CLOCK": "1",
            "GRIDLOOP_ENV": "production",
            **self.master_keys,
            **{f"GRIDLOOP_{s.upper()}_PORT": str(p) for s, p in self.ports.items()},
            **({"GRIDLOOP_AUTH": "required",
                "GRIDLOOP_JWT_PUBLIC_KEYS": self.issuer.trusted_keys_json()}
               if self.issuer is not None else {}),
            **self.extra_env,
        }

    def supervisor(self) -> dict[str, str]:
        return self.headers("supervisor", default_district().code, "faults-supervisor")

    # --- services ------------------------------------------------------------------------------

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_services(self, timeout: float = 60.0) -> None:
        for service in SERVICES:
            self.ports.setdefault(service, find_free_port())
        for service in SERVICES:
            self.spawn(service)
        for service in SERVICES:
            self.wait_ready(service, timeout)

    def spawn(self, service: str) -> None:
        process = ServiceProcess(service, self.ports[service], self.workdir / f"{service}.log")
        process.start(self.env())
        self.procs[service] = process

    def ready(self, service: str) -> bool:
        try:
            return httpx.get(f"{self.url(service)}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, service: str, timeout: float = 60.0) -> float:
        """Seconds it took (a recovery's length)."""
        started = time.monotonic()
        self.procs[service].wait_ready(timeout)
        return time.monotonic() - started

    def wait_all_ready(self, timeout: float = 90.0) -> float:
        started = time.monotonic()
        for service in SERVICES:
            self.wait_ready(service, max(1.0, timeout - (time.monotonic() - started)))
        return time.monotonic() - started

    def kill(self, service: str) -> None:
        self.procs.pop(service).kill()

    def stop_services(self) -> None:
        stop_all(self.procs.values(), timeout=20)
        self.procs.clear()

    def log_tail(self, service: str, lines: int = 30) -> str:
        return ServiceProcess(service, 0, self.workdir / f"{service}.log").log_tail(lines)

    def close(self) -> None:
        self.stop_services()
        if self.nats.running:
            try:
                self.nats.resume()
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
        self.nats.stop()
        self.postgres.stop()
