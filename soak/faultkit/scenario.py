"""One run: load on, faults in, load drained, projections caught up, then the checker's verdict
held together with what the load generator was told (acknowledged cases must be in the log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gridloop_events.invariants import CheckOptions, Report, run_check

from .cluster import Cluster
from .faults import FaultLog
from .load import Load, Urls


@dataclass
class Outcome:
    report: Report
    load: Load
    faults: FaultLog
    lost: list[str] = field(default_factory=list)  # acknowledged case ids absent from the log
    not_done: list[str] = field(default_factory=list)  # keys whose cases never reached done
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        r = self.report
        return {
            "seconds": round(self.seconds, 1),
            "events": r.events,
            "stream_messages": r.messages,
            "repeated_event_ids": r.copies,
            "cases": r.cases,
            "cases_acknowledged": len(self.load.stats.acknowledged),
            "cases_done": len(self.load.stats.done),
            "reports_refused": sum(v for k, v in self.load.stats.counts.items()
                                   if k.startswith("report refused")),
            "faults": len(self.faults.faults),
            "recoveries": self.faults.recoveries,
            "longest_recovery_seconds": max((f.recovery_seconds or 0.0
                                             for f in self.faults.faults), default=0.0),
            "deadlines_missed": r.deadlines_missed,
            "missed_under_clock_jump": r.missed_under_clock_jump,
            "longest_wait_past_deadline_seconds": round(r.max_lateness_seconds, 1),
            "deadlines_overtaken_unreported": r.deadlines_overtaken,
            "longest_overtaken_past_deadline_seconds": round(r.max_overtaken_seconds, 1),
            "violations": len(r.violations),
            "lost_cases": len(self.lost),
            "stuck_cases": len(self.not_done),
            "load": dict(self.load.stats.counts),
        }

    def describe(self) -> str:
        s = self.summary()
        head = ", ".join(f"{k}={v}" for k, v in s.items() if k != "load")
        return f"{head}\n{self.report.render(20)}"


def urls(cluster: Cluster) -> Urls:
    return Urls(cluster.url("intake"), cluster.url("dispatch"), cluster.url("feedback"))


async def caught_up(cluster: Cluster, options: CheckOptions, timeout: float = 90.0) -> Report:
    """Check until every projection reached the log's tip (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        report = await run_check(cluster.nats_url, cluster.database_url, prefix=cluster.prefix,
                                 feedback_url=cluster.url("feedback"), options=options,
                                 http_headers=cluster.supervisor())
        lagging = any(p["lag"] for p in report.projections.values())
        if not lagging or time.monotonic() > deadline:
            return report
        # The load is drained: what lags is a reaction or two, applied within moments.
        await asyncio.sleep(0.25)


async def run(cluster: Cluster, inject: Callable[[Load, FaultLog], Awaitable[None]], *,
              rate: float = 2.0, seed: int = 0, warmup: float = 2.0,
              drain_timeout: float = 60.0, idle_share: float = 0.0,
              idle_for: float | None = None, think: tuple[float, float] = (0.05, 0.5),
              options: CheckOptions | None = None) -> Outcome:
    started = time.monotonic()
    load = Load(urls(cluster), rate=rate, seed=seed, idle_share=idle_share, idle_for=idle_for,
                think=think, credentials=cluster.headers)
    faults = FaultLog()
    load.start()
    try:
        await asyncio.sleep(warmup)
        await inject(load, faults)
        not_done = sorted(await load.drain(drain_timeout))
    finally:
        await load.stop_reporting()
        await load.close()
    # Every case is done by now, so nothing may be left unsettled: settle at once.
    report = await caught_up(cluster, options or CheckOptions(settle_seconds=0.0))
    lost = sorted(case_id for case_id in load.stats.acknowledged.values()
                  if case_id not in report.case_ids)
    return Outcome(report, load, faults, lost, not_done, time.monotonic() - started)
