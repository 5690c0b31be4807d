"""The deployed security posture on one machine, from the very files the deployment uses.

- :func:`start_nats_node`: a nats-server from deploy/nats/ (accounts.conf's per-service users
  and permissions; cluster.conf for a node of the 3-node cluster), ports and store moved to a
  scratch folder;
- :func:`apply_roles`: deploy/postgres/init.sql into a database with psql;
- :func:`service_env`: the environment that runs a service as its own NATS user and role.

The tests use these to run the four services under least privilege; `gridloop up` may too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
NATS_DIR = DEPLOY / "nats"
INIT_SQL = DEPLOY / "postgres" / "init.sql"
SERVICES = ("intake", "dispatch", "escalation", "feedback")
NATS_USERS = (*SERVICES, "operator", "public", "sys")
DB_ROLES = (*SERVICES, "auditor")
DEPLOYED_DATA = '"/data/'


def nats_password_env(password: str = "gridloop-dev") -> dict[str, str]:
    """GRIDLOOP_NATS_PASSWORD_<USER> for every user in accounts.conf, one password for all."""
    return {f"GRIDLOOP_NATS_PASSWORD_{user.upper()}": f"{password}-{user}" for user in NATS_USERS}


def nats_url(port: int, user: str, passwords: Mapping[str, str], host: str = "127.0.0.1") -> str:
    password = passwords[f"GRIDLOOP_NATS_PASSWORD_{user.upper()}"]
    return f"nats://{user}:{urllib.parse.quote(password, safe='')}@{host}:{port}"


@dataclass
class NatsNode:
    proc: subprocess.Popen[bytes]
    port: int
    monitor_port: int
    cluster_port: int | None
    folder: Path

    def log_tail(self, lines: int = 30) -> str:
        log = self.folder / "nats.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _node_config(folder: Path, conf: str) -> Path:
    """Copy the deploy config next to its include, so `include ./accounts.conf` resolves."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(NATS_DIR / "accounts.conf", folder / "accounts.conf")
    if conf == "single":
        # What accounts.conf needs around it for one node: JetStream with the same fsync policy.
        path = folder / "single.conf"
        path.write_text(
            "listen: 127.0.0.1:4222\n"
            f"jetstream {{ store_dir: \"{folder / 'jetstream'}\", sync_interval: always }}\n"
            "include ./accounts.conf\n",
            encoding="utf-8",
        )
        return path
    # The one edit: what lives on the data volume (/data) moves into the scratch folder;
    # nats-server refuses -sd on top of a store_dir in the file.
    text = (NATS_DIR / conf).read_text(encoding="utf-8")
    if DEPLOYED_DATA not in text:
        raise ValueError(f"{conf} keeps nothing under /data to move")
    (folder / conf).write_text(text.replace(DEPLOYED_DATA, f'"{folder}/'), encoding="utf-8")
    return folder / conf


def start_nats_node(
    binary: str,
    folder: Path,
    *,
    port: int,
    monitor_port: int,
    conf: str = "single",
    cluster_port: int | None = None,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: float = 20.0,
) -> NatsNode:
    """Start one node. ``conf`` is "single" or a file in deploy/nats (e.g. cluster.conf), whose
    ports are overridden on the command line (flags beat the file)."""
    config = _node_config(folder, conf)
    args = [binary, "-c", str(config), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port)]
    if cluster_port is not None:
        args += ["--cluster_listen", f"nats://127.0.0.1:{cluster_port}"]
    log = open(folder / "nats.log", "ab")
    try:
        proc = subprocess.Popen(args, cwd=folder, env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    node = NatsNode(proc, port, monitor_port, cluster_port, folder)
    if wait:
        wait_healthy([node], timeout)
    return node


def wait_healthy(nodes: Sequence[NatsNode], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({node.proc.returncode}):\n"
                                   f"{node.log_tail()}")
        if all(node.healthy() for node in nodes):
            return
        time.sleep(0.1)
    raise RuntimeError("nats-server not healthy:\n" + "\n".join(n.log_tail() for n in nodes))


@contextlib.contextmanager
def nats_nodes(nodes: Sequence[NatsNode]) -> Iterator[Sequence[NatsNode]]:
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def psql_binary() -> str:
    from gridloop_events.servers import postgres_bin_dir

    return str(postgres_bin_dir() / "psql")


def db_passwords(password: str = "gridloop-dev") -> dict[str, str]:
    return {role: f"{password}-{role}" for role in DB_ROLES}


def apply_roles(
    database_url: str, passwords: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run init.sql as the URL's (super)user; raises with psql's output when it fails."""
    args = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url,
            "-f", str(INIT_SQL)]
    for role in DB_ROLES:
        args[1:1] = ["-v", f"{role}_password={passwords[role]}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"init.sql failed ({result.returncode}):\n{result.stdout}\n"
                           f"{result.stderr}")
    return result


def role_url(database_url: str, role: str, password: str) -> str:
    """``database_url`` logging in as ``gridloop_<role>``."""
    parts = urllib.parse.urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"gridloop_{role}:{urllib.parse.quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def service_env(
    nats_port: int,
    nats_passwords: Mapping[str, str],
    database_url: str,
    db_passwords_: Mapping[str, str],
    http_ports: Mapping[str, int],
) -> dict[str, str]:
    """Per service: its NATS user, its database role, its port; the production subject prefix."""
    env: dict[str, str] = {}
    for name in SERVICES:
        upper = name.upper()
        env[f"GRIDLOOP_{upper}_NATS_URL"] = nats_url(nats_port, name, nats_passwords)
        env[f"GRIDLOOP_{upper}_DATABASE_URL"] = role_url(database_url, name, db_passwords_[name])
        env[f"GRIDLOOP_{upper}_PORT"] = str(http_ports[name])
    return env
