"""The gateway as a child process, for `gridloop up` and the tests.

    proc = start_gateway(Path(".run/gateway"), {"intake": 8001, ...}, listen_port=8080)
    ...
    stop(proc)

nginx runs in the foreground with its prefix, config, pid, logs and temp folders all under
``run_dir``, in its own session (Ctrl-C in the terminal reaches only Python, which stops it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

try:
    from .render import LOCAL_LIMITS, Limits, Tls, local_config, render
except ImportError:  # loaded by file path rather than as deploy.gateway.local
    import importlib.util
    import sys

    _spec = importlib.util.spec_from_file_location(
        "gridloop_gateway_render", Path(__file__).with_name("render.py")
    )
    assert _spec is not None and _spec.loader is not None
    _render = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _render
    _spec.loader.exec_module(_render)
    LOCAL_LIMITS, Limits, Tls = _render.LOCAL_LIMITS, _render.Limits, _render.Tls
    local_config, render = _render.local_config, _render.render

__all__ = ["GatewayError", "nginx_binary", "start_gateway", "stop", "Limits", "Tls"]

INSTALL_HINT = "install it with `apt-get install -y nginx` (Debian/Ubuntu)"


class GatewayError(RuntimeError):
    """nginx is missing, refused the configuration or did not come up."""


def nginx_binary() -> str | None:
    """The nginx executable, or None. Debian puts it in /usr/sbin, off a normal user's PATH."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _healthy(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(log is empty)"


def start_gateway(
    run_dir: Path | str,
    ports: Mapping[str, int],
    listen_port: int,
    *,
    limits: Limits = LOCAL_LIMITS,
    tls: Tls | None = None,
    startup_timeout: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Render the local config into ``run_dir`` and start nginx on 127.0.0.1:``listen_port``.

    Returns once /healthz answers; raises GatewayError (with nginx's own words) otherwise.
    """
    binary = nginx_binary()
    if binary is None:
        raise GatewayError(f"no nginx binary found; {INSTALL_HINT}")
    run = Path(run_dir).resolve()
    (run / "logs").mkdir(parents=True, exist_ok=True)
    (run / "tmp").mkdir(parents=True, exist_ok=True)
    conf = run / "nginx.conf"
    conf.write_text(render(local_config(run, ports, listen_port, limits=limits, tls=tls)),
                    encoding="utf-8")
    error_log = run / "logs" / "error.log"
    output = open(run / "logs" / "nginx.out", "ab")
    try:
        proc = subprocess.Popen(
            # -e: the error log before the config is read, else nginx opens its built-in path.
            [binary, "-p", str(run), "-c", str(conf), "-e", str(error_log)],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        output.close()
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GatewayError(
                f"nginx exited with status {proc.returncode}:\n"
                f"{_tail(run / 'logs' / 'nginx.out')}\n{_tail(error_log)}"
            )
        if _healthy(listen_port):
            return proc
        time.sleep(0.05)
    stop(proc)
    raise GatewayError(f"nginx not answering on port {listen_port}:\n{_tail(error_log)}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Graceful shutdown (SIGQUIT lets requests in flight finish), then SIGKILL the group.

    The master exits only after its workers, so the group is killed only when it did not.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    # Still running, so the group id is still ours: the master leads its own session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
