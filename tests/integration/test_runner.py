"""The projection runner against real NATS and PostgreSQL: exactly-once in effect, in order,
poison dead-lettered, rebuilds identical to live, and all of it through SIGKILLs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import nats
import pytest
import pytest_asyncio

from crash_runner import TallyProjection, unbuildable
from gridloop_events.catalogue import ProgressNoted
from gridloop_events.codec import encode
from gridloop_events.database import create_pool
from gridloop_events.envelope import Actor
from gridloop_events import rebuild as rebuild_module
from gridloop_events.rebuild import RebuildError, Workers, rebuild, table_checksum
from gridloop_events.runner import ProjectionRunner
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.testing import reported

HERE = Path(__file__).parent


@pytest_asyncio.fixture
async def env(nats_url: str, fresh_database: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    pool = await create_pool(fresh_database, min_size=1, max_size=4)
    store = EventStore(nc, Subjects(fresh_stream_prefix))
    await store.ensure_stream()
    yield nc, pool, store
    await pool.close()
    await nc.close()


def note(cause, i: int, text: str | None = None):  # type: ignore[no-untyped-def]
    return cause.caused(
        ProgressNoted(author_id="gw-1", note=text or f"step {i}"),
        actor=Actor(kind="grid_worker", id="gw-1"),
        purpose=f"note-{i}",
    )


async def seed(store: EventStore, cases: int, per_case: int) -> dict[str, int]:
    """`cases` cases of `per_case` events each, written concurrently across cases."""

    async def one_case() -> tuple[str, int]:
        r = reported()
        v = await store.append(r.case_id, [r], 0)
        for i in range(per_case - 1):
            v = await store.append(r.case_id, [note(r, i)], v)
        return r.case_id, per_case

    results = []
    for start in range(0, cases, 100):
        results += await asyncio.gather(*(one_case() for _ in range(min(100, cases - start))))
    return dict(results)


async def rows(pool: asyncpg.Pool, schema: str, table: str) -> list[tuple]:  # type: ignore[type-arg]
    async with pool.acquire() as conn:
        return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.{table} ORDER BY 1")]


@contextlib.asynccontextmanager
async def running(env, projection, **options):  # type: ignore[no-untyped-def]
    """A started runner, caught up with the log, stopped at the end whatever happens."""
    nc, pool, store = env
    runner = ProjectionRunner(nc, pool, store, projection, **options)
    await runner.start()
    try:
        await runner.wait_caught_up(timeout=30)
        yield runner
    finally:
        await runner.stop()


class SettingsTally(TallyProjection):
    """Notes, for each event, whether its transaction's commit waits for the WAL flush."""

    def __init__(self) -> None:
        self.waits: list[str] = []

    async def apply(self, conn: asyncpg.Connection, stored) -> None:  # type: ignore[no-untyped-def,override]
        self.waits.append(await conn.fetchval("SHOW synchronous_commit"))
        await super().apply(conn, stored)


async def test_a_runner_batch_commits_without_waiting_for_the_disk_and_nothing_else_does(  # type: ignore[no-untyped-def]
    env,
) -> None:
    """A batch is derived from the log, which the runner re-applies from its checkpoint after a
    PostgreSQL crash (tests/faults/test_postgres_restarts.py): its commit need not wait for the
    WAL flush. The setting stays with the batch's transaction."""
    nc, pool, store = env
    await seed(store, cases=3, per_case=2)
    projection = SettingsTally()
    async with running(env, projection):
        pass
    assert projection.waits == ["off"] * 6
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"


async def test_a_runner_whose_commits_the_database_forgot_applies_them_again(  # type: ignore[no-untyped-def]
    env,
) -> None:
    """PostgreSQL forgets the last batches it committed (a crash while commits do not wait for
    the disk, a failover, a restore): their messages were acknowledged, so the runner must
    notice the checkpoint below its own commits and go back to it."""
    nc, pool, store = env
    await seed(store, cases=4, per_case=3)
    async with running(env, TallyProjection(), batch_size=4) as runner:
        tip = await store.last_sequence()
        async with pool.acquire() as conn:  # as the database comes back from the crash
            await conn.execute("DELETE FROM tally.applied WHERE seq > 5")
            await conn.execute("DELETE FROM tally.tally")
            await conn.execute("UPDATE tally.checkpoint SET last_sequence = least(last_sequence, 5)")
        r = reported()
        await store.append(r.case_id, [r], 0)
        deadline = asyncio.get_running_loop().time() + 30
        while len(await rows(pool, "tally", "applied")) < tip + 1:
            assert asyncio.get_running_loop().time() < deadline, "forgotten batches not applied"
            await asyncio.sleep(0.05)
        assert [a[0] for a in await rows(pool, "tally", "applied")] == list(range(1, tip + 2))
        assert runner.stats.recoveries >= 1


