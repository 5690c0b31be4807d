"""What the benchmark watches while it runs: projections' checkpoints, processes' CPU and memory.

Checkpoints are read straight from each service's `<schema>.checkpoint` table (the row the runner
commits with every batch), so "visible" means committed and readable by the service's API.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
import psutil


def percentiles(values: Sequence[float], points: Iterable[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds of values given in seconds, plus max and n."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    out: dict[str, float] = {"n": len(ordered)}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = round(ordered[rank - 1] * 1000, 1)
    out["max"] = round(ordered[-1] * 1000, 1)
    return out


class CheckpointPoller:
    """Polls every projection's checkpoint rows every `interval` seconds and keeps a timeline
    of (wall time, {partition: last_sequence}) per projection."""

    def __init__(self, database_url: str, schemas: dict[str, str], interval: float = 0.005) -> None:
        self.database_url = database_url
        self.schemas = schemas  # projection name -> schema
        self.interval = interval
        self.times: list[float] = []
        self.values: dict[str, list[dict[int, int]]] = {name: [] for name in schemas}
        self._task: asyncio.Task[None] | None = None
        self._query = ""

    async def _build_query(self, conn: asyncpg.Connection) -> str:
        parts = []
        for name, schema in self.schemas.items():
            has_partition = await conn.fetchval(
                """SELECT count(*) FROM information_schema.columns
                   WHERE table_schema = $1 AND table_name = 'checkpoint'
                     AND column_name = 'partition'""", schema)
            partition = "partition" if has_partition else "0"
            parts.append(f"SELECT '{name}' AS p, {partition} AS part, last_sequence "
                         f"FROM {schema}.checkpoint WHERE projection = '{name}'")
        return " UNION ALL ".join(parts)

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.database_url)
        self._query = await self._build_query(self._conn)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            rows = await self._conn.fetch(self._query)
            now = time.time()
            snapshot: dict[str, dict[int, int]] = {name: {} for name in self.schemas}
            for r in rows:
                snapshot[r["p"]][int(r["part"])] = int(r["last_sequence"])
            self.times.append(now)
            for name, value in snapshot.items():
                self.values[name].append(value)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._conn.close()

    def visible_at(self, projection: str, sequence: int, partition: int | None,
                   after: float) -> float | None:
        """The first poll at or after `after` whose checkpoint covers `sequence`."""
        times = self.times
        values = self.values[projection]
        i = bisect.bisect_left(times, after)
        for j in range(i, len(times)):
            cps = values[j]
            cp = cps.get(partition, 0) if partition is not None and len(cps) > 1 else (
                max(cps.values()) if cps else 0)
            if cp >= sequence:
                return times[j]
        return None


def _jiffies_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWatch:
    """CPU used by named processes (PostgreSQL with its backends) over a window, and by
    everything else on the machine: other work on a shared machine skews every figure."""

    pids: dict[str, int]
    include_children: frozenset[str] = frozenset({"postgres"})
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _t0: float = 0.0
    _busy0: float = 0.0

    def _cpu(self, name: str, pid: int) -> dict[int, float]:
        out: dict[int, float] = {}
        try:
            procs = [psutil.Process(pid)]
            if name in self.include_children:
                procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for proc in procs:
            try:
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = _jiffies_busy()
        self._start = {n: self._cpu(n, p) for n, p in self.pids.items()}

    def end(self) -> dict[str, float]:
        """Average CPU use in percent of one core per process over the window, and `others`:
        the rest of the machine."""
        elapsed = time.monotonic() - self._t0
        out: dict[str, float] = {}
        ours = 0.0
        for n, p in self.pids.items():
            before = self._start.get(n, {})
            used = sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in self._cpu(n, p).items())
            ours += used
            out[n] = round(100 * used / elapsed, 1)
        busy = _jiffies_busy() - self._busy0
        out["others"] = round(max(0.0, 100 * (busy - ours) / elapsed), 1)
        return out


def partition_of_subject(subjects, subject: str) -> int | None:  # type: ignore[no-untyped-def]
    """The subject's partition token, where the subject scheme has one."""
    part = getattr(subjects, "partition_of_subject", None)
    return part(subject) if part else None


async def checkpoints(conn: asyncpg.Connection, schemas: dict[str, str]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for name, schema in schemas.items():
        rows = await conn.fetch(f"SELECT * FROM {schema}.checkpoint WHERE projection = $1", name)
        out[name] = {int(r.get("partition", 0) or 0): int(r["last_sequence"]) for r in rows}
    return out


def covers(cps: dict[int, int], partition: int | None, sequence: int) -> bool:
    if partition is not None and len(cps) > 1:
        return cps.get(partition, 0) >= sequence
    return bool(cps) and max(cps.values()) >= sequence


async def wait_caught_up(conn: asyncpg.Connection, schemas: dict[str, str],
                         targets: dict[int | None, int], timeout: float) -> float:
    """Wait until every projection covers each partition's last sequence; returns seconds."""
    started = time.monotonic()
    while True:
        cps = await checkpoints(conn, schemas)
        if all(covers(cps[name], part, seq) for name in schemas for part, seq in targets.items()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"projections not caught up after {timeout:.0f}s: {cps}")
        await asyncio.sleep(0.2)
