"""The four services as separate processes on real NATS and PostgreSQL, for end-to-end tests,
each running as its own NATS user and PostgreSQL role from deploy/ (as in a district)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.deploy_security import Deployed
from gridloop_events.processes import ServiceProcess, stop_all
from gridloop_events.servers import find_free_port

SERVICES = ("intake", "dispatch", "escalation", "feedback")


@dataclass
class System:
    env: dict[str, str]
    ports: dict[str, int]
    log_dir: Path
    # The servers and every identity on them: the services' own, and for the harness's
    # inspections the NATS operator and the database auditor.
    deployed: Deployed
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    # Signs the tests' tokens; the services trust only its public key.
    issuer: Issuer = field(default_factory=lambda: Issuer(SigningKey.generate("e2e-1")))

    def headers(self, role: str, scope: str | list[str] = (), sub: str | None = None
                ) -> dict[str, str]:
        return self.issuer.headers(role, scope, sub=sub)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self, service: str, timeout: float = 60.0) -> None:
        process = ServiceProcess(service, self.ports[service], self.log_dir / f"{service}.log")
        process.start(self.env)
        self.procs[service] = process
        process.wait_ready(timeout)

    def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        self.procs[service].wait_ready(timeout)

    def kill(self, service: str) -> None:
        self.procs.pop(service).kill()

    def stop(self, service: str) -> None:
        self.procs.pop(service).stop()

    def log_tail(self, service: str, lines: int = 40) -> str:
        process = self.procs.get(service)
        if process is None:
            process = ServiceProcess(service, 0, self.log_dir / f"{service}.log")
        return process.log_tail(lines)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


def _inherited_env() -> dict[str, str]:
    # Any server or prefix from the outside would override the deployed identities.
    return {k: v for k, v in os.environ.items()
            if not k.endswith(("NATS_URL", "DATABASE_URL")) and k != "GRIDLOOP_SUBJECT_PREFIX"}


@pytest.fixture
def system(deployed: Deployed, tmp_path: Path) -> Iterator[System]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    ports = {name: find_free_port() for name in SERVICES}
    env = {
        **_inherited_env(),
        **deployed.service_env(),
        "GRIDLOOP_TEST_CLOCK": "1",
        "GRIDLOOP_ENV": "production",
        "GRIDLOOP_LOG_LEVEL": "DEBUG",
        **{f"GRIDLOOP_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    system = System(env=env, ports=ports, log_dir=log_dir, deployed=deployed)
    env.update({"GRIDLOOP_AUTH": "required",
                "GRIDLOOP_JWT_PUBLIC_KEYS": system.issuer.trusted_keys_json()})
    try:
        for name in SERVICES:
            system.start(name)
        yield system
    finally:
        stop_all(system.procs.values())
