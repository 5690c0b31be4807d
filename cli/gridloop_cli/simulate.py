"""`gridloop simulate`: realistic traffic through the whole loop of a running Gridloop.

Residents, grid workers and hotline operators report cases across channels and categories; units
accept and close most of them, let some miss deadlines; residents rate them, a few unsatisfied —
so a newcomer sees every service move. Bounded in count and time, and only to the given URLs.

Each actor calls with its own token, signed with the local dev key (the one `gridloop up`
creates and the services trust in dev mode): residents report and follow their own cases, unit
handlers accept and close, a district dispatcher places the cases triage could not, and the
callback centre rates.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gridloop_district import default_district
from gridloop_events.auth_keys import Issuer, KeyFolder, KeySetupError

console = Console()

DESCRIPTIONS = {
    "default": [
        "楼道堆放杂物，堵塞消防通道，请尽快处理",
        "小区门口垃圾箱满溢，气味很大",
        "路灯不亮已经三天了，晚上出行不安全",
        "邻居装修噪音扰民，晚上十点后仍在施工",
        "楼顶太阳能热水器漏水，渗到楼下住户",
        "河道里有人养鸭，水质变差",
        "有人在田里焚烧秸秆，烟很大",
        "低保申请材料不知道怎么准备，想咨询",
        "物业不按时清运垃圾，住户意见很大",
        "小区内有违章搭建的棚子",
    ]
}
CHANNELS = ["hotline", "wechat", "app", "walk_in", "patrol"]
TOKEN_TTL = 3600


class Tokens:
    """One token per caller, re-issued well before it expires."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.cache: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}

    def headers(self, role: str, scope: str, sub: str) -> dict[str, str]:
        key = (role, scope, sub)
        cached = self.cache.get(key)
        if cached is None or time.monotonic() - cached[0] > TOKEN_TTL / 2:
            cached = (time.monotonic(), self.issuer.headers(role, scope, sub=sub, ttl=TOKEN_TTL))
            self.cache[key] = cached
        return cached[1]


@dataclass
class Urls:
    intake: str
    dispatch: str
    feedback: str


class Simulator:
    def __init__(self, urls: Urls, rng: random.Random, miss_share: float,
                 unsatisfied_share: float, speed: float, tokens: Tokens) -> None:
        self.urls = urls
        self.tokens = tokens
        self.rng = rng
        self.miss_share = miss_share
        self.unsatisfied_share = unsatisfied_share
        self.speed = speed
        self.district = default_district()
        self.grids = [g.code for g in self.district.grids]
        self.categories = [c.code for c in self.district.catalogue.items]
        self.counts: Counter[str] = Counter()
        self.client = httpx.AsyncClient(timeout=10.0)
        self.dispatcher = tokens.headers("dispatcher", self.district.code, "dispatcher-1")
        self.callback_centre = tokens.headers("dispatcher", self.district.code, "callback-centre")
        self.residents: dict[str, dict[str, str]] = {}

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high) / self.speed)

    def report_body(self) -> dict[str, object]:
        grid = self.district.grid(self.rng.choice(self.grids))
        category = "OTHER" if self.rng.random() < 0.04 else self.rng.choice(self.categories)
        location: dict[str, object]
        if self.rng.random() < 0.5:
            location = {"grid_code": grid.code}
        else:
            location = {"lat": round(grid.lat, 6), "lon": round(grid.lon, 6)}
        return {
            "channel": self.rng.choice(CHANNELS),
            "category_code": category,
            "description": self.rng.choice(DESCRIPTIONS["default"]),
            "location": location,
            "severity": self.rng.choices(["low", "normal", "high", "critical"], [2, 14, 3, 1])[0],
            "reporter": {"name": "模拟居民", "phone": f"1380000{self.rng.randrange(10000):04d}"},
        }

    async def case_status(self, case_id: str) -> dict[str, object]:
        # The resident who reported it follows it, with their own token.
        r = await self.client.get(f"{self.urls.intake}/v1/cases/{case_id}",
                                  headers=self.residents[case_id])
        r.raise_for_status()
        return r.json()

    async def wait_for(self, case_id: str, statuses: set[str], timeout: float = 60) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = await self.case_status(case_id)
            if view.get("status") in statuses:
                return view
            await asyncio.sleep(0.3)
        raise TimeoutError(f"case {case_id} not in {statuses}")

    async def handle(self, case_id: str, view: dict, handler: str) -> None:  # type: ignore[type-arg]
        unit = view.get("unit_code")
        if unit is None:
            return
        await self.pause(0.2, 2.0)
        auth = self.tokens.headers("unit_handler", str(unit), handler)
        r = await self.client.post(f"{self.urls.dispatch}/v1/cases/{case_id}/accept",
                                   json={"unit_code": unit, "handler_id": handler}, headers=auth)
        if r.status_code >= 400:
            self.counts["errors"] += 1
            return
        self.counts["accepted"] += 1
        await self.pause(1.0, 5.0)
        r = await self.client.post(
            f"{self.urls.dispatch}/v1/cases/{case_id}/close",
            json={"outcome": self.rng.choices(["resolved", "answered"], [8, 2])[0],
                  "resolution": "已现场处理，并向居民反馈结果", "closed_by": handler},
            headers=auth,
        )
        if r.status_code >= 400:
            self.counts["errors"] += 1
            return
        self.counts["closed"] += 1

    async def rate(self, case_id: str, unsatisfied: bool) -> None:
        rating = "unsatisfied" if unsatisfied else self.rng.choice(["satisfied",
                                                                    "basically_satisfied"])
        body = {"rating": rating, "handled_lawfully": True, "measures_carried_out": not unsatisfied,
                "party_accepts": not unsatisfied, "method": self.rng.choice(["phone", "on_site"]),
                "rated_by": "callback-centre"}
        for _ in range(40):  # the callback opens once feedback has seen the closure
            r = await self.client.post(f"{self.urls.feedback}/v1/cases/{case_id}/callback",
                                       json=body, headers=self.callback_centre)
            if r.status_code < 300:
                self.counts["rated " + rating] += 1
                return
            await asyncio.sleep(0.5)
        self.counts["errors"] += 1

    async def one_case(self) -> None:
        resident = self.tokens.headers("resident", "", f"resident-{self.rng.randrange(100000)}")
        r = await self.client.post(f"{self.urls.intake}/v1/cases", json=self.report_body(),
                                   headers={"Idempotency-Key": str(uuid.uuid4()), **resident})
        if r.status_code >= 300:
            self.counts["rejected"] += 1
            return
        case_id = r.json()["case_id"]
        self.residents[case_id] = resident
        self.counts["reported"] += 1
        view = await self.wait_for(case_id, {"dispatched", "triage"})
        if view["status"] == "triage":
            self.counts["triage queue"] += 1
            grid = view.get("grid_code") or self.rng.choice(self.grids)
            unit = self.district.street_of(grid).code
            office = self.district.street_office(unit).code
            await self.pause(0.5, 3.0)
            await self.client.post(f"{self.urls.dispatch}/v1/cases/{case_id}/dispatch",
                                   json={"unit_code": office, "reason": "调度员人工派单",
                                         "dispatcher": "dispatcher-1"},
                                   headers=self.dispatcher)
            view = await self.wait_for(case_id, {"dispatched"})
        self.counts["dispatched"] += 1
        if self.rng.random() < self.miss_share:
            self.counts["left to miss a deadline"] += 1
            return
        handler = f"gw-{self.rng.randrange(500)}"
        await self.handle(case_id, view, handler)
        unsatisfied = self.rng.random() < self.unsatisfied_share
        await self.rate(case_id, unsatisfied)
        if unsatisfied:
            view = await self.wait_for(case_id, {"dispatched"})
            self.counts["re-dispatched (重办)"] += 1
            await self.handle(case_id, view, handler)
            await self.rate(case_id, False)

    def table(self, elapsed: float) -> Table:
        t = Table(title=f"gridloop simulate — {elapsed:.0f}s")
        t.add_column("what")
        t.add_column("count", justify="right")
        for key, value in sorted(self.counts.items()):
            t.add_row(key, str(value))
        return t


