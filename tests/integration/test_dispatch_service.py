"""The dispatch service against real NATS JetStream and PostgreSQL: reports appended to the log
are triaged into CaseDispatched, a full replay adds nothing, and the HTTP commands and queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import nats
import pytest
from gridloop_district import District, default_district
from gridloop_dispatch.app import create_app
from gridloop_dispatch.settings import DispatchSettings
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import (
    CaseReported,
    DeadlineMissed,
    GridPath,
    Location,
)
from gridloop_events.clock import FixedClock
from gridloop_events.envelope import Actor, ActorKind, Envelope, StoredEvent
from gridloop_events.lifecycle import fold
from gridloop_events.rebuild import rebuild, table_checksum
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import Channel, DeadlineKind, Severity

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 5, 6, 8, 0, tzinfo=UTC)
DISTRICT: District = default_district()
GRID = DISTRICT.grids[0].code
TEAM = DISTRICT.grid_team(GRID).code
COMMITTEE = DISTRICT.committee(DISTRICT.community_of(GRID).code).code
KEY = SigningKey.generate("test-dispatch")


def as_(role: str, scope: str | list[str], sub: str) -> dict[str, str]:
    return Issuer(KEY).headers(role, scope, sub=sub)


# The client's calls are a district dispatcher's unless a call names another caller.
DISPATCHER = as_("dispatcher", DISTRICT.code, "disp-1")
W1 = as_("grid_worker", GRID, "w-1")


@pytest.fixture
def settings(nats_url: str, fresh_database: str, fresh_stream_prefix: str) -> DispatchSettings:
    return DispatchSettings(
        nats_url=nats_url, database_url=fresh_database, subject_prefix=fresh_stream_prefix
    )


@asynccontextmanager
async def event_store(settings: DispatchSettings) -> AsyncIterator[EventStore]:
    nc = await nats.connect(settings.nats_url)
    try:
        store = EventStore(nc, Subjects(settings.subject_prefix))
        await store.ensure_stream()
        yield store
    finally:
        await nc.close()


@asynccontextmanager
async def dispatch_service(
    settings: DispatchSettings, clock: FixedClock
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(settings, district=DISTRICT, clock=clock,
                     auth=Authenticator(Verifier.trusting(KEY.trusted())))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=DISPATCHER) as client:
            yield app, client


async def caught_up(app: object) -> None:
    for runner in app.state.runtime.runners:  # type: ignore[attr-defined]
        await runner.wait_caught_up(timeout=15)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def report(case_id: str, category: str, grid: str | None = GRID,
           severity: Severity = Severity.normal) -> Envelope:
    path = None
    if grid is not None:
        p = DISTRICT.grid_path(grid)
        path = GridPath(district=p.district, street=p.street, community=p.community,
                        compound=p.compound, grid=p.grid)
    return Envelope.new(
        CaseReported(
            channel=Channel.wechat,
            category_code=category,
            description="garbage piled up at the gate",
            location=Location(grid_path=path),
            severity=severity,
        ),
        case_id=case_id,
        district=DISTRICT.code,
        actor=Actor(kind=ActorKind.resident, id="r-1"),
        correlation_id=f"corr-{case_id}",
        occurred_at=T0,
    )


def missed_accept(history: list[StoredEvent], at: datetime) -> Envelope:
    state = fold(history)
    live = state.deadline(DeadlineKind.accept)
    assert live is not None
    return Envelope.new(
        DeadlineMissed(deadline=DeadlineKind.accept, deadline_id=live.id, due_at=live.due_at,
                       detected_at=at, assignee_unit=state.unit_code, tier=state.tier,
                       escalation_level=1),
        case_id=state.case_id,
        district=state.district,
        actor=Actor.system("escalation"),
        correlation_id="corr-escalation",
        occurred_at=at,
    )


def types(history: list[StoredEvent]) -> list[str]:
    return [s.envelope.event_type for s in history]


@pytest.mark.asyncio
async def test_reported_case_is_dispatched_once_even_after_a_full_replay(
    settings: DispatchSettings,
) -> None:
    clock = FixedClock(T0 + timedelta(seconds=10))
    async with event_store(settings) as store:
        await store.append("C-1", [report("C-1", "CM-0102")], 0)
        await store.append("C-2", [report("C-2", "OTHER")], 0)

        async with dispatch_service(settings, clock) as (app, client):
            async def both_triaged() -> bool:
                return len(await store.read("C-1")) == 2 and len(await store.read("C-2")) == 2

            await eventually(both_triaged)
            await caught_up(app)
            history = await store.read("C-1")
            assert types(history) == ["CaseReported", "CaseDispatched"]
            dispatched = history[1].envelope
            p = dispatched.payload
            assert (p.unit_code, p.tier.value, p.urgent) == (TEAM, "grid", False)
            assert p.deadlines.accept_due == T0 + timedelta(seconds=60)
            assert p.deadlines.resolve_due == T0 + timedelta(days=1)
            assert dispatched.causation_id == str(history[0].envelope.event_id)
            assert dispatched.correlation_id == "corr-C-1"
            assert types(await store.read("C-2")) == ["CaseReported", "CaseTriageQueued"]

            queue = (await client.get(f"/v1/units/{TEAM}/queue")).json()
            assert [c["case_id"] for c in queue["cases"]] == ["C-1"]
            assert queue["cases"][0]["overdue"] is False
            triage = (await client.get("/v1/queue/triage")).json()
            assert [(c["case_id"], c["reason"]) for c in triage["cases"]] == [
                ("C-2", "uncategorised")
            ]
            assert triage["cases"][0]["dispatch_due"] == (T0 + timedelta(minutes=15)).isoformat()

            # The escalation service reports the missed accept deadline: one tier up.
            missed_at = T0 + timedelta(minutes=2)
            await store.append("C-1", [missed_accept(history, missed_at)], history[-1].sequence)

            async def escalated() -> bool:
                return len(await store.read("C-1")) == 4

            await eventually(escalated)
            up = (await store.read("C-1"))[-1].envelope
            assert up.event_type == "CaseDispatched"
            assert (up.payload.unit_code, up.payload.tier.value) == (COMMITTEE, "community")
            assert up.payload.escalation and up.payload.escalation_level == 1
            assert up.payload.previous_unit == TEAM
            assert up.payload.deadlines.accept_due == missed_at + timedelta(seconds=60)

        # Forget everything dispatch knew: the restarted runner replays the log from the start
        # and runs each reaction again, live. Derived ids make that append nothing.
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("DROP SCHEMA dispatch CASCADE")
        finally:
            await conn.close()
        tip = await store.last_sequence()
        async with dispatch_service(settings, clock) as (app, client):
            await caught_up(app)
            assert await store.last_sequence() == tip
            assert types(await store.read("C-1")) == [
                "CaseReported", "CaseDispatched", "DeadlineMissed", "CaseDispatched"
            ]
            assert types(await store.read("C-2")) == ["CaseReported", "CaseTriageQueued"]
            queue = (await client.get(f"/v1/units/{COMMITTEE}/queue")).json()
            assert [c["case_id"] for c in queue["cases"]] == ["C-1"]
            runtime, projection = app.state.runtime, app.state.projection  # type: ignore[attr-defined]
            assert await runtime.pool.fetchval("SELECT count(*) FROM dispatch.dead_letter") == 0

            # The read model is a function of the log: a rebuild equals the live tables.
            async with runtime.pool.acquire() as conn:
                live = await table_checksum(conn, "dispatch", projection.tables)
                rows = await conn.fetchval(
                    "SELECT (SELECT count(*) FROM dispatch.assignment)"
                    " + (SELECT count(*) FROM dispatch.triage_queue)"
                )
            assert rows == 2
            result = await rebuild(runtime.pool, runtime.store, projection, projection.tables)
            assert result.checksum == live


@pytest.mark.asyncio
async def test_accept_and_close_over_http(settings: DispatchSettings) -> None:
    clock = FixedClock(T0 + timedelta(seconds=30))
    async with event_store(settings) as store:
        await store.append("C-7", [report("C-7", "CM-0102")], 0)
        async with dispatch_service(settings, clock) as (app, client):
            async def dispatched() -> bool:
                return len(await store.read("C-7")) == 2

            await eventually(dispatched)
            headers = {**W1, "X-Correlation-Id": "req-42"}

            r = await client.post("/v1/cases/C-7/accept",
                                  json={"unit_code": COMMITTEE, "handler_id": "x"},
                                  headers=as_("unit_handler", TEAM, "x"))
            assert r.status_code == 409, r.text
            assert "unit_code" in r.text

            r = await client.post("/v1/cases/C-7/accept",
                                  json={"unit_code": TEAM, "handler_id": "w-1"}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "accepted"
            assert [e["event_type"] for e in r.json()["events"]] == ["CaseAccepted"]

            r = await client.post("/v1/cases/C-7/accept",
                                  json={"unit_code": TEAM, "handler_id": "w-2"},
                                  headers=as_("grid_worker", GRID, "w-2"))
            assert r.status_code == 200 and r.json()["events"] == []

            r = await client.post("/v1/cases/C-7/notes",
                                  json={"author_id": "w-1", "note": "on my way"}, headers=W1)
            assert r.status_code == 200, r.text

            r = await client.post("/v1/cases/C-7/close",
                                  json={"outcome": "fixed", "resolution": "cleared"}, headers=W1)
            assert r.status_code == 422
            assert r.json()["detail"]["field"] == "outcome"

            r = await client.post("/v1/cases/C-7/close",
                                  json={"outcome": "duplicate", "resolution": "same as C-1"},
                                  headers=W1)
            assert r.status_code == 422

            await caught_up(app)
            work = (await client.get("/v1/units/workload")).json()["units"]
            assert [(u["unit_code"], u["open"], u["accepted"], u["overdue"]) for u in work] == [
                (TEAM, 1, 1, 0)
            ]
            clock.advance(timedelta(days=2))  # past the resolve deadline: overdue at query time
            queue = (await client.get(f"/v1/units/{TEAM}/queue")).json()
            assert queue["cases"][0]["overdue_deadlines"] == ["resolve"]
            assert (await client.get("/v1/units/workload")).json()["units"][0]["overdue"] == 1

            r = await client.post("/v1/cases/C-7/close", headers=headers,
                                  json={"outcome": "resolved", "resolution": "cleared"})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "closed"

            r = await client.post("/v1/cases/C-7/close",
                                  json={"outcome": "resolved", "resolution": "again"}, headers=W1)
            assert r.status_code == 409
            assert "closed" in r.json()["detail"]["reason"]

            for path, body in [
                ("/v1/cases/NOPE/accept", {"unit_code": TEAM, "handler_id": "w-1"}),
                ("/v1/cases/NOPE/close", {"outcome": "resolved", "resolution": "x"}),
            ]:
                r = await client.post(path, json=body, headers=W1)
                assert r.status_code == 404, r.text

            history = await store.read("C-7")
            assert types(history) == ["CaseReported", "CaseDispatched", "CaseAccepted",
                                      "ProgressNoted", "CaseClosed"]
            closed = history[-1].envelope
            assert closed.correlation_id == "req-42"
            assert closed.actor.id == "w-1"
            assert closed.payload.closed_by == "w-1" and closed.payload.unit_code == TEAM
            assert closed.occurred_at == T0 + timedelta(days=2, seconds=30)
            assert await store.read("NOPE") == []

            await caught_up(app)
            assert (await client.get(f"/v1/units/{TEAM}/queue")).json()["cases"] == []


@pytest.mark.asyncio
async def test_triage_queue_manual_dispatch_and_return(settings: DispatchSettings) -> None:
    clock = FixedClock(T0 + timedelta(minutes=5))
    async with event_store(settings) as store:
        await store.append("C-9", [report("C-9", "OTHER")], 0)
        async with dispatch_service(settings, clock) as (app, client):
            async def queued() -> bool:
                await caught_up(app)
                body = (await client.get("/v1/queue/triage")).json()
                return [c["case_id"] for c in body["cases"]] == ["C-9"]

            await eventually(queued)
            r = await client.post("/v1/cases/C-9/dispatch", json={"unit_code": "NO-SUCH-UNIT"})
            assert r.status_code == 422 and r.json()["detail"]["field"] == "unit_code"

            r = await client.post("/v1/cases/C-9/dispatch",
                                  json={"unit_code": COMMITTEE, "reason": "shared stairwell"},
                                  headers=DISPATCHER)
            assert r.status_code == 200, r.text
            p = (await store.read("C-9"))[-1].envelope.payload
            assert (p.unit_code, p.tier.value, p.dispatcher) == (COMMITTEE, "community", "disp-1")
            assert p.deadlines.accept_due == clock.now() + timedelta(seconds=60)

            r = await client.post("/v1/cases/C-9/return",
                                  json={"unit_code": COMMITTEE, "handler_id": "c-1",
                                        "reason": "a matter for the street office"},
                                  headers=as_("unit_handler", COMMITTEE, "c-1"))
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "triage"

            async def back_in_queue() -> bool:
                await caught_up(app)
                body = (await client.get("/v1/queue/triage")).json()
                return [(c["case_id"], c["reason"]) for c in body["cases"]] == [
                    ("C-9", "returned")
                ]

            await eventually(back_in_queue)
            assert (await client.get(f"/v1/units/{COMMITTEE}/queue")).json()["cases"] == []
            assert (await client.get("/v1/units/NO-SUCH-UNIT/queue")).status_code == 404
