"""Old events replay for ever: a breaking change to an event adds a version and an upcaster, and
a real projection replayed with the new code over events the real store wrote at v1 comes out
right — identical to the v1 replay wherever the change does not reach.

The v2 here is a subclass of the catalogue's CaseClosed, because that is what a real rollout
looks like to the code that reads events: the catalogue's class itself gains the new shape and
version, so every `case CaseClosed():` in the lifecycle fold and the services still matches.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import asyncpg
import nats
import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict, Field

from gridloop_events.audit import verify_all
from gridloop_events.case_projection import CaseProjection
from gridloop_events.catalogue import ALL_PAYLOADS, CaseClosed
from gridloop_events.codec import CodecError, Registry, decode, encode
from gridloop_events.envelope import Actor, Envelope, StoredEvent
from gridloop_events.lifecycle import CaseState
from gridloop_events.rebuild import rebuild
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.testing import accepted, dispatched, reported
from gridloop_events.vocabulary import Outcome
from gridloop_intake.projection import IntakeProjection

from test_public_view import append_case, case_loop


class Closer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    role: str | None = Field(default=None, max_length=64)


class CaseClosedV2(CaseClosed):
    """v2: `closed_by` names the closer and their role (grid head, department…), not just an id.
    A type change, so a breaking one: a new version and an upcaster."""

    schema_version: ClassVar[int] = 2
    closed_by: Closer  # type: ignore[assignment]


def v2_registry() -> Registry:
    registry = Registry()
    for cls in ALL_PAYLOADS:
        registry.register(CaseClosedV2 if cls is CaseClosed else cls)

    @registry.upcaster("CaseClosed", 1)
    def closer_from_id(payload: dict[str, Any]) -> dict[str, Any]:
        # A v1 event knew only who closed the case, not in which role.
        return {**payload, "closed_by": {"id": payload["closed_by"], "role": None}}

    return registry


class ClosersProjection(CaseProjection):
    """A read model written against v2: who closed each case, and in which role."""

    name = "closers"
    schema = "closers"
    tables = ("case_state", "closure")

    async def create_service_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute("""CREATE TABLE IF NOT EXISTS closure (
            case_id text NOT NULL, round integer NOT NULL, closer text NOT NULL, role text,
            outcome text NOT NULL, PRIMARY KEY (case_id, round))""")

    async def on_event(self, conn: asyncpg.Connection, stored: StoredEvent, before: CaseState,
                       after: CaseState) -> None:
        p = stored.envelope.payload
        if isinstance(p, CaseClosedV2):
            await conn.execute("INSERT INTO closure VALUES ($1, $2, $3, $4, $5)", after.case_id,
                               after.close_count, p.closed_by.id, p.closed_by.role,
                               p.outcome.value)


def close_v2(cause: Envelope, closer: str, role: str) -> Envelope:
    return cause.caused(
        CaseClosedV2(outcome=Outcome.resolved, resolution="已协调物业清运",
                     closed_by=Closer(id=closer, role=role)),
        actor=Actor(kind="grid_worker", id=closer), purpose="close-v2")


@pytest_asyncio.fixture
async def env(nats_url: str, fresh_database: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
    v1 = EventStore(nc, Subjects(fresh_stream_prefix))  # today's code: CaseClosed v1
    await v1.ensure_stream()
    v2 = EventStore(nc, Subjects(fresh_stream_prefix), v2_registry())  # after the upgrade
    yield pool, v1, v2
    await pool.close()
    await v1.js.delete_stream(v1.stream)
    await nc.close()


async def rows(pool: asyncpg.Pool, sql: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql)]


async def test_v1_history_replays_under_v2_identical_where_unchanged(env) -> None:  # type: ignore[no-untyped-def]
    pool, v1, v2 = env
    # History written by the real store at v1: two full loops and a case still open.
    loops = [case_loop(), case_loop()]
    for events in loops:
        await append_case(v1, events)
    open_case = reported()
    await append_case(v1, [open_case, dispatched(open_case)])
    v1_tip = await v1.last_sequence()
    raw_before = [r.data for r in [r async for r in v1.read_all()]]

    # A v1 event read by v2 code is upcast; stored bytes stay v1.
    closed_v1 = (await v2.read(loops[0][0].case_id))[3].envelope
    assert isinstance(closed_v1.payload, CaseClosedV2) and closed_v1.schema_version == 2
    assert closed_v1.payload.closed_by == Closer(id="gw-1", role=None)

    # The real intake projection, replayed by the old code and by the new, over the v1 log.
    old = await rebuild(pool, v1, IntakeProjection(), IntakeProjection.tables,
                        to_sequence=v1_tip, target_schema="intake_v1")
    new = await rebuild(pool, v2, IntakeProjection(), IntakeProjection.tables,
                        to_sequence=v1_tip, target_schema="intake_v2")
    assert old.events == new.events == v1_tip
    assert old.checksum == new.checksum, "the change does not reach the register: same rows"
    register = await rows(pool, "SELECT case_id, status, outcome, resolution, close_count "
                                "FROM intake_v2.cases ORDER BY case_id")
    by_case = {r["case_id"]: r for r in register}
    for events in loops:
        row = by_case[events[0].case_id]
        assert (row["status"], row["outcome"], row["resolution"], row["close_count"]) == (
            "done", "resolved", "已清理", 1)
    assert by_case[open_case.case_id]["status"] == "dispatched"
    assert await rows(pool, "SELECT count(*) AS n FROM intake_v2.dead_letter") == [{"n": 0}]

    # After the upgrade, new code writes v2 beside the v1 history.
    later = reported()
    await append_case(v2, [later, dispatched(later)])
    tip = await v2.append(later.case_id, [close_v2(accepted(dispatched(later)), "gh-3",
                                                   "grid_head")], None)

    # A projection written for v2 reads both: v1 closures upcast, the v2 one as written.
    closers = await rebuild(pool, v2, ClosersProjection(), ClosersProjection.tables,
                            to_sequence=tip, target_schema="closers_v2")
    assert closers.events == tip
    assert await rows(pool, "SELECT case_id, closer, role, outcome FROM closers_v2.closure "
                            "ORDER BY case_id") == sorted(
        [{"case_id": e[0].case_id, "closer": "gw-1", "role": None, "outcome": "resolved"}
         for e in loops]
        + [{"case_id": later.case_id, "closer": "gh-3", "role": "grid_head",
            "outcome": "resolved"}],
        key=lambda r: r["case_id"])

    # Replaying everything with v2 again gives the same tables: deterministic across versions.
    again = await rebuild(pool, v2, ClosersProjection(), ClosersProjection.tables,
                          to_sequence=tip, target_schema="closers_again")
    assert again.checksum == closers.checksum

    # Nothing was rewritten: the v1 bytes are as they were, and every case's chain verifies.
    raw_after = [r.data for r in [r async for r in v1.read_all(1, v1_tip)]]
    assert raw_after == raw_before
    assert all(json.loads(d)["schema_version"] == 1 for d in raw_after
               if json.loads(d)["event_type"] == "CaseClosed")
    assert (await verify_all(v2)).ok


async def test_old_code_refuses_a_newer_version_instead_of_misreading_it(env) -> None:  # type: ignore[no-untyped-def]
    pool, v1, v2 = env
    r = reported()
    await append_case(v2, [r, dispatched(r)])
    tip = await v2.append(r.case_id, [close_v2(accepted(dispatched(r)), "gh-3", "grid_head")],
                          None)
    stored = [raw async for raw in v1.read_all()]
    with pytest.raises(CodecError, match="newer than this code knows"):
        decode(stored[-1].data, v1.registry)
    # Replayed by the old code, the v2 event is dead-lettered with its reason, not applied
    # half-understood; after the upgrade the same log replays cleanly.
    old = await rebuild(pool, v1, IntakeProjection(), IntakeProjection.tables,
                        to_sequence=tip, target_schema="intake_old")
    dead = await rows(pool, "SELECT sequence, error FROM intake_old.dead_letter")
    assert [d["sequence"] for d in dead] == [tip] and "newer than this code" in dead[0]["error"]
    assert old.events == tip - 1
    new = await rebuild(pool, v2, IntakeProjection(), IntakeProjection.tables,
                        to_sequence=tip, target_schema="intake_new")
    assert new.events == tip
    assert await rows(pool, "SELECT status, resolution FROM intake_new.cases") == [
        {"status": "closed", "resolution": "已协调物业清运"}]
    # And the v2 event's encoding round-trips under v2.
    assert encode(decode(stored[-1].data, v2.registry)) == stored[-1].data
