"""Memory: each service's resident set as the number of cases it has handled grows.

Driving 100,000 cases through the HTTP loop would take hours at the loop's measured throughput on
a two-core machine, so whole case histories are written to the live stream instead — made by the
services' own rules (bench/events.py), starting now so no deadline is past due — and the four
services consume them live: every projection applies every event and every reaction runs (and
finds its event already in the log, by its derived id). Chunks are written only as fast as the
slowest projection keeps up (one chunk ahead), and each service's RSS is read after every
chunk.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats

from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects

from .events import interleaved_stream, publish_pipelined
from .probes import partition_of_subject, wait_caught_up
from .system import ServiceGroup

EVENTS_PER_CASE = 6.6  # the generator's mix (misses and unsatisfied ratings) averages this


async def run(group: ServiceGroup, marks: tuple[int, ...], budget: float | None,
              log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    subjects = Subjects(group.prefix)
    schemas = {name: name for name in group.procs}
    nc = await nats.connect(group.nats_url)
    conn = await asyncpg.connect(group.database_url)
    started = time.monotonic()
    series: list[dict[str, Any]] = [{"cases": 0, "rss_mib": group.rss_mib()}]
    result: dict[str, Any] = {"marks": list(marks), "series": series}
    try:
        js = nc.jetstream(timeout=30)
        await EventStore(nc, subjects).ensure_stream()
        cases_done = 0
        events_done = 0
        target = marks[-1]
        # ~1,000 cases a chunk: each chunk is whole cases, so a count of cases is exact.
        stream = interleaved_stream(subjects, int(target * EVENTS_PER_CASE * 1.2), seed=99,
                                    chunk_cases=1000,
                                    base=datetime.now(UTC) + timedelta(minutes=1))
        next_mark = 0
        first_mark_at = started

        async def settle(targets: dict[int | None, int], reported: int, events: int) -> bool:
            """Wait for a written chunk to be applied everywhere, read RSS; True: stop here."""
            nonlocal cases_done, events_done, next_mark, first_mark_at
            await wait_caught_up(conn, schemas, targets, timeout=900)
            cases_done += reported
            events_done += events
            elapsed = time.monotonic() - started
            point = {"cases": cases_done, "events": events_done, "seconds": round(elapsed, 1),
                     "rss_mib": group.rss_mib()}
            series.append(point)
            if cases_done >= marks[next_mark]:
                log(f"  memory: {cases_done:,} cases ({elapsed:.0f}s) RSS "
                    + ", ".join(f"{k} {v:.0f} MiB" for k, v in point["rss_mib"].items()))
                result[f"at_{marks[next_mark]}"] = point
                if next_mark == 0:
                    first_mark_at = time.monotonic()
                next_mark += 1
                if next_mark == len(marks):
                    return True
            # The budget bounds the growth past the first mark; the first mark is always reached.
            if budget is not None and next_mark > 0 and time.monotonic() - first_mark_at > budget:
                result["capped"] = {"after_seconds": round(elapsed), "cases": cases_done}
                log(f"  memory: stopped by the time budget at {cases_done:,} cases")
                return True
            return False

        # One chunk in flight: the next is written while the services still apply the last.
        in_flight: tuple[dict[int | None, int], int, int] | None = None
        for chunk in stream:
            reported = sum(1 for ev in chunk if ev.event_type == "CaseReported")
            seqs = await publish_pipelined(js, chunk)
            targets: dict[int | None, int] = {}
            for ev, seq in zip(chunk, seqs, strict=True):
                part = partition_of_subject(subjects, ev.subject)
                targets[part] = max(targets.get(part, 0), seq)
            if in_flight is not None and await settle(*in_flight):
                in_flight = None
                break
            in_flight = (targets, reported, len(chunk))
        if in_flight is not None:
            await settle(*in_flight)
        result["cases_per_s"] = round(cases_done / (time.monotonic() - started), 1)
        result["alive"] = group.alive()
    finally:
        await conn.close()
        await nc.close()
    return result
