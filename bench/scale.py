"""Scale-out: the same load against one instance of each service, then two.

Each row starts a fresh fleet on its own stream and database: `instances` processes per service,
instance i of n started with GRIDLOOP_INSTANCE=i/n so its projection runners claim the partitions
p with p % n == i (with one instance: no share, every partition). The loop's HTTP requests go to
the instances of a service in turn, as a round-robin gateway would send them. The rows run one
after the other, never side by side, so each has the machine to itself (and whatever else was
running on it, recorded as `others`).

What a row reports is what the loop phase reports for a window, plus the CPU summed per service
over its instances, the CPU spent per completed case, the partitions each process claimed (read
from its `runner.claimed` log lines) and the requests each instance served: the evidence that both
instances did work. The ratio two/one at max throughput is the scale-out figure; how far it falls
short of 2 is explained by the CPU columns: on a machine with fewer cores than processes the
second instance only helps as far as there is idle CPU left for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil

from gridloop_events.processes import ServiceProcess
from gridloop_events.servers import find_free_port
from gridloop_events.subjects import Subjects

from . import loop
from .probes import CheckpointPoller, CpuWatch
from .system import REPO, SERVICES, Servers, ServiceGroup

HTTP_SERVICES = ("intake", "dispatch", "feedback")
# Set by whoever ran the benchmark: a share meant for one service would split the wrong fleet.
INSTANCE_VARS = ("GRIDLOOP_INSTANCE", "GRIDLOOP_PARTITIONS",
                 *(f"GRIDLOOP_{s.upper()}_{v}" for s in SERVICES for v in ("INSTANCE", "PARTITIONS")))


@dataclass
class Fleet(ServiceGroup):
    """`instances` processes of each service; processes are keyed `<service>-<i>`."""

    instances: int = 1

    def keys(self, service: str) -> list[str]:
        return [f"{service}-{i}" for i in range(self.instances)]

    def start(self, services=SERVICES, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = self.env()
        for var in INSTANCE_VARS:
            base.pop(var, None)
        # The claims are read from the logs while the processes still run.
        base["PYTHONUNBUFFERED"] = "1"
        n = self.instances
        for service in services:
            for i, key in enumerate(self.keys(service)):
                port = self.ports.setdefault(key, find_free_port())
                env = {**base, f"GRIDLOOP_{service.upper()}_PORT": str(port)}
                if n > 1:
                    env["GRIDLOOP_INSTANCE"] = f"{i}/{n}"
                process = ServiceProcess(service, port, self.log_dir / f"{key}.log", name=key)
                process.start(env, cwd=REPO)
                self.procs[key] = process
        for key in list(self.procs):
            self.wait_ready(key, timeout)

    def claimed(self) -> dict[str, dict[str, list[int]]]:
        """Per process, per projection: the partitions its runner claimed."""
        out: dict[str, dict[str, list[int]]] = {}
        for key in self.procs:
            path = self.log_dir / f"{key}.log"
            claims: dict[str, list[int]] = {}
            for line in path.read_text(errors="replace").splitlines():
                if '"runner.claimed"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                claims.setdefault(rec["projection"], []).extend(rec["partitions"])
            out[key] = {p: sorted(set(v)) for p, v in claims.items()}
        return out


def _by_service(cpu: dict[str, float]) -> dict[str, float]:
    """CPU per service summed over its instances; the servers, loader and others as they are."""
    out: dict[str, float] = {}
    for key, value in cpu.items():
        name = key.rsplit("-", 1)[0] if key.rsplit("-", 1)[0] in SERVICES else key
        out[name] = round(out.get(name, 0.0) + value, 1)
    return out


def _row(window: dict[str, Any], instances: int, cpus: int) -> dict[str, Any]:
    cpu = _by_service(window["cpu_percent"])
    system = round(sum(cpu.get(k, 0.0) for k in (*SERVICES, "nats", "postgres")), 1)
    busy = round(sum(cpu.values()), 1)
    rate = window["completed_cases_per_s"]
    return {
        **window,
        "instances": instances,
        "cpu_by_service": cpu,
        # Services + NATS + PostgreSQL: what the system under test burnt, in % of one core.
        "cpu_system_percent": system,
        "cpu_ms_per_case": round(system * 10 / rate, 1) if rate else None,
        # Everything, the load generator and other sessions included, in % of the whole machine.
        "machine_busy_percent": round(busy / cpus, 1),
    }


async def _sizes(nats_url: str, subjects: Subjects, database_url: str) -> dict[str, int]:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(subjects.stream_name)
        stream = {"stream_messages": info.state.messages, "stream_bytes": info.state.bytes}
    finally:
        await nc.close()
    conn = await asyncpg.connect(database_url)
    try:
        db = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return {**stream, "database_bytes": int(db)}


async def run_row(servers: Servers, run_id: str, log_dir: Path, instances: int, *,
                  users: int, seconds: float, rate: float | None, rate_seconds: float,
                  log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db = await servers.database(f"bench_scale_{instances}")
    prefix = f"benchscale{instances}_{run_id}"
    fleet = Fleet(servers.nats_url, db, prefix, log_dir / f"{instances}x", instances=instances)
    log(f"scale: starting {instances} instance(s) of each service")
    t = time.monotonic()
    await asyncio.to_thread(fleet.start)
    out: dict[str, Any] = {"instances": instances, "start_seconds": round(time.monotonic() - t, 1),
                           "windows": []}
    subjects = Subjects(prefix)
    cpus = psutil.cpu_count() or 1
    try:
        before = await _sizes(servers.nats_url, subjects, db)
        watch = loop.StreamWatch(servers.nats_url, subjects)
        await watch.start()
        poller = CheckpointPoller(db, {name: name for name in SERVICES})
        await poller.start()
        client = loop.LoopClient(
            {s: [fleet.url(k) for k in fleet.keys(s)] for s in HTTP_SERVICES}, watch)
        pids = {**{k: fleet.pid(k) for k in fleet.procs}, **servers.pids(),
                "loader": os.getpid()}
        cpu = CpuWatch(pids)
        try:
            # First requests pay for connections and lazy imports in every instance: not measured.
            await loop.run_cases(client, 4 * instances, 2 * instances)
            await loop.settle(watch, poller, SERVICES, timeout=60)
            if rate:
                log(f"scale: {instances}× open loop at {rate:g} cases/s for {rate_seconds:g}s")
                w = await loop.open_loop(client, rate, rate_seconds, cpu, poller, SERVICES)
                out["windows"].append(_row(w.summary(), instances, cpus))
                log(_line(out["windows"][-1]))
                if not await loop.settle(watch, poller, SERVICES, timeout=120):
                    log("scale: projections still behind after 120s; going on")
            log(f"scale: {instances}× max throughput, {users} users for {seconds:g}s")
            w = await loop.closed_loop(client, users, seconds, cpu, poller, SERVICES)
            out["windows"].append(_row(w.summary(), instances, cpus))
            log(_line(out["windows"][-1]))
            settled = await loop.settle(watch, poller, SERVICES, timeout=120)
            after = await _sizes(servers.nats_url, subjects, db)
            cases = sum(1 for e in watch.events if e.event_type == "CaseReported")
            events = after["stream_messages"] - before["stream_messages"]
            out["sizes"] = {
                **after,
                "cases": cases,
                "events_per_case": round(events / cases, 2) if cases else None,
                "stream_bytes_per_event": round((after["stream_bytes"] - before["stream_bytes"])
                                                / events) if events else None,
                # Every schema's rows for a case (read models, case_state, checkpoints' share);
                # only meaningful once projections caught up, hence `settled`.
                "database_bytes_per_case": round((after["database_bytes"]
                                                  - before["database_bytes"]) / cases)
                if cases else None,
                "settled": settled,
            }
            out["served"] = dict(client.served)
        finally:
            await poller.stop()
            await watch.stop()
            await client.close()
        out["rss_mib_after"] = {k: round(v, 1) for k, v in fleet.rss_mib().items()}
        out["alive"] = fleet.alive()
        out["claimed"] = fleet.claimed()
    finally:
        fleet.stop()
    return out


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Two instances over one, window by window (same load, same order)."""
    if len(rows) < 2 or not rows[0]["windows"] or not rows[-1]["windows"]:
        return {}
    one, many = rows[0], rows[-1]
    out: dict[str, Any] = {"of": [many["instances"], one["instances"]]}
    for a, b in zip(one["windows"], many["windows"], strict=False):
        kind = "max_throughput" if a["offered_cases_per_s"] is None else "fixed_rate"

        def ratio(x: float | None, y: float | None) -> float | None:
            return round(y / x, 2) if x and y is not None else None

        da, db = a["report_to_dispatched_ms"], b["report_to_dispatched_ms"]
        out[kind] = {
            "cases_per_s": ratio(a["completed_cases_per_s"], b["completed_cases_per_s"]),
            "events_per_s": ratio(a["events_per_s"], b["events_per_s"]),
            "report_to_dispatched_p50": ratio(da.get("p50"), db.get("p50")),
            "report_to_dispatched_p99": ratio(da.get("p99"), db.get("p99")),
            "cpu_system": ratio(a["cpu_system_percent"], b["cpu_system_percent"]),
            "cpu_ms_per_case": ratio(a["cpu_ms_per_case"], b["cpu_ms_per_case"]),
        }
    return out


