"""The full closed loop under load, over the services' HTTP APIs.

Each case: POST intake /v1/cases → (dispatch's rules dispatch it) → POST dispatch
/v1/cases/{id}/accept → POST /close → (feedback schedules the callback) → POST feedback
/v1/cases/{id}/callback rated satisfied. The generator learns of the system's own steps from the
stream itself (an ordered push consumer), so it never polls and adds no load beyond the five
requests; the same consumer gives every event's stream sequence and the server's timestamp of
when it was stored, from which both latencies are taken:

- report → dispatched: the report request's send time to the CaseDispatched's stored timestamp;
- appended → visible: an event's stored timestamp to the first checkpoint poll of a projection
  whose checkpoint covers it.

Open loop: cases start at fixed times whatever happens to earlier ones. Max-throughput mode:
`workers` closed-loop users, each starting its next case when the last is done.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.js.api as jsapi

from gridloop_district import default_district
from gridloop_events.subjects import Subjects

from .http import HttpPool
from .probes import CheckpointPoller, CpuWatch, percentiles
from .system import CREDENTIALS

DESCRIPTIONS = ("楼道堆放杂物，堵塞消防通道", "小区门口垃圾箱满溢，气味很大",
                "路灯不亮已经三天了", "邻居装修噪音扰民")
WAIT = 120.0  # a step the system does not take within this long counts the case as failed


@dataclass
class Seen:
    sequence: int
    stored_at: float
    event_type: str
    partition: int | None


@dataclass
class CaseWaits:
    dispatched: asyncio.Future[tuple[float, str]]
    scheduled: asyncio.Future[float]


class StreamWatch:
    """Every event appended under the prefix, as the stream stored it."""

    def __init__(self, nats_url: str, subjects: Subjects) -> None:
        self.nats_url = nats_url
        self.subjects = subjects
        self.events: list[Seen] = []
        self._waits: dict[str, CaseWaits] = {}
        self._early: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        self.nc = await nats.connect(self.nats_url)
        js = self.nc.jetstream()
        self.sub = await js.subscribe(
            self.subjects.all, stream=self.subjects.stream_name, cb=self._on_msg,
            ordered_consumer=True, deliver_policy=jsapi.DeliverPolicy.NEW,
            pending_msgs_limit=1_000_000, pending_bytes_limit=2**30,
        )

    async def stop(self) -> None:
        await self.sub.unsubscribe()
        await self.nc.close()

    def _partition(self, subject: str) -> int | None:
        part = getattr(self.subjects, "partition_of_subject", None)
        return part(subject) if part else None

    async def _on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        meta = msg.metadata
        _, case_id, event_type = self.subjects.parse(msg.subject)
        stored_at = meta.timestamp.timestamp()
        self.events.append(Seen(meta.sequence.stream, stored_at, event_type,
                                self._partition(msg.subject)))
        if event_type == "CaseDispatched":
            unit = json.loads(msg.data)["payload"]["unit_code"]
            self._resolve(case_id, "dispatched", (stored_at, unit))
        elif event_type == "CallbackScheduled":
            self._resolve(case_id, "scheduled", stored_at)

    def _resolve(self, case_id: str, what: str, value: Any) -> None:
        waits = self._waits.get(case_id)
        if waits is None:
            # The system was quicker than the report's HTTP answer.
            self._early.setdefault(case_id, {})[what] = value
            return
        fut = getattr(waits, what)
        if not fut.done():
            fut.set_result(value)

    def expect(self, case_id: str) -> CaseWaits:
        loop = asyncio.get_running_loop()
        waits = CaseWaits(loop.create_future(), loop.create_future())
        self._waits[case_id] = waits
        for what, value in self._early.pop(case_id, {}).items():
            getattr(waits, what).set_result(value)
        return waits

    def forget(self, case_id: str) -> None:
        self._waits.pop(case_id, None)


@dataclass
class CaseResult:
    started: float
    dispatched_latency: float | None = None
    done_at: float | None = None
    error: str | None = None


@dataclass
class LoopClient:
    """The five requests of a case. A service given several URLs (its instances) gets them in
    turn, request by request, as a round-robin gateway would: any instance may serve any case."""

    urls: dict[str, str | list[str]]
    watch: StreamWatch
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    served: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.pools: dict[str, list[tuple[str, HttpPool]]] = {}
        self._turn: dict[str, itertools.cycle[tuple[str, HttpPool]]] = {}
        for name, urls in self.urls.items():
            pools = []
            for url in [urls] if isinstance(urls, str) else urls:
                parts = urlsplit(url)
                pools.append((url, HttpPool(parts.hostname or "127.0.0.1", parts.port or 80,
                                            size=256)))
            self.pools[name] = pools
            self._turn[name] = itertools.cycle(pools)
        district = default_district()
        self.grids = [g.code for g in district.grids]
        self.categories = [c.code for c in district.catalogue.items if c.kind.value == "general"]
        self.district = district.code

    async def close(self) -> None:
        for pools in self.pools.values():
            for _, pool in pools:
                await pool.close()

    def pool(self, service: str) -> HttpPool:
        url, pool = next(self._turn[service])
        self.served[url] += 1
        return pool

    async def one_case(self, result: CaseResult) -> None:
        rng = self.rng
        body = {
            "channel": "hotline",
            "category_code": rng.choice(self.categories),
            "description": rng.choice(DESCRIPTIONS),
            "location": {"grid_code": rng.choice(self.grids)},
            "severity": "normal",
            "reporter": {"name": "模拟居民", "phone": f"1380000{rng.randrange(10000):04d}"},
        }
        # A hotline operator takes the report (a dispatcher over the whole district).
        r = await self.pool("intake").request(
            "POST", "/v1/cases", body, CREDENTIALS.headers("dispatcher", self.district,
                                                            "op-hotline"))
        if r.status != 201:
            raise RuntimeError(f"report {r.status} {r.body[:200]!r}")
        case_id = r.json()["case_id"]
        waits = self.watch.expect(case_id)
        try:
            dispatched_at, unit = await asyncio.wait_for(waits.dispatched, WAIT)
            result.dispatched_latency = dispatched_at - result.started
            handler = f"gw-{unit}"
            auth = CREDENTIALS.headers("unit_handler", unit, handler)
            r = await self.pool("dispatch").request("POST", f"/v1/cases/{case_id}/accept",
                                       {"unit_code": unit, "handler_id": handler}, auth)
            if r.status != 200:
                raise RuntimeError(f"accept {r.status} {r.body[:200]!r}")
            r = await self.pool("dispatch").request("POST", f"/v1/cases/{case_id}/close",
                                       {"outcome": "resolved", "resolution": "已现场处理",
                                        "closed_by": handler}, auth)
            if r.status != 200:
                raise RuntimeError(f"close {r.status} {r.body[:200]!r}")
            await asyncio.wait_for(waits.scheduled, WAIT)
            r = await self.pool("feedback").request(
                "POST", f"/v1/cases/{case_id}/callback",
                {"rating": "satisfied", "handled_lawfully": True, "measures_carried_out": True,
                 "party_accepts": True, "method": "phone", "comment": "回访",
                 "rated_by": "callback-centre"},
                CREDENTIALS.headers("dispatcher", self.district, "callback-centre"))
            if r.status != 201:
                raise RuntimeError(f"callback {r.status} {r.body[:200]!r}")
            result.done_at = time.time()
        finally:
            self.watch.forget(case_id)

    async def guarded(self, result: CaseResult) -> None:
        try:
            await self.one_case(result)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class Window:
    """Everything measured over one load step."""

    name: str
    offered_rate: float | None
    seconds: float
    results: list[CaseResult]
    events: list[Seen]
    t0: float
    t1: float
    cpu: dict[str, float]
    poller: CheckpointPoller
    projections: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.results if r.done_at is not None]
        done_in = [r for r in done if r.done_at <= self.t1]  # type: ignore[operator]
        failed = [r for r in self.results if r.error]
        in_window = [e for e in self.events if self.t0 <= e.stored_at <= self.t1]
        errors: dict[str, int] = {}
        for r in failed:
            key = (r.error or "").split(" ", 2)[:2]
            errors[" ".join(key)] = errors.get(" ".join(key), 0) + 1
        visible: dict[str, Any] = {}
        sample = in_window if len(in_window) <= 20000 else in_window[:: len(in_window) // 20000]
        for name in self.projections:
            lat = []
            missing = 0
            for e in sample:
                at = self.poller.visible_at(name, e.sequence, e.partition, e.stored_at - 0.05)
                if at is None:
                    missing += 1
                else:
                    lat.append(max(0.0, at - e.stored_at))
            visible[name] = {**percentiles(lat), "not_visible": missing}
        return {
            "name": self.name,
            "offered_cases_per_s": self.offered_rate,
            "seconds": round(self.seconds, 1),
            "cases_started": len(self.results),
            "cases_completed": len(done),
            "cases_failed": len(failed),
            "errors": errors,
            "completed_cases_per_s": round(len(done_in) / self.seconds, 1),
            "events_per_s": round(len(in_window) / self.seconds, 1),
            "report_to_dispatched_ms": percentiles(
                [r.dispatched_latency for r in self.results if r.dispatched_latency is not None]),
            "case_total_ms": percentiles(
                [r.done_at - r.started for r in done]),  # type: ignore[operator]
            "appended_to_visible_ms": visible,
            "cpu_percent": self.cpu,
        }


async def open_loop(client: LoopClient, rate: float, seconds: float, cpu: CpuWatch,
                    poller: CheckpointPoller, projections: tuple[str, ...],
                    drain: float = 60.0) -> Window:
    results: list[CaseResult] = []
    tasks: list[asyncio.Task[None]] = []
    first_event = len(client.watch.events)
    cpu.begin()
    t0 = time.time()
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            await asyncio.sleep(due - now)
        result = CaseResult(started=time.time())
        results.append(result)
        tasks.append(asyncio.create_task(client.guarded(result)))
        n += 1
    await _sleep_until(start + seconds)
    t1 = time.time()
    usage = cpu.end()
    await _drain(tasks, drain)
    return Window(f"open loop {rate:g}/s", rate, t1 - t0, results,
                  client.watch.events[first_event:], t0, t1, usage, poller, projections)


async def closed_loop(client: LoopClient, workers: int, seconds: float, cpu: CpuWatch,
                      poller: CheckpointPoller, projections: tuple[str, ...],
                      drain: float = 60.0) -> Window:
    results: list[CaseResult] = []
    first_event = len(client.watch.events)
    stop_at = time.monotonic() + seconds

    async def user() -> None:
        while time.monotonic() < stop_at:
            result = CaseResult(started=time.time())
            results.append(result)
            await client.guarded(result)
            if result.error:
                await asyncio.sleep(0.1)

    cpu.begin()
    t0 = time.time()
    tasks = [asyncio.create_task(user()) for _ in range(workers)]
    await _sleep_until(stop_at)
    t1 = time.time()
    usage = cpu.end()
    await _drain(tasks, drain)
    return Window(f"max throughput ({workers} users)", None, t1 - t0, results,
                  client.watch.events[first_event:], t0, t1, usage, poller, projections)


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drain(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=timeout)
        for t in still:
            t.cancel()
        if still:
            await asyncio.wait(still)


async def settle(watch: StreamWatch, poller: CheckpointPoller, projections: tuple[str, ...],
                 timeout: float = 300) -> bool:
    """Let the system work off a backlog before the next load step starts: every projection
    covers the last event, and no new event (a late reaction) came for a second. False if it
    did not within `timeout`."""
    started = time.monotonic()
    if not watch.events:
        return True
    while time.monotonic() - started < timeout:
        last = watch.events[-1]
        now = time.time()
        quiet = now - last.stored_at > 1.0
        if quiet and all(poller.visible_at(n, last.sequence, last.partition, now - 1)
                         for n in projections):
            return True
        await asyncio.sleep(0.5)
    return False


async def run_cases(client: LoopClient, count: int, concurrency: int,
                    progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Drive `count` cases through the loop, `concurrency` at a time; (done, failed)."""
    done = failed = 0
    left = count

    async def worker() -> None:
        nonlocal done, failed, left
        while left > 0:
            left -= 1
            result = CaseResult(started=time.time())
            await client.guarded(result)
            if result.error:
                failed += 1
            else:
                done += 1
            if progress and (done + failed) % 1000 == 0:
                progress(done + failed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed
