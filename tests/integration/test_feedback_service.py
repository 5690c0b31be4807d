"""The feedback service against real NATS JetStream and PostgreSQL.

Events are appended to the store directly, as the other services would; the feedback app reacts,
takes ratings over HTTP and reports figures that must equal a hand count of those events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import nats
import pytest
import pytest_asyncio
from fastapi import FastAPI
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import (
    CallbackRated,
    CallbackScheduled,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    Deadlines,
    GridPath,
    Location,
)
from gridloop_events.clock import FixedClock
from gridloop_events.envelope import Actor, ActorKind, Envelope
from gridloop_events.rebuild import rebuild, table_checksum
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import Channel, Outcome, ProblemKind, Tier

from gridloop_feedback.app import create_app
from gridloop_feedback.settings import FeedbackSettings

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

DISTRICT = "370190"
GRID_A = "370190001001001"
GRID_B = "370190001001002"
T = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai: a March report
OPERATOR = Actor(kind=ActorKind.operator, id="op-1")
RATING = {
    "rating": "satisfied",
    "handled_lawfully": True,
    "measures_carried_out": True,
    "party_accepts": True,
    "method": "phone",
    "rated_by": "op-callback-3",
}
KEY = SigningKey.generate("test-feedback")
# The callback centre's operator op-callback-3, a dispatcher of the district, makes the calls.
CALLBACK_CENTRE = Issuer(KEY).headers("dispatcher", DISTRICT, sub="op-callback-3")


class Writer:
    """Appends a case's events one by one under the concurrency guard, as a service would."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def append(self, case_id: str, payload: Any, at: datetime) -> Envelope:
        env = Envelope.new(payload, case_id=case_id, district=DISTRICT, actor=OPERATOR,
                           correlation_id=f"corr-{case_id}", occurred_at=at)
        await self.store.append(case_id, [env], await self.store.version(case_id))
        return env

    async def report(self, case_id: str, grid: str, at: datetime,
                     category: str = "CM-0102") -> None:
        path = GridPath(district=DISTRICT, street=grid[:9], community=grid[:12], grid=grid)
        await self.append(case_id, CaseReported(
            channel=Channel.hotline, category_code=category, description="楼道堆放杂物",
            location=Location(grid_path=path)), at)

    async def dispatch(self, case_id: str, unit: str, at: datetime,
                       resolve_in: timedelta = timedelta(days=1), escalation: bool = False) -> None:
        await self.append(case_id, CaseDispatched(
            unit_code=unit, tier=Tier.district if escalation else Tier.grid,
            kind=ProblemKind.general, dispatcher="dispatch",
            deadlines=Deadlines(accept_due=at + timedelta(minutes=1), resolve_due=at + resolve_in),
            reason="rule", escalation=escalation, escalation_level=1 if escalation else 0), at)

    async def accept(self, case_id: str, unit: str, at: datetime) -> None:
        await self.append(case_id, CaseAccepted(unit_code=unit, handler_id="gw-1"), at)

    async def close(self, case_id: str, at: datetime, outcome: Outcome = Outcome.resolved,
                    unit: str | None = None) -> Envelope:
        return await self.append(case_id, CaseClosed(
            outcome=outcome, resolution="已处理", closed_by="gw-1", unit_code=unit), at)


@pytest.fixture
def settings(nats_url: str, fresh_database: str, fresh_stream_prefix: str) -> FeedbackSettings:
    return FeedbackSettings(nats_url=nats_url, database_url=fresh_database,
                            subject_prefix=fresh_stream_prefix, schema="feedback")


@pytest_asyncio.fixture
async def writer(nats_url: str, fresh_stream_prefix: str) -> AsyncIterator[Writer]:
    nc = await nats.connect(nats_url)
    store = EventStore(nc, Subjects(fresh_stream_prefix))
    await store.ensure_stream()
    yield Writer(store)
    await nc.close()


@asynccontextmanager
async def running(settings: FeedbackSettings, clock: FixedClock):  # type: ignore[no-untyped-def]
    app = create_app(settings, clock=clock, auth=Authenticator(Verifier.trusting(KEY.trusted())))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t", headers=CALLBACK_CENTRE) as client:
            yield app, client


async def of_type(store: EventStore, case_id: str, event_type: str) -> list[Envelope]:
    return [s.envelope for s in await store.read(case_id) if s.envelope.event_type == event_type]


