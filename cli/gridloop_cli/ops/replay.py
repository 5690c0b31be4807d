"""Replays: a projection rebuilt from the log, swapped in live or built as of a past point."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from datetime import datetime
from typing import Any

from gridloop_events.rebuild import RebuildResult, Workers, rebuild

from . import projections
from .connection import Connected
from .output import progress_bar


@dataclass(frozen=True)
class Replayed:
    projection: str
    result: RebuildResult
    to_sequence: int | None
    to_time: datetime | None

    @property
    def historical(self) -> bool:
        return self.to_sequence is not None or self.to_time is not None

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "projection": self.projection,
            "schema": r.schema,
            "swapped": not self.historical,
            "to_sequence": self.to_sequence,
            "to_time": self.to_time.isoformat() if self.to_time else None,
            "events": r.events,
            "last_sequence": r.last_sequence,
            "seconds": round(r.seconds, 3),
            "events_per_second": round(r.events_per_second, 1) if r.seconds > 0 else None,
            "checksum": r.checksum,
        }


async def replay(
    conn: Connected,
    service: str,
    *,
    to_sequence: int | None = None,
    to_time: datetime | None = None,
    target_schema: str | None = None,
    workers: int = 1,
) -> Replayed:
    store = conn.need_store()
    projection = projections.build(service)  # no store: a replay must not react
    tip = await store.last_sequence()
    total = min(tip, to_sequence) if to_sequence is not None else tip
    with progress_bar(f"replay {service}", total) as advance:
        result = await rebuild(
            conn.need_pool(),
            store,
            projection,
            projection.tables,
            to_sequence=to_sequence,
            to_time=to_time,
            target_schema=target_schema,
            progress=advance,
            workers=Workers(workers, conn.target.nats_url, conn.target.database_url,
                            partial(projections.build, service)),
        )
    return Replayed(service, result, to_sequence, to_time)
