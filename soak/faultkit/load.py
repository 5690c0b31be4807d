"""A steady load that drives every case it reports around the whole loop, through faults.

Adapted from `gridloop simulate`, made fault-tolerant: each report is retried with its own
Idempotency-Key (and the same body) until a service acknowledges it, and each case is then
driven by what its log says (intake's GET reads the log), so a lost response or a dead service
just means trying again. What it records — the case id each key was acknowledged with — is what
the checker's findings are held against: an acknowledged case must be in the log and done.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gridloop_district import default_district

DESCRIPTIONS = [
    "楼道堆放杂物，堵塞消防通道，请尽快处理",
    "小区门口垃圾箱满溢，气味很大",
    "路灯不亮已经三天了，晚上出行不安全",
    "楼顶太阳能热水器漏水，渗到楼下住户",
    "物业不按时清运垃圾，住户意见很大",
]
CHANNELS = ["hotline", "wechat", "app", "walk_in", "patrol"]

# (role, scope, subject) -> request headers; the default sends none.
Credentials = Callable[[str, str, str], dict[str, str]]


def no_credentials(role: str, scope: str, sub: str) -> dict[str, str]:
    return {}


@dataclass
class Urls:
    intake: str
    dispatch: str
    feedback: str


@dataclass
class LoadStats:
    acknowledged: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> case id
    done: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    longest_case_seconds: float = 0.0


class Load:
    def __init__(self, urls: Urls, *, rate: float = 2.0, seed: int = 0,
                 unsatisfied_share: float = 0.15, idle_share: float = 0.0,
                 idle_for: float | None = None,
                 think: tuple[float, float] = (0.1, 0.8),
                 credentials: Credentials = no_credentials) -> None:
        self.urls = urls
        self.rate = rate
        self.rng = random.Random(seed)
        self.unsatisfied_share = unsatisfied_share
        # Cases nobody accepts until told to (`release_idle`): deadlines run out on them.
        self.idle_share = idle_share
        # ...or until this many seconds after the report, whichever comes first.
        self.idle_for = idle_for
        self.think = think
        self.district = default_district()
        self.stats = LoadStats()
        # The hotline operator reports and follows cases; handlers and the callback centre
        # act with their own tokens.
        self._operator = credentials("dispatcher", self.district.code, "op-hotline")
        self._centre = credentials("dispatcher", self.district.code, "callback-centre")
        self._credentials = credentials
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0),
                                        transport=httpx.AsyncHTTPTransport(retries=0))
        self._tasks: set[asyncio.Task[None]] = set()
        self._producer: asyncio.Task[None] | None = None
        self._released = asyncio.Event()

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._producer = asyncio.create_task(self._produce())

    async def stop_reporting(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
            try:
                await self._producer
            except asyncio.CancelledError:
                pass
            self._producer = None

    def release_idle(self) -> None:
        self._released.set()

    async def drain(self, timeout: float) -> set[str]:
        """Wait for every case to be done; returns the keys whose cases were not."""
        await self.stop_reporting()
        self.release_idle()
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stuck = set()
        for task in list(self._tasks):
            stuck.add(task.get_name())
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return stuck

    async def close(self) -> None:
        await self.client.aclose()

    async def _produce(self) -> None:
        next_at = time.monotonic()
        while True:
            key = f"fault-{uuid.UUID(int=self.rng.getrandbits(128))}"
            task = asyncio.create_task(self._one_case(key), name=key)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += 1.0 / self.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    # --- one case ------------------------------------------------------------------------------

    async def _one_case(self, key: str) -> None:
        started = time.monotonic()
        rng = random.Random(key)
        body = self._report_body(rng)
        case_id = await self._report(key, body)
        if case_id is None:
            return
        idle = rng.random() < self.idle_share
        ratings = ["unsatisfied", "satisfied"] if rng.random() < self.unsatisfied_share \
            else [rng.choice(["satisfied", "basically_satisfied"])]
        handler = f"gw-{rng.randrange(500)}"
        while True:
            view = await self._view(case_id)
            status = view.get("status") if view else None
            if status == "done":
                break
            await asyncio.sleep(rng.uniform(*self.think))
            if status == "dispatched" and idle and not self._released.is_set():
                if self.idle_for is None or time.monotonic() - started < self.idle_for:
                    continue
                idle = False
            await self._act(case_id, status, view, handler, ratings)
        self.stats.done.add(case_id)
        self.stats.counts["done"] += 1
        self.stats.longest_case_seconds = max(self.stats.longest_case_seconds,
                                              time.monotonic() - started)

    def _report_body(self, rng: random.Random) -> dict[str, object]:
        grid = rng.choice(self.district.grids)
        category = rng.choice(self.district.catalogue.items).code
        location: dict[str, object] = ({"grid_code": grid.code} if rng.random() < 0.7 else
                                       {"lat": round(grid.lat, 6), "lon": round(grid.lon, 6)})
        return {
            "channel": rng.choice(CHANNELS),
            "category_code": "OTHER" if rng.random() < 0.05 else category,
            "description": rng.choice(DESCRIPTIONS),
            "location": location,
            "severity": rng.choices(["low", "normal", "high", "critical"], [2, 14, 3, 1])[0],
            "reporter": {"name": "模拟居民", "phone": f"1380000{rng.randrange(10000):04d}"},
        }

    async def _report(self, key: str, body: dict[str, object]) -> str | None:
        while True:
            try:
                r = await self.client.post(f"{self.urls.intake}/v1/cases", json=body,
                                           headers={"Idempotency-Key": key, **self._operator})
            except httpx.HTTPError:
                self.stats.counts["report retried"] += 1
                await asyncio.sleep(0.5)
                continue
            if r.status_code in (200, 201):
                case_id = r.json()["case_id"]
                self.stats.acknowledged[key] = case_id
                self.stats.counts["reported" if r.status_code == 201 else "report replayed"] += 1
                return case_id
            if r.status_code < 500:
                # Refused for good (a wrong report, or a wrong setup): counted, not retried.
                self.stats.counts[f"report refused {r.status_code}"] += 1
                return None
            self.stats.counts["report retried"] += 1
            await asyncio.sleep(0.5)

    async def _view(self, case_id: str) -> dict | None:  # type: ignore[type-arg]
        try:
            r = await self.client.get(f"{self.urls.intake}/v1/cases/{case_id}",
                                      headers=self._operator)
        except httpx.HTTPError:
            self.stats.counts["read retried"] += 1
            return None
        if r.status_code != 200:
            self.stats.counts[f"read retried {r.status_code}"] += 1
            return None
        return r.json()

    async def _act(self, case_id: str, status: str | None, view: dict | None,  # type: ignore[type-arg]
                   handler: str, ratings: list[str]) -> None:
        if view is None:
            return
        dispatch = f"{self.urls.dispatch}/v1/cases/{case_id}"
        if status == "triage":
            grid = view.get("grid_code") or self.district.grids[0].code
            office = self.district.street_office(self.district.street_of(grid).code).code
            # The dispatcher is the token's subject: a body naming someone else is refused.
            await self._post(f"{dispatch}/dispatch", {"unit_code": office, "reason": "人工派单"},
                             "dispatch", self._operator)
        elif status == "dispatched" and view.get("unit_code"):
            unit = view["unit_code"]
            await self._post(f"{dispatch}/accept", {"unit_code": unit, "handler_id": handler},
                             "accept", self._credentials("unit_handler", unit, handler))
        elif status == "accepted" and view.get("unit_code"):
            await self._post(f"{dispatch}/close", {"outcome": "resolved",
                                                   "resolution": "已现场处理，并向居民反馈结果",
                                                   "closed_by": handler}, "close",
                             self._credentials("unit_handler", view["unit_code"], handler))
        elif status == "closed":
            rounds = sum(1 for e in view.get("timeline", ())
                         if e.get("event_type") == "CallbackRated")
            rating = ratings[min(rounds, len(ratings) - 1)]
            unhappy = rating == "unsatisfied"
            await self._post(f"{self.urls.feedback}/v1/cases/{case_id}/callback", {
                "rating": rating, "handled_lawfully": True, "measures_carried_out": not unhappy,
                "party_accepts": not unhappy, "method": "phone", "rated_by": "callback-centre",
            }, "rate", self._centre)

    async def _post(self, url: str, body: dict[str, object], what: str,
                    headers: dict[str, str]) -> None:
        try:
            r = await self.client.post(url, json=body, headers=headers)
        except httpx.HTTPError:
            self.stats.counts[f"{what} retried"] += 1
            return
        if r.status_code < 300:
            self.stats.counts[what] += 1
        else:
            # The case moved on, the service is behind, or it is down: the next look decides.
            self.stats.counts[f"{what} refused {r.status_code}"] += 1