def simulate(
    rate: float = typer.Option(1.0, help="New cases per second."),
    duration: float = typer.Option(60.0, help="Seconds of new reports (then the loop drains)."),
    intake: str = typer.Option("http://127.0.0.1:8001"),
    dispatch: str = typer.Option("http://127.0.0.1:8002"),
    feedback: str = typer.Option("http://127.0.0.1:8004"),
    miss_share: float = typer.Option(0.08, help="Share of cases nobody accepts (they escalate)."),
    unsatisfied_share: float = typer.Option(0.1, help="Share of callbacks rated unsatisfied."),
    speed: float = typer.Option(1.0, help="Handlers act this many times faster."),
    seed: int = typer.Option(0),
    key_dir: Path = typer.Option(None, help="The local key folder `gridloop up` created "
                                 "(default $GRIDLOOP_KEY_DIR or .run/keys)."),
) -> None:
    """Report realistic cases and drive most of them around the loop."""
    try:
        tokens = Tokens(Issuer.from_env(KeyFolder(key_dir).signing_key()))
    except KeySetupError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    async def run() -> None:
        sim = Simulator(Urls(intake, dispatch, feedback), random.Random(seed), miss_share,
                        unsatisfied_share, speed, tokens)
        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()

        async def guarded() -> None:
            try:
                await sim.one_case()
            except (httpx.HTTPError, TimeoutError, KeyError):
                sim.counts["errors"] += 1

        with Live(sim.table(0), console=console, refresh_per_second=2) as live:
            next_at = started
            while time.monotonic() - started < duration:
                now = time.monotonic()
                if now >= next_at:
                    task = asyncio.create_task(guarded())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_at += 1.0 / rate
                live.update(sim.table(now - started))
                await asyncio.sleep(min(0.1, max(0.0, next_at - now)))
            drain_until = time.monotonic() + 120
            while tasks and time.monotonic() < drain_until:
                live.update(sim.table(time.monotonic() - started))
                await asyncio.sleep(0.5)
            for task in tasks:
                task.cancel()
            live.update(sim.table(time.monotonic() - started))
        await sim.client.aclose()

    asyncio.run(run())


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
