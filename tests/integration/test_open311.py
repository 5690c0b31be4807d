"""Open311 GeoReport v2 on the intake app, against real NATS and PostgreSQL."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from gridloop_district import default_district
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import CaseReported, GridPath, Location
from gridloop_events.envelope import Actor, Envelope
from gridloop_events.testing import closed, dispatched
from gridloop_events.vocabulary import Channel

from gridloop_intake.app import create_app
from gridloop_intake.settings import IntakeSettings

DISTRICT = default_district()
GRID = DISTRICT.grids[0]
BASE = "/open311/v2"
FORM = {"content-type": "application/x-www-form-urlencoded"}
REQUEST_ELEMENTS = [
    "service_request_id", "status", "status_notes", "service_name", "service_code",
    "description", "agency_responsible", "service_notice", "requested_datetime",
    "updated_datetime", "expected_datetime", "address", "address_id", "zipcode", "lat",
    "long", "media_url",
]
KEY = SigningKey.generate("test-open311")
# A resident's app makes the calls, with the resident's token.
RESIDENT_APP = Issuer(KEY).headers("resident", sub="resident-acct-1")
PERSONAL = {"first_name": "Xiaoming", "last_name": "Wang", "phone": "13800138000",
            "email": "wang.xiaoming@example.org", "device_id": "device-7f3a"}


class Env:
    def __init__(self, app, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.client = client

    @property
    def runtime(self):  # type: ignore[no-untyped-def]
        return self.app.state.runtime

    async def caught_up(self) -> None:
        for runner in self.runtime.runners:
            await runner.wait_caught_up(timeout=15)

    async def post(self, fmt: str = "json", **fields: str) -> httpx.Response:
        data = {"service_code": "CM-0101", "lat": str(GRID.lat), "long": str(GRID.lon),
                "description": "Bins overflowing at the gate", **fields}
        return await self.client.post(f"{BASE}/requests.{fmt}", data=data)

    async def seed(self, category: str, at: datetime) -> str:
        """A case reported at a chosen time, written to the log as another channel would."""
        path = GridPath.model_validate(DISTRICT.grid_path(GRID.code).model_dump())
        case_id = f"seed-{uuid.uuid4().hex[:12]}"
        env = Envelope.new(
            CaseReported(channel=Channel.hotline, category_code=category,
                         description="seeded report", location=Location(grid_path=path)),
            case_id=case_id, district=DISTRICT.code, actor=Actor(kind="operator", id="op-1"),
            correlation_id=str(uuid.uuid4()), occurred_at=at,
        )
        await self.runtime.store.append(case_id, [env], 0)
        return case_id

    async def dispatch_and_close(self, case_id: str, *, close: bool) -> None:
        store = self.runtime.store
        history = await store.read(case_id)
        first = history[0].envelope
        d = dispatched(first, unit="DEP-URBAN")
        version = await store.append(case_id, [d], history[-1].sequence)
        if close:
            await store.append(case_id, [closed(d)], version)


@pytest_asyncio.fixture
async def env(nats_url: str, fresh_database: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    settings = IntakeSettings(service="intake", nats_url=nats_url, database_url=fresh_database,
                              subject_prefix=fresh_stream_prefix, schema="intake")
    app = create_app(settings, district=DISTRICT,
                     auth=Authenticator(Verifier.trusting(KEY.trusted())))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=RESIDENT_APP) as client:
            yield Env(app, client)


def xml_of(response: httpx.Response) -> ET.Element:
    assert response.headers["content-type"] == "application/xml; charset=utf-8"
    return ET.fromstring(response.content)


def assert_error(response: httpx.Response, fmt: str, code: int, words: str) -> None:
    assert response.status_code == code, response.text
    if fmt == "json":
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        [error] = response.json()
        assert error["code"] == code and words in error["description"]
    else:
        root = xml_of(response)
        assert root.tag == "errors"
        [error] = list(root)
        assert error.tag == "error" and error.findtext("code") == str(code)
        assert words in error.findtext("description")


# --- services ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_services_and_a_service_definition_in_json_and_xml(env: Env) -> None:
    r = await env.client.get(f"{BASE}/services.json")
    assert r.status_code == 200
    services = r.json()
    assert [s["service_code"] for s in services] == [c.code for c in DISTRICT.categories]
    assert all(s["metadata"] is False and s["type"] == "realtime" for s in services)

    root = xml_of(await env.client.get(f"{BASE}/services.xml"))
    assert root.tag == "services" and root[0].tag == "service"
    assert root[0].findtext("service_code") == services[0]["service_code"]
    assert root[0].findtext("group") == services[0]["group"]

    r = await env.client.get(f"{BASE}/services/CM-0101.json")
    assert r.json() == {"service_code": "CM-0101", "attributes": []}
    root = xml_of(await env.client.get(f"{BASE}/services/CM-0101.xml"))
    assert root.tag == "service_definition" and root.findtext("service_code") == "CM-0101"

    for fmt in ("json", "xml"):
        assert_error(await env.client.get(f"{BASE}/services/NO-SUCH.{fmt}"), fmt, 404,
                     "service_code")
    assert_error(await env.client.get(f"{BASE}/services.html"), "json", 404, "format")
    assert_error(await env.client.get(f"{BASE}/services"), "json", 404, "not a GeoReport")


# --- POST, then GET it back --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_posted_request_is_recorded_and_read_back_without_the_reporter(env: Env) -> None:
    # given a resident's app posting a form with contact details, answered in JSON
    r = await env.post(address_string="No. 3 Lane", account_id="acct-1",
                       media_url="https://img.example.org/p/1.jpg", **PERSONAL)
    assert r.status_code == 200, r.text
    [answer] = r.json()
    assert list(answer) == ["service_request_id", "service_notice", "account_id"]
    case_id = answer["service_request_id"]
    assert answer["account_id"] == "acct-1" and answer["service_notice"]

    # then the event holds the report on the open311 channel with its contact
    [stored] = await env.runtime.store.read(case_id)
    payload = stored.envelope.payload
    assert payload.channel is Channel.open311 and payload.category_code == "CM-0101"
    assert payload.location.lat == GRID.lat and payload.location.address == "No. 3 Lane"
    assert payload.location.grid_path.grid == GRID.code
    assert payload.reporter is not None  # sealed: intake alone opens it
    contact = await env.app.state.intake.reporter_of(case_id)
    assert contact.name == "Xiaoming Wang" and contact.phone == "13800138000"
    assert [a.uri for a in payload.attachments] == ["https://img.example.org/p/1.jpg"]

    # and the same case answers in XML to the POST's shape
    r = await env.post("xml", address_string="No. 5 Lane")
    root = xml_of(r)
    assert root.tag == "service_requests" and root[0].tag == "request"
    assert root[0].findtext("service_request_id")

    # when the case is read back by id, in both formats
    r = await env.client.get(f"{BASE}/requests/{case_id}.json")
    assert r.status_code == 200
    [row] = r.json()
    assert list(row) == REQUEST_ELEMENTS
    assert row["service_request_id"] == case_id and row["status"] == "open"
    assert row["service_code"] == "CM-0101" and row["address"] == "No. 3 Lane"
    assert row["lat"] == GRID.lat and row["long"] == GRID.lon and row["address_id"] == GRID.code
    assert datetime.fromisoformat(row["requested_datetime"]).utcoffset() is not None

    root = xml_of(await env.client.get(f"{BASE}/requests/{case_id}.xml"))
    assert root.tag == "service_requests"
    [request] = list(root)
    assert request.tag == "request" and [c.tag for c in request] == REQUEST_ELEMENTS
    assert request.findtext("service_request_id") == case_id

    # then no GET shows the reporter, by id or in a list
    await env.caught_up()
    bodies = [(await env.client.get(f"{BASE}/requests/{case_id}.{f}")).text for f in ("json", "xml")]
    bodies += [(await env.client.get(f"{BASE}/requests.{f}")).text for f in ("json", "xml")]
    for body in bodies:
        assert case_id in body
        for value in PERSONAL.values():
            assert value not in body


@pytest.mark.asyncio
async def test_a_dispatched_and_a_closed_case_show_agency_expectation_and_closure(env: Env) -> None:
    r1, r2 = await env.post(), await env.post()
    open_id, closed_id = r1.json()[0]["service_request_id"], r2.json()[0]["service_request_id"]
    await env.dispatch_and_close(open_id, close=False)
    await env.dispatch_and_close(closed_id, close=True)

    [row] = (await env.client.get(f"{BASE}/requests/{open_id}.json")).json()
    assert row["status"] == "open"
    assert row["agency_responsible"] == DISTRICT.unit("DEP-URBAN").name
    assert row["expected_datetime"] is not None

    [row] = (await env.client.get(f"{BASE}/requests/{closed_id}.json")).json()
    assert row["status"] == "closed" and row["status_notes"]


# --- GET requests filters -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_requests_are_filtered_by_the_spec_parameters(env: Env) -> None:
    now = datetime.now(UTC)
    garbage = (await env.post(service_code="CM-0101")).json()[0]["service_request_id"]
    clutter = (await env.post(service_code="CM-0102")).json()[0]["service_request_id"]
    done = (await env.post(service_code="CM-0102")).json()[0]["service_request_id"]
    await env.dispatch_and_close(done, close=True)
    month_ago = await env.seed("CM-0101", now - timedelta(days=30))
    half_year_ago = await env.seed("CM-0101", now - timedelta(days=180))
    await env.caught_up()

    async def ids(fmt: str = "json", **params: str) -> set[str]:
        r = await env.client.get(f"{BASE}/requests.{fmt}", params=params)
        assert r.status_code == 200, r.text
        if fmt == "json":
            return {row["service_request_id"] for row in r.json()}
        root = xml_of(r)
        assert root.tag == "service_requests"
        return {req.findtext("service_request_id") for req in root}

    # the default is the last 90 days, newest first
    r = await env.client.get(f"{BASE}/requests.json")
    listed = [row["service_request_id"] for row in r.json()]
    assert set(listed) == {garbage, clutter, done, month_ago}
    assert listed[-1] == month_ago
    assert await ids("xml") == set(listed)

    assert await ids(service_code="CM-0102") == {clutter, done}
    assert await ids(service_code="CM-0101,CM-0102") == {garbage, clutter, done, month_ago}
    assert await ids(status="closed") == {done}
    assert await ids("xml", status="open") == {garbage, clutter, month_ago}
    assert await ids(status="open", service_code="CM-0102") == {clutter}

    def w3c(at: datetime) -> str:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")

    window = {"start_date": w3c(now - timedelta(days=200)), "end_date": w3c(now - timedelta(days=150))}
    assert await ids(**window) == {half_year_ago}
    assert await ids(start_date=w3c(now - timedelta(days=40)),
                     end_date=w3c(now - timedelta(days=20))) == {month_ago}
    assert await ids("xml", start_date=w3c(now - timedelta(days=1))) == {garbage, clutter, done}

    # service_request_id lists name cases whatever their age, and override other filters
    assert await ids(service_request_id=f"{half_year_ago},{done}", status="open") == {
        half_year_ago, done}
    assert await ids(service_request_id="no-such-case") == set()

    # the extension's paging walks the same order
    first = await ids(page_size="2", page="1")
    second = await ids(page_size="2", page="2")
    assert first | second == set(listed) and not first & second


# --- errors in both formats ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_refusals_are_spec_errors_and_record_nothing(env: Env, fmt: str) -> None:
    base = {"lat": str(GRID.lat), "long": str(GRID.lon), "description": "x"}
    post = f"{BASE}/requests.{fmt}"

    assert_error(await env.client.post(post, data=base), fmt, 400, "service_code")
    assert_error(await env.client.post(post, data={**base, "service_code": "NO-SUCH"}),
                 fmt, 404, "service_code")
    assert_error(await env.client.post(post, data={"service_code": "CM-0101"}),
                 fmt, 400, "location")
    assert_error(await env.client.post(post, data={"service_code": "CM-0101", "lat": "0",
                                                   "long": "0"}), fmt, 400, "location")
    assert_error(await env.client.post(post, data={**base, "service_code": "CM-0101",
                                                   "jurisdiction_id": "elsewhere"}),
                 fmt, 404, "jurisdiction_id")
    assert_error(await env.client.post(post, json={**base, "service_code": "CM-0101"}),
                 fmt, 400, "x-www-form-urlencoded")
    big = {**base, "service_code": "CM-0101", "description": "长" * 40_000}
    assert_error(await env.client.post(post, data=big), fmt, 413, "bytes")
    assert_error(await env.client.get(f"{BASE}/requests/no-such-case.{fmt}"), fmt, 404,
                 "service_request_id")
    assert_error(await env.client.get(f"{BASE}/requests.{fmt}", params={"status": "pending"}),
                 fmt, 400, "status")
    assert_error(await env.client.get(f"{BASE}/requests.{fmt}", params={"start_date": "soon"}),
                 fmt, 400, "start_date")

    assert await env.runtime.store.last_sequence() == 0


@pytest.mark.asyncio
async def test_a_retried_post_with_the_same_idempotency_key_names_one_case(env: Env) -> None:
    data = {"service_code": "CM-0101", "address_string": "Gate 2", "description": "Lamp out"}
    headers = {"Idempotency-Key": "app-42-req-7"}
    first = await env.client.post(f"{BASE}/requests.json", data=data, headers=headers)
    again = await env.client.post(f"{BASE}/requests.json", data=data, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()[0]["service_request_id"] == again.json()[0]["service_request_id"]
    other = await env.client.post(f"{BASE}/requests.xml", data={**data, "description": "Other"},
                                  headers=headers)
    assert_error(other, "xml", 409, "Idempotency-Key")
    assert json.loads(first.content)[0]["service_notice"]


# --- who reads the free text as written -----------------------------------------------------------


@pytest.mark.asyncio
async def test_free_text_reads_as_written_only_for_those_who_may_read_the_case(env: Env) -> None:
    # given a resident's request whose text carries a phone number, a landline and an e-mail
    phone, landline = "13912345678", "021-62345678"
    r = await env.post(description=f"Bins overflowing, call me on {phone}",
                       address_string=f"Gate 2, tel {landline}")
    case_id = r.json()[0]["service_request_id"]
    await env.caught_up()
    issuer = Issuer(KEY)
    community = DISTRICT.community_of(GRID.code).code
    other = next(g for g in DISTRICT.grids
                 if DISTRICT.community_of(g.code).code != community)
    callers = {
        "the reporter": (RESIDENT_APP, True),
        "an auditor": (issuer.headers("auditor", sub="a-1"), True),
        "a dispatcher of the case's community": (
            issuer.headers("dispatcher", [community], sub="d-1"), True),
        "a grid worker of its grid": (issuer.headers("grid_worker", [GRID.code], sub="g-1"),
                                      True),
        "another resident": (issuer.headers("resident", sub="resident-acct-2"), False),
        "an external system": (issuer.headers("integration", sub="city-app"), False),
        "a dispatcher of another community": (
            issuer.headers("dispatcher", [DISTRICT.community_of(other.code).code], sub="d-2"),
            False),
        "a grid worker of another grid": (
            issuer.headers("grid_worker", [other.code], sub="g-2"), False),
    }
    for who, (headers, as_written) in callers.items():
        # the native API's answer decides, and Open311 agrees with it
        native = await env.client.get(f"/v1/cases/{case_id}", headers=headers)
        assert (native.status_code == 200 and "description" in native.json()) is as_written, who
        one = await env.client.get(f"{BASE}/requests/{case_id}.json", headers=headers)
        many = await env.client.get(f"{BASE}/requests.json", headers=headers,
                                    params={"service_request_id": case_id})
        xml = await env.client.get(f"{BASE}/requests/{case_id}.xml", headers=headers)
        for response in (one, many, xml):
            assert response.status_code == 200, (who, response.text)
        [row] = one.json()
        assert many.json() == [row], who
        assert xml_of(xml)[0].findtext("description") == row["description"], who
        if as_written:
            assert phone in row["description"] and landline in row["address"], who
        else:
            assert row["description"] == "Bins overflowing, call me on ***", who
            assert row["address"] == "Gate 2, tel ***", who
            for body in (one.text, many.text, xml.text):
                assert phone not in body and landline not in body, who
        # what is not free text reads the same for everyone
        assert (row["status"], row["address_id"], row["lat"]) == ("open", GRID.code, GRID.lat)