def _explain(rows: list[dict[str, Any]], ratio: dict[str, Any], cpus: int) -> list[str]:
    """Why the ratio is what it is, from the CPU columns of the max-throughput windows."""
    mt = ratio.get("max_throughput")
    if not mt:
        return []
    one, many = rows[0]["windows"][-1], rows[-1]["windows"][-1]
    notes = []
    others = many["cpu_by_service"].get("others", 0.0)
    if many["machine_busy_percent"] >= 90:
        notes.append(
            f"CPU-bound: during the {many['instances']}-instance max-throughput window the "
            f"machine was {many['machine_busy_percent']}% busy ({cpus} cores; the system under "
            f"test {many['cpu_system_percent']}% of one core, the load generator "
            f"{many['cpu_by_service'].get('loader', 0)}%, other processes {others}%). The "
            "added instances had no idle core to run on, so they shared the same CPU time: "
            f"cases/s ×{mt['cases_per_s']} measures the machine, not the partitioning.")
    elif (mt["cases_per_s"] or 0) < 1.5:
        notes.append(
            f"Not CPU-bound (machine {many['machine_busy_percent']}% busy) yet cases/s only "
            f"×{mt['cases_per_s']}: the limit is elsewhere (PostgreSQL or NATS round trips, "
            "fsync); see the per-process CPU columns.")
    if mt["cpu_ms_per_case"] and mt["cpu_ms_per_case"] > 1.1:
        notes.append(
            f"CPU per case rose ×{mt['cpu_ms_per_case']} ({one['cpu_ms_per_case']} → "
            f"{many['cpu_ms_per_case']} ms), most likely because each instance fetches "
            "smaller batches (half the partitions each), so per-batch costs (a transaction, "
            "checkpoint rows, a fetch) are spread over fewer events, and twice the processes "
            "compete for the same cores.")
    return notes


