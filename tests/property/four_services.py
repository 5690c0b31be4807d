"""The four real services in one event loop, on one fresh NATS stream prefix and one fresh database.

Each app is built with its own `create_app(settings)` and runs its own lifespan, exactly as its
process would (runtime, projection runners, reactions, escalation's ticker); HTTP
goes through `httpx.ASGITransport`, so commands take the services' real request path. The
escalation service runs the test clock: parked an hour in the past, nothing of the wall clock's
passing can fire a deadline while a history is being played, and a step that means "this
deadline is missed" moves it past that deadline through `POST /v1/admin/clock`. Where the
services require bearer tokens, each command carries one from an issuer made for the system.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import nats
from gridloop_district import District, default_district
from gridloop_dispatch.app import create_app as create_dispatch
from gridloop_dispatch.projection import DispatchProjection
from gridloop_dispatch.settings import DispatchSettings
from gridloop_escalation.app import create_app as create_escalation
from gridloop_escalation.projection import EscalationProjection
from gridloop_escalation.settings import EscalationSettings
from gridloop_events.case_projection import CaseProjection
from gridloop_events.clock import OffsetClock
from gridloop_events.envelope import utcnow
from gridloop_events.lifecycle import CaseState, fold
from gridloop_events.runner import ProjectionRunner
from gridloop_events.servers import acreate_database, adrop_database
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_feedback.app import create_app as create_feedback
from gridloop_feedback.domain import district_callback_limits
from gridloop_feedback.projection import FeedbackProjection
from gridloop_feedback.settings import FeedbackSettings
from gridloop_intake.app import create_app as create_intake
from gridloop_intake.projection import IntakeProjection
from gridloop_intake.settings import IntakeSettings

SERVICES = ("intake", "dispatch", "escalation", "feedback")
DISTRICT: District = default_district()
# Where escalation's clock waits between "missed" steps: before every deadline a history sets.
PARKED = -3600.0
SETTLE_TIMEOUT = 60.0


class Tokens:
    """Bearer tokens the services trust, one per caller: each command goes in as the person a
    deployment would let do it (the unit's handler accepts, a supervisor decides an extension,
    the callback desk rates), named as the body names them."""

    def __init__(self) -> None:
        from gridloop_events.auth_keys import Issuer, SigningKey

        self.issuer = Issuer(SigningKey.generate("property"))

    def environment(self) -> dict[str, str]:
        return {"GRIDLOOP_AUTH": "required",
                "GRIDLOOP_JWT_PUBLIC_KEYS": self.issuer.trusted_keys_json()}

    def headers(self, role: str, who: str | None, scope: str | None = None) -> dict[str, str]:
        return self.issuer.headers(role, scope or DISTRICT.code, sub=who or f"{role}-1")


def auth_available() -> bool:
    try:
        import gridloop_events.auth_keys  # noqa: F401
    except ImportError:
        return False
    return True


def example_environment(tokens: Tokens | None) -> dict[str, str]:
    master = base64.b64encode(os.urandom(32)).decode()
    return {"GRIDLOOP_MASTER_KEYS": '{"property": "%s"}' % master,
            **(tokens.environment() if tokens else {})}


def projection_of(service: str, schema: str) -> CaseProjection:
    """A fresh instance of the service's own projection class, writing to `schema`."""
    if service == "intake":
        return IntakeProjection(schema=schema)
    if service == "dispatch":
        return DispatchProjection(DISTRICT, schema=schema)
    if service == "escalation":
        return EscalationProjection(schema)
    if service == "feedback":
        return FeedbackProjection(district_callback_limits(DISTRICT), schema=schema)
    raise ValueError(service)


@dataclass
class Moment:
    """The live read models at one quiet moment of a history."""

    sequence: int
    at: datetime
    tables: dict[str, dict[str, list[dict[str, Any]]]]  # service -> table -> sorted rows


