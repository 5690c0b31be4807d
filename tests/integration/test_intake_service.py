"""The intake service in process against real NATS JetStream and PostgreSQL: reports become
CaseReported events in the log, bad reports append nothing, and the register answers queries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from gridloop_district import default_district
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import CaseDispatched, CaseReported, Deadlines, DeadlineMissed
from gridloop_events.clock import FixedClock
from gridloop_events.envelope import Actor
from gridloop_events.projection import ensure_schema
from gridloop_events.rebuild import rebuild, table_checksum
from gridloop_events.service import ServiceSettings
from gridloop_events.testing import dispatched as dispatched_by_rules
from gridloop_events.vocabulary import DeadlineKind, ProblemKind, Tier

from gridloop_intake.app import create_app
from gridloop_intake.reporting import IntakeService

DISTRICT = default_district()
GRID = DISTRICT.grids[0]
OTHER_GRID = next(g for g in DISTRICT.grids
                  if DISTRICT.community_of(g.code).code != DISTRICT.community_of(GRID.code).code)
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
NAME, PHONE = "王五", "13700001111"
KEY = SigningKey.generate("test-intake")
# The hotline operator op-7, a dispatcher of the whole district, makes the calls.
OPERATOR = Issuer(KEY).headers("dispatcher", DISTRICT.code, sub="op-7")


@pytest.fixture
def settings(nats_url: str, fresh_database: str, fresh_stream_prefix: str) -> ServiceSettings:
    return ServiceSettings(service="intake", nats_url=nats_url, database_url=fresh_database,
                           subject_prefix=fresh_stream_prefix, schema="intake")


@asynccontextmanager
async def running(settings: ServiceSettings, clock: FixedClock | None = None
                  ) -> AsyncIterator[tuple[IntakeService, httpx.AsyncClient]]:
    app = create_app(settings, district=DISTRICT, clock=clock or FixedClock(T0),
                     auth=Authenticator(Verifier.trusting(KEY.trusted())))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=OPERATOR) as client:
            yield app.state.intake, client


def report(**changes: Any) -> dict[str, Any]:
    return {
        "channel": "hotline",
        "category_code": "CM-0101",
        "description": "小区门口垃圾三天没人清运",
        "location": {"lat": GRID.lat, "lon": GRID.lon},
        "reporter": {"name": NAME, "phone": PHONE},
        **changes,
    }


HEADERS = {"X-Actor-Kind": "operator", "X-Actor-Id": "op-7", "X-Request-Id": "req-1"}


def stored_bytes(envelope) -> bytes:  # type: ignore[no-untyped-def]
    from gridloop_events.codec import encode

    return encode(envelope)


async def wait_register(service: IntakeService) -> None:
    for runner in service.runtime.runners:
        await runner.wait_caught_up(timeout=15)


async def test_a_report_is_recorded_in_the_log_with_its_grid_path(settings) -> None:  # type: ignore[no-untyped-def]
    async with running(settings) as (service, client):
        r = await client.post("/v1/cases", json=report(), headers=HEADERS)
        assert r.status_code == 201, r.text
        case_id = r.json()["case_id"]
        assert r.json()["status_url"] == f"/v1/cases/{case_id}"
        assert r.headers["location"] == f"/v1/cases/{case_id}"

        [stored] = await service.store.read(case_id)
        e = stored.envelope
        assert isinstance(e.payload, CaseReported)
        assert e.payload.location.grid_path is not None
        assert e.payload.location.grid_path.model_dump() == DISTRICT.grid_path(GRID.code).model_dump()
        # The contact is in the event only sealed; intake alone can open it.
        assert e.payload.reporter is not None and PHONE.encode() not in stored_bytes(e)
        contact = await service.reporter_of(case_id)
        assert contact is not None and contact.phone == PHONE and contact.name == NAME
        assert e.payload.idempotency_digest is None
        assert (e.actor.kind.value, e.actor.id, e.correlation_id) == ("operator", "op-7", "req-1")
        assert e.occurred_at == T0 and e.district == DISTRICT.code

        # An address alone is still a case; dispatch will queue it for a human.
        r = await client.post("/v1/cases", json=report(location={"address": "泉平街道某小区"}))
        assert r.status_code == 201
        [stored] = await service.store.read(r.json()["case_id"])
        assert stored.envelope.payload.location.grid_path is None  # type: ignore[attr-defined]


async def test_one_idempotency_key_makes_one_case_even_after_a_restart(settings) -> None:  # type: ignore[no-untyped-def]
    key = {"Idempotency-Key": "hotline-call-20261123-0001"}
    async with running(settings) as (service, client):
        first = await client.post("/v1/cases", json=report(), headers=key)
        assert first.status_code == 201
        case_id = first.json()["case_id"]
        again = await client.post("/v1/cases", json=report(), headers=key)
        assert again.status_code in (200, 201) and again.json()["case_id"] == case_id
        # Racing retries of the same request still make one event.
        racing = await asyncio.gather(*(client.post("/v1/cases", json=report(), headers=key)
                                        for _ in range(5)))
        assert {x.json()["case_id"] for x in racing} == {case_id}
        assert len(await service.store.read(case_id)) == 1
        tip = await service.store.last_sequence()
        [stored] = await service.store.read(case_id)
        digest = stored.envelope.payload.idempotency_digest  # type: ignore[attr-defined]
        assert digest and key["Idempotency-Key"] not in stored.envelope.model_dump_json()

    # A new process, long after JetStream's duplicate window would matter: the same answer.
    async with running(settings, FixedClock(T0 + timedelta(days=3))) as (service, client):
        later = await client.post("/v1/cases", json=report(), headers=key)
        assert later.status_code in (200, 201) and later.json()["case_id"] == case_id
        assert later.json()["reported_at"] == T0.isoformat()
        changed = await client.post("/v1/cases", json=report(severity="high"), headers=key)
        assert changed.status_code == 409
        assert changed.json()["detail"]["field"] == "Idempotency-Key"
        assert await service.store.last_sequence() == tip


async def test_the_same_key_with_a_different_body_is_refused(settings) -> None:  # type: ignore[no-untyped-def]
    key = {"Idempotency-Key": "app-7f3e"}
    async with running(settings) as (service, client):
        assert (await client.post("/v1/cases", json=report(), headers=key)).status_code == 201
        tip = await service.store.last_sequence()
        r = await client.post("/v1/cases", json=report(description="另一件事"), headers=key)
        assert r.status_code == 409 and r.json()["detail"]["reason"]
        assert await service.store.last_sequence() == tip


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown category", {"json": report(category_code="XX-9999")}, 422, "category_code"),
    ("unknown grid", {"json": report(location={"grid_code": "370190999999999"})}, 422,
     "location.grid_code"),
    ("outside the district", {"json": report(location={"lat": 31.23, "lon": 121.47})}, 422,
     "location"),
    ("no place at all", {"json": report(location={})}, 422, "location"),
    ("empty description", {"json": report(description="")}, 422, "description"),
    ("whitespace description", {"json": report(description="   \n ")}, 422, "description"),
    ("oversized description", {"json": report(description="字" * 4001)}, 422, "description"),
    ("lat without lon", {"json": report(location={"lat": GRID.lat})}, 422, "location.lon"),
    ("lat out of range", {"json": report(location={"lat": 95.0, "lon": GRID.lon})}, 422,
     "location.lat"),
    ("lat not a number", {"json": report(location={"lat": "north", "lon": GRID.lon})}, 422,
     "location.lat"),
    ("NaN coordinate", {"content": '{"channel":"app","category_code":"CM-0101","description":"x",'
                                   '"location":{"lat":NaN,"lon":117.0}}',
                        "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("bad phone", {"json": report(reporter={"phone": "call me maybe"})}, 422, "reporter.phone"),
    ("unknown channel", {"json": report(channel="fax")}, 422, "channel"),
    ("unknown field", {"json": report(urgent=True)}, 422, "urgent"),
    ("form instead of JSON", {"data": {"description": "x"}}, 415, "Content-Type"),
    ("text instead of JSON", {"content": "垃圾", "headers": {"Content-Type": "text/plain"}}, 415,
     "Content-Type"),
    ("broken JSON", {"content": "{", "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("a list body", {"json": [report()]}, 422, "body"),
    ("key with spaces", {"json": report(), "headers": {"Idempotency-Key": "a b"}}, 400,
     "Idempotency-Key"),
]


async def test_each_bad_report_gets_its_4xx_and_appends_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    async with running(settings) as (service, client):
        assert (await client.post("/v1/cases", json=report())).status_code == 201
        tip = await service.store.last_sequence()
        for label, request, status, field in BAD:
            r = await client.post("/v1/cases", **request)
            assert r.status_code == status, (label, r.text)
            detail = r.json()["detail"]
            assert detail["field"] == field and detail["reason"], (label, detail)
            assert PHONE not in r.text
        assert await service.store.last_sequence() == tip


async def test_a_case_shows_its_status_and_timeline_from_the_log(settings) -> None:  # type: ignore[no-untyped-def]
    async with running(settings) as (service, client):
        r = await client.post("/v1/cases", json=report(), headers=HEADERS)
        case_id = r.json()["case_id"]
        [first] = await service.store.read(case_id)
        dispatched = dispatched_by_rules(first.envelope, unit="GT-X", at=T0)
        await service.store.append(case_id, [dispatched], first.sequence)

        r = await client.get(f"/v1/cases/{case_id}")
        assert r.status_code == 200
        view = r.json()
        assert view["status"] == "dispatched" and view["unit_code"] == "GT-X"
        assert view["location"]["grid_code"] == GRID.code
        assert view["description"] == "小区门口垃圾三天没人清运"
        assert view["accept_due"] == (T0 + timedelta(minutes=1)).isoformat()
        reported_entry, dispatched_entry = view["timeline"]
        assert reported_entry["event_type"] == "CaseReported"
        assert reported_entry["actor"] == {"kind": "operator", "id": "op-7"}
        assert reported_entry["occurred_at"] == T0.isoformat()
        assert dispatched_entry["caused_by"] == reported_entry["event_id"]
        assert dispatched_entry["actor"]["kind"] == "system"
        assert "GT-X" in dispatched_entry["summary"]
        assert NAME not in r.text and PHONE not in r.text and "reporter" not in view

        assert (await client.get("/v1/cases/no-such-case")).status_code == 404
        assert (await client.get("/v1/cases/a.b*")).status_code == 404


async def test_the_register_filters_and_pages_newest_first(settings) -> None:  # type: ignore[no-untyped-def]
    clock = FixedClock(T0)
    async with running(settings, clock) as (service, client):
        posted: list[str] = []
        plan = [
            report(),
            report(channel="wechat", category_code="CM-0102"),
            report(location={"grid_code": OTHER_GRID.code}),
            report(channel="app", location={"address": "某地"}),
            report(channel="patrol", category_code="CM-0102",
                   location={"lat": OTHER_GRID.lat, "lon": OTHER_GRID.lon}),
        ]
        for body in plan:
            r = await client.post("/v1/cases", json=body)
            assert r.status_code == 201
            posted.append(r.json()["case_id"])
            clock.advance(timedelta(minutes=10))
        newest_first = posted[::-1]

        # The first case goes to a unit and misses its accept deadline.
        [first] = await service.store.read(posted[0])
        d = first.envelope.caused(
            CaseDispatched(unit_code="GT-A", tier=Tier.grid, kind=ProblemKind.general,
                           dispatcher="dispatch", reason="r",
                           deadlines=Deadlines(accept_due=T0 + timedelta(minutes=1),
                                               resolve_due=T0 + timedelta(days=1))),
            actor=Actor.system("dispatch"), purpose="dispatch")
        await service.store.append(posted[0], [d], first.sequence)
        await wait_register(service)

        async def ids(**params: Any) -> list[str]:
            r = await client.get("/v1/cases", params=params)
            assert r.status_code == 200, r.text
            return [item["case_id"] for item in r.json()["items"]]

        assert await ids() == newest_first
        assert await ids(status="dispatched") == [posted[0]]
        assert await ids(status="reported") == newest_first[:-1]
        assert await ids(status="reported,dispatched") == newest_first
        assert await ids(category="CM-0102") == [posted[4], posted[1]]
        assert await ids(grid=GRID.code) == [posted[1], posted[0]]
        community = DISTRICT.community_of(OTHER_GRID.code).code
        assert await ids(community=community) == [posted[4], posted[2]]
        assert await ids(channel="app") == [posted[3]]
        assert await ids(unit="GT-A") == [posted[0]]
        assert await ids(reported_from=(T0 + timedelta(minutes=10)).isoformat(),
                         reported_to=(T0 + timedelta(minutes=30)).isoformat()) == posted[1:4][::-1]
        assert await ids(overdue="true") == [posted[0]]
        assert await ids(overdue="false") == newest_first[:-1]

        # An explicit miss keeps the case overdue whatever the clock says.
        miss = d.caused(DeadlineMissed(deadline=DeadlineKind.accept,
                                       deadline_id=f"accept:{d.event_id}",
                                       due_at=T0 + timedelta(minutes=1),
                                       detected_at=T0 + timedelta(minutes=2), escalation_level=1),
                        actor=Actor.system("escalation"), purpose="miss")
        await service.store.append(posted[0], [miss], await service.store.version(posted[0]))
        await wait_register(service)
        assert await ids(overdue="true") == [posted[0]]

        page = (await client.get("/v1/cases", params={"limit": 2, "offset": 2})).json()
        assert [i["case_id"] for i in page["items"]] == newest_first[2:4] and page["total"] == 5

        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/cases", params=params)).json()
            seen += [i["case_id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == newest_first

        row = (await client.get("/v1/cases", params={"status": "dispatched"})).json()["items"][0]
        assert row["description"] == "小区门口垃圾三天没人清运" and row["escalation_level"] == 1
        listing = await client.get("/v1/cases")
        assert NAME not in listing.text and PHONE not in listing.text

        bad = await client.get("/v1/cases", params={"limit": 201})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "limit"
        bad = await client.get("/v1/cases", params={"status": "lost"})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "status"

        views = await service.list_cases(status=["reported"], category="CM-0102")
        assert [v.case_id for v in views] == [posted[4], posted[1]]
        assert views[0].description and views[0].timeline == ()

        # The register is a function of the log: a rebuild equals the live tables row for row.
        projection = service.runtime.projections[0]
        tip = await service.store.last_sequence()
        copy = await rebuild(service.pool, service.store, projection, projection.tables,
                             to_sequence=tip, target_schema="intake_check")
        async with service.pool.acquire() as conn:
            live = await table_checksum(conn, "intake", projection.tables)
        assert copy.checksum == live


async def test_grids_and_categories_come_from_the_district(settings) -> None:  # type: ignore[no-untyped-def]
    async with running(settings) as (_, client):
        r = await client.get("/v1/grids")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
        doc = json.loads(r.text)
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(DISTRICT.grids)
        feature = next(f for f in doc["features"] if f["id"] == GRID.code)
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["community_code"] == DISTRICT.community_of(GRID.code).code
        assert feature["properties"]["centre"]["coordinates"] == list(GRID.centre)
        assert doc["hierarchy"]["streets"][0]["code"] == DISTRICT.streets[0].code

        r = await client.get("/v1/categories")
        assert r.status_code == 200
        cats = r.json()
        item = cats["classes"][0]["subclasses"][0]["items"][0]
        assert {"code", "name", "kind", "limits"} <= set(item)
        assert cats["other"]["code"] == "OTHER"

        assert (await client.get("/healthz")).status_code == 200


async def test_the_register_records_who_reported_and_a_resident_lists_only_theirs(settings) -> None:  # type: ignore[no-untyped-def]
    def resident(sub: str) -> dict[str, str]:
        return Issuer(KEY).headers("resident", sub=sub)

    clock = FixedClock(T0)
    async with running(settings, clock) as (service, client):
        async def post(headers: dict[str, str], **changes: Any) -> str:
            r = await client.post("/v1/cases", json=report(**changes), headers=headers)
            assert r.status_code == 201, r.text
            clock.advance(timedelta(minutes=1))
            return r.json()["case_id"]

        first = await post(resident("res-1"), channel="app")
        second = await post(resident("res-1"), channel="app", category_code="CM-0102")
        neighbour = await post(resident("res-2"), channel="app")
        # Staff whose id reads like a resident's subject: their report is not that resident's.
        staff = Issuer(KEY).headers("dispatcher", DISTRICT.code, sub="res-1")
        taken = await post(staff)
        # A later event carries no reporter: the register keeps the one the report named.
        [reported] = await service.store.read(first)
        d = dispatched_by_rules(reported.envelope, unit="GT-A", at=T0)
        await service.store.append(first, [d], reported.sequence)
        await wait_register(service)

        async with service.pool.acquire() as conn:
            rows = {r["case_id"]: (r["reported_by"], r["reporter_kind"]) for r in await conn.fetch(
                "SELECT case_id, reported_by, reporter_kind FROM intake.cases")}
        assert rows == {first: ("res-1", "resident"), second: ("res-1", "resident"),
                        neighbour: ("res-2", "resident"), taken: ("res-1", "operator")}

        async def listed(headers: dict[str, str], **params: Any) -> tuple[list[str], int]:
            r = await client.get("/v1/cases", params=params, headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            assert not any({"reported_by", "reporter_kind"} & set(i) for i in body["items"])
            return [i["case_id"] for i in body["items"]], body["total"]

        assert await listed(resident("res-1")) == ([second, first], 2)
        assert await listed(resident("res-2")) == ([neighbour], 1)
        assert await listed(resident("res-3")) == ([], 0)
        assert await listed(resident("res-1"), status="dispatched") == ([first], 1)
        assert await listed(resident("res-1"), category="CM-0102") == ([second], 1)
        page = (await client.get("/v1/cases", params={"limit": 1},
                                 headers=resident("res-1"))).json()
        assert [i["case_id"] for i in page["items"]] == [second] and page["next_cursor"]
        page = (await client.get("/v1/cases", params={"limit": 1, "cursor": page["next_cursor"]},
                                 headers=resident("res-1"))).json()
        assert [i["case_id"] for i in page["items"]] == [first] and page["next_cursor"] is None
        # The operator lists the district as before, the staff report among them.
        ids, total = await listed(OPERATOR)
        assert set(ids) == {first, second, neighbour, taken} and total == 4

        # A register made before reporters were recorded gains the columns on start.
        projection = service.runtime.projections[0]
        async with service.pool.acquire() as conn:
            await conn.execute("ALTER TABLE intake.cases DROP COLUMN reported_by, "
                               "DROP COLUMN reporter_kind")
            await ensure_schema(conn, projection, "intake")  # what a starting service runs
            columns = {r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'intake' AND table_name = 'cases'")}
        assert {"reported_by", "reporter_kind"} <= columns

        # And a rebuild from the log fills them exactly as the live projection did.
        copy = await rebuild(service.pool, service.store, projection, projection.tables,
                             to_sequence=await service.store.last_sequence(),
                             target_schema="intake_check")
        async with service.pool.acquire() as conn:
            rebuilt = {r["case_id"]: (r["reported_by"], r["reporter_kind"]) for r in await conn.fetch(
                "SELECT case_id, reported_by, reporter_kind FROM intake_check.cases")}
        assert copy.events >= 5 and rebuilt == rows
