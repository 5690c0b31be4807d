"""A fleet of service processes, several instances of each, sharing one database and stream."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.servers import find_free_port, wait_service_ready

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
    procs: dict[tuple[str, int], subprocess.Popen[bytes]] = field(default_factory=dict)
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
        with open(self.log_path(service, index), "ab") as log:  # the child keeps its own fd
            self.procs[(service, index)] = subprocess.Popen(
                [sys.executable, "-m", f"gridloop_{service}"], env=env, stdout=log,
                stderr=subprocess.STDOUT)

    def wait_ready(self, service: str, index: int, timeout: float = 60.0) -> None:
        wait_service_ready(self.url(service, index), self.procs[(service, index)],
                           f"{service}-{index}", timeout, lambda: self.log_tail(service, index))

    def kill(self, service: str, index: int) -> None:
        proc = self.procs.pop((service, index))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for key, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.procs.pop(key)

    def log_tail(self, service: str, index: int, lines: int = 40) -> str:
        path = self.log_path(service, index)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
