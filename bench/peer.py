"""The peer: the Python `eventsourcing` library on PostgreSQL, against Gridloop's own store.

Both write the same number of events across the same number of aggregates (cases), one event
per save/append, each with its optimistic concurrency check and durable before it returns
(PostgreSQL commits with fsync on; JetStream acknowledges after fsync), first by one writer,
then by several at once; then both read everything back.

- peer save: `Application.save(aggregate)` with one pending event (a unique-constraint check on
  (originator_id, originator_version) and an exclusive table lock that keeps the notification
  log gap-free, in one transaction);
- Gridloop append: `EventStore.append(case_id, [event], expected_version, prev_hash=...)`, the
  writer holding the case's version and last hash the way a command handler holding the folded
  state does;
- read back: the peer's notification log (every event in order, mapped to domain events) and
  `repository.get` per aggregate; Gridloop's `read_all` (decoded) and `read` per case.

The peer runs in its own process (`python -m bench.peer <json args>`, synchronous, threads for
concurrent writers) and prints its figures as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import nats
from gridloop_district import default_district

from gridloop_events.catalogue import ProgressNoted
from gridloop_events.codec import content_hash, decode, encode
from gridloop_events.envelope import Actor, Envelope, new_event_id
from gridloop_events.store import EventStore, chain
from gridloop_events.subjects import Subjects

from .events import CaseWriter
from .probes import percentiles

DESCRIPTION = "楼道堆放杂物，堵塞消防通道，请尽快处理"


# --- the peer ------------------------------------------------------------------------------


def _peer_main(args: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(args["database_url"])
    os.environ.update({
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_PASSWORD": url.password or "",
        "POSTGRES_POOL_SIZE": str(max(2, args["writers"])),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    })
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Case(Aggregate):
        """A case with the same facts, roughly the same bytes, as a Gridloop CaseReported."""

        @event("Reported")
        def __init__(self, district: str, category_code: str, description: str,
                     grid_path: dict[str, str], channel: str, reporter: dict[str, str],
                     correlation_id: str) -> None:
            self.district = district
            self.category_code = category_code
            self.description = description
            self.grid_path = grid_path
            self.channel = channel
            self.reporter = reporter
            self.correlation_id = correlation_id
            self.notes: list[str] = []

        @event("ProgressNoted")
        def note(self, unit_code: str, author_id: str, note: str, correlation_id: str) -> None:
            self.notes.append(note)

    class Cases(Application[UUID]):
        pass

    aggregates = args["aggregates"]
    per = args["events_per_aggregate"]
    out: dict[str, Any] = {}
    for mode, writers in (("one_writer", 1), ("concurrent", args["writers"])):
        app = Cases()
        cases: list[Case] = []
        lat: list[float] = []
        lock = threading.Lock()

        def write(mine: list[int], round_: int) -> None:
            local = []
            for i in mine:
                if round_ == 0:
                    case = Case(district="370190", category_code="CM-0101",
                                description=DESCRIPTION,
                                grid_path={"district": "370190", "street": "370190001",
                                           "community": "370190001001",
                                           "grid": "370190001001002"},
                                channel="hotline",
                                reporter={"name": "模拟居民", "phone": "13800001234"},
                                correlation_id=f"c-{i}")
                    with lock:
                        cases[i] = case
                else:
                    case = cases[i]
                    case.note(unit_code="GT-370190001001002", author_id="gw-1",
                              note=f"进展 {round_}", correlation_id=f"c-{i}-{round_}")
                t = time.perf_counter()
                app.save(case)
                local.append(time.perf_counter() - t)
            with lock:
                lat.extend(local)

        cases.extend([None] * aggregates)  # type: ignore[list-item]
        started = time.perf_counter()
        for round_ in range(per):
            shards = [list(range(w, aggregates, writers)) for w in range(writers)]
            threads = [threading.Thread(target=write, args=(s, round_)) for s in shards]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        seconds = time.perf_counter() - started
        saves = aggregates * per
        out[f"save_{mode}"] = {"writers": writers, "saves": saves, "seconds": round(seconds, 2),
                               "saves_per_s": round(saves / seconds),
                               "latency_ms": percentiles(lat)}
        if mode == "one_writer":
            # Read back everything this writer wrote: the notification log, in order…
            started = time.perf_counter()
            count = 0
            start = 1
            while True:
                page = app.recorder.select_notifications(start, 1000)
                for n in page:
                    app.mapper.to_domain_event(n)
                count += len(page)
                if len(page) < 1000:
                    break
                start = page[-1].id + 1
            seconds = time.perf_counter() - started
            out["read_notification_log"] = {"events": count, "seconds": round(seconds, 2),
                                            "events_per_s": round(count / seconds)}
            # …and aggregate by aggregate.
            started = time.perf_counter()
            for case in cases:
                app.repository.get(case.id)
            seconds = time.perf_counter() - started
            out["read_aggregates"] = {"aggregates": len(cases), "events": saves,
                                      "seconds": round(seconds, 2),
                                      "events_per_s": round(saves / seconds)}
        table = app.recorder.events_table_name  # type: ignore[attr-defined]
        app.close()
        # The second mode writes into the same table: drop what the first wrote.
        import psycopg

        with psycopg.connect(args["database_url"], autocommit=True) as conn:
            conn.execute(f'TRUNCATE "{table}"')
    return out


# --- Gridloop's side -------------------------------------------------------------------------


async def gridloop_append(nats_url: str, prefix: str, aggregates: int, per: int,
                          writers: int) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    out: dict[str, Any] = {}
    try:
        rng = random.Random(5)
        for mode, n_writers in (("one_writer", 1), ("concurrent", writers)):
            subjects = Subjects(f"{prefix}_{mode}")
            store = EventStore(nc, subjects)
            await store.ensure_stream()
            writer = CaseWriter(default_district(), subjects)
            reports = []
            for _ in range(aggregates):
                now = datetime.now(UTC)
                case_id = str(new_event_id(now))
                reports.append(Envelope.new(
                    writer.report_payload(rng, case_id), case_id=case_id,
                    district="370190", actor=Actor(kind="operator", id="op-7"),
                    correlation_id=str(new_event_id(now)), occurred_at=now))
            versions = [0] * aggregates
            hashes: list[str | None] = [None] * aggregates
            lat: list[float] = []

            async def write(mine: list[int], round_: int) -> None:
                for i in mine:
                    if round_ == 0:
                        event = reports[i]
                    else:
                        event = Envelope.new(
                            ProgressNoted(unit_code="GT-370190001001002", author_id="gw-1",
                                          note=f"进展 {round_}"),
                            case_id=reports[i].case_id, district="370190",
                            actor=Actor(kind="grid_worker", id="gw-1"),
                            correlation_id=f"c-{i}-{round_}")
                    t = time.perf_counter()
                    versions[i] = await store.append(event.case_id, [event], versions[i],
                                                     prev_hash=hashes[i])
                    lat.append(time.perf_counter() - t)
                    # The hash the next event chains to, as a fold of the case would hold it.
                    hashes[i] = content_hash(encode(chain([event], hashes[i])[0]))

            started = time.perf_counter()
            for round_ in range(per):
                shards = [list(range(w, aggregates, n_writers)) for w in range(n_writers)]
                await asyncio.gather(*(write(s, round_) for s in shards))
            seconds = time.perf_counter() - started
            total = aggregates * per
            out[f"append_{mode}"] = {"writers": n_writers, "appends": total,
                                     "seconds": round(seconds, 2),
                                     "appends_per_s": round(total / seconds),
                                     "latency_ms": percentiles(lat)}
            if mode == "one_writer":
                started = time.perf_counter()
                count = 0
                async for raw in store.read_all():
                    decode(raw.data, store.registry)
                    count += 1
                seconds = time.perf_counter() - started
                out["read_all"] = {"events": count, "seconds": round(seconds, 2),
                                   "events_per_s": round(count / seconds)}
                started = time.perf_counter()
                for r in reports:
                    await store.read(r.case_id)
                seconds = time.perf_counter() - started
                out["read_cases"] = {"cases": aggregates, "events": total,
                                     "seconds": round(seconds, 2),
                                     "events_per_s": round(total / seconds)}
            await nc.jetstream().delete_stream(subjects.stream_name)
    finally:
        await nc.close()
    return out


if __name__ == "__main__":
    print(json.dumps(_peer_main(json.loads(sys.argv[1]))))
