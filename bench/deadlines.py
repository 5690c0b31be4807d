"""Deadlines: the escalation service alone, holding many open timers, asked how late it reports
the ones that fall due.

1. `open_timers / 2` cases are written straight to the log (CaseReported + CaseDispatched, two
   timers each: accept and resolve), due days from now, and escalation's runner builds its timer
   table from them (its ingest rate is reported too).
2. Idle: nothing is due; escalation's CPU over a quiet window is what keeping the timers costs.
3. Probes: a few hundred more cases whose accept deadline falls due at spread-out moments over
   the next seconds. For each DeadlineMissed the stream stores, lateness = the time the stream
   stored it − its due_at.

No other service runs on this stream, so nothing reacts to the misses (no escalation re-dispatch
traffic): the figure is the ticker's own.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.api as jsapi
import psutil

from gridloop_district import default_district
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects

from .events import CaseWriter, encoded, publish_pipelined
from .probes import percentiles
from .system import ServiceGroup


async def _timers(conn: asyncpg.Connection) -> int:
    # Counted rather than read off the checkpoint: what matters is that the timers exist.
    return int(await conn.fetchval("SELECT count(*) FROM escalation.timers"))


async def run(nats_url: str, database_url: str, prefix: str, log_dir: Path, open_timers: int,
              probes: int, spread: float, idle_seconds: float, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    subjects = Subjects(prefix)
    rng = random.Random(21)
    writer = CaseWriter(default_district(), subjects)
    nc = await nats.connect(nats_url)
    group = ServiceGroup(nats_url, database_url, prefix, log_dir)
    out: dict[str, Any] = {"open_timers_wanted": open_timers, "probes": probes}
    try:
        js = nc.jetstream(timeout=30)
        store = EventStore(nc, subjects)
        await store.ensure_stream()
        await asyncio.to_thread(group.start, ["escalation"])
        conn = await asyncpg.connect(database_url)
        try:
            # 1. Open timers, far from due.
            now = datetime.now(UTC)
            started = time.perf_counter()
            cases = open_timers // 2
            written = 0
            batch: list[Any] = []
            for i in range(cases):
                at = now - timedelta(seconds=cases - i)
                batch.extend(writer.timer_case(at, now + timedelta(days=7),
                                               now + timedelta(days=8), rng))
                if len(batch) >= 4000 or i == cases - 1:
                    await publish_pipelined(js, encoded(batch, subjects))
                    written += len(batch)
                    batch = []
            published = time.perf_counter() - started
            log(f"  deadlines: {written:,} events written in {published:.0f}s; "
                "escalation building its timers…")
            while await _timers(conn) < 2 * cases:
                if not group.procs["escalation"].alive:
                    raise RuntimeError(group.log_tail("escalation"))
                await asyncio.sleep(0.5)
            ingest = time.perf_counter() - started
            pending = await conn.fetchval(
                "SELECT count(*) FROM escalation.timers WHERE status IN ('pending', 'warned')")
            out.update({"open_timers": int(pending), "ingest_events": written,
                        "ingest_seconds": round(ingest, 1),
                        "ingest_events_per_s": round(written / ingest)})

            # 2. Idle with them.
            proc = psutil.Process(group.pid("escalation"))
            await asyncio.sleep(2)
            t0 = proc.cpu_times()
            w0 = time.monotonic()
            await asyncio.sleep(idle_seconds)
            t1 = proc.cpu_times()
            idle_cpu = 100 * ((t1.user + t1.system) - (t0.user + t0.system)) / (
                time.monotonic() - w0)
            out["idle_cpu_percent"] = round(idle_cpu, 1)
            out["idle_seconds"] = idle_seconds
            out["rss_mib"] = round(proc.memory_info().rss / 2**20, 1)

            # 3. Probes falling due over `spread` seconds, starting a few seconds out.
            misses: dict[str, float] = {}
            seen_all = asyncio.Event()

            async def on_missed(msg) -> None:  # type: ignore[no-untyped-def]
                payload = json.loads(msg.data)["payload"]
                due = datetime.fromisoformat(payload["due_at"]).timestamp()
                misses[payload["deadline_id"]] = msg.metadata.timestamp.timestamp() - due
                if len(misses) >= probes:
                    seen_all.set()

            sub = await js.subscribe(subjects.of_type("DeadlineMissed"),
                                     stream=subjects.stream_name, cb=on_missed,
                                     ordered_consumer=True,
                                     deliver_policy=jsapi.DeliverPolicy.NEW)
            first_due = datetime.now(UTC) + timedelta(seconds=5)
            probe_events = []
            for i in range(probes):
                due = first_due + timedelta(seconds=spread * i / max(1, probes - 1))
                probe_events.extend(writer.timer_case(datetime.now(UTC), due,
                                                      due + timedelta(days=1), rng))
            cpu0 = proc.cpu_times()
            w0 = time.monotonic()
            await publish_pipelined(js, encoded(probe_events, subjects))
            try:
                await asyncio.wait_for(seen_all.wait(), timeout=spread + 120)
            except TimeoutError:
                pass
            cpu1 = proc.cpu_times()
            await sub.unsubscribe()
            lateness = sorted(misses.values())
            out["missed_reported"] = len(lateness)
            out["lateness_ms"] = percentiles(lateness)
            out["cpu_percent_while_firing"] = round(100 * ((cpu1.user + cpu1.system) - (
                cpu0.user + cpu0.system)) / (time.monotonic() - w0), 1)
            out["spread_seconds"] = spread
        finally:
            await conn.close()
    finally:
        group.stop()
        await nc.close()
    return out
