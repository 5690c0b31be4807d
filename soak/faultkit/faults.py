"""The faults, each on a real process: SIGKILL a service, SIGKILL or SIGSTOP nats-server, stop
PostgreSQL fast or immediate, republish stored events, jump escalation's clock. Each returns a
record of what it did and how long the system took to answer `/readyz` again."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime

import httpx
import nats

from gridloop_events.store import CONTENT_HASH_HEADER
from gridloop_events.subjects import Subjects

from .cluster import SERVICES, Cluster


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # seconds since the run started
    down_seconds: float = 0.0
    recovery_seconds: float | None = None  # until every service answered /readyz again
    detail: str = ""


@dataclass
class FaultLog:
    started: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)

    def begin(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, round(time.monotonic() - self.started, 2))
        self.faults.append(fault)
        return fault

    @property
    def recoveries(self) -> int:
        return sum(1 for f in self.faults if f.recovery_seconds is not None)

    def as_list(self) -> list[dict[str, object]]:
        return [asdict(f) for f in self.faults]


async def _recovered(cluster: Cluster, fault: Fault, timeout: float = 120.0) -> None:
    fault.recovery_seconds = round(await asyncio.to_thread(cluster.wait_all_ready, timeout), 2)


async def kill_service(cluster: Cluster, log: FaultLog, service: str, pause: float) -> Fault:
    fault = log.begin("sigkill", service)
    await asyncio.to_thread(cluster.kill, service)
    await asyncio.sleep(pause)
    fault.down_seconds = round(pause, 2)
    cluster.spawn(service)
    await _recovered(cluster, fault)
    return fault


async def kill_nats(cluster: Cluster, log: FaultLog, pause: float) -> Fault:
    fault = log.begin("sigkill", "nats-server")
    await asyncio.to_thread(cluster.nats.kill)
    await asyncio.sleep(pause)
    await asyncio.to_thread(cluster.nats.start)  # same port, same data
    fault.down_seconds = round(pause, 2)
    await _recovered(cluster, fault)
    return fault


async def stall_nats(cluster: Cluster, log: FaultLog, seconds: float) -> Fault:
    fault = log.begin("sigstop", "nats-server")
    cluster.nats.pause()
    try:
        await asyncio.sleep(seconds)
    finally:
        cluster.nats.resume()
    fault.down_seconds = round(seconds, 2)
    await _recovered(cluster, fault)
    return fault


async def restart_postgres(cluster: Cluster, log: FaultLog, mode: str) -> Fault:
    fault = log.begin(f"postgres-{mode}", "postgres")
    started = time.monotonic()
    await asyncio.to_thread(cluster.postgres.restart, mode)
    fault.down_seconds = round(time.monotonic() - started, 2)
    await _recovered(cluster, fault)
    return fault


async def republish(cluster: Cluster, log: FaultLog, rng: random.Random, count: int) -> Fault:
    """Copies of stored events' bytes, each under a fresh Nats-Msg-Id: the stream takes them as
    new messages, so consumers see an event id again, later and out of order."""
    fault = log.begin("republish", "stream")
    subjects = Subjects(cluster.prefix)
    nc = await nats.connect(cluster.nats_url)
    try:
        js = nc.jetstream()
        tip = (await js.stream_info(subjects.stream_name)).state.last_seq
        picked = sorted(rng.sample(range(1, tip + 1), min(count, tip)))
        for seq in picked:
            msg = await js.get_msg(subjects.stream_name, seq, direct=True)
            headers = {"Nats-Msg-Id": str(uuid.uuid4())}
            if msg.headers and CONTENT_HASH_HEADER in msg.headers:
                headers[CONTENT_HASH_HEADER] = msg.headers[CONTENT_HASH_HEADER]
            await js.publish(msg.subject, msg.data, headers=headers)
        fault.detail = f"{len(picked)} copies of sequences {picked[:10]}…"
    finally:
        await nc.close()
    await _recovered(cluster, fault)
    return fault


async def jump_clock(cluster: Cluster, log: FaultLog, offset_seconds: float) -> Fault:
    fault = log.begin("clock-jump" if offset_seconds else "clock-reset", "escalation")
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.post(f"{cluster.url('escalation')}/v1/admin/clock",
                              json={"offset_seconds": offset_seconds},
                              headers=cluster.supervisor())
        r.raise_for_status()
        fault.detail = f"offset {offset_seconds:+.0f}s, now {r.json()['now']}"
    await _recovered(cluster, fault)
    return fault


async def escalation_now(cluster: Cluster) -> datetime:
    """Escalation's own `now`, jumped or not."""
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(f"{cluster.url('escalation')}/v1/admin/clock",
                             headers=cluster.supervisor())
        r.raise_for_status()
        return datetime.fromisoformat(r.json()["now"])


async def random_fault(cluster: Cluster, log: FaultLog, rng: random.Random,
                       kinds: list[str]) -> Fault:
    kind = rng.choice(kinds)
    if kind == "service":
        return await kill_service(cluster, log, rng.choice(SERVICES), rng.uniform(0.2, 4.0))
    if kind == "nats-kill":
        return await kill_nats(cluster, log, rng.uniform(0.2, 4.0))
    if kind == "nats-stall":
        return await stall_nats(cluster, log, rng.uniform(2.0, 15.0))
    if kind == "postgres":
        return await restart_postgres(cluster, log, rng.choice(["fast", "immediate"]))
    if kind == "republish":
        return await republish(cluster, log, rng, rng.randint(3, 15))
    if kind == "clock":
        fault = await jump_clock(cluster, log, rng.choice([3600.0, 86400.0 + 3600]))
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        await jump_clock(cluster, log, 0.0)
        return fault
    raise ValueError(f"unknown fault kind {kind!r}")
