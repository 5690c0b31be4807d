"""`make bench`: Gridloop against its raw ceilings and a Python event-store peer, in one run.

    python -m bench [--quick] [--no-caps] [--profile] [--phases ceilings,peer,loop,...]

Writes bench/results/<timestamp>.json and .md and prints the markdown. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

import gridloop_events
from gridloop_events.subjects import Subjects

from . import ceilings, deadlines, loop, memory, replay, scale
from . import peer as peer_mod
from .probes import CheckpointPoller, CpuWatch, _jiffies_busy
from .report import markdown, targets
from .system import BENCH_DIR, DATA_DIR, REPO, SERVICES, Servers, ServiceGroup, delete_streams

RESULTS = BENCH_DIR / "results"
PHASES = ("ceilings", "peer", "loop", "scale", "deadlines", "replay", "memory")


@dataclass(frozen=True)
class Profile:
    name: str
    publish_awaited: int
    publish_events: int
    concurrent_writers: int
    copy_events: int
    peer_aggregates: int
    peer_events_per_aggregate: int
    peer_writers: int
    rates: tuple[float, ...]
    rate_seconds: float
    max_users: int
    max_seconds: float
    open_timers: int
    probes: int
    probe_spread: float
    idle_seconds: float
    replay_events: int
    replay_cap: int | None  # rebuild up to this many events of the stream (None: all)
    drain_limit: int | None  # drain at most this many events of the replay stream
    replay_processes: tuple[int, ...]  # one rebuild of each projection per process count
    memory_marks: tuple[int, int]
    memory_budget: float | None  # seconds
    scale_instances: tuple[int, ...]  # one row per fleet size, each against the same load
    scale_users: int
    scale_seconds: float
    scale_rate: float | None  # a fixed-rate window before max throughput (None: none)
    scale_rate_seconds: float


QUICK = Profile(
    name="quick", publish_awaited=1_000, publish_events=10_000, concurrent_writers=64,
    copy_events=50_000, peer_aggregates=500, peer_events_per_aggregate=4, peer_writers=16,
    rates=(10, 100), rate_seconds=15, max_users=128, max_seconds=15,
    open_timers=10_000, probes=200, probe_spread=15, idle_seconds=10,
    replay_events=50_000, replay_cap=None, drain_limit=None, replay_processes=(1, 2),
    memory_marks=(1_000, 5_000),
    memory_budget=None, scale_instances=(1, 2), scale_users=48, scale_seconds=15,
    scale_rate=8, scale_rate_seconds=10,
)
FULL = Profile(
    name="full", publish_awaited=3_000, publish_events=30_000, concurrent_writers=64,
    copy_events=200_000, peer_aggregates=1_000, peer_events_per_aggregate=5, peer_writers=16,
    rates=(10, 100, 200, 500), rate_seconds=30, max_users=256, max_seconds=30,
    open_timers=100_000, probes=500, probe_spread=30, idle_seconds=20,
    # Caps keep the run near 45 minutes on a two-core machine: --no-caps lifts them.
    replay_events=1_000_000, replay_cap=200_000, drain_limit=200_000, replay_processes=(1, 2),
    memory_marks=(10_000, 100_000), memory_budget=1200,
    scale_instances=(1, 2), scale_users=96, scale_seconds=30, scale_rate=10,
    scale_rate_seconds=30,
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subject_scheme() -> str:
    """A short fingerprint of the subject scheme and the event schemas: a replay stream
    prepared by other code is prepared again rather than replayed wrongly."""
    import hashlib

    from gridloop_events.catalogue import ALL_PAYLOADS

    parts = [Subjects("x").event("d", "c", "T")]
    parts += [json.dumps(cls.model_json_schema(), sort_keys=True) for cls in ALL_PAYLOADS]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:6]


def machine_info(profile: Profile, run_id: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""

    busy0 = _jiffies_busy()
    time.sleep(2)
    others = 100 * (_jiffies_busy() - busy0) / 2
    return {
        "run_id": run_id,
        "started": datetime.now().isoformat(timespec="seconds"),
        "profile": profile.name,
        "settings": asdict(profile),
        "commit": git("rev-parse", "--short", "HEAD"),
        # Where the code under test was imported from (normally this checkout).
        "code": str(Path(gridloop_events.__file__).resolve().parents[3]),
        "repo": str(REPO),
        "dirty": bool(git("status", "--porcelain", "--", "libs", "services")),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "others_cpu_percent_start": round(others, 1),
        "contended": others > 25,
        "python": sys.version.split()[0],
        "nats_py": version("nats-py"),
        "asyncpg": version("asyncpg"),
    }


async def phase_ceilings(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    events = ceilings.sample_events(max(p.publish_events, p.copy_events), "x")
    say(f"ceilings: JetStream publish ({p.publish_awaited:,} awaited, {p.publish_events:,} "
        "concurrent and pipelined)")
    out = await ceilings.publish_ceilings(s.nats_url, events[: p.publish_events],
                                          p.publish_awaited, p.concurrent_writers, run_id)
    say(f"ceilings: replay stream of {p.replay_events:,} events")
    out["replay_stream"] = await replay.prepare_stream(
        s.nats_url, p.replay_events, subject_scheme(), log=say)
    say("ceilings: pull drains of the replay stream")
    out["drain_no_ack"] = await replay.drain(s.nats_url, p.replay_events, ack=False,
                                             scheme=subject_scheme(), limit=p.drain_limit)
    out["drain_no_ack_batched"] = await replay.drain_batched(
        s.nats_url, p.replay_events, scheme=subject_scheme(), limit=p.drain_limit)
    out["drain_ack"] = await replay.drain(s.nats_url, p.replay_events, ack=True,
                                          scheme=subject_scheme(), limit=p.drain_limit)
    say(f"ceilings: COPY of {p.copy_events:,} events into jsonb")
    db = await s.database("bench_copy")
    out["copy_jsonb"] = await ceilings.copy_ceiling(db, events[: p.copy_events])
    return out


async def phase_peer(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    say(f"peer: eventsourcing, {p.peer_aggregates:,} aggregates × "
        f"{p.peer_events_per_aggregate} events")
    db = await s.database("bench_peer")
    args = {"database_url": db, "aggregates": p.peer_aggregates,
            "events_per_aggregate": p.peer_events_per_aggregate, "writers": p.peer_writers}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.peer", json.dumps(args), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed: {stderr.decode()[-2000:]}")
    peer = json.loads(stdout.decode().strip().splitlines()[-1])
    say("peer: Gridloop EventStore.append, same shape")
    mine = await peer_mod.gridloop_append(s.nats_url, f"benchappend_{run_id}", p.peer_aggregates,
                                          p.peer_events_per_aggregate, p.peer_writers)
    return {"version": version("eventsourcing"), "psycopg": version("psycopg"),
            "aggregates": p.peer_aggregates, "events_per_aggregate": p.peer_events_per_aggregate,
            "eventsourcing": peer, "gridloop": mine}


def _py_spy(pids: dict[str, int], seconds: float, stem: str) -> list[subprocess.Popen[bytes]]:
    spy = Path(sys.executable).with_name("py-spy")
    procs = []
    for name, pid in pids.items():
        out = RESULTS / f"{stem}-pyspy-{name}.txt"
        procs.append(subprocess.Popen(
            [str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw",
             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def phase_loop(s: Servers, p: Profile, run_id: str, profile_stem: str | None) -> dict[str, Any]:
    db = await s.database("bench_loop")
    prefix = f"benchloop_{run_id}"
    group = ServiceGroup(s.nats_url, db, prefix, DATA_DIR / "logs" / run_id / "loop")
    say("loop: starting the four services")
    await asyncio.to_thread(group.start)
    notes: list[str] = []
    windows: list[dict[str, Any]] = []
    try:
        subjects = Subjects(prefix)
        watch = loop.StreamWatch(s.nats_url, subjects)
        await watch.start()
        poller = CheckpointPoller(db, {name: name for name in SERVICES})
        await poller.start()
        client = loop.LoopClient({n: group.url(n) for n in ("intake", "dispatch", "feedback")},
                                 watch)
        pids = {**{n: group.pid(n) for n in SERVICES}, **s.pids(), "loader": os.getpid()}
        cpu = CpuWatch(pids)
        try:
            for rate in p.rates:
                say(f"loop: open loop at {rate:g} cases/s for {p.rate_seconds:g}s")
                w = await loop.open_loop(client, rate, p.rate_seconds, cpu, poller,
                                         tuple(SERVICES))
                windows.append(w.summary())
                say(_line(windows[-1]))
                if not await loop.settle(watch, poller, SERVICES):
                    say("loop: projections still behind after 300s; going on")
                if rate >= 100 and windows[-1]["completed_cases_per_s"] < 0.5 * rate:
                    rest = [r for r in p.rates if r > rate]
                    if rest:
                        notes.append(f"Open-loop rates {', '.join(f'{r:g}' for r in rest)}/s "
                                     f"not run: the system completed "
                                     f"{windows[-1]['completed_cases_per_s']} cases/s when "
                                     f"offered {rate:g}/s.")
                        say(notes[-1])
                    break
            say(f"loop: max throughput, {p.max_users} closed-loop users for {p.max_seconds:g}s")
            spies = []
            if profile_stem:
                async def spy_later() -> None:
                    await asyncio.sleep(p.max_seconds * 0.25)
                    spies.extend(_py_spy({n: group.pid(n) for n in SERVICES},
                                         p.max_seconds * 0.5, profile_stem))
                spy_task = asyncio.create_task(spy_later())
            w = await loop.closed_loop(client, p.max_users, p.max_seconds, cpu, poller,
                                       tuple(SERVICES))
            windows.append(w.summary())
            say(_line(windows[-1]))
            if profile_stem:
                await spy_task
                for sp in spies:
                    await asyncio.to_thread(sp.wait)
                notes.append(f"py-spy profiles of the max-throughput window: "
                             f"bench/results/{profile_stem}-pyspy-<service>.txt")
        finally:
            await poller.stop()
            await watch.stop()
            await client.close()
        rss = group.rss_mib()
        alive = group.alive()
    finally:
        group.stop()
    return {"windows": windows, "notes": notes, "rss_mib_after": rss, "alive": alive}


def _line(w: dict[str, Any]) -> str:
    d = w["report_to_dispatched_ms"]
    return (f"  {w['name']}: {w['completed_cases_per_s']} cases/s, {w['events_per_s']} events/s, "
            f"{w['cases_failed']} failed, report→dispatched p50 {d.get('p50')} p99 {d.get('p99')}"
            f" ms; CPU {w['cpu_percent']}")


async def phase_scale(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    return await scale.run(s, run_id, DATA_DIR / "logs" / run_id / "scale", p.scale_instances,
                           users=p.scale_users, seconds=p.scale_seconds, rate=p.scale_rate,
                           rate_seconds=p.scale_rate_seconds, log=say)


async def phase_deadlines(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    say(f"deadlines: {p.open_timers:,} open timers, {p.probes} probes")
    db = await s.database("bench_deadlines")
    return await deadlines.run(s.nats_url, db, f"benchdl_{run_id}",
                               DATA_DIR / "logs" / run_id / "deadlines", p.open_timers,
                               p.probes, p.probe_spread, p.idle_seconds, log=say)


async def phase_replay(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    scheme = subject_scheme()
    await replay.prepare_stream(s.nats_url, p.replay_events, scheme, log=say)
    out: dict[str, Any] = {"events": p.replay_events, "rebuild_to": p.replay_cap,
                           "rebuilds": []}
    for name in replay.PROJECTIONS:
        for processes in p.replay_processes:
            say(f"replay: rebuilding {name} from {p.replay_cap or p.replay_events:,} events "
                f"by {processes} process(es)")
            db = await s.database(f"bench_replay_{name}_{processes}")
            args = [name, s.nats_url, db, replay.replay_prefix(p.replay_events, scheme),
                    str(p.replay_cap or 0), str(processes)]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.replay", *args, cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await proc.communicate()
            if proc.returncode != 0:
                out["rebuilds"].append({"projection": name, "processes": processes,
                                        "error": stderr.decode()[-1500:]})
                say(f"  {name}: failed")
                continue
            result = json.loads(stdout.decode().strip().splitlines()[-1])
            out["rebuilds"].append(result)
            say(f"  {name}: {result['events_per_s']:,} events/s, peak RSS "
                f"{result['peak_rss_mib']} MiB")
    return out


async def phase_memory(s: Servers, p: Profile, run_id: str) -> dict[str, Any]:
    db = await s.database("bench_memory")
    group = ServiceGroup(s.nats_url, db, f"benchmem_{run_id}",
                         DATA_DIR / "logs" / run_id / "memory")
    say(f"memory: services' RSS at {p.memory_marks[0]:,} and {p.memory_marks[1]:,} cases")
    await asyncio.to_thread(group.start)
    try:
        return await memory.run(group, p.memory_marks, p.memory_budget, log=say)
    finally:
        group.stop()


async def run(p: Profile, phases: list[str], profile: bool) -> dict[str, Any]:
    run_id = datetime.now().strftime("%Y%m%d_%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"run": machine_info(p, run_id)}
    if results["run"]["contended"]:
        say(f"warning: other processes are using {results['run']['others_cpu_percent_start']}%"
            " CPU; the figures will be skewed")
    started = time.monotonic()
    with Servers() as s:
        keep = [replay.replay_stream(p.replay_events, subject_scheme())]
        if p is not QUICK:
            keep.append(replay.replay_stream(QUICK.replay_events, subject_scheme()))
        else:
            keep.append(replay.replay_stream(FULL.replay_events, subject_scheme()))
        gone = await delete_streams(s.nats_url, keep)
        if gone:
            say(f"deleted leftover streams: {', '.join(gone)}")
        stem = run_id if profile else None
        steps = {
            "ceilings": lambda: phase_ceilings(s, p, run_id),
            "peer": lambda: phase_peer(s, p, run_id),
            "loop": lambda: phase_loop(s, p, run_id, stem),
            "scale": lambda: phase_scale(s, p, run_id),
            "deadlines": lambda: phase_deadlines(s, p, run_id),
            "replay": lambda: phase_replay(s, p, run_id),
            "memory": lambda: phase_memory(s, p, run_id),
        }
        try:
            for name in phases:
                t = time.monotonic()
                try:
                    results[name] = await steps[name]()
                except Exception as exc:  # noqa: BLE001 - one phase failing keeps the others
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                results.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t)
                say(f"{name} done in {time.monotonic() - t:.0f}s")
        finally:
            await delete_streams(s.nats_url, keep)
    results["run"]["seconds"] = round(time.monotonic() - started)
    results["targets"] = targets(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short run (15-25 minutes on two cores)")
    parser.add_argument("--no-caps", action="store_true",
                        help="full sizes without time caps (replay all 1M events, memory to "
                             "100k cases): hours on a two-core machine")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy every service during the max-throughput window")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    if args.no_caps:
        from dataclasses import replace

        profile = replace(profile, replay_cap=None, drain_limit=None, memory_budget=None)
    phases = [ph for ph in args.phases.split(",") if ph]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    results = asyncio.run(run(profile, phases, args.profile))
    stem = RESULTS / results["run"]["run_id"]
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    print(text)
    say(f"results: {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
