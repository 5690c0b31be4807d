"""The four services in this process, on one NATS stream and one PostgreSQL database, run on an
event loop of their own in a background thread.

Why a thread: Hypothesis (and schemathesis on top of it) drives synchronous tests, while the
services' runtimes hold NATS and PostgreSQL connections bound to the loop they started on. Every
request is therefore sent to that loop and waited for; the tests stay plain functions.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import nats
from fastapi import FastAPI
from gridloop_district import default_district
from gridloop_dispatch.app import create_app as dispatch_app
from gridloop_dispatch.settings import DispatchSettings
from gridloop_escalation.app import create_app as escalation_app
from gridloop_escalation.settings import EscalationSettings
from gridloop_events.auth import Authenticator, Verifier
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.catalogue import (
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReported,
    Deadlines,
    GridPath,
    Location,
)
from gridloop_events.clock import FixedClock, OffsetClock
from gridloop_events.envelope import Actor, ActorKind, Envelope
from gridloop_events.deploy_security import Deployed
from gridloop_events.store import EventStore
from gridloop_events.subjects import DEFAULT_PREFIX, Subjects
from gridloop_events.vocabulary import Channel, Outcome, ProblemKind, Tier
from gridloop_feedback.app import create_app as feedback_app
from gridloop_feedback.settings import FeedbackSettings
from gridloop_intake.app import create_app as intake_app
from gridloop_intake.settings import IntakeSettings

T = TypeVar("T")

NOW = datetime.now(UTC).replace(microsecond=0)
D = default_district()
GRID_A = D.grids[0].code
TEAM_A = D.grid_team(GRID_A).code
KEY = SigningKey.generate("hostile-1")
ISSUER = Issuer(KEY)


def headers(role: str, scope: tuple[str, ...] = (), sub: str = "") -> dict[str, str]:
    return ISSUER.headers(role, scope, sub=sub or f"{role}-1")


# Broad tokens: whoever may call an endpoint at all, with the widest scope that role takes.
AUDITOR = headers("auditor", sub="a-1")
DISPATCHER = headers("dispatcher", (D.code,), sub="d-1")
SUPERVISOR = headers("supervisor", (D.code,), sub="s-1")
HANDLER = headers("unit_handler", (TEAM_A,), sub="h-1")
RESIDENT = headers("resident", sub="r-1")


def history(case_id: str, stage: str) -> list[Envelope]:
    """A case of grid A reported by resident r-1, dispatched to team A, taken as far as
    `stage` (dispatched, accepted, closed)."""
    path = GridPath.model_validate(D.grid_path(GRID_A).model_dump())
    reported = Envelope.new(
        CaseReported(channel=Channel.app, category_code="CM-0101", description="杂物堵塞通道",
                     location=Location(grid_path=path)),
        case_id=case_id, district=D.code, actor=Actor(kind=ActorKind.resident, id="r-1"),
        correlation_id=str(uuid.uuid4()), occurred_at=NOW)
    events = [reported, reported.caused(
        CaseDispatched(unit_code=TEAM_A, tier=Tier.grid, kind=ProblemKind.general,
                       dispatcher="dispatch-rules", reason="general → grid team",
                       deadlines=Deadlines(accept_due=NOW + timedelta(minutes=1),
                                           resolve_due=NOW + timedelta(days=1))),
        actor=Actor.system("dispatch"), purpose="dispatch")]
    handler = Actor(kind=ActorKind.department, id="h-1", role="unit_handler")
    if stage in ("accepted", "closed"):
        events.append(events[-1].caused(CaseAccepted(unit_code=TEAM_A, handler_id="h-1"),
                                        actor=handler, purpose="accept"))
    if stage == "closed":
        events.append(events[-1].caused(CaseClosed(
            outcome=Outcome.resolved, resolution="cleared", closed_by="h-1", unit_code=TEAM_A),
            actor=handler, purpose="close"))
    return events


class System:
    """Start with `start()`, stop with `stop()`; `run(coro)` runs a coroutine on its loop."""

    def __init__(self, deployed: Deployed) -> None:
        """Each service connects as its own NATS user and PostgreSQL role from deploy/, as in
        a district; the harness appends and reads the log as the NATS operator."""
        self.deployed = deployed
        self.prefix = DEFAULT_PREFIX
        verifier = Verifier.trusting(KEY.trusted())

        def own(service: str) -> dict[str, str]:
            return {"nats_url": deployed.nats_url_as(service),
                    "database_url": deployed.database_url_as(service),
                    "subject_prefix": DEFAULT_PREFIX}

        self.apps: dict[str, FastAPI] = {
            "intake": intake_app(IntakeSettings(service="intake", schema="intake",
                                                **own("intake")),
                                 district=D, clock=FixedClock(NOW),
                                 auth=Authenticator(verifier)),
            "dispatch": dispatch_app(DispatchSettings(**own("dispatch")), district=D,
                                     clock=FixedClock(NOW), auth=Authenticator(verifier)),
            "escalation": escalation_app(
                EscalationSettings(service="escalation", schema="escalation", test_clock=True,
                                   **own("escalation")),
                clock=OffsetClock(timedelta(days=-1)), district=D,
                auth=Authenticator(verifier)),
            "feedback": feedback_app(FeedbackSettings(schema="feedback", **own("feedback")),
                                     clock=FixedClock(NOW), district=D,
                                     auth=Authenticator(verifier)),
        }
        self._operator: EventStore | None = None
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="hostile-system")
        self._stack = AsyncExitStack()
        self.cases = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def store(self) -> EventStore:
        """The log as the operator sees it (a service's own user may write only its events)."""
        assert self._operator is not None, "start() first"
        return self._operator

    def start(self) -> None:
        self._thread.start()
        self.run(self._start(), timeout=120)

    async def _start(self) -> None:
        nc = await nats.connect(self.deployed.nats_url_as("operator"))
        self._stack.push_async_callback(nc.close)
        for name, app in self.apps.items():
            await self._stack.enter_async_context(app.router.lifespan_context(app))
            self.clients[name] = await self._stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url=f"http://{name}",
                timeout=30))
        self._operator = EventStore(nc, Subjects(DEFAULT_PREFIX))

    def stop(self) -> None:
        try:
            self.run(self._stack.aclose(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def request(self, service: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.clients[service].request(method, url, **kwargs))

    def last_sequence(self) -> int:
        return self.run(self.store.last_sequence())

    def new_case(self, stage: str) -> str:
        self.cases += 1
        case_id = f"H-{self.cases}-{uuid.uuid4().hex[:6]}"
        self.run(self.store.append(case_id, history(case_id, stage), 0))
        self.run(self.caught_up())
        return case_id

    async def caught_up(self) -> None:
        for app in self.apps.values():
            for runner in app.state.runtime.runners:
                await runner.wait_caught_up(timeout=15)