async def settled(app: FastAPI, store: EventStore, expect: dict[str, int]) -> None:
    """Wait until each case holds the expected number of CallbackScheduled and the projection
    has applied everything in the stream."""
    runner = app.state.runtime.runners[0]
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        counts = {c: len(await of_type(store, c, "CallbackScheduled")) for c in expect}
        if counts == expect:
            break
        assert asyncio.get_running_loop().time() < deadline, f"scheduled {counts}, want {expect}"
        await asyncio.sleep(0.05)
    await runner.wait_caught_up(timeout=20)
    assert runner.stats.dead_lettered == 0


async def test_a_closure_schedules_exactly_one_callback_across_restarts_and_replays(
    settings: FeedbackSettings, writer: Writer
) -> None:
    store = writer.store
    await writer.report("C1", GRID_A, T)
    await writer.dispatch("C1", "GT-A", T + timedelta(minutes=5))
    await writer.accept("C1", "GT-A", T + timedelta(minutes=6))
    closure = await writer.close("C1", T + timedelta(hours=3))
    await writer.report("C2", GRID_B, T, category="WF-0201")
    await writer.dispatch("C2", "GT-B", T + timedelta(minutes=5))
    closure2 = await writer.close("C2", T + timedelta(hours=2))
    clock = FixedClock(T + timedelta(days=1, hours=2))

    async with running(settings, clock) as (app, client):
        await settled(app, store, {"C1": 1, "C2": 1})
        [scheduled] = await of_type(store, "C1", "CallbackScheduled")
        assert scheduled.payload == CallbackScheduled(
            due_at=closure.occurred_at + timedelta(days=1), round=1)
        assert scheduled.causation_id == str(closure.event_id)
        due = (await client.get("/v1/callbacks/due")).json()["callbacks"]
        # C1 is due a day after its closure (T+1d3h); C2's category allows three days.
        assert [(c["case_id"], c["round"], c["overdue"]) for c in due] == [
            ("C1", 1, False), ("C2", 1, False)]
        assert due[1]["due_at"] == (closure2.occurred_at + timedelta(days=3)).isoformat()
        clock.advance(timedelta(hours=2))
        due = (await client.get("/v1/callbacks/due")).json()["callbacks"]
        assert [c["overdue"] for c in due] == [True, False]

    async with running(settings, clock) as (app, client):
        await settled(app, store, {"C1": 1, "C2": 1})

    # Lose the read model: the runner replays the whole log, reactions included.
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("DROP SCHEMA feedback CASCADE")
    finally:
        await conn.close()
    async with running(settings, clock) as (app, client):
        # Caught up means every replayed closure's reaction has run: a repeat would be here.
        await settled(app, store, {"C1": 1, "C2": 1})
        assert len(await of_type(store, "C1", "CallbackScheduled")) == 1
        due = (await client.get("/v1/callbacks/due")).json()["callbacks"]
        assert [c["case_id"] for c in due] == ["C1", "C2"]


