"""Servers configured as deployed: deploy/'s own NATS users and PostgreSQL roles, on this machine.

Production runs each service as its own NATS user (deploy/nats/accounts.conf: publish only its
own event types, replies on an inbox of its own) and its own PostgreSQL role
(deploy/postgres/init.sql: its schema and nothing else). The test fixtures and `gridloop up`
apply those very files here, so a service that reaches beyond its grants fails in a test the
way it would in a district, not first in production.

- :func:`deployed_servers` is the one call for fixtures: a private nats-server with
  accounts.conf (production subject prefix), a fresh database with init.sql's roles, and
  :meth:`Deployed.service_env` to start each service as itself.
- :class:`Credentials`, :func:`apply_roles`, :func:`nats_security_config` are the pieces, for
  servers started some other way (`gridloop up` with :func:`provide_servers`).

Identities for harness code that must see everything: ``operator`` on NATS (everything but
deleting a log) and ``auditor`` on PostgreSQL (read-only, every service schema but intake's key
material); the database's superuser stays available for setup and teardown only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from gridloop_events.servers import (
    LocalNats,
    ServerError,
    create_database,
    drop_database,
    postgres_bin_dir,
)

__all__ = [
    "DB_ROLES",
    "NATS_USERS",
    "SERVICES",
    "Credentials",
    "Deployed",
    "adopt_schema_objects",
    "apply_roles",
    "deploy_dir",
    "deployed_servers",
    "nats_security_config",
]

SERVICES = ("intake", "dispatch", "escalation", "feedback")
NATS_USERS = (*SERVICES, "operator", "public", "sys")
DB_ROLES = (*SERVICES, "auditor")

_ENV_DEPLOY_DIR = "GRIDLOOP_DEPLOY_DIR"


def deploy_dir() -> Path:
    """The checkout's deploy/ (``$GRIDLOOP_DEPLOY_DIR`` elsewhere): configuration, not code,
    so it ships beside the library rather than inside it."""
    given = os.environ.get(_ENV_DEPLOY_DIR)
    path = Path(given) if given else Path(__file__).resolve().parents[3] / "deploy"
    if not (path / "nats" / "accounts.conf").is_file():
        raise ServerError(f"{path} has no nats/accounts.conf; set {_ENV_DEPLOY_DIR} to the "
                          "deploy/ folder of a Gridloop checkout")
    return path


def nats_security_config(*, anonymous_as: str | None = None) -> str:
    """accounts.conf verbatim, for a server's config. ``anonymous_as`` names the user a
    connection without credentials becomes (``gridloop up`` only: the operator's commands keep
    working on a developer's machine; no deployment sets it)."""
    text = (deploy_dir() / "nats" / "accounts.conf").read_text(encoding="utf-8")
    if anonymous_as is not None:
        if anonymous_as not in NATS_USERS:
            raise ValueError(f"no NATS user {anonymous_as!r} in accounts.conf")
        text += f"no_auth_user: {anonymous_as}\n"
    return text


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A password per NATS user and per database role.

    Derived from a seed, not random: database roles are cluster-wide, so test sessions that
    share one PostgreSQL must agree on them, and a local `gridloop up` restarts with the same.
    These are for machines nobody else reaches; deployments take theirs from secrets.
    """

    nats: Mapping[str, str]
    postgres: Mapping[str, str]

    @classmethod
    def local(cls, seed: str = "gridloop-dev") -> Credentials:
        return cls(nats={u: f"{seed}-nats-{u}" for u in NATS_USERS},
                   postgres={r: f"{seed}-pg-{r}" for r in DB_ROLES})

    def nats_server_env(self) -> dict[str, str]:
        """What accounts.conf reads from the server's environment."""
        return {f"GRIDLOOP_NATS_PASSWORD_{user.upper()}": pw for user, pw in self.nats.items()}

    def nats_url(self, url: str, user: str) -> str:
        """``url`` (``nats://host:port``) logging in as ``user``."""
        return _with_login(url, user, self.nats[user])

    def database_url(self, url: str, role: str) -> str:
        """``url`` (any login, the database kept) logging in as ``gridloop_<role>``."""
        return _with_login(url, f"gridloop_{role}", self.postgres[role])

    def service_env(self, nats_url: str | None, database_url: str | None,
                    services: Sequence[str] = SERVICES) -> dict[str, str]:
        """``GRIDLOOP_<SERVICE>_NATS_URL`` / ``_DATABASE_URL`` per service, each as itself.
        A server given as None is left out (one not ours to secure)."""
        env: dict[str, str] = {}
        for name in services:
            if nats_url is not None:
                env[f"GRIDLOOP_{name.upper()}_NATS_URL"] = self.nats_url(nats_url, name)
            if database_url is not None:
                env[f"GRIDLOOP_{name.upper()}_DATABASE_URL"] = self.database_url(database_url,
                                                                                 name)
        return env


def _with_login(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# psql's wording when two sessions re-assert the same roles or grants at once (roles are
# cluster-wide; init.sql is re-runnable, so running it again is the fix).
_CONCURRENT = ("tuple concurrently updated", "already exists", "duplicate key value")


def apply_roles(superuser_url: str, credentials: Credentials, attempts: int = 5) -> None:
    """Run deploy/postgres/init.sql in ``superuser_url``'s database, as psql would in a
    deployment (it uses psql's ``\\gexec`` and variables)."""
    args = [str(postgres_bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for role in DB_ROLES:
        args += ["-v", f"{role}_password={credentials.postgres[role]}"]
    args += ["-d", superuser_url, "-f", str(deploy_dir() / "postgres" / "init.sql")]
    # Inherited PG* variables would change where and as whom psql connects.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for attempt in range(1, attempts + 1):
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60,
                                check=False)
        if result.returncode == 0:
            return
        output = result.stdout + result.stderr
        if attempt == attempts or not any(s in output for s in _CONCURRENT):
            raise ServerError(f"deploy/postgres/init.sql failed ({result.returncode}):\n"
                              f"{output}")
        time.sleep(0.2 * attempt)


async def _adopt(superuser_url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(superuser_url)
    try:
        rows = await conn.fetch(
            """SELECT n.nspname, c.relname, c.relkind::text AS relkind FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_roles r ON r.oid = c.relowner
               WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                 AND r.rolname <> 'gridloop_' || regexp_replace(n.nspname, '_keys$', '')
                 -- a serial's sequence moves with its table
                 AND NOT (c.relkind = 'S' AND EXISTS (
                     SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))""",
            [*SERVICES, "intake_keys"])
        kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
                 "S": "SEQUENCE"}
        moved = []
        for row in rows:
            owner = "gridloop_" + row["nspname"].removesuffix("_keys")
            name = f'"{row["nspname"]}"."{row["relname"]}"'
            await conn.execute(f"ALTER {kinds[row['relkind']]} {name} OWNER TO {owner}")
            moved.append(name)
        return moved
    finally:
        await conn.close()


def adopt_schema_objects(superuser_url: str) -> list[str]:
    """Give each service what a superuser made in its schema (a database from before the
    roles, e.g. an old `gridloop up` folder); returns the tables moved."""
    import asyncio

    return asyncio.run(_adopt(superuser_url))


@dataclasses.dataclass
class Deployed:
    """A private secured NATS and a database with the deployed roles (see module doc)."""

    nats: LocalNats
    database_url: str  # the database's superuser URL: setup and teardown only
    credentials: Credentials

    @property
    def nats_url(self) -> str:
        """The server without credentials: connections with none are refused."""
        return self.nats.url

    def nats_url_as(self, user: str) -> str:
        return self.credentials.nats_url(self.nats.url, user)

    def database_url_as(self, role: str) -> str:
        return self.credentials.database_url(self.database_url, role)

    def service_env(self, services: Sequence[str] = SERVICES) -> dict[str, str]:
        return self.credentials.service_env(self.nats.url, self.database_url, services)


@contextlib.contextmanager
def deployed_servers(
    admin_database_url: str,
    *,
    data_dir: Path | str | None = None,
    nats_port: int | None = None,
    credentials: Credentials | None = None,
) -> Iterator[Deployed]:
    """A nats-server of its own with deploy's accounts.conf, and a new database (on the server
    of ``admin_database_url``, a superuser's) with deploy's init.sql; both gone afterwards.

    The NATS server is private because accounts.conf grants the production subject prefix:
    services on it run with the default prefix, not a per-test one.
    """
    credentials = credentials or Credentials.local("gridloop-test")
    nats_server = LocalNats(data_dir, port=nats_port, extra_config=nats_security_config(),
                            env=credentials.nats_server_env())
    name = f"deployed_{uuid.uuid4().hex[:12]}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(nats_server)
        database_url = create_database(admin_database_url, name)
        stack.callback(drop_database, admin_database_url, name)
        apply_roles(database_url, credentials)
        yield Deployed(nats_server, database_url, credentials)
