"""The escalation service against real NATS JetStream and PostgreSQL.

Events go into the store directly; the service runs in-process with an OffsetClock that the
tests move (through POST /v1/admin/clock or the clock object), so nothing sleeps through a
deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import nats
import pytest

from gridloop_escalation.app import create_app
from gridloop_escalation.projection import EscalationProjection
from gridloop_escalation.settings import EscalationSettings
from gridloop_escalation.ticker import Ticker
from gridloop_district import default_district
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import (
    CaseAccepted,
    CaseDispatched,
    CaseReported,
    Deadlines,
    GridPath,
    Location,
)
from gridloop_events.clock import OffsetClock
from gridloop_events.envelope import Actor, Envelope, utcnow
from gridloop_events.rebuild import rebuild, table_checksum
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import Channel, ProblemKind, Tier

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

DISTRICT = "370105"
GRID_TEAM = "GT-0001"
COMMITTEE = "CC-0001"
STREET = "SO-0001"
KEY = SigningKey.generate("test-escalation")
# Reads are an auditor's; only a supervisor of the service's whole district moves the clock.
AUDITOR = Issuer(KEY).headers("auditor", sub="a-1")
SUPERVISOR = Issuer(KEY).headers("supervisor", default_district().code, sub="s-1")
AUTH = Authenticator(Verifier.trusting(KEY.trusted()))


# --- harness -----------------------------------------------------------------------------


def make_settings(nats_url: str, database_url: str, prefix: str) -> EscalationSettings:
    return EscalationSettings(
        service="escalation",
        nats_url=nats_url,
        database_url=database_url,
        subject_prefix=prefix,
        schema="escalation",
        test_clock=True,
        tick_seconds=0.05,
    )


class Running:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def ticker(self) -> Ticker:
        return self.app.state.ticker

    @property
    def clock(self) -> OffsetClock:
        return self.app.state.clock

    async def caught_up(self) -> None:
        """Wait for this instance's projection runner (it must own the partitions) to reach
        the tip."""
        runner = self.app.state.runtime.runners[0]
        await eventually(lambda: bool(runner.owned))
        await runner.wait_caught_up(timeout=15)

    @property
    def leads(self) -> bool:
        return bool(self.app.state.runtime.runners[0].owned)

    async def ticks(self, n: int = 5) -> None:
        """Let the ticker scan `n` more times (with the clock as it is now)."""
        target = self.ticker.stats.ticks + n
        await eventually(lambda: self.ticker.stats.ticks >= target)


@asynccontextmanager
async def running(settings: EscalationSettings, clock: OffsetClock | None = None
                  ) -> AsyncIterator[Running]:
    app = create_app(settings, clock=clock or OffsetClock(), auth=AUTH)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=AUDITOR) as client:
            yield Running(app, client)


@asynccontextmanager
async def event_store(nats_url: str, prefix: str) -> AsyncIterator[EventStore]:
    nc = await nats.connect(nats_url)
    try:
        store = EventStore(nc, Subjects(prefix))
        await store.ensure_stream()
        yield store
    finally:
        await nc.drain()


async def eventually(check: Callable[[], Any] | Callable[[], Awaitable[Any]],
                     timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


# --- events ------------------------------------------------------------------------------


def reported(at: datetime) -> Envelope:
    return Envelope.new(
        CaseReported(
            channel=Channel.hotline, category_code="CM-0101", description="楼道堆放杂物",
            location=Location(grid_path=GridPath(district=DISTRICT, street="S1",
                                                 community="C1", grid="G1")),
        ),
        case_id=f"case-{uuid4().hex[:16]}", district=DISTRICT,
        actor=Actor(kind="operator", id="op-1"), correlation_id=str(uuid4()), occurred_at=at,
    )


def dispatched(cause: Envelope, at: datetime, unit: str = GRID_TEAM, tier: Tier = Tier.grid,
               accept_in: float = 60.0, escalation: bool = False, level: int = 0) -> Envelope:
    return cause.caused(
        CaseDispatched(
            unit_code=unit, tier=tier, kind=ProblemKind.general, dispatcher="dispatch",
            deadlines=Deadlines(accept_due=at + timedelta(seconds=accept_in),
                                resolve_due=at + timedelta(days=1)),
            reason="rules", escalation=escalation, redispatch=escalation,
            escalation_level=level,
        ),
        actor=Actor.system("dispatch"), purpose=f"dispatch:{unit}", occurred_at=at,
    )


def accepted(cause: Envelope, at: datetime, unit: str = GRID_TEAM) -> Envelope:
    return cause.caused(CaseAccepted(unit_code=unit, handler_id="h-1"),
                        actor=Actor(kind="department", id="h-1"), purpose=f"accept:{unit}",
                        occurred_at=at)


async def append(store: EventStore, *events: Envelope) -> None:
    for event in events:
        await store.append(event.case_id, [event], await store.version(event.case_id))


async def new_dispatched_case(store: EventStore, accept_in: float = 60.0
                              ) -> tuple[Envelope, Envelope]:
    now = utcnow()
    r = reported(now)
    d = dispatched(r, now, accept_in=accept_in)
    await append(store, r, d)
    return r, d


async def of_type(store: EventStore, case_id: str, event_type: str) -> list[Envelope]:
    return [s.envelope for s in await store.read(case_id) if s.envelope.event_type == event_type]


async def timers(svc: Running, case_id: str) -> dict[str, dict[str, Any]]:
    response = await svc.client.get(f"/v1/cases/{case_id}/timers")
    if response.status_code != 200:
        return {}
    return {t["kind"]: t for t in response.json()["timers"]}


async def move_clock(svc: Running, seconds: float) -> None:
    response = await svc.client.post("/v1/admin/clock", json={"offset_seconds": seconds},
                                     headers=SUPERVISOR)
    assert response.status_code == 200, response.text
    assert response.json()["offset_seconds"] == seconds


# --- tests -------------------------------------------------------------------------------


async def test_a_missed_accept_is_warned_then_recorded_exactly_once(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    async with event_store(nats_url, fresh_stream_prefix) as store, running(settings) as svc:
        r, d = await new_dispatched_case(store)
        case = r.case_id
        rows = await eventually(lambda: timers(svc, case))
        assert {k: v["status"] for k, v in rows.items()} == {"accept": "pending",
                                                             "resolve": "pending"}
        assert rows["accept"]["deadline_id"] == f"accept:{d.event_id}"

        await move_clock(svc, 50)  # past 80% of the minute, before the due time
        warnings = await eventually(lambda: of_type(store, case, "DeadlineApproaching"))
        await eventually(lambda: _status(svc, case, "accept", "warned"))
        assert await of_type(store, case, "DeadlineMissed") == []

        await move_clock(svc, 61)
        missed = await eventually(lambda: of_type(store, case, "DeadlineMissed"))
        await eventually(lambda: _status(svc, case, "accept", "missed"))
        await svc.ticks(10)

        assert len(await of_type(store, case, "DeadlineApproaching")) == len(warnings) == 1
        missed = await of_type(store, case, "DeadlineMissed")
        assert len(missed) == 1
        p = missed[0].payload
        assert (p.deadline.value, p.deadline_id) == ("accept", f"accept:{d.event_id}")
        assert p.escalation_level == 1 and p.assignee_unit == GRID_TEAM and p.tier is Tier.grid
        assert p.detected_at >= d.payload.deadlines.accept_due
        assert missed[0].correlation_id == d.correlation_id
        assert missed[0].causation_id == str(d.event_id)
        assert (await timers(svc, case))["resolve"]["status"] == "pending"

        overdue = (await svc.client.get("/v1/overdue", params={"unit": GRID_TEAM})).json()
        assert [(i["case_id"], i["escalation_level"], i["last_missed_kind"])
                for i in overdue["items"]] == [(case, 1, "accept")]
        assert overdue["by_unit_and_level"] == [
            {"unit_code": GRID_TEAM, "escalation_level": 1, "cases": 1}
        ]


async def _status(svc: Running, case_id: str, kind: str, status: str) -> bool:
    return (await timers(svc, case_id)).get(kind, {}).get("status") == status


async def test_a_case_accepted_before_its_due_time_is_not_reported(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    async with event_store(nats_url, fresh_stream_prefix) as store, running(settings) as svc:
        r, d = await new_dispatched_case(store)
        await eventually(lambda: _status(svc, r.case_id, "accept", "pending"))

        # Accepted in time, and the clock jumps past the due time at once: the timer table
        # may still say pending, but the decision is taken on the log.
        await append(store, accepted(d, utcnow()))
        svc.clock.set_offset(timedelta(seconds=120))
        await svc.ticks(10)
        await svc.caught_up()
        await svc.ticks(5)

        assert await of_type(store, r.case_id, "DeadlineMissed") == []
        rows = await timers(svc, r.case_id)
        assert rows["accept"]["status"] == "cancelled"
        assert rows["accept"]["ended_by"] == "CaseAccepted"
        assert rows["resolve"]["status"] == "pending"


async def test_a_restart_around_the_due_time_reports_the_miss_once(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    async with event_store(nats_url, fresh_stream_prefix) as store:
        cases = []
        async with running(settings) as first:
            for _ in range(3):
                cases.append(await new_dispatched_case(store, accept_in=30))
            await first.caught_up()
            await eventually(lambda: _status(first, cases[-1][0].case_id, "accept", "pending"))
            first.clock.set_offset(timedelta(seconds=31))
            # Stop as soon as the first whistle is out: the others may be mid-append, the
            # projection has probably not seen any of them.
            await eventually(lambda: _any_missed(store, cases))

        async with running(settings, OffsetClock(timedelta(seconds=31))) as second:
            for r, _ in cases:
                await eventually(lambda r=r: of_type(store, r.case_id, "DeadlineMissed"))
            await second.caught_up()
            await second.ticks(10)
            for r, d in cases:
                missed = await of_type(store, r.case_id, "DeadlineMissed")
                assert [m.payload.deadline_id for m in missed] == [f"accept:{d.event_id}"]
                assert (await timers(second, r.case_id))["accept"]["status"] == "missed"


async def _any_missed(store: EventStore, cases: list[tuple[Envelope, Envelope]]) -> bool:
    for r, _ in cases:
        if await of_type(store, r.case_id, "DeadlineMissed"):
            return True
    return False


async def test_two_instances_ticking_together_report_one_miss(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    async with event_store(nats_url, fresh_stream_prefix) as store, AsyncExitStack() as outer:
        first = AsyncExitStack()
        one = await first.enter_async_context(running(settings))
        two = await outer.enter_async_context(running(settings))
        try:
            cases = [await new_dispatched_case(store, accept_in=30) for _ in range(5)]
            for r, _ in cases:
                await eventually(lambda r=r: _status(one, r.case_id, "accept", "pending"))
            # Exactly one instance projects (the other's runner stands by); both tick.
            assert [one.leads, two.leads].count(True) == 1
            # Besides the two services' own tickers, three fresh ones (nothing handled yet)
            # scan the same table at the same instant: every one of them sees every timer due.
            clock = OffsetClock(timedelta(seconds=31))
            extra = [Ticker(settings, clock, "escalation") for _ in range(3)]
            one.clock.set_offset(timedelta(seconds=31))
            two.clock.set_offset(timedelta(seconds=31))
            await asyncio.gather(*(t.tick(one.app.state.runtime) for t in extra))
            for r, _ in cases:
                await eventually(lambda r=r: _status(one, r.case_id, "accept", "missed"))
            await one.ticks(5)
            await two.ticks(5)

            for r, d in cases:
                missed = await of_type(store, r.case_id, "DeadlineMissed")
                assert [m.payload.deadline_id for m in missed] == [f"accept:{d.event_id}"]

            # The projecting instance goes away: the other takes over and keeps watching.
            if one.leads:
                await first.aclose()
                survivor = two
            else:
                survivor = one
                two_was_leader = outer.pop_all()
                await two_was_leader.aclose()
            late, _ = await new_dispatched_case(store, accept_in=600)
            await eventually(lambda: _status(survivor, late.case_id, "accept", "pending"))
            assert survivor.leads
        finally:
            await first.aclose()


async def test_report_in_overdue_paging_and_rebuild(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    async with event_store(nats_url, fresh_stream_prefix) as store, running(settings) as svc:
        # Two cases miss their grid team's accept deadline; dispatch (played here) escalates
        # one to the community committee, which reports in, the other to the street office,
        # which does not.
        (r1, d1), (r2, d2) = [await new_dispatched_case(store, accept_in=20) for _ in range(2)]
        await svc.caught_up()
        await move_clock(svc, 21)
        for r in (r1, r2):
            await eventually(lambda r=r: of_type(store, r.case_id, "DeadlineMissed"))
        later = utcnow() + timedelta(seconds=22)
        e1 = dispatched(d1, later, unit=COMMITTEE, tier=Tier.community, accept_in=600,
                        escalation=True, level=1)
        e2 = dispatched(d2, later, unit=STREET, tier=Tier.street, accept_in=600,
                        escalation=True, level=1)
        await append(store, e1, e2, accepted(e1, later + timedelta(seconds=5), unit=COMMITTEE))
        await svc.caught_up()

        report = (await svc.client.get("/v1/report-in")).json()
        assert report["units"] == [
            {"unit_code": COMMITTEE, "tier": "community", "dispatched": 1, "reported_in": 1,
             "reported_in_on_time": 1, "awaiting_or_missed": 0, "rate": 1.0},
            {"unit_code": STREET, "tier": "street", "dispatched": 1, "reported_in": 0,
             "reported_in_on_time": 0, "awaiting_or_missed": 1, "rate": 0.0},
        ]
        assert report["total"] == {"dispatched": 2, "reported_in": 1,
                                   "reported_in_on_time": 1, "rate": 0.5}
        only = (await svc.client.get("/v1/report-in", params={"tier": "street"})).json()
        assert [u["unit_code"] for u in only["units"]] == [STREET]

        overdue = (await svc.client.get("/v1/overdue", params={"level": 1, "limit": 1})).json()
        assert overdue["total"] == 2 and len(overdue["items"]) == 1
        page2 = (await svc.client.get("/v1/overdue",
                                      params={"level": 1, "limit": 1, "offset": 1})).json()
        assert {overdue["items"][0]["case_id"], page2["items"][0]["case_id"]} == {r1.case_id,
                                                                                  r2.case_id}
        by_unit = (await svc.client.get("/v1/overdue", params={"unit": STREET})).json()
        assert [(i["case_id"], i["status"], i["tier"]) for i in by_unit["items"]] == [
            (r2.case_id, "dispatched", "street")
        ]
        assert (await svc.client.get("/v1/overdue", params={"level": 2})).json()["total"] == 0

        timeline = (await svc.client.get(f"/v1/cases/{r1.case_id}/timers")).json()["timers"]
        assert [(t["kind"], t["status"]) for t in timeline] == [
            ("accept", "missed"), ("resolve", "cancelled"),
            ("accept", "cancelled"), ("resolve", "pending"),
        ]

        # Refusals name the field; nothing is emitted.
        bad = await svc.client.get("/v1/overdue", params={"level": -1})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "level"
        bad = await svc.client.post("/v1/admin/clock", json={"offset_seconds": "soon"},
                                    headers=SUPERVISOR)
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "offset_seconds"
        unknown = await svc.client.get("/v1/cases/no-such-case/timers")
        assert unknown.status_code == 404 and unknown.json()["detail"]["field"] == "case_id"
        clock = (await svc.client.get("/v1/admin/clock", headers=SUPERVISOR)).json()
        assert clock["offset_seconds"] == 21

        # A rebuild from the log equals the live tables row for row.
        projection = EscalationProjection()
        pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
        try:
            result = await rebuild(pool, store, projection, projection.tables,
                                   to_sequence=await store.last_sequence(),
                                   target_schema="escalation_check")
            async with pool.acquire() as conn:
                live = await table_checksum(conn, "escalation", projection.tables)
            assert result.checksum == live
        finally:
            await pool.close()


async def test_the_admin_clock_exists_only_with_the_test_clock(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = make_settings(nats_url, fresh_database, fresh_stream_prefix)
    settings.test_clock = False
    app = create_app(settings, auth=AUTH)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t", headers=SUPERVISOR) as client:
        assert (await client.get("/v1/admin/clock")).status_code == 404
        response = await client.post("/v1/admin/clock", json={"offset_seconds": 60})
        assert response.status_code == 404