async def test_rating_a_callback(settings: FeedbackSettings, writer: Writer) -> None:
    store = writer.store
    await writer.report("C1", GRID_A, T)
    await writer.dispatch("C1", "GT-A", T + timedelta(minutes=5))
    await writer.close("C1", T + timedelta(hours=3))
    await writer.report("OPEN", GRID_A, T)
    clock = FixedClock(T + timedelta(hours=5))

    async with running(settings, clock) as (app, client):
        await settled(app, store, {"C1": 1})
        headers = {"X-Correlation-Id": "req-42", "X-Actor-Id": "op-callback-3"}

        answer = await client.post("/v1/cases/C1/callback", headers=headers,
                                   json={**RATING, "rating": "unsatisfied",
                                         "party_accepts": False, "comment": "垃圾又堆回来了"})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert (body["round"], body["rating"], body["reopened"]) == (1, "unsatisfied", True)
        [rated] = await of_type(store, "C1", "CallbackRated")
        assert isinstance(rated.payload, CallbackRated)
        assert rated.payload.party_accepts is False and rated.payload.rated_by == "op-callback-3"
        assert rated.correlation_id == "req-42" and rated.actor.id == "op-callback-3"
        assert rated.occurred_at == clock.now()
        events_before = len(await store.read("C1"))

        again = await client.post("/v1/cases/C1/callback", json=RATING)
        assert again.status_code == 409
        assert "already rated" in again.json()["detail"]["reason"]
        not_closed = await client.post("/v1/cases/OPEN/callback", json=RATING)
        assert not_closed.status_code == 409
        unknown = await client.post("/v1/cases/NOPE/callback", json=RATING)
        assert unknown.status_code == 404
        bad = await client.post("/v1/cases/C1/callback", json={**RATING, "rating": "great"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "rating"
        missing = {k: v for k, v in RATING.items() if k != "rated_by"}
        lacking = await client.post("/v1/cases/C1/callback", json=missing)
        assert lacking.status_code == 422 and lacking.json()["detail"]["field"] == "rated_by"
        assert len(await store.read("C1")) == events_before  # a refusal records nothing
        assert await store.version("NOPE") == 0

        # Reopened, re-dispatched, closed again: round two is called back and rated.
        await writer.dispatch("C1", "GT-A", T + timedelta(hours=6))
        await writer.close("C1", T + timedelta(hours=9))
        await settled(app, store, {"C1": 2})
        [_, second] = await of_type(store, "C1", "CallbackScheduled")
        assert second.payload.round == 2
        answer = await client.post("/v1/cases/C1/callback", json=RATING)
        assert answer.status_code == 201 and answer.json()["round"] == 2
        await app.state.runtime.runners[0].wait_caught_up()

        ratings = (await client.get("/v1/cases/C1/ratings")).json()["ratings"]
        assert [(r["round"], r["rating"], r["party_accepts"]) for r in ratings] == [
            (1, "unsatisfied", False), (2, "satisfied", True)]
        assert ratings[0]["comment"] == "垃圾又堆回来了" and ratings[0]["unit_code"] == "GT-A"
        assert (await client.get("/v1/cases/NOPE/ratings")).status_code == 404
        assert (await client.get("/v1/cases/OPEN/ratings")).json()["ratings"] == []
        assert (await client.get("/v1/callbacks/due")).json()["callbacks"] == []


def figures(s: int, sd: int, r: int, rd: int, o: int, od: int, e: int, ed: int) -> dict:
    def rate(n: int, d: int) -> dict:
        return {"numerator": n, "denominator": d, "rate": n / d if d else None}

    return {"satisfaction": rate(s, sd), "resolution": rate(r, rd),
            "on_time_closure": rate(o, od), "report_in": rate(e, ed)}


async def test_the_figures_equal_a_hand_count_of_the_events(
    settings: FeedbackSettings, writer: Writer
) -> None:
    store = writer.store
    w = writer
    m = timedelta(minutes=1)
    h = timedelta(hours=1)
    d = timedelta(days=1)
    # C1 grid A: handled by GT-A, closed resolved on time, rated satisfied.
    await w.report("C1", GRID_A, T)
    await w.dispatch("C1", "GT-A", T + 5 * m)
    await w.accept("C1", "GT-A", T + 6 * m)
    await w.close("C1", T + 3 * h)
    # C2 grid A: GT-A closes two days in (resolve due T+1d+5m): late; rated unsatisfied.
    await w.report("C2", GRID_A, T)
    await w.dispatch("C2", "GT-A", T + 5 * m)
    await w.accept("C2", "GT-A", T + 6 * m)
    await w.close("C2", T + 2 * d)
    # C3 grid B: GT-B answers on time; rated basically satisfied.
    await w.report("C3", GRID_B, T, category="WF-0201")
    await w.dispatch("C3", "GT-B", T + 5 * m)
    await w.close("C3", T + 2 * h, Outcome.answered)
    # C4 grid B, reported in February: a whistle to DEP-URBAN, which reports in and resolves it
    # on time, the closure naming GT-B as closing unit; not rated yet.
    feb = datetime(2026, 2, 27, 2, 0, tzinfo=UTC)
    await w.report("C4", GRID_B, feb)
    await w.dispatch("C4", "DEP-URBAN", feb + 5 * m, escalation=True)
    await w.accept("C4", "DEP-URBAN", feb + 30 * m)
    await w.close("C4", feb + 5 * h, unit="GT-B")
    # C5 grid A: a whistle to DEP-URBAN that nobody answers; still open.
    await w.report("C5", GRID_A, T)
    await w.dispatch("C5", "DEP-URBAN", T + 5 * m, escalation=True)
    # C6 grid B: closed as invalid straight from the report; never handled, never timed.
    await w.report("C6", GRID_B, T)
    await w.close("C6", T + 10 * m, Outcome.invalid)

    clock = FixedClock(T + 3 * d)
    async with running(settings, clock) as (app, client):
        await settled(app, store, {"C1": 1, "C2": 1, "C3": 1, "C4": 1, "C6": 1})
        for case_id, rating in (("C1", "satisfied"), ("C2", "unsatisfied"),
                                ("C3", "basically_satisfied")):
            answer = await client.post(f"/v1/cases/{case_id}/callback",
                                       json={**RATING, "rating": rating})
            assert answer.status_code == 201, answer.text
        await app.state.runtime.runners[0].wait_caught_up()

        async def stats(**params: str) -> dict:
            answer = await client.get("/v1/stats", params=params)
            assert answer.status_code == 200, answer.text
            return answer.json()

        # satisfaction: C1 yes, C2 no, C3 yes. resolution: of six reported, C1 and C3 (done)
        # and C4 (closed) stand resolved; C2 was reopened, C5 is open, C6 invalid. on time:
        # C1, C3, C4 of the four handled closures (C2 late; C6 untimed). report-in: C4 of C4, C5.
        whole = await stats(group_by="district")
        assert whole["groups"] == [{"key": DISTRICT, **figures(2, 3, 3, 6, 3, 4, 1, 2)}]
        assert whole["total"] == figures(2, 3, 3, 6, 3, 4, 1, 2)

        by_grid = await stats(group_by="grid")
        assert by_grid["groups"] == [
            {"key": GRID_A, **figures(1, 2, 1, 3, 1, 2, 0, 1)},  # C1 C2 C5
            {"key": GRID_B, **figures(1, 1, 2, 3, 2, 2, 1, 1)},  # C3 C4 C6
        ]

        by_month = await stats(group_by="month")
        assert by_month["groups"] == [
            {"key": "2026-02", **figures(0, 0, 1, 1, 1, 1, 1, 1)},  # C4
            {"key": "2026-03", **figures(2, 3, 2, 5, 2, 3, 0, 1)},
        ]
        assert by_month["groups"][0]["satisfaction"]["rate"] is None

        # Units: a rating and a closure count for the closing unit, a case for its latest
        # dispatch's unit, an escalation for the unit it went to.
        by_unit = await stats(group_by="unit")
        assert by_unit["groups"] == [
            {"key": "DEP-URBAN", **figures(0, 0, 1, 2, 0, 0, 1, 2)},  # C4 C5
            {"key": "GT-A", **figures(1, 2, 1, 2, 1, 2, 0, 0)},  # C1 C2
            {"key": "GT-B", **figures(1, 1, 1, 1, 2, 2, 0, 0)},  # C3 (+ C4's closure)
            {"key": None, **figures(0, 0, 0, 1, 0, 0, 0, 0)},  # C6, never dispatched
        ]

        march_a = await stats(group_by="category", **{"from": "2026-03", "to": "2026-03"},
                              grid=GRID_A)
        assert march_a["groups"] == [{"key": "CM-0102", **figures(1, 2, 1, 3, 1, 2, 0, 1)}]
        assert (await stats(group_by="grid", unit="DEP-URBAN"))["total"] == figures(
            0, 0, 1, 2, 0, 0, 1, 2)
        assert (await stats(group_by="grid", category="WF-0201"))["total"] == figures(
            1, 1, 1, 1, 1, 1, 0, 0)

        bad = await client.get("/v1/stats", params={"group_by": "street"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "group_by"
        bad = await client.get("/v1/stats", params={"from": "2026-13"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "from"
        bad = await client.get("/v1/stats", params={"from": "2026-04", "to": "2026-03"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "from"

        # The read model is the log's: rebuilt from scratch, it is the same row for row.
        runtime = app.state.runtime
        projection = app.state.projection
        async with runtime.pool.acquire() as conn:
            live = await table_checksum(conn, projection.schema, projection.tables)
        rebuilt = await rebuild(runtime.pool, runtime.store, projection, projection.tables)
        assert rebuilt.checksum == live