async def test_runner_applies_every_event_once_in_order(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    expected = await seed(store, cases=20, per_case=15)
    async with running(env, TallyProjection(), batch_size=32) as runner:
        tally = {r[0]: r for r in await rows(pool, "tally", "tally")}
        assert {k: v[1] for k, v in tally.items()} == expected
        for case_id, events, last_seq, types in tally.values():
            assert types.split(",")[0] == "CaseReported"  # order kept within the case
        applied = await rows(pool, "tally", "applied")
        assert [r[0] for r in applied] == sorted(r[0] for r in applied)
        assert len(applied) == sum(expected.values())
        # More events while running: applied too.
        r = reported()
        await store.append(r.case_id, [r], 0)
        await runner.wait_caught_up(timeout=10)
        assert len(await rows(pool, "tally", "applied")) == sum(expected.values()) + 1


async def test_a_runner_whose_consumer_is_deleted_positions_a_new_one(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    expected = await seed(store, cases=4, per_case=3)
    async with running(env, TallyProjection(), claim_interval=0.3) as runner:
        # Gone under it (an operator, a server that lost it): the next fetch has no responder,
        # the runner recovers and positions a new consumer at its checkpoint.
        await store.js.delete_consumer(store.stream, runner.durable)
        more = await seed(store, cases=3, per_case=2)
        await runner.wait_caught_up(timeout=30)
        applied = await rows(pool, "tally", "applied")
        assert len(applied) == sum(expected.values()) + sum(more.values())


async def test_restart_resumes_from_the_checkpoint_without_reapplying(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    await seed(store, cases=5, per_case=4)
    runner = ProjectionRunner(nc, pool, store, TallyProjection())
    await runner.start()
    await runner.wait_caught_up()
    await runner.stop()
    r = reported()
    await store.append(r.case_id, [r], 0)
    runner = ProjectionRunner(nc, pool, store, TallyProjection())
    await runner.start()
    try:
        await runner.wait_caught_up()
        assert runner.stats.applied == 1  # only the new one: the rest sits below the checkpoint
        assert len(await rows(pool, "tally", "applied")) == 21
    finally:
        await runner.stop()


async def test_poison_is_dead_lettered_and_the_runner_moves_on(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    r = reported()
    v = await store.append(r.case_id, [r], 0)
    poison = note(r, 1, "poison")
    v = await store.append(r.case_id, [poison], v)
    # Bytes that are not an event at all, straight onto a case subject.
    await store.js.publish(store.subjects.event("370105", r.case_id, "CaseReported"), b"{not json")
    later = note(r, 2)
    # The case's history now holds garbage, so no guarded append can chain to it: publish raw.
    await store.js.publish(store.subjects.event("370105", r.case_id, "ProgressNoted"),
                           encode(later))
    runner = ProjectionRunner(nc, pool, store, TallyProjection())
    await runner.start()
    try:
        await runner.wait_caught_up()
        dead = await rows(pool, "tally", "dead_letter")
        assert len(dead) == 2
        by_seq = {d[1]: d for d in dead}
        assert "poison" in by_seq[2][5] and by_seq[2][3] == str(poison.event_id)
        assert "undecodable" in by_seq[3][5]
        tally = await rows(pool, "tally", "tally")
        assert tally[0][1] == 2 and tally[0][3] == "CaseReported,ProgressNoted"
        assert runner.stats.dead_lettered == 2 and runner.running
        # The dead-letter record carries no personal data of the event.
        assert "张三" not in json.dumps([list(map(str, d)) for d in dead], ensure_ascii=False)
    finally:
        await runner.stop()


async def test_rebuild_from_zero_equals_live_row_for_row(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    await seed(store, cases=30, per_case=6)
    projection = TallyProjection()
    runner = ProjectionRunner(nc, pool, store, projection)
    await runner.start()
    try:
        await runner.wait_caught_up()
        tip = await store.last_sequence()
        copy = await rebuild(pool, store, projection, projection.tables,
                             to_sequence=tip, target_schema="tally_copy")
        for table in projection.tables:
            assert await rows(pool, "tally", table) == await rows(pool, "tally_copy", table)
        async with pool.acquire() as conn:
            live_sum = await table_checksum(conn, "tally", projection.tables)
        assert copy.checksum == live_sum and copy.events == tip

        # Swap-rebuild while the live runner keeps going and new events keep arriving.
        writer = asyncio.create_task(seed(store, cases=10, per_case=3))
        swapped = await rebuild(pool, store, projection, projection.tables)
        await writer
        await runner.wait_caught_up(timeout=30)
        assert swapped.schema == "tally"
        applied = await rows(pool, "tally", "applied")
        assert len(applied) == await store.last_sequence() == tip + 30
        assert len({a[0] for a in applied}) == len(applied)
    finally:
        await runner.stop()


async def test_a_rebuild_by_several_processes_equals_one_by_one(  # type: ignore[no-untyped-def]
    env, nats_url: str, fresh_database: str
) -> None:
    nc, pool, store = env
    await seed(store, cases=48, per_case=5)
    poisoned = reported()
    await store.append(poisoned.case_id, [poisoned, note(poisoned, 1, "poison")], 0)
    tip = await store.last_sequence()
    projection = TallyProjection()
    one = await rebuild(pool, store, projection, projection.tables, to_sequence=tip,
                        target_schema="tally_one")
    three = Workers(3, nats_url, fresh_database, TallyProjection)
    many = await rebuild(pool, store, projection, projection.tables, to_sequence=tip,
                         target_schema="tally_many", workers=three)
    # `tally.types` lists each case's event types in the order applied: equal checksums mean
    # every case was applied in its stream order by whichever process held its partition.
    assert many.checksum == one.checksum
    assert many.events == one.events == tip  # read and decoded; the poison dead-lettered
    assert many.last_sequence == tip
    for schema in ("tally_one", "tally_many"):
        checkpoints = sorted(r[:3] for r in await rows(pool, schema, "checkpoint"))
        assert checkpoints == [("tally", p, tip) for p in range(store.subjects.partitions)]
        dead = await rows(pool, schema, "dead_letter")
        assert [(d[0], d[1]) for d in dead] == [("tally", tip)]

    # Swapped in while a live runner applies new events: nothing lost, nothing twice.
    runner = ProjectionRunner(nc, pool, store, projection)
    await runner.start()
    try:
        writer = asyncio.create_task(seed(store, cases=12, per_case=3))
        swapped = await rebuild(pool, store, projection, projection.tables,
                                workers=Workers(2, nats_url, fresh_database, TallyProjection))
        await writer
        await runner.wait_caught_up(timeout=30)
        assert swapped.schema == "tally"
        applied = await rows(pool, "tally", "applied")
        assert len(applied) == await store.last_sequence() - 1 == tip - 1 + 36
    finally:
        await runner.stop()

    # A worker that fails fails the rebuild: the live tables stay as they were.
    before = await rows(pool, "tally", "applied")
    with pytest.raises(RebuildError, match="cannot be built here"):
        await rebuild(pool, store, projection, projection.tables,
                      workers=Workers(2, nats_url, fresh_database, unbuildable))
    assert await rows(pool, "tally", "applied") == before


class DeadlockingTally(TallyProjection):
    """Rolled back by PostgreSQL as a deadlock victim, the first `times` times it applies."""

    def __init__(self, times: int) -> None:
        self.times = times

    async def apply(self, conn: asyncpg.Connection, stored) -> None:  # type: ignore[no-untyped-def,override]
        if self.times > 0:
            self.times -= 1
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        await super().apply(conn, stored)


async def test_a_rebuild_retries_a_chunk_after_a_transient_failure_and_gives_up_loudly(  # type: ignore[no-untyped-def]
    env, monkeypatch
) -> None:
    _, pool, store = env
    await seed(store, cases=6, per_case=4)
    tip = await store.last_sequence()
    clean = await rebuild(pool, store, TallyProjection(), TallyProjection.tables,
                          to_sequence=tip, target_schema="tally_clean")
    retried = await rebuild(pool, store, DeadlockingTally(2), TallyProjection.tables,
                            to_sequence=tip, target_schema="tally_retried")
    assert retried.checksum == clean.checksum and retried.events == tip

    # Still failing after the retries: the rebuild raises (and does not hang on its reader).
    monkeypatch.setattr(rebuild_module, "TRANSIENT_RETRIES", 1)
    monkeypatch.setattr(rebuild_module, "CHUNK", 2)  # the reader waits on a full queue
    failing = asyncio.create_task(
        rebuild(pool, store, DeadlockingTally(10**6), TallyProjection.tables,
                to_sequence=tip, target_schema="tally_failed"))
    await asyncio.wait({failing}, timeout=30)
    stuck = not failing.done()
    if stuck:
        failing.cancel()
    assert not stuck, "the rebuild hung after its applier failed"
    with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
        failing.result()


async def test_a_parallel_rebuild_whose_own_share_fails_stops_its_workers(  # type: ignore[no-untyped-def]
    env, nats_url: str, fresh_database: str, monkeypatch
) -> None:
    _, pool, store = env
    cases = await seed(store, cases=8, per_case=3)
    # The parent's share (partitions 0, 3, 6, ...) must hold a case, or it has nothing to fail on.
    while not any(store.subjects.partition(c) % 3 == 0 for c in cases):
        cases |= await seed(store, cases=1, per_case=3)
    monkeypatch.setattr(rebuild_module, "TRANSIENT_RETRIES", 0)
    with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
        await rebuild(pool, store, DeadlockingTally(10**6), TallyProjection.tables,
                      target_schema="tally_failed",
                      workers=Workers(3, nats_url, fresh_database, TallyProjection))
    assert multiprocessing.active_children() == []


async def test_rebuild_to_a_sequence_shows_the_past(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    await seed(store, cases=4, per_case=5)
    projection = TallyProjection()
    past = await rebuild(pool, store, projection, projection.tables, to_sequence=7,
                         target_schema="tally_past")
    assert past.last_sequence == 7
    assert len(await rows(pool, "tally_past", "applied")) == 7


async def test_exactly_once_through_sigkills_during_10k_events(  # type: ignore[no-untyped-def]
    env, nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    nc, pool, store = env
    expected = await seed(store, cases=200, per_case=50)
    tip = await store.last_sequence()
    assert tip == 10_000
    child_env = {**os.environ, "GRIDLOOP_FAULT_PAUSE_AFTER_COMMIT": "0.003",
                 "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, str(HERE / "crash_runner.py"), nats_url, fresh_database,
           fresh_stream_prefix, "50"]
    rng = random.Random(7)
    kills = 0

    async def checkpoint() -> int:
        async with pool.acquire() as conn:
            try:
                return int(await conn.fetchval(
                    "SELECT max(last_sequence) FROM tally.checkpoint WHERE projection='tally'")
                    or 0)
            except asyncpg.UndefinedTableError:
                return 0

    deadline = time.monotonic() + 240
    while await checkpoint() < tip and time.monotonic() < deadline:
        proc = subprocess.Popen(cmd, env=child_env)
        # Killed after a random stretch of progress, not of time: however fast the machine,
        # the 10k events see about ten kills, each at a random moment of some batch.
        target = await checkpoint() + rng.randint(tip // 16, tip // 8)
        started = time.monotonic()
        while (await checkpoint() < min(target, tip) and proc.poll() is None
               and time.monotonic() - started < 30):
            await asyncio.sleep(rng.uniform(0.005, 0.05))
        if await checkpoint() >= tip:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
    assert kills >= 5, "the runner finished before it was killed enough to prove anything"
    assert await checkpoint() == tip

    applied = await rows(pool, "tally", "applied")
    assert len(applied) == tip  # none skipped; the primary key forbids any applied twice
    assert Counter(a[1] for a in applied) == Counter(expected)
    # The same projection built without crashes comes out identical.
    projection = TallyProjection()
    clean = await rebuild(pool, store, projection, projection.tables, to_sequence=tip,
                          target_schema="tally_clean")
    async with pool.acquire() as conn:
        assert await table_checksum(conn, "tally", projection.tables) == clean.checksum


async def test_stored_v1_event_is_read_as_v2(env) -> None:  # type: ignore[no-untyped-def]
    from gridloop_events.testing import closed, closed_v2_registry, dispatched

    nc, pool, store = env
    r = reported()
    v = await store.append(r.case_id, [r], 0)
    c = closed(dispatched(r))
    await store.append(r.case_id, [c], v)
    raw = await store.js.get_last_msg(store.stream, store.subjects.event(
        "370105", r.case_id, "CaseClosed"))
    assert json.loads(raw.data)["schema_version"] == 1  # stored as written, never rewritten
    reader = EventStore(nc, store.subjects, closed_v2_registry())
    history = await reader.read(r.case_id)
    assert history[-1].envelope.schema_version == 2
    assert history[-1].envelope.payload.details == "已清理"
    assert history[0].envelope == r  # other types pass through untouched


async def test_two_instances_split_the_partitions_and_keep_each_case_in_order(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    expected = await seed(store, cases=40, per_case=8)
    halves = [[p for p in range(16) if p % 2 == i] for i in range(2)]
    runners = [ProjectionRunner(nc, pool, store, TallyProjection(), partitions=h, batch_size=16)
               for h in halves]
    for r in runners:
        await r.start()
    more = asyncio.create_task(seed(store, cases=20, per_case=5))
    try:
        await more
        expected.update(more.result())
        tip = await store.last_sequence()
        for r in runners:
            await r.wait_caught_up(tip, timeout=60)
        assert all(r.stats.applied > 0 for r in runners)  # both did work
        applied = await rows(pool, "tally", "applied")
        assert len(applied) == tip  # none twice (primary key), none skipped
        by_case: dict[str, list[int]] = {}
        for seq, case_id, _ in applied:
            by_case.setdefault(case_id, []).append(seq)
        tally = {r[0]: r for r in await rows(pool, "tally", "tally")}
        for case_id, count in expected.items():
            assert tally[case_id][1] == count
            assert tally[case_id][3].split(",")[0] == "CaseReported"
            assert tally[case_id][2] == max(by_case[case_id])  # last applied = last in the log
    finally:
        for r in runners:
            await r.stop()


async def test_a_standby_instance_takes_over_when_the_owner_stops(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    await seed(store, cases=10, per_case=4)
    first = ProjectionRunner(nc, pool, store, TallyProjection(), claim_interval=0.3)
    second = ProjectionRunner(nc, pool, store, TallyProjection(), claim_interval=0.3)
    await first.start()
    await first.wait_caught_up()
    await second.start()
    await asyncio.sleep(1.0)
    assert second.owned == [] and second.stats.applied == 0  # a standby: all partitions taken
    await first.stop()
    await seed(store, cases=5, per_case=3)
    try:
        await second.wait_caught_up(timeout=30)
        assert second.owned == list(range(16))
        assert len(await rows(pool, "tally", "applied")) == await store.last_sequence() == 55
    finally:
        await second.stop()


async def test_a_share_whose_instance_is_gone_is_absorbed_and_handed_back(env) -> None:  # type: ignore[no-untyped-def]
    nc, pool, store = env
    await seed(store, cases=12, per_case=3)
    halves = [[p for p in range(16) if p % 2 == i] for i in range(2)]

    def instance(i: int) -> ProjectionRunner:
        return ProjectionRunner(nc, pool, store, TallyProjection(), partitions=halves[i],
                                spare=halves[1 - i], claim_interval=0.2, absorb_after=0.6,
                                hand_back_after=2.0)

    even, odd = instance(0), instance(1)
    await even.start()
    await odd.start()
    returned: ProjectionRunner | None = None
    try:
        await even.wait_caught_up(timeout=30)
        await odd.wait_caught_up(timeout=30)
        assert sorted(even.owned) == halves[0] and sorted(odd.owned) == halves[1]
        await odd.stop()  # the odd share's instance is gone, and it has no standby
        await seed(store, cases=12, per_case=3)
        tip = await store.last_sequence()
        await _until(lambda: sorted(even.owned) == list(range(16)), 15, "even absorbs odd")
        await even.wait_caught_up(tip, timeout=30)
        applied = await rows(pool, "tally", "applied")
        assert len(applied) == tip  # none skipped, none twice (primary key)

        returned = instance(1)
        await returned.start()  # the owner is back: it gets its share when it is handed back
        await _until(lambda: sorted(returned.owned) == halves[1], 20, "odd share handed back")
        assert sorted(even.owned) == halves[0]
        await seed(store, cases=6, per_case=2)
        tip = await store.last_sequence()
        await returned.wait_caught_up(tip, timeout=30)
        await even.wait_caught_up(tip, timeout=30)
        assert len(await rows(pool, "tally", "applied")) == tip
        assert returned.stats.applied > 0
    finally:
        for r in (even, odd, returned):
            if r is not None:
                await r.stop()


async def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.05)
