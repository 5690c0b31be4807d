"""Service processes as the end-to-end, scale and fault tests, the soak and the benchmark run
them: `python -m gridloop_<service>` with an environment of its own and a log file, ready when
`/readyz` answers 200, SIGKILLed or stopped (SIGTERM, then SIGKILL) on demand."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .servers import wait_service_ready


@dataclass
class ServiceProcess:
    service: str  # intake, dispatch, escalation or feedback
    port: int
    log_path: Path
    # How logs and errors name it, e.g. "intake-1" for a second instance.
    name: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: Mapping[str, str], cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"gridloop_{self.service}"], env=dict(env), stdout=log,
                stderr=subprocess.STDOUT, cwd=cwd)

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        wait_service_ready(self.url, self.proc, self.name, timeout, self.log_tail)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        self.terminate()
        self.wait_stopped(timeout)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(processes: Iterable[ServiceProcess], timeout: float = 30.0) -> None:
    """SIGTERM to all first, so they shut down side by side, then wait for each."""
    processes = list(processes)
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait_stopped(timeout)
