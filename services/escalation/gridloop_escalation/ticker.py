"""The ticker: a background job that turns due timers into DeadlineMissed / DeadlineApproaching.

Each tick scans the timer table with the injected clock's `now` (two index range scans, LIMIT
batches), then decides per timer on the case's state read from the log — not the table, which
may lag — through `commands.execute`. Exactly one event per deadline follows from the derived
event ids and the store's per-case guard, however many instances tick or restart; the in-memory
`handled` map only saves work while an emitted event travels back through the projection.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from gridloop_events.clock import Clock
from gridloop_events.commands import execute
from gridloop_events.logging import get_logger
from gridloop_events.projection import check_schema
from gridloop_events.service import Runtime
from gridloop_events.store import EventStore
from gridloop_events.vocabulary import DeadlineKind

from .domain.decisions import decide_missed, decide_warning
from .domain.timers import Timer, TimerStatus
from .settings import EscalationSettings

log = get_logger(__name__)

MISSED = "missed"
WARNED = "warned"
ERROR_RETRY_SECONDS = 1.0

_COLUMNS = ("deadline_id, case_id, district, kind, set_at, due_at, warn_at, unit_code, "
            "correlation_id, status")


@dataclass
class TickerStats:
    ticks: int = 0
    missed: int = 0
    warned: int = 0
    errors: int = 0
    last_tick_at: datetime | None = None


def _timer(row: asyncpg.Record) -> Timer:
    return Timer(
        deadline_id=row["deadline_id"],
        case_id=row["case_id"],
        district=row["district"],
        kind=DeadlineKind(row["kind"]),
        set_at=row["set_at"],
        due_at=row["due_at"],
        warn_at=row["warn_at"],
        unit_code=row["unit_code"],
        correlation_id=row["correlation_id"],
        status=TimerStatus(row["status"]),
    )


class Ticker:
    def __init__(self, settings: EscalationSettings, clock: Clock, schema: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.table = f"{check_schema(schema)}.timers"
        self.stats = TickerStats()
        # (action, deadline_id) -> event-loop time after which it may be tried again.
        self._handled: dict[tuple[str, str], float] = {}
        self._whistles = Counter(
            "gridloop_escalation_whistles", "DeadlineMissed/DeadlineApproaching appended",
            ["event_type", "deadline"], registry=registry,
        ) if registry is not None else None

    async def run(self, runtime: Runtime) -> None:
        while True:
            try:
                full = await self.tick(runtime)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed tick is retried on the next
                self.stats.errors += 1
                log.warning("ticker.failed", error=f"{type(exc).__name__}: {exc}")
                full = False
            if not full:  # a full batch means a backlog: keep draining without a pause
                await asyncio.sleep(self.settings.tick_seconds)

    async def tick(self, runtime: Runtime) -> bool:
        """One scan; True when a batch came back full (more may be waiting)."""
        assert runtime.pool is not None and runtime.store is not None
        now = self.clock.now()
        self._forget_expired()
        batch = self.settings.tick_batch
        async with runtime.pool.acquire() as conn:
            due = await conn.fetch(
                f"""SELECT {_COLUMNS} FROM {self.table}
                    WHERE status IN ('pending', 'warned') AND due_at <= $1
                      AND NOT (deadline_id = ANY($2::text[]))
                    ORDER BY due_at LIMIT $3""",
                now, self._skipping(MISSED), batch,
            )
            warn = await conn.fetch(
                f"""SELECT {_COLUMNS} FROM {self.table}
                    WHERE status = 'pending' AND warn_at <= $1 AND due_at > $1
                      AND NOT (deadline_id = ANY($2::text[]))
                    ORDER BY warn_at LIMIT $3""",
                now, self._skipping(WARNED), batch,
            )
        work: dict[str, list[tuple[str, Timer]]] = defaultdict(list)
        for row in due:
            work[row["case_id"]].append((MISSED, _timer(row)))
        for row in warn:
            work[row["case_id"]].append((WARNED, _timer(row)))
        if work:
            gate = asyncio.Semaphore(self.settings.tick_concurrency)

            async def one_case(items: Sequence[tuple[str, Timer]]) -> None:
                async with gate:
                    for action, timer in items:
                        await self._handle(runtime, action, timer, now)

            await asyncio.gather(*(one_case(items) for items in work.values()))
        self.stats.ticks += 1
        self.stats.last_tick_at = now
        return len(due) >= batch or len(warn) >= batch

    async def _handle(self, runtime: Runtime, action: str, timer: Timer, now: datetime) -> None:
        store: EventStore = runtime.store  # type: ignore[assignment]
        decide = decide_missed(timer, now) if action == MISSED else decide_warning(timer, now)
        loop = asyncio.get_running_loop()
        bound = log.bind(case_id=timer.case_id, correlation_id=timer.correlation_id,
                         deadline_id=timer.deadline_id)
        try:
            outcome = await execute(store, timer.case_id, decide)
        except Exception as exc:  # noqa: BLE001 - retried soon; one case must not stop the rest
            self.stats.errors += 1
            self._handled[(action, timer.deadline_id)] = loop.time() + ERROR_RETRY_SECONDS
            bound.warning("ticker.decide_failed", action=action,
                          error=f"{type(exc).__name__}: {exc}")
            return
        self._handled[(action, timer.deadline_id)] = loop.time() + self.settings.retry_seconds
        for event in outcome.events:
            runtime.metrics.appended.labels(event.event_type).inc()
            if self._whistles is not None:
                self._whistles.labels(event.event_type, timer.kind.value).inc()
            if action == MISSED:
                self.stats.missed += 1
            else:
                self.stats.warned += 1
            bound.info("ticker.emitted", event_type=event.event_type,
                       event_id=str(event.event_id), due_at=timer.due_at.isoformat())

    def _skipping(self, action: str) -> list[str]:
        return [deadline_id for (a, deadline_id) in self._handled if a == action]

    def _forget_expired(self) -> None:
        now = asyncio.get_running_loop().time()
        for key in [k for k, until in self._handled.items() if until <= now]:
            del self._handled[key]
