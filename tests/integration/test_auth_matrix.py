"""Every endpoint of the four services × every role × in and out of scope, against the apps as
they serve (one NATS stream, one PostgreSQL database, in process).

The RULES table below is the specification. The endpoints are read from the apps themselves,
so an endpoint added without a rule here fails the test, as does a cell answering other than
specified. Commands that are allowed really run, on a fresh case each, and the events they
append must carry the token's subject as actor — whatever X-Actor-* headers the caller sends.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from gridloop_district import default_district
from gridloop_dispatch.app import create_app as dispatch_app
from gridloop_dispatch.settings import DispatchSettings
from gridloop_escalation.app import create_app as escalation_app
from gridloop_escalation.settings import EscalationSettings
from gridloop_events.auth import OPEN_PATHS, Authenticator, Verifier, endpoints
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import (
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    CaseTriageQueued,
    Deadlines,
    ExtensionRequested,
    GridPath,
    Location,
)
from gridloop_events.clock import FixedClock, OffsetClock
from gridloop_events.envelope import Actor, ActorKind, Envelope
from gridloop_events.servers import create_database, drop_database
from gridloop_events.store import EventStore
from gridloop_events.vocabulary import Channel, Outcome, ProblemKind, Tier, TriageReason
from gridloop_feedback.app import create_app as feedback_app
from gridloop_feedback.settings import FeedbackSettings
from gridloop_intake.app import create_app as intake_app
from gridloop_intake.settings import IntakeSettings

# One system for the module: starting four services is most of the cost.
pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

NOW = datetime.now(UTC).replace(microsecond=0)
D = default_district()
GRID_A = D.grids[0].code
COMMUNITY_A = D.community_of(GRID_A).code
GRID_B = next(g.code for g in D.grids if D.community_of(g.code).code != COMMUNITY_A)
COMMUNITY_B = D.community_of(GRID_B).code
TEAM_A, TEAM_B = D.grid_team(GRID_A).code, D.grid_team(GRID_B).code
STREET_OFFICE_A = D.street_office(D.street_of(GRID_A).code).code
KEY = SigningKey.generate("matrix-1")
ISSUER = Issuer(KEY)
# Headers a caller might send to pose as someone else: never believed.
SPOOF = {"X-Actor-Kind": "system", "X-Actor-Id": "someone-else", "X-Actor-Role": "admin"}


@dataclass(frozen=True)
class Variant:
    name: str
    role: str | None = None
    scope: tuple[str, ...] = ()
    sub: str = ""

    def headers(self) -> dict[str, str]:
        if self.role is None:
            return {}
        if self.name == "expired":
            return ISSUER.headers(self.role, sub=self.sub, ttl=60,
                                  now=datetime.now(UTC).timestamp() - 7200)
        return ISSUER.headers(self.role, self.scope, sub=self.sub)


VARIANTS = [
    Variant("anonymous"),
    Variant("expired", "auditor", (), "a-old"),
    Variant("resident.in", "resident", (), "r-in"),  # reported the case
    Variant("resident.out", "resident", (), "r-out"),
    Variant("grid_worker.in", "grid_worker", (GRID_A,), "gw-in"),
    Variant("grid_worker.out", "grid_worker", (GRID_B,), "gw-out"),
    Variant("unit_handler.in", "unit_handler", (TEAM_A,), "h-in"),
    Variant("unit_handler.out", "unit_handler", (TEAM_B,), "h-out"),
    Variant("dispatcher.district", "dispatcher", (D.code,), "d-district"),
    Variant("dispatcher.in", "dispatcher", (COMMUNITY_A,), "d-in"),
    Variant("dispatcher.out", "dispatcher", (COMMUNITY_B,), "d-out"),
    Variant("supervisor.district", "supervisor", (D.code,), "s-district"),
    Variant("supervisor.in", "supervisor", (COMMUNITY_A,), "s-in"),
    Variant("supervisor.out", "supervisor", (COMMUNITY_B,), "s-out"),
    Variant("auditor", "auditor", (), "a-1"),
    Variant("integration", "integration", (), "city-hotline-12345"),
]
NAMES = [v.name for v in VARIANTS]
AUTHENTICATED = tuple(NAMES[2:])
DISTRICT_WIDE = ("dispatcher.district", "supervisor.district", "auditor")
# Staff whose scope holds case A (grid A, with grid A's team).
IN_STAFF = ("grid_worker.in", "unit_handler.in", "dispatcher.district", "dispatcher.in",
            "supervisor.district", "supervisor.in", "auditor")
ALL_STAFF = IN_STAFF + ("grid_worker.out", "unit_handler.out", "dispatcher.out",
                        "supervisor.out")
HANDLERS_IN = ("grid_worker.in", "unit_handler.in")
# Lists of the district narrowed to the caller's area (what each sees: test_lists_by_area).
AREA_STAFF = DISTRICT_WIDE + ("grid_worker.in", "grid_worker.out", "dispatcher.in",
                              "dispatcher.out", "supervisor.in", "supervisor.out")
REPORTERS = ("resident.in", "resident.out", "grid_worker.in", "dispatcher.district",
             "dispatcher.in")


def cells(ok: int, *allowed: str, hidden: tuple[str, ...] = (), other: int = 403
          ) -> dict[str, int]:
    """`ok` for the allowed variants, 404 for hidden ones, `other` (403) for the rest, and 401
    without a valid token."""
    out = {name: other for name in NAMES}
    out.update(anonymous=401, expired=401)
    for name in allowed:
        out[name] = ok
    for name in hidden:
        out[name] = 404
    return out


@dataclass
class Ctx:
    sub: str
    case_id: str  # case A for reads, a fresh case for a command


Build = Callable[[Ctx], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Rule:
    expect: dict[str, int]
    build: Build
    stage: str | None = None  # commands: the state a fresh case is set up in ("new": none)


REPORT = {"channel": "app", "category_code": "CM-0101", "description": "楼道堆放杂物",
          "location": {"grid_code": GRID_A}}
OPEN311_FORM = {"service_code": "CM-0101", "address_id": GRID_A, "description": "Bins full"}
RATING = {"rating": "satisfied", "handled_lawfully": True, "measures_carried_out": True,
          "party_accepts": True, "method": "phone"}
KIND = {"resident": ActorKind.resident, "grid_worker": ActorKind.grid_worker,
        "unit_handler": ActorKind.department, "dispatcher": ActorKind.operator,
        "supervisor": ActorKind.operator}

RULES: dict[tuple[str, str, str], Rule] = {
    # --- intake ---------------------------------------------------------------------------------
    ("intake", "POST", "/v1/cases"): Rule(
        cells(201, *REPORTERS),
        lambda c: ("/v1/cases", {"json": REPORT}), stage="new"),
    ("intake", "GET", "/v1/cases/{case_id}"): Rule(
        cells(200, "resident.in", "integration", *IN_STAFF, hidden=("resident.out",)),
        lambda c: (f"/v1/cases/{c.case_id}", {})),
    ("intake", "GET", "/v1/cases/{case_id}/reporter"): Rule(
        cells(200, "resident.in", *HANDLERS_IN, "dispatcher.district", "dispatcher.in",
              hidden=("resident.out",)),
        lambda c: (f"/v1/cases/{c.case_id}/reporter", {})),
    ("intake", "GET", "/v1/cases"): Rule(
        cells(200, "resident.in", "resident.out", *IN_STAFF),
        lambda c: ("/v1/cases", {"params": {"grid": GRID_A, "unit": TEAM_A}})),
    ("intake", "GET", "/v1/grids"): Rule(cells(200, *AUTHENTICATED), lambda c: ("/v1/grids", {})),
    ("intake", "GET", "/v1/categories"): Rule(
        cells(200, *AUTHENTICATED), lambda c: ("/v1/categories", {})),
    ("intake", "GET", "/open311/v2/services.{fmt}"): Rule(
        cells(200, *AUTHENTICATED), lambda c: ("/open311/v2/services.json", {})),
    ("intake", "GET", "/open311/v2/services/{service_code}.{fmt}"): Rule(
        cells(200, *AUTHENTICATED), lambda c: ("/open311/v2/services/CM-0101.xml", {})),
    ("intake", "POST", "/open311/v2/requests.{fmt}"): Rule(
        cells(200, *REPORTERS),
        lambda c: ("/open311/v2/requests.json", {"data": OPEN311_FORM}), stage="new"),
    ("intake", "GET", "/open311/v2/requests.{fmt}"): Rule(
        cells(200, *AUTHENTICATED), lambda c: ("/open311/v2/requests.json", {})),
    ("intake", "GET", "/open311/v2/requests/{service_request_id}.{fmt}"): Rule(
        cells(200, *AUTHENTICATED), lambda c: (f"/open311/v2/requests/{c.case_id}.json", {})),
    **{("intake", method, "/open311/v2/{rest:path}"): Rule(
        cells(404, *AUTHENTICATED), lambda c: ("/open311/v2/nothing/here.json", {}))
       for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    # --- dispatch -------------------------------------------------------------------------------
    ("dispatch", "POST", "/v1/cases/{case_id}/accept"): Rule(
        cells(200, *HANDLERS_IN),
        lambda c: (f"/v1/cases/{c.case_id}/accept",
                   {"json": {"unit_code": TEAM_A, "handler_id": c.sub}}), stage="dispatched"),
    ("dispatch", "POST", "/v1/cases/{case_id}/return"): Rule(
        cells(200, *HANDLERS_IN),
        lambda c: (f"/v1/cases/{c.case_id}/return",
                   {"json": {"unit_code": TEAM_A, "handler_id": c.sub, "reason": "not ours"}}),
        stage="accepted"),
    ("dispatch", "POST", "/v1/cases/{case_id}/extension"): Rule(
        cells(200, *HANDLERS_IN),
        lambda c: (f"/v1/cases/{c.case_id}/extension",
                   {"json": {"unit_code": TEAM_A, "handler_id": c.sub, "reason": "parts",
                             "requested_resolve_due": (NOW + timedelta(days=3)).isoformat()}}),
        stage="accepted"),
    ("dispatch", "POST", "/v1/cases/{case_id}/extension/decision"): Rule(
        cells(200, "supervisor.district", "supervisor.in"),
        lambda c: (f"/v1/cases/{c.case_id}/extension/decision",
                   {"json": {"approved": True, "supervisor_id": c.sub}}), stage="extension"),
    ("dispatch", "POST", "/v1/cases/{case_id}/notes"): Rule(
        cells(200, *HANDLERS_IN, "dispatcher.district", "dispatcher.in", "supervisor.district",
              "supervisor.in"),
        lambda c: (f"/v1/cases/{c.case_id}/notes", {"json": {"author_id": c.sub,
                                                             "note": "visited the site"}}),
        stage="accepted"),
    ("dispatch", "POST", "/v1/cases/{case_id}/close"): Rule(
        cells(200, *HANDLERS_IN),
        lambda c: (f"/v1/cases/{c.case_id}/close",
                   {"json": {"outcome": "resolved", "resolution": "cleared"}}), stage="accepted"),
    ("dispatch", "POST", "/v1/cases/{case_id}/dispatch"): Rule(
        cells(200, "dispatcher.district", "dispatcher.in"),
        lambda c: (f"/v1/cases/{c.case_id}/dispatch",
                   {"json": {"unit_code": STREET_OFFICE_A, "reason": "needs the street"}}),
        stage="dispatched"),
    ("dispatch", "GET", "/v1/queue/triage"): Rule(
        cells(200, *AREA_STAFF), lambda c: ("/v1/queue/triage", {})),
    ("dispatch", "GET", "/v1/units/workload"): Rule(
        cells(200, *ALL_STAFF), lambda c: ("/v1/units/workload", {})),
    ("dispatch", "GET", "/v1/units/{unit_code}/queue"): Rule(
        cells(200, *IN_STAFF), lambda c: (f"/v1/units/{TEAM_A}/queue", {})),
    # --- escalation -----------------------------------------------------------------------------
    ("escalation", "GET", "/v1/overdue"): Rule(
        cells(200, *IN_STAFF), lambda c: ("/v1/overdue", {"params": {"unit": TEAM_A}})),
    ("escalation", "GET", "/v1/cases/{case_id}/timers"): Rule(
        cells(200, *IN_STAFF), lambda c: (f"/v1/cases/{c.case_id}/timers", {})),
    ("escalation", "GET", "/v1/report-in"): Rule(
        cells(200, *ALL_STAFF), lambda c: ("/v1/report-in", {})),
    ("escalation", "GET", "/v1/admin/clock"): Rule(
        cells(200, "supervisor.district"), lambda c: ("/v1/admin/clock", {})),
    ("escalation", "POST", "/v1/admin/clock"): Rule(
        cells(200, "supervisor.district"),
        lambda c: ("/v1/admin/clock", {"json": {"offset_seconds": -86400}})),
    # --- feedback -------------------------------------------------------------------------------
    ("feedback", "POST", "/v1/cases/{case_id}/callback"): Rule(
        cells(201, "resident.in", "dispatcher.district", "dispatcher.in",
              hidden=("resident.out",)),
        lambda c: (f"/v1/cases/{c.case_id}/callback", {"json": {**RATING, "rated_by": c.sub}}),
        stage="closed"),
    ("feedback", "GET", "/v1/cases/{case_id}/ratings"): Rule(
        cells(200, "resident.in", *IN_STAFF, hidden=("resident.out",)),
        lambda c: (f"/v1/cases/{c.case_id}/ratings", {})),
    ("feedback", "GET", "/v1/callbacks/due"): Rule(
        cells(200, *AREA_STAFF), lambda c: ("/v1/callbacks/due", {})),
    ("feedback", "GET", "/v1/stats"): Rule(
        cells(200, *IN_STAFF),
        lambda c: ("/v1/stats", {"params": {"grid": GRID_A, "unit": TEAM_A}})),
}


# --- the system under test ----------------------------------------------------------------------


def history(case_id: str, stage: str, reporter: str = "r-in", *, grid: str = GRID_A,
            reporter_kind: ActorKind = ActorKind.resident, description: str = "杂物堵塞通道",
            address: str | None = None, resolution: str = "cleared") -> list[Envelope]:
    """A case of `grid` reported by `reporter`, taken as far as `stage` by the grid's team
    ("triage": queued for a dispatcher instead; "no_grid": an address only, in triage)."""
    path = None if stage == "no_grid" else GridPath.model_validate(
        D.grid_path(grid).model_dump())
    team = D.grid_team(grid).code
    reported = Envelope.new(
        CaseReported(channel=Channel.app, category_code="CM-0101", description=description,
                     location=Location(grid_path=path, address=address or (
                         "东门外" if path is None else None))),
        case_id=case_id, district=D.code, actor=Actor(kind=reporter_kind, id=reporter),
        correlation_id=str(uuid.uuid4()), occurred_at=NOW)
    if stage in ("triage", "no_grid"):
        return [reported, reported.caused(
            CaseTriageQueued(reason=TriageReason.no_grid if path is None
                             else TriageReason.disputed,
                             dispatch_due=NOW + timedelta(minutes=15)),
            actor=Actor.system("dispatch"), purpose="triage")]
    events = [reported, reported.caused(
        CaseDispatched(unit_code=team, tier=Tier.grid, kind=ProblemKind.general,
                       dispatcher="dispatch-rules", reason="general → grid team",
                       deadlines=Deadlines(accept_due=NOW + timedelta(minutes=1),
                                           resolve_due=NOW + timedelta(days=1))),
        actor=Actor.system("dispatch"), purpose="dispatch")]
    handler = Actor(kind=ActorKind.department, id="h-setup", role="unit_handler")
    if stage in ("accepted", "extension", "closed"):
        events.append(events[-1].caused(CaseAccepted(unit_code=team, handler_id="h-setup"),
                                        actor=handler, purpose="accept"))
    if stage == "extension":
        events.append(events[-1].caused(ExtensionRequested(
            unit_code=team, handler_id="h-setup", reason="parts",
            requested_resolve_due=NOW + timedelta(days=2)), actor=handler, purpose="extend"))
    if stage == "closed":
        events.append(events[-1].caused(CaseClosed(
            outcome=Outcome.resolved, resolution=resolution, closed_by="h-setup",
            unit_code=team), actor=handler, purpose="close"))
    return events


@dataclass
class System:
    apps: dict[str, FastAPI]
    clients: dict[str, httpx.AsyncClient]
    store: EventStore
    cases: itertools.count = field(default_factory=itertools.count)
    case_a: str = ""  # reported by resident r-in with a contact, dispatched to team A

    async def report_case_a(self) -> str:
        """Through the API, as a resident would, so the contact is sealed as in production."""
        resident = ISSUER.headers("resident", sub="r-in")
        r = await self.clients["intake"].post("/v1/cases", headers=resident, json={
            **REPORT, "reporter": {"name": "王五", "phone": "13700001111"}})
        assert r.status_code == 201, r.text
        case_id = r.json()["case_id"]
        for _ in range(300):
            history = await self.store.read(case_id)
            if len(history) > 1:
                break
            await asyncio.sleep(0.05)
        facts = [e.envelope.payload for e in history]
        assert isinstance(facts[1], CaseDispatched) and facts[1].unit_code == TEAM_A, facts
        return case_id

    async def new_case(self, stage: str, **how: Any) -> str:
        case_id = f"M-{next(self.cases)}-{uuid.uuid4().hex[:6]}"
        await self.store.append(case_id, history(case_id, stage, **how), 0)
        return case_id

    async def caught_up(self) -> None:
        for app in self.apps.values():
            for runner in app.state.runtime.runners:
                await runner.wait_caught_up(timeout=15)


@asynccontextmanager
async def system(nats_url: str, database_url: str, prefix: str) -> AsyncIterator[System]:
    verifier = Verifier.trusting(KEY.trusted())
    common = {"nats_url": nats_url, "database_url": database_url, "subject_prefix": prefix}
    apps = {
        "intake": intake_app(IntakeSettings(service="intake", schema="intake", **common),
                             district=D, clock=FixedClock(NOW), auth=Authenticator(verifier)),
        "dispatch": dispatch_app(DispatchSettings(**common), district=D, clock=FixedClock(NOW),
                                 auth=Authenticator(verifier)),
        # A day behind: no deadline of the test's cases comes due while it runs.
        "escalation": escalation_app(
            EscalationSettings(service="escalation", schema="escalation", test_clock=True,
                               **common),
            clock=OffsetClock(timedelta(days=-1)), district=D, auth=Authenticator(verifier)),
        "feedback": feedback_app(FeedbackSettings(schema="feedback", **common),
                                 clock=FixedClock(NOW), district=D,
                                 auth=Authenticator(verifier)),
    }
    async with AsyncExitStack() as stack:
        clients = {}
        for name, app in apps.items():
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://{name}"))
        store = apps["intake"].state.runtime.store
        yield System(apps, clients, store)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sut(nats_url: str, database_url: str) -> AsyncIterator[System]:
    name = f"t_auth_matrix_{uuid.uuid4().hex[:10]}"
    url = create_database(database_url, name)
    master = base64.b64encode(os.urandom(32)).decode()
    try:
        with pytest.MonkeyPatch.context() as env:
            if not os.environ.get("GRIDLOOP_MASTER_KEYS"):  # intake seals case A's contact
                env.setenv("GRIDLOOP_MASTER_KEYS", json.dumps({"matrix": master}))
                env.setenv("GRIDLOOP_MASTER_KEY_ID", "matrix")
            async with system(nats_url, url, name) as running:
                running.case_a = await running.report_case_a()
                yield running
    finally:
        drop_database(database_url, name)


async def test_every_endpoint_every_role_in_and_out_of_scope(sut: System) -> None:
    served = {(name, method, e.path)
              for name, app in sut.apps.items() for e in endpoints(app)
              if e.path not in OPEN_PATHS for method in e.methods}
    assert served == set(RULES), (
        f"endpoints without a rule: {sorted(served - set(RULES))}; "
        f"rules without an endpoint: {sorted(set(RULES) - served)}")

    case_a = sut.case_a
    plan = [(key, rule, variant) for key, rule in RULES.items() for variant in VARIANTS]
    # A command that is allowed runs on a case of its own, set up in the state it needs;
    # refusals change nothing, so the refused share one case per state.
    stages = {rule.stage for rule in RULES.values()} - {None, "new"}
    shared = dict(zip(stages, await asyncio.gather(*(sut.new_case(s) for s in stages))))

    async def case_for(rule: Rule, variant: Variant) -> str:
        if rule.stage in (None, "new"):
            return case_a
        if rule.expect[variant.name] < 300:
            return await sut.new_case(rule.stage)
        return shared[rule.stage]

    cases = await asyncio.gather(*(case_for(rule, variant) for _, rule, variant in plan))
    await sut.caught_up()
    wrong: list[str] = []
    lanes = asyncio.Semaphore(4)

    async def run(key: tuple[str, str, str], rule: Rule, variant: Variant,
                  case_id: str) -> None:
        service, method, path = key
        expected = rule.expect[variant.name]
        url, kwargs = rule.build(Ctx(variant.sub, case_id))
        cell = f"{service} {method} {path} × {variant.name}"
        async with lanes:
            response = await sut.clients[service].request(
                method, url, headers={**SPOOF, **variant.headers()}, **kwargs)
        if response.status_code != expected:
            wrong.append(f"{cell}: {response.status_code}, want {expected} "
                         f"({response.text[:160]})")
            return
        if expected == 401:
            if not response.headers.get("www-authenticate", "").startswith("Bearer"):
                wrong.append(f"{cell}: 401 without a Bearer challenge")
        if rule.stage is not None and expected < 300:
            # The command ran: what it recorded names the token's subject, never the
            # X-Actor-* headers.
            setup = 0
            if rule.stage == "new":
                body = response.json()
                case_id = body["case_id"] if isinstance(body, dict) else \
                    body[0]["service_request_id"]
            else:
                setup = len(history(case_id, rule.stage))
            appended = (await sut.store.read(case_id))[setup:]
            actors = {(e.envelope.actor.kind, e.envelope.actor.id) for e in appended
                      if e.envelope.actor.kind is not ActorKind.system}
            if actors != {(KIND[variant.role or ""], variant.sub)}:
                wrong.append(f"{cell}: recorded actors {actors}")

    await asyncio.gather(*(run(key, rule, variant, case_id)
                           for (key, rule, variant), case_id in zip(plan, cases)))
    assert not wrong, f"{len(wrong)} of {len(plan)} cells wrong:\n" + "\n".join(sorted(wrong))


async def test_what_a_scope_lets_through(sut: System) -> None:
    """Within an allowed cell, the answer holds only what the scope covers."""
    a = await sut.new_case("dispatched")
    b = await sut.new_case("dispatched")  # both in grid A, with team A
    await sut.caught_up()
    by = {v.name: v.headers() for v in VARIANTS}
    intake, dispatch = sut.clients["intake"], sut.clients["dispatch"]

    # An external system gets the status, nothing a resident wrote, no people.
    status = (await intake.get(f"/v1/cases/{a}", headers=by["integration"])).json()
    assert status["status"] == "dispatched" and status["unit_code"] == TEAM_A
    assert not {"description", "location", "timeline", "resolution"} & set(status)
    full = (await intake.get(f"/v1/cases/{a}", headers=by["resident.in"])).json()
    assert full["description"] and full["timeline"]

    # A listing without filters is narrowed to the caller's one area or unit.
    everything = (await intake.get("/v1/cases", headers=by["auditor"],
                                   params={"limit": 200})).json()
    assert {a, b} <= {i["case_id"] for i in everything["items"]}
    for name, where, value in (("grid_worker.in", "grid_code", GRID_A),
                               ("unit_handler.in", "unit_code", TEAM_A),
                               ("dispatcher.in", "community_code", COMMUNITY_A)):
        page = (await intake.get("/v1/cases", headers=by[name],
                                 params={"limit": 200})).json()
        assert page["total"] >= 2 and {a, b} <= {i["case_id"] for i in page["items"]}, name
        assert {i["location"][where] if where != "unit_code" else i[where]
                for i in page["items"]} == {value}, name
    for name in ("grid_worker.out", "unit_handler.out", "dispatcher.out"):
        page = (await intake.get("/v1/cases", headers=by[name])).json()
        assert page["items"] == [] and page["total"] == 0, name
    several = ISSUER.headers("grid_worker", [GRID_A, GRID_B], sub="gw-2")
    assert (await intake.get("/v1/cases", headers=several)).status_code == 403
    listed = (await intake.get("/v1/cases", headers=several,
                               params={"grid": GRID_A, "limit": 200})).json()
    assert {a, b} <= {i["case_id"] for i in listed["items"]}

    # Workload rows: only the units the caller sees.
    work = (await dispatch.get("/v1/units/workload", headers=by["unit_handler.in"])).json()
    assert [u["unit_code"] for u in work["units"]] == [TEAM_A]
    work = (await dispatch.get("/v1/units/workload", headers=by["dispatcher.out"])).json()
    assert work["units"] == []
    work = (await dispatch.get("/v1/units/workload", headers=by["auditor"])).json()
    assert TEAM_A in [u["unit_code"] for u in work["units"]]

    # A handler cannot act in someone else's name, nor for another unit.
    r = await dispatch.post(f"/v1/cases/{a}/accept", headers=by["unit_handler.in"],
                            json={"unit_code": TEAM_A, "handler_id": "h-other"})
    assert r.status_code == 403 and r.json()["detail"]["field"] == "handler_id"
    r = await dispatch.post(f"/v1/cases/{a}/notes", headers=by["unit_handler.in"],
                            json={"author_id": "h-in", "note": "n", "unit_code": TEAM_B})
    assert r.status_code == 403

    # A case moved to another unit is no longer the first unit's to touch.
    r = await dispatch.post(f"/v1/cases/{b}/dispatch", headers=by["dispatcher.in"],
                            json={"unit_code": STREET_OFFICE_A, "reason": "street"})
    assert r.status_code == 200
    r = await dispatch.post(f"/v1/cases/{b}/accept", headers=by["unit_handler.in"],
                            json={"unit_code": TEAM_A, "handler_id": "h-in"})
    assert r.status_code == 403
    office = ISSUER.headers("unit_handler", [STREET_OFFICE_A], sub="so-1")
    r = await dispatch.post(f"/v1/cases/{b}/accept", headers=office,
                            json={"unit_code": STREET_OFFICE_A, "handler_id": "so-1"})
    assert r.status_code == 200

    # A resident's report is theirs; another resident cannot tell it exists.
    r = await intake.post("/v1/cases", json=REPORT, headers=by["resident.out"])
    mine = r.json()["case_id"]
    assert (await intake.get(f"/v1/cases/{mine}", headers=by["resident.out"])).status_code == 200
    hidden = await intake.get(f"/v1/cases/{mine}", headers=by["resident.in"])
    unknown = await intake.get("/v1/cases/no-such-case", headers=by["resident.in"])
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"]["field"] == unknown.json()["detail"]["field"]
    # A resident names no first-contact worker; staff are their own first contact.
    r = await intake.post("/v1/cases", json={**REPORT, "first_contact": "gw-9"},
                          headers=by["resident.in"])
    assert r.status_code == 403
    r = await intake.post("/v1/cases", json=REPORT, headers=by["grid_worker.in"])
    [reported] = await sut.store.read(r.json()["case_id"])
    assert reported.envelope.payload.first_contact == "gw-in"  # type: ignore[attr-defined]

    # Open311 refusals come in the spec's error format.
    r = await intake.get("/open311/v2/services.xml")
    assert r.status_code == 401 and "<code>401</code>" in r.text
    r = await intake.post("/open311/v2/requests.json", data=OPEN311_FORM,
                          headers=by["auditor"])
    assert r.status_code == 403 and r.json()[0]["code"] == 403

    # Health, readiness and metrics stay open; metrics count the refusals.
    for name, client in sut.clients.items():
        assert (await client.get("/healthz")).status_code == 200, name
        assert (await client.get("/readyz")).status_code in (200, 503), name
        assert (await client.get("/metrics")).status_code == 200, name
    metrics = (await intake.get("/metrics")).text
    assert 'gridloop_auth_refused_total{status="401"}' in metrics
    assert 'gridloop_auth_refused_total{status="403"}' in metrics


# --- within an allowed list, the rows of the caller's cases or area only --------------------------


async def listed(client: httpx.AsyncClient, path: str, key: str, headers: dict[str, str],
                 **params: Any) -> tuple[set[str], dict[str, Any]]:
    r = await client.get(path, headers=headers, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    return {row["case_id"] for row in body[key]}, body


async def test_a_resident_lists_their_own_reports_only(sut: System) -> None:
    by = {v.name: v.headers() for v in VARIANTS}
    intake = sut.clients["intake"]
    mine = await sut.new_case("dispatched")  # r-in's, as case A
    elsewhere = await sut.new_case("dispatched", grid=GRID_B)  # r-in's too, in grid B
    theirs = await sut.new_case("dispatched", reporter="r-out")
    # A worker whose staff id reads like r-out's subject: not a resident's report.
    namesake = await sut.new_case("dispatched", reporter="r-out",
                                  reporter_kind=ActorKind.grid_worker)
    await sut.caught_up()

    async def reported_by(resident: str, ids: set[str]) -> None:
        """Every row listed is one the resident reported, by the log."""
        for case_id in ids:
            first = (await sut.store.read(case_id))[0].envelope
            assert (first.actor.kind, first.actor.id) == (ActorKind.resident, resident), case_id

    ids, page = await listed(intake, "/v1/cases", "items", by["resident.in"], limit=200)
    assert {sut.case_a, mine, elsewhere} <= ids and not {theirs, namesake} & ids
    assert page["total"] == len(ids)
    await reported_by("r-in", ids)
    ids, _ = await listed(intake, "/v1/cases", "items", by["resident.out"], limit=200)
    assert theirs in ids and not {sut.case_a, mine, elsewhere, namesake} & ids
    await reported_by("r-out", ids)
    # Filters narrow the resident's own cases, never widen them.
    ids, _ = await listed(intake, "/v1/cases", "items", by["resident.in"], grid=GRID_B)
    assert ids == {elsewhere}
    ids, _ = await listed(intake, "/v1/cases", "items", by["resident.out"], grid=GRID_A,
                          status="dispatched")
    assert theirs in ids and not {sut.case_a, mine, namesake} & ids
    await reported_by("r-out", ids)
    r = await intake.get("/v1/cases", headers=by["resident.in"], params={"grid": "x\x00"})
    assert r.status_code == 422

    # Who reported a case is recorded to decide this, and shown to no one.
    for name in ("resident.in", "grid_worker.in", "auditor"):
        _, page = await listed(intake, "/v1/cases", "items", by[name], grid=GRID_A)
        assert page["items"], name
        assert not any({"reported_by", "reporter_kind"} & set(i) for i in page["items"]), name
        assert '"r-in"' not in json.dumps(page["items"]), name
    # Nor in a case's timeline: the resident sees their own account there, staff "resident".
    r = await intake.get(f"/v1/cases/{mine}", headers=by["resident.in"])
    assert r.json()["timeline"][0]["actor"] == {"kind": "resident", "id": "r-in"}
    for name in ("grid_worker.in", "unit_handler.in", "dispatcher.in", "auditor"):
        r = await intake.get(f"/v1/cases/{mine}", headers=by[name])
        assert r.json()["timeline"][0]["actor"] == {"kind": "resident", "id": "resident"}, name
        assert '"r-in"' not in r.text, name
    r = await intake.get(f"/v1/cases/{namesake}", headers=by["grid_worker.in"])
    assert r.json()["timeline"][0]["actor"] == {"kind": "grid_worker", "id": "r-out"}
    # A single read checks the reporter the same way: by the log.
    for other in (mine, namesake):
        r = await intake.get(f"/v1/cases/{other}", headers=by["resident.out"])
        assert r.status_code == 404, other


async def test_district_lists_hold_the_callers_area_only(sut: System) -> None:
    by = {v.name: v.headers() for v in VARIANTS}
    dispatch, feedback = sut.clients["dispatch"], sut.clients["feedback"]
    queued_a = await sut.new_case("triage")
    queued_b = await sut.new_case("triage", grid=GRID_B)
    queued_nowhere = await sut.new_case("no_grid")  # an address only: the district's
    closed_a = await sut.new_case("closed")
    closed_b = await sut.new_case("closed", grid=GRID_B)
    # Feedback schedules the callbacks in reaction to the closures, then lists them.
    for _ in range(200):
        await sut.caught_up()
        due, _ = await listed(feedback, "/v1/callbacks/due", "callbacks", by["auditor"],
                              limit=500)
        if {closed_a, closed_b} <= due:
            break
        await asyncio.sleep(0.05)
    assert {closed_a, closed_b} <= due

    area_a, area_b = {queued_a, closed_a}, {queued_b, closed_b}
    sees = {"grid_worker.in": area_a, "dispatcher.in": area_a, "supervisor.in": area_a,
            "grid_worker.out": area_b, "dispatcher.out": area_b, "supervisor.out": area_b}
    ours = area_a | area_b | {queued_nowhere}
    grids_a = {g.code for g in D.grids if g.code.startswith(COMMUNITY_A)}
    grids_b = {g.code for g in D.grids if g.code.startswith(COMMUNITY_B)}
    for name in AREA_STAFF:
        triage, queue = await listed(dispatch, "/v1/queue/triage", "cases", by[name],
                                     limit=500)
        callbacks, body = await listed(feedback, "/v1/callbacks/due", "callbacks", by[name],
                                       limit=500)
        got = (triage | callbacks) & ours
        if name in DISTRICT_WIDE:
            assert got == ours, name
            continue
        assert got == sees[name], name
        # Nothing of another area, and the count is of the rows the caller may see.
        area = grids_a if name.endswith(".in") else grids_b
        if name.startswith("grid_worker"):
            area = {GRID_A if name.endswith(".in") else GRID_B}
        rows = queue["cases"] + body["callbacks"]
        assert {row["grid"] for row in rows} <= area, name
        assert queue["total"] == len(queue["cases"]), name
    # Paging walks the narrowed queue: a page of one is the caller's oldest case.
    _, page = await listed(dispatch, "/v1/queue/triage", "cases", by["grid_worker.in"],
                           limit=1, offset=0)
    assert page["cases"][0]["grid"] == GRID_A and page["total"] >= 1
    # A handler works a unit's queue, not the district's lists.
    for path in ("/v1/queue/triage", "/v1/callbacks/due"):
        client = dispatch if "triage" in path else feedback
        r = await client.get(path, headers=by["unit_handler.in"])
        assert r.status_code == 403, path


async def test_open311_shows_free_text_as_written_to_those_who_may_read_the_case(
        sut: System) -> None:
    by = {v.name: v.headers() for v in VARIANTS}
    intake = sut.clients["intake"]
    phone, landline, email = "13812345678", "010-62345678", "li.si@example.org"
    open_case = await sut.new_case("dispatched", description=f"楼道堆放杂物，联系{phone}",
                                   address=f"3号楼 电话{landline}")
    closed_case = await sut.new_case("closed", resolution=f"已清理，复核请发{email}")
    await sut.caught_up()
    private = (phone, landline, email)

    for v in VARIANTS[2:]:
        # The native API's rule: the full case, free text included, or not.
        native = await intake.get(f"/v1/cases/{open_case}", headers=by[v.name])
        as_written = native.status_code == 200 and "description" in native.json()
        single = [(await intake.get(f"/open311/v2/requests/{c}.json", headers=by[v.name]))
                  for c in (open_case, closed_case)]
        listing = await intake.get("/open311/v2/requests.json", headers=by[v.name],
                                   params={"service_request_id": f"{open_case},{closed_case}"})
        xml = await intake.get(f"/open311/v2/requests/{open_case}.xml", headers=by[v.name])
        assert all(r.status_code == 200 for r in (*single, listing, xml)), v.name
        rows = {row["service_request_id"]: row
                for row in [*single[0].json(), *single[1].json(), *listing.json()]}
        assert set(rows) == {open_case, closed_case}, v.name
        for body in (single[0].text, single[1].text, listing.text, xml.text):
            for value in private:
                assert (value in body) is as_written or value not in body, v.name
        docs = [*single[0].json(), *single[1].json(), *listing.json()]
        shown = [d["description"] for d in docs if d["service_request_id"] == open_case]
        shown += [d["address"] for d in docs if d["service_request_id"] == open_case]
        shown += [d["status_notes"] for d in docs if d["service_request_id"] == closed_case]
        if as_written:
            assert all(any(p in text for p in private) for text in shown), v.name
        else:
            assert all("***" in text and not any(p in text for p in private)
                       for text in shown), (v.name, shown)
            # The rest of the problem stays readable: the public view masks, it does not drop.
            assert all(d["description"] and "楼道堆放杂物" in d["description"]
                       for d in docs if d["service_request_id"] == open_case), v.name
    # Who reads it as written, spelled out: the reporter and the staff who see the case.
    readers = {v.name for v in VARIANTS[2:]
               if phone in (await intake.get(f"/open311/v2/requests/{open_case}.json",
                                             headers=by[v.name])).text}
    assert readers == {"resident.in", *IN_STAFF}