class System:
    def __init__(self, apps: dict[str, Any], clients: dict[str, httpx.AsyncClient],
                 store: EventStore, pool: asyncpg.Pool, tokens: Tokens | None = None) -> None:
        self.tokens = tokens
        self.apps = apps
        self.clients = clients
        self.store = store
        self.pool = pool

    # --- who is applying what --------------------------------------------------------------

    def runners(self) -> dict[str, list[ProjectionRunner]]:
        return {name: list(self.apps[name].state.runtime.runners) for name in SERVICES}

    async def settle(self) -> int:
        """Wait until nothing moves: every runner has applied and committed the stream up to its
        last sequence, and the escalation ticker has scanned the caught-up timers without
        appending anything."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        ticker = self.apps["escalation"].state.ticker
        while True:
            tip = await self.store.last_sequence()
            while not all(self.runners().values()):
                if loop.time() > deadline:
                    raise AssertionError(f"a service runs no projection: {self.runners()}")
                await asyncio.sleep(0.01)
            for name, runners in self.runners().items():
                for runner in runners:
                    left = max(0.1, deadline - loop.time())
                    try:
                        await runner.wait_caught_up(tip, timeout=left)
                    except TimeoutError as exc:
                        raise AssertionError(f"{name} not caught up to #{tip}: {exc}") from None
            seen = ticker.stats.ticks
            while ticker.stats.ticks < seen + 2:
                if loop.time() > deadline:
                    raise AssertionError("the escalation ticker stopped ticking")
                await asyncio.sleep(0.01)
            if await self.store.last_sequence() == tip:
                return tip

    async def checkpoints(self) -> dict[str, int]:
        out = {}
        async with self.pool.acquire() as conn:
            for name in SERVICES:
                # The highest committed sequence, whether the checkpoint is one row or one per
                # partition of the stream.
                out[name] = int(await conn.fetchval(
                    f"SELECT max(last_sequence) FROM {name}.checkpoint WHERE projection = $1",
                    name) or 0)
        return out

    # --- the clock -------------------------------------------------------------------------

    async def set_clock(self, offset_seconds: float) -> None:
        headers = self.tokens.headers("supervisor", "sup-1") if self.tokens else {}
        response = await self.clients["escalation"].post(
            "/v1/admin/clock", json={"offset_seconds": offset_seconds}, headers=headers)
        assert response.status_code == 200, response.text

    async def pass_deadline(self, due_at: datetime) -> None:
        """Move escalation's clock just past `due_at`, let every whistle blow and every reaction
        run, then park the clock again."""
        offset = (due_at - utcnow()).total_seconds() + 1.0
        await self.set_clock(offset)
        await self.settle()
        await self.set_clock(PARKED)

    # --- the log ---------------------------------------------------------------------------

    async def state(self, case_id: str) -> CaseState:
        return fold(await self.store.read(case_id))

    # --- read models -----------------------------------------------------------------------

    async def tables(self, service: str, schema: str) -> dict[str, list[dict[str, Any]]]:
        projection = projection_of(service, schema)
        async with self.pool.acquire() as conn:
            return {t: await table_rows(conn, schema, t) for t in projection.tables}

    async def moment(self) -> Moment:
        sequence = await self.settle()
        at = utcnow()
        tables = {name: await self.tables(name, name) for name in SERVICES}
        # Nothing moved while the tables were read: they are the state at `sequence`.
        assert await self.store.last_sequence() == sequence
        return Moment(sequence, at, tables)

    async def dead_letters(self) -> dict[str, list[str]]:
        out = {}
        async with self.pool.acquire() as conn:
            for name in SERVICES:
                rows = await conn.fetch(
                    f"SELECT sequence, event_type, error FROM {name}.dead_letter ORDER BY 1")
                out[name] = [f"#{r['sequence']} {r['event_type']}: {r['error']}" for r in rows]
        return out


async def table_rows(conn: asyncpg.Connection, schema: str, table: str) -> list[dict[str, Any]]:
    """Every row of the table, as column -> value, in one order independent of storage."""
    records = await conn.fetch(f"SELECT t.*, t::text AS _row FROM {schema}.{table} t")
    rows = [dict(r) for r in records]
    rows.sort(key=lambda r: r["_row"])
    for r in rows:
        del r["_row"]
    return rows


async def primary_key(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    rows = await conn.fetch(
        """SELECT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
           WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum""",
        f"{schema}.{table}",
    )
    return [r["attname"] for r in rows]


def settings_for(service: str, nats_url: str, database_url: str, prefix: str) -> Any:
    common = dict(service=service, nats_url=nats_url, database_url=database_url,
                  subject_prefix=prefix, schema=service)
    if service == "intake":
        return IntakeSettings(**common)
    if service == "dispatch":
        return DispatchSettings(**common)
    if service == "escalation":
        return EscalationSettings(**common, test_clock=True, tick_seconds=0.02)
    return FeedbackSettings(**common)


def build_app(service: str, settings: Any) -> Any:
    if service == "intake":
        return create_intake(settings, district=DISTRICT)
    if service == "dispatch":
        return create_dispatch(settings, district=DISTRICT)
    if service == "escalation":
        return create_escalation(settings, clock=OffsetClock(timedelta(seconds=PARKED)))
    return create_feedback(settings, district=DISTRICT)


@asynccontextmanager
async def running_system(nats_url: str, admin_database_url: str, label: str
                         ) -> AsyncIterator[System]:
    """One fresh stream prefix and one fresh database, the four apps started on them, and
    everything removed afterwards (so each example of a property starts from nothing)."""
    token = f"p_{label}_{uuid.uuid4().hex[:10]}"
    database_url = await acreate_database(admin_database_url, token)
    # Intake seals a reporter's contact with a master key from the environment, and the
    # services trust the token issuer the environment names: keys for this system only,
    # unless the environment brings its own.
    tokens = Tokens() if auth_available() and "GRIDLOOP_JWT_PUBLIC_KEYS" not in os.environ \
        else None
    added = {k: v for k, v in example_environment(tokens).items() if k not in os.environ}
    os.environ.update(added)
    try:
        async with AsyncExitStack() as stack:
            nc = await nats.connect(nats_url)
            stack.push_async_callback(nc.close)
            store = EventStore(nc, Subjects(token))
            await store.ensure_stream()
            stack.push_async_callback(_delete_stream, nc, store.stream)
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
            stack.push_async_callback(pool.close)
            apps: dict[str, Any] = {}
            clients: dict[str, httpx.AsyncClient] = {}
            for name in SERVICES:
                app = build_app(name, settings_for(name, nats_url, database_url, token))
                await stack.enter_async_context(app.router.lifespan_context(app))
                client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url=f"http://{name}", timeout=30)
                await stack.enter_async_context(client)
                apps[name], clients[name] = app, client
            system = System(apps, clients, store, pool, tokens)
            await system.settle()
            yield system
    finally:
        for key in added:
            os.environ.pop(key, None)
        await adrop_database(admin_database_url, token)


async def _delete_stream(nc: nats.NATS, stream: str) -> None:
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001 - the stream may deny deletes; the prefix is unique anyway
        pass
