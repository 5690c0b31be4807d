"""A fleet of service processes, several instances of each, sharing one database and stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.processes import ServiceProcess, stop_all
from gridloop_events.servers import find_free_port

SERVICES = ("intake", "dispatch", "escalation", "feedback")
INSTANCES = 2


@dataclass
class Fleet:
    env: dict[str, str]
    log_dir: Path
    # Per process: the share it wants (`i/n`), or None to want every partition.
    shares: dict[int, str | None]
    nats_url: str
    database_url: str
    prefix: str
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    procs: dict[tuple[str, int], ServiceProcess] = field(default_factory=dict)
    issuer: Issuer = field(default_factory=lambda: Issuer(SigningKey.generate("scale-1")))

    def url(self, service: str, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[(service, index)]}"

    def live(self, service: str) -> list[int]:
        return [i for (s, i) in self.procs if s == service]

    def log_path(self, service: str, index: int) -> Path:
        return self.log_dir / f"{service}-{index}.log"

    def spawn(self, service: str, index: int) -> None:
        port = self.ports.setdefault((service, index), find_free_port())
        env = {**self.env, f"GRIDLOOP_{service.upper()}_PORT": str(port)}
        share = self.shares[index]
        if share is not None:
            env["GRIDLOOP_INSTANCE"] = share
        process = ServiceProcess(service, port, self.log_path(service, index),
                                 name=f"{service}-{index}")
        process.start(env)
        self.procs[(service, index)] = process

    def wait_ready(self, service: str, index: int, timeout: float = 60.0) -> None:
        self.procs[(service, index)].wait_ready(timeout)

    def kill(self, service: str, index: int) -> None:
        self.procs.pop((service, index)).kill()

    def stop_all(self) -> None:
        stop_all(self.procs.values())
        self.procs.clear()

    def log_tail(self, service: str, index: int, lines: int = 40) -> str:
        return ServiceProcess(service, 0, self.log_path(service, index)).log_tail(lines)
