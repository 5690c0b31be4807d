"""Cases driven round the loop, each request sent to an instance picked at random.

Modelled on `gridloop simulate`, with two differences a test needs: every request retries on
another live instance when the one it picked is gone (the takeover test kills them mid-load),
and cases meant to miss a deadline wait for the test to move escalation's clocks.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from gridloop_district import default_district
from scale_fleet import Fleet

CHANNELS = ["hotline", "wechat", "app", "walk_in", "patrol"]
DESCRIPTION = "楼道堆放杂物，堵塞消防通道，请尽快处理"


@dataclass
class LoadStats:
    reported: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    missing_deadline: set[str] = field(default_factory=set)
    escalated: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    # Which instance served each request: proof that both instances of a service took traffic.
    served_by: Counter[tuple[str, int]] = field(default_factory=Counter)


class Load:
    def __init__(self, fleet: Fleet, seed: int, miss_share: float = 0.0,
                 unsatisfied_share: float = 0.15) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.miss_share = miss_share
        self.unsatisfied_share = unsatisfied_share
        self.district = default_district()
        self.grids = [g.code for g in self.district.grids]
        self.categories = [c.code for c in self.district.catalogue.items]
        self.stats = LoadStats()
        self.client = httpx.AsyncClient(timeout=15.0)
        issuer = fleet.issuer
        self.dispatcher = issuer.headers("dispatcher", self.district.code, sub="dispatcher-1")
        self.callback_centre = issuer.headers("dispatcher", self.district.code,
                                              sub="callback-centre")
        self.resident = issuer.headers("resident", "", sub="resident-scale")
        self.tasks: list[asyncio.Task[None]] = []
        # Set by the test once it has moved escalation's clocks and put them back.
        self.deadlines_passed = asyncio.Event()

    async def close(self) -> None:
        # A failed test leaves cases in flight: stop them before their client goes.
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()

    # --- requests to any live instance -----------------------------------------------------

    async def call(self, service: str, method: str, path: str, **kw: Any) -> httpx.Response:
        return (await self.call_once_or_more(service, method, path, **kw))[0]

    async def call_once_or_more(self, service: str, method: str, path: str, **kw: Any
                                ) -> tuple[httpx.Response, bool]:
        """The response and whether an earlier attempt died with its instance (it may have
        taken effect before the kill, so a refusal of the retry can mean it is done)."""
        last: Exception | None = None
        for attempt in range(20):
            live = self.fleet.live(service)
            if not live:
                raise RuntimeError(f"no live {service} instance")
            index = self.rng.choice(live)
            try:
                r = await self.client.request(method, f"{self.fleet.url(service, index)}{path}",
                                              **kw)
            except httpx.TransportError as exc:  # that instance was just killed: another one
                last = exc
                await asyncio.sleep(0.2)
                continue
            self.stats.served_by[(service, index)] += 1
            return r, attempt > 0
        raise RuntimeError(f"{service} {path}: no instance answered: {last}")

    async def view(self, case_id: str) -> dict[str, Any]:
        r = await self.call("intake", "GET", f"/v1/cases/{case_id}", headers=self.resident)
        r.raise_for_status()
        return r.json()

    async def wait_for(self, case_id: str, accept: Any, timeout: float = 60.0
                       ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.view(case_id)
            if accept(view):
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"case {case_id} stuck at {view.get('status')}")
            await asyncio.sleep(self.rng.uniform(0.3, 0.7))

    # --- one case round the loop -----------------------------------------------------------

    def report_body(self) -> dict[str, Any]:
        grid = self.district.grid(self.rng.choice(self.grids))
        return {
            "channel": self.rng.choice(CHANNELS),
            "category_code": "OTHER" if self.rng.random() < 0.05
            else self.rng.choice(self.categories),
            "description": DESCRIPTION,
            "location": {"grid_code": grid.code},
            "severity": self.rng.choices(["low", "normal", "high"], [2, 14, 3])[0],
            "reporter": {"name": "模拟居民", "phone": f"1380000{self.rng.randrange(10000):04d}"},
        }

    async def one_case(self) -> None:
        key = str(uuid.uuid4())
        body = self.report_body()
        r = await self.call("intake", "POST", "/v1/cases", json=body,
                            headers={"Idempotency-Key": key, **self.resident})
        assert r.status_code == 201, r.text
        case_id = r.json()["case_id"]
        self.stats.reported.append(case_id)
        view = await self.wait_for(case_id, lambda v: v["status"] in ("dispatched", "triage"))
        if view["status"] == "triage":
            office = self.district.street_office(
                self.district.street_of(view.get("grid_code") or body["location"]["grid_code"]
                                        ).code).code
            r = await self.call("dispatch", "POST", f"/v1/cases/{case_id}/dispatch",
                                json={"unit_code": office, "reason": "调度员人工派单",
                                      "dispatcher": "dispatcher-1"}, headers=self.dispatcher)
            assert r.status_code < 300, r.text
            view = await self.wait_for(case_id, lambda v: v["status"] == "dispatched")
        if self.rng.random() < self.miss_share:
            # Nobody accepts: the accept deadline passes once the test moves the clocks.
            self.stats.missing_deadline.add(case_id)
            await self.deadlines_passed.wait()
            view = await self.wait_for(
                case_id, lambda v: v["status"] == "dispatched" and v["escalation_level"] >= 1)
            self.stats.escalated.add(case_id)
        await self.handle(case_id, view)
        unsatisfied = self.rng.random() < self.unsatisfied_share
        await self.rate(case_id, "unsatisfied" if unsatisfied else "satisfied")
        if unsatisfied:
            view = await self.wait_for(case_id, lambda v: v["status"] == "dispatched")
            await self.handle(case_id, view)
            await self.rate(case_id, "basically_satisfied")
        await self.wait_for(case_id, lambda v: v["status"] == "done")
        self.stats.done.add(case_id)

    async def handle(self, case_id: str, view: dict[str, Any]) -> None:
        unit = view["unit_code"]
        handler = f"gw-{self.rng.randrange(200)}"
        auth = self.fleet.issuer.headers("unit_handler", unit, sub=handler)
        await asyncio.sleep(self.rng.uniform(0.1, 1.0))
        await self.act(case_id, "accept", {"unit_code": unit, "handler_id": handler}, auth,
                       "CaseAccepted")
        await asyncio.sleep(self.rng.uniform(0.2, 1.5))
        await self.act(case_id, "close", {"outcome": "resolved", "resolution": "已现场处理",
                                          "closed_by": handler}, auth, "CaseClosed")

    async def act(self, case_id: str, action: str, body: dict[str, Any],
                  auth: dict[str, str], recorded_as: str) -> None:
        before = _count(await self.view(case_id), recorded_as)
        r, retried = await self.call_once_or_more("dispatch", "POST",
                                                  f"/v1/cases/{case_id}/{action}", json=body,
                                                  headers=auth)
        if r.status_code == 200:
            return
        assert retried, f"{action} {case_id}: {r.status_code} {r.text}"
        # The attempt that died with its instance went through: the log shows it.
        await self.wait_for(case_id, lambda v: _count(v, recorded_as) > before, timeout=15)

    async def rate(self, case_id: str, rating: str) -> None:
        good = rating != "unsatisfied"
        body = {"rating": rating, "handled_lawfully": True, "measures_carried_out": good,
                "party_accepts": good, "method": "phone", "rated_by": "callback-centre"}
        before = _count(await self.view(case_id), "CallbackRated")
        deadline = time.monotonic() + 60
        maybe_done = False
        while True:  # the callback opens once feedback has seen the closure
            r, retried = await self.call_once_or_more(
                "feedback", "POST", f"/v1/cases/{case_id}/callback", json=body,
                headers=self.callback_centre)
            if r.status_code == 201:
                return
            maybe_done = maybe_done or retried
            if maybe_done and _count(await self.view(case_id), "CallbackRated") > before:
                return  # the attempt that died with its instance was recorded
            if time.monotonic() > deadline:
                raise TimeoutError(f"rate {case_id}: {r.status_code} {r.text}")
            await asyncio.sleep(self.rng.uniform(0.3, 0.7))

    # --- the whole load --------------------------------------------------------------------

    async def run(self, cases: int, seconds: float) -> list[asyncio.Task[None]]:
        """Start `cases` cases spread over `seconds`; returns their tasks (not awaited)."""
        for _ in range(cases):
            self.tasks.append(asyncio.create_task(self._guarded()))
            await asyncio.sleep(seconds / cases)
        return list(self.tasks)

    async def _guarded(self) -> None:
        try:
            await self.one_case()
        except Exception as exc:  # noqa: BLE001 - collected, and the test fails on any
            self.stats.failures.append(f"{type(exc).__name__}: {exc}")


def _count(view: dict[str, Any], event_type: str) -> int:
    return sum(1 for e in view.get("timeline", ()) if e["event_type"] == event_type)
