"""`gridloop up` (what `make run` runs) brings everything up from nothing and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from gridloop_events.auth_keys import ENV_KEY_DIR, Issuer, KeyFolder
from gridloop_events.servers import find_free_port

SERVICES = ("intake", "dispatch", "escalation", "feedback")


def test_up_starts_servers_and_services_then_stops_on_sigterm(tmp_path: Path) -> None:
    ports = {name: find_free_port() for name in SERVICES}
    gateway_port = find_free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update({f"GRIDLOOP_{n.upper()}_PORT": str(p) for n, p in ports.items()})
    cli = Path(sys.executable).parent / "gridloop"
    postgres_port = find_free_port()
    proc = subprocess.Popen(
        [str(cli), "up", "--data-dir", str(tmp_path / "run"), "--nats-port",
         str(find_free_port()), "--postgres-port", str(postgres_port),
         "--gateway-port", str(gateway_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        ready: set[str] = set()
        while time.monotonic() < deadline and len(ready) < 4:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            for name, port in ports.items():
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        ready.add(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        assert ready == set(SERVICES)
        categories = f"http://127.0.0.1:{ports['intake']}/v1/categories"
        assert httpx.get(categories, timeout=5).status_code == 401  # tokens even in dev
        # `gridloop up` made the dev key that `gridloop token` signs with.
        keys = KeyFolder(os.environ.get(ENV_KEY_DIR) or tmp_path / "run" / "keys")
        token = Issuer(keys.signing_key()).headers("auditor", sub="newcomer")
        r = httpx.get(categories, headers=token, timeout=5)
        assert r.status_code == 200
        if shutil.which("nginx"):  # the same gateway in front, one base URL
            via = f"http://127.0.0.1:{gateway_port}/v1/categories"
            r = httpx.get(via, headers=token, timeout=5)
            assert r.status_code == 200 and "x-request-id" in {k.lower() for k in r.headers}
        assert (tmp_path / "run" / "nats").exists()  # data kept under the given folder
        # Each service runs as its own NATS user and database role, as deployed.
        assert _nats_users(tmp_path / "run" / "nats") == set(SERVICES)
        assert asyncio.run(_database_users(postgres_port)) == {f"gridloop_{s}" for s in SERVICES}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "stopped." in out
    for port in ports.values():
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            raise AssertionError(f"something still answers on {port}")
        except httpx.HTTPError:
            pass


def _nats_users(nats_dir: Path) -> set[str]:
    conf = (nats_dir / "nats-server.conf").read_text()
    monitor = re.search(r'^http: "([^"]+)"', conf, re.M)
    assert monitor, conf
    r = httpx.get(f"http://{monitor[1]}/connz?auth=true&limit=1024", timeout=5, trust_env=False)
    return {c.get("authorized_user", "") for c in r.json()["connections"]}


async def _database_users(port: int) -> set[str]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/gridloop")
    try:
        rows = await conn.fetch("SELECT DISTINCT usename FROM pg_stat_activity "
                                "WHERE datname = 'gridloop' AND pid <> pg_backend_pid()")
    finally:
        await conn.close()
    return {r["usename"] for r in rows}
