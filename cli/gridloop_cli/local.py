"""`gridloop up`: NATS, PostgreSQL and the four services on this machine, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from gridloop_events.auth_keys import ENV_KEY_DIR, KeyFolder
from gridloop_events.crypto import dev_master_key_env
from gridloop_events.deploy_security import (
    Credentials,
    adopt_schema_objects,
    apply_roles,
    nats_security_config,
)
from gridloop_events.servers import provide_servers, wait_service_ready
from gridloop_events.service import DEFAULT_PORTS

console = Console()
SERVICES = ("intake", "dispatch", "escalation", "feedback")


def _ensure_database(admin_url: str, name: str) -> str:
    import asyncio

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _adopt_open_jetstream(nats_dir: Path) -> None:
    """A folder from before the per-service users kept its streams in the default account;
    under accounts.conf they belong to account GRIDLOOP, so move them there once."""
    store = nats_dir / "jetstream"
    if (store / "$G").is_dir() and not (store / "GRIDLOOP").exists():
        (store / "$G").rename(store / "GRIDLOOP")


def _gateway_module():  # type: ignore[no-untyped-def]
    """deploy/gateway/local.py of this checkout (deploy/ is configuration, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "deploy" / "gateway" / "local.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("gridloop_gateway_local", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def up(
    data_dir: Path = typer.Option(Path(".run"), help="Where NATS and PostgreSQL keep their data."),
    nats_port: int = typer.Option(4222, help="NATS client port."),
    postgres_port: int = typer.Option(55432, help="PostgreSQL port."),
    test_clock: bool = typer.Option(False, help="Let /v1/admin/clock move escalation's clock."),
    gateway_port: int = typer.Option(8080, help="The nginx gateway's port (when nginx exists)."),
    least_privilege: bool = typer.Option(
        True, help="Run each service as its own NATS user and database role from deploy/."),
) -> None:
    """Start the whole system on embedded defaults and the demo district; Ctrl-C stops it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Servers we start get deploy/'s users and roles; servers given by URL are not ours to change.
    secure_nats = least_privilege and not os.environ.get("NATS_URL")
    secure_db = least_privilege and not os.environ.get("DATABASE_URL")
    credentials = Credentials.local()
    if secure_nats:
        _adopt_open_jetstream(data_dir / "nats")
    with provide_servers(
        backend=os.environ.get("GRIDLOOP_SERVERS", "local") if not os.environ.get("NATS_URL") else None,
        data_root=data_dir,
        nats_port=nats_port,
        postgres_port=postgres_port,
        # A connection without credentials is the operator's: the operator commands and a
        # service started by hand keep working on this machine, while the four services
        # started here log in as themselves.
        nats_extra_config=nats_security_config(anonymous_as="operator") if secure_nats else "",
        nats_env=credentials.nats_server_env() if secure_nats else None,
    ) as servers:
        database_url = _ensure_database(servers.database_url, "gridloop")
        if secure_db:
            apply_roles(database_url, credentials)
            adopt_schema_objects(database_url)
        env = {
            **os.environ,
            "GRIDLOOP_NATS_URL": servers.nats_url,
            "GRIDLOOP_DATABASE_URL": database_url,
            "GRIDLOOP_ENV": os.environ.get("GRIDLOOP_ENV", "development"),
            # Tokens are required even here; dev mode trusts the local key folder, whose key
            # `gridloop token` and `gridloop simulate` sign with.
            "GRIDLOOP_AUTH": os.environ.get("GRIDLOOP_AUTH", "dev"),
            ENV_KEY_DIR: os.environ.get(ENV_KEY_DIR, str((data_dir / "keys").resolve())),
        }
        if env["GRIDLOOP_AUTH"] == "dev":
            KeyFolder(env[ENV_KEY_DIR]).ensure()
        # Residents' contacts are sealed with a master key: a local one, made on first start.
        env.update(dev_master_key_env(data_dir, os.environ))
        if test_clock:
            env["GRIDLOOP_TEST_CLOCK"] = "1"
        env.update(credentials.service_env(servers.nats_url if secure_nats else None,
                                           database_url if secure_db else None))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        procs_gateway: subprocess.Popen[bytes] | None = None
        gateway = None
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            for name in SERVICES:
                procs[name] = subprocess.Popen([sys.executable, "-m", f"gridloop_{name}"], env=env)
            ports = {name: int(os.environ.get(f"GRIDLOOP_{name.upper()}_PORT",
                                              DEFAULT_PORTS[name])) for name in SERVICES}
            for name in SERVICES:
                wait_service_ready(f"http://127.0.0.1:{ports[name]}", procs[name], name, 90)
            gateway = _gateway_module()
            if gateway is not None and gateway.nginx_binary():
                procs_gateway = gateway.start_gateway(data_dir / "gateway", ports, gateway_port)
            table = Table(title="Gridloop is up")
            table.add_column("service")
            table.add_column("API")
            table.add_column("docs")
            for name in SERVICES:
                base = f"http://127.0.0.1:{ports[name]}"
                table.add_row(name, base, f"{base}/docs")
            if procs_gateway is not None:
                base = f"http://127.0.0.1:{gateway_port}"
                table.add_row("gateway (nginx)", base, f"one base URL: {base}/v1/…")
            table.add_row("nats", servers.nats_url, "stream GRIDLOOP_CASES")
            table.add_row("postgres", database_url, "one schema per service")
            if secure_nats or secure_db:
                table.add_row("least privilege", "each service as its own user and role",
                              "deploy/nats/accounts.conf, deploy/postgres/init.sql")
            console.print(table)
            console.print("Traffic: [bold]make simulate[/bold] in another terminal. "
                          "Ctrl-C stops everything.")
            console.print("A token for the APIs: [bold]gridloop token --role dispatcher "
                          "--scope 370190[/bold] (roles: resident, grid_worker, unit_handler, "
                          "dispatcher, supervisor, auditor, integration).")
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        console.print(f"[red]{name} exited ({proc.returncode})[/red]")
                        stopping = True
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if procs_gateway is not None and gateway is not None:
                gateway.stop(procs_gateway)
            console.print("stopping services…")
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            console.print("stopping NATS and PostgreSQL…")
    console.print("stopped.")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