def _line(w: dict[str, Any]) -> str:
    d = w["report_to_dispatched_ms"]
    return (f"  {w['instances']}× {w['name']}: {w['completed_cases_per_s']} cases/s, "
            f"{w['events_per_s']} events/s, {w['cases_failed']} failed, report→dispatched p50 "
            f"{d.get('p50')} p99 {d.get('p99')} ms; system CPU {w['cpu_system_percent']}% "
            f"({w['cpu_ms_per_case']} ms/case), machine {w['machine_busy_percent']}% busy")


async def run(servers: Servers, run_id: str, log_dir: Path, instances: tuple[int, ...], *,
              users: int, seconds: float, rate: float | None, rate_seconds: float,
              log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rows = []
    for n in instances:
        rows.append(await run_row(servers, run_id, log_dir, n, users=users, seconds=seconds,
                                  rate=rate, rate_seconds=rate_seconds, log=log))
    result = {"instances": list(instances), "users": users, "seconds": seconds,
              "rate": rate, "rate_seconds": rate_seconds, "cpus": psutil.cpu_count(),
              "rows": rows, "ratio": compare(rows)}
    result["notes"] = _explain(rows, result["ratio"], result["cpus"] or 1)
    mt = result["ratio"].get("max_throughput")
    if mt:
        log(f"scale: {rows[-1]['instances']}/{rows[0]['instances']} at max throughput: "
            f"cases/s ×{mt['cases_per_s']}, events/s ×{mt['events_per_s']}, "
            f"system CPU ×{mt['cpu_system']}")
    return result
