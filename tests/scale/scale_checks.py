"""What a scaled-out run must leave behind, read from the stream and the services' schemas."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import asyncpg
import nats
from gridloop_events.case_projection import state_to_json
from gridloop_events.catalogue import DeadlineMissed
from gridloop_events.lifecycle import fold
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from scale_fleet import SERVICES, Fleet


async def histories(fleet: Fleet, case_ids: list[str]) -> dict[str, list[Any]]:
    nc = await nats.connect(fleet.nats_url)
    try:
        store = EventStore(nc, Subjects(fleet.prefix))
        return {case_id: await store.read(case_id) for case_id in case_ids}
    finally:
        await nc.close()


async def read_models(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Per service: case states, checkpoints per partition and dead letters."""
    conn = await asyncpg.connect(fleet.database_url)
    try:
        out: dict[str, dict[str, Any]] = {}
        for service in SERVICES:
            rows = await conn.fetch(
                f"SELECT case_id, version, (state->>'events')::int AS events, state "
                f"FROM {service}.case_state")
            checkpoints = await conn.fetch(
                f"SELECT partition, last_sequence FROM {service}.checkpoint "
                "WHERE projection = $1", service)
            dead = await conn.fetch(f"SELECT sequence, event_type, error FROM "
                                    f"{service}.dead_letter")
            out[service] = {
                "states": {r["case_id"]: (int(r["version"]), r["events"],
                                          _json(r["state"])) for r in rows},
                "checkpoints": {int(r["partition"]): int(r["last_sequence"])
                                for r in checkpoints},
                "dead": [dict(r) for r in dead],
            }
        return out
    finally:
        await conn.close()


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def order_violations(logs: dict[str, list[Any]], models: dict[str, dict[str, Any]]
                     ) -> list[str]:
    """Each service's row for each case must be the fold of the case's stream: every event
    applied once, in order (a skipped, repeated or reordered event changes version, the
    event count or the state)."""
    problems = []
    for case_id, history in logs.items():
        want = fold(history)
        want_state = json.loads(state_to_json(want))
        for service, model in models.items():
            row = model["states"].get(case_id)
            if row is None:
                problems.append(f"{service}: no state for {case_id}")
                continue
            version, events, state = row
            if (version, events) != (want.version, want.events):
                problems.append(f"{service} {case_id}: version/events {version}/{events}, "
                                f"stream {want.version}/{want.events}")
            elif state != want_state:
                diff = sorted(k for k in want_state if want_state[k] != state.get(k))
                problems.append(f"{service} {case_id}: state differs in {diff}")
    return problems


def repeated_deadline_misses(logs: dict[str, list[Any]]) -> tuple[int, list[str]]:
    """(DeadlineMissed count, deadline ids missed more than once)."""
    ids: Counter[str] = Counter()
    for history in logs.values():
        for stored in history:
            if isinstance(stored.envelope.payload, DeadlineMissed):
                ids[stored.envelope.payload.deadline_id] += 1
    return sum(ids.values()), [d for d, n in ids.items() if n > 1]


async def advisory_holders(fleet: Fleet, service: str) -> dict[int, int]:
    """partition -> backend pid holding the service's partition lock (the runner's key)."""
    conn = await asyncpg.connect(fleet.database_url)
    try:
        rows = await conn.fetch(
            """SELECT p, l.pid FROM generate_series(0, 15) AS p
               JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((l.classid::bigint << 32) | l.objid::bigint)
                    = hashtext(format('gridloop:%s:%s:%s', $1::text, $1::text, p))::bigint
                AND l.objsubid = 1""",
            service)
        return {int(r["p"]): int(r["pid"]) for r in rows}
    finally:
        await conn.close()


async def settled_models(fleet: Fleet, logs: dict[str, list[Any]], timeout: float = 20.0
                         ) -> dict[str, dict[str, Any]]:
    """The read models once every projection has applied each case's last event (the load saw
    `done` in intake; another service may still be a batch behind)."""
    deadline = time.monotonic() + timeout
    while True:
        models = await read_models(fleet)
        if not order_violations(logs, models) or time.monotonic() > deadline:
            return models
        await asyncio.sleep(0.3)


def claimed_in_log(fleet: Fleet, service: str, index: int) -> list[int]:
    """Partitions the instance's runner logged claiming (JSON lines, event `runner.claimed`)."""
    got: set[int] = set()
    for line in fleet.log_path(service, index).read_text(errors="replace").splitlines():
        if '"runner.claimed"' in line:
            got.update(json.loads(line)["partitions"])
    return sorted(got)
