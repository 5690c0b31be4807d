"""The JetStream event store against a real nats-server: guard, idempotency, order, config."""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats
import pytest
import pytest_asyncio

from gridloop_events.codec import encode
from gridloop_events.commands import execute
from gridloop_events.store import AppendError, ConcurrencyError, EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.testing import accepted, closed, dispatched, reported


@pytest_asyncio.fixture
async def store(nats_url: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    s = EventStore(nc, Subjects(fresh_stream_prefix))
    await s.ensure_stream()
    yield s
    await nc.close()


async def test_stream_is_a_log_of_record(store: EventStore) -> None:
    info = await store.js.stream_info(store.stream)
    c = info.config
    assert getattr(c.storage, "value", c.storage) == "file"
    assert c.deny_delete and c.deny_purge
    assert getattr(c.discard, "value", c.discard) == "new"
    assert c.max_msgs in (-1, None) and not c.max_age
    assert c.duplicate_window == pytest.approx(120.0)
    r = reported()
    seq = await store.append(r.case_id, [r], 0)
    with pytest.raises(nats.js.errors.APIError):
        await store.js.delete_msg(store.stream, seq)
    with pytest.raises(nats.js.errors.APIError):
        await store.js.purge_stream(store.stream)
    assert len(await store.read(r.case_id)) == 1


async def test_two_writers_at_the_same_version_exactly_one_wins(store: EventStore) -> None:
    r = reported()
    v1 = await store.append(r.case_id, [r], 0)
    a = accepted(dispatched(r), handler="gw-a")
    b = closed(dispatched(r))
    results = await asyncio.gather(
        store.append(r.case_id, [a], v1),
        store.append(r.case_id, [b], v1),
        return_exceptions=True,
    )
    wins = [x for x in results if isinstance(x, int)]
    losses = [x for x in results if isinstance(x, ConcurrencyError)]
    assert len(wins) == 1 and len(losses) == 1
    assert len(await store.read(r.case_id)) == 2


async def test_many_writers_race_and_the_history_stays_a_chain(store: EventStore) -> None:
    r = reported()
    await store.append(r.case_id, [r], 0)
    d = dispatched(r)

    async def note(i: int) -> None:
        from gridloop_events.catalogue import ProgressNoted
        from gridloop_events.envelope import Actor

        def decide(state):  # type: ignore[no-untyped-def]
            return [d.caused(ProgressNoted(author_id=f"w{i}", note=f"note {i}"),
                             actor=Actor(kind="grid_worker", id=f"w{i}"), purpose=f"n{i}")]

        await execute(store, r.case_id, decide)

    await asyncio.gather(*(note(i) for i in range(20)))
    history = await store.read(r.case_id)
    assert len(history) == 21
    assert len({h.envelope.event_id for h in history}) == 21


async def test_same_event_twice_is_stored_once(store: EventStore) -> None:
    r = reported()
    first = await store.append(r.case_id, [r], 0)
    again = await store.append(r.case_id, [r], 0)  # a retry after a lost ack
    unguarded = await store.append(r.case_id, [r], None)  # Nats-Msg-Id dedup
    assert first == again == unguarded
    assert [e.envelope.event_id for e in await store.read(r.case_id)] == [r.event_id]


async def test_a_redelivered_reaction_appends_nothing_new(store: EventStore) -> None:
    r = reported()
    v = await store.append(r.case_id, [r], 0)
    # The reaction (dispatch reacting to CaseReported) runs twice, e.g. after a crash before ack.
    await store.append(r.case_id, [dispatched(r)], v)
    await store.append(r.case_id, [accepted(dispatched(r))], v + 1)
    again = await store.append(r.case_id, [dispatched(r)], v)
    history = await store.read(r.case_id)
    assert [h.envelope.event_type for h in history] == ["CaseReported", "CaseDispatched",
                                                        "CaseAccepted"]
    assert again == history[1].sequence


async def test_a_batch_lands_whole_or_not_at_all(store: EventStore) -> None:
    r = reported()
    v = await store.append(r.case_id, [r], 0)
    d = dispatched(r)
    batch = [d, accepted(d)]
    with pytest.raises(ConcurrencyError):
        await store.append(r.case_id, batch, v + 5)
    assert len(await store.read(r.case_id)) == 1
    new = await store.append(r.case_id, batch, v)
    assert await store.append(r.case_id, batch, v) == new  # retried batch: recognised
    assert [h.envelope.event_type for h in await store.read(r.case_id)] == [
        "CaseReported", "CaseDispatched", "CaseAccepted"]


async def test_read_returns_only_that_case_in_order_across_pages(store: EventStore) -> None:
    from gridloop_events import store as store_module

    a, b = reported(), reported()
    va = await store.append(a.case_id, [a], 0)
    await store.append(b.case_id, [b], 0)
    d = dispatched(a)
    va = await store.append(a.case_id, [d], va)
    original = store_module.READ_BATCH
    store_module.READ_BATCH = 1  # force several direct-get pages
    try:
        history = await store.read(a.case_id)
    finally:
        store_module.READ_BATCH = original
    assert [h.envelope.event_id for h in history] == [a.event_id, d.event_id]
    assert history[0].sequence < history[1].sequence
    assert await store.version(a.case_id) == va
    assert await store.read("no-such-case") == []


async def test_read_all_reads_in_batches_in_order_and_leaves_no_consumer(
    store: EventStore,
) -> None:
    cases = [reported() for _ in range(9)]
    versions = [await store.append(r.case_id, [r], 0) for r in cases]
    for r, v in zip(cases, versions, strict=True):
        await store.append(r.case_id, [dispatched(r)], v)
    tip = await store.last_sequence()
    assert tip == 18

    async def consumers() -> int:
        return (await store.js.stream_info(store.stream)).state.consumer_count

    # Batches of 4: the requests overlap with the reading, and the order is the stream's.
    every = [e async for e in store.read_all(1, None, batch=4)]
    assert [e.sequence for e in every] == list(range(1, tip + 1))
    assert every[0].data == encode(cases[0]) and every[0].stored_at is not None
    assert await consumers() == 0
    assert [e.sequence for e in await collect(store.read_all(5, 11, batch=4))] == list(range(5, 12))
    only = await collect(store.read_all(1, None, [store.subjects.of_type("CaseDispatched")],
                                        batch=4))
    assert [e.sequence for e in only] == list(range(10, 19))
    # Stopped early by the caller: its consumer is gone at once, not when collected.
    async with contextlib.aclosing(store.read_all(1, None, batch=4)) as reading:
        async for e in reading:
            if e.sequence == 6:
                break
    assert await consumers() == 0


async def collect(events) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [e async for e in events]


async def test_events_of_other_cases_do_not_conflict(store: EventStore) -> None:
    a, b = reported(), reported()
    await asyncio.gather(store.append(a.case_id, [a], 0), store.append(b.case_id, [b], 0))
    assert await store.last_sequence() == 2


async def test_append_refuses_events_of_another_case(store: EventStore) -> None:
    a, b = reported(), reported()
    with pytest.raises(ValueError, match="belongs to case"):
        await store.append(a.case_id, [b], 0)


async def test_subjects_let_an_outsider_filter_by_district_and_type(store: EventStore) -> None:
    r = reported()
    v = await store.append(r.case_id, [r], 0)
    await store.append(r.case_id, [dispatched(r)], v)
    got = [s async for s in store.read_all(1, None, [store.subjects.of_type("CaseDispatched")])]
    assert len(got) == 1 and got[0][1].endswith(".CaseDispatched")
    got = [s async for s in store.read_all(1, None, [store.subjects.district("999999")])]
    assert got == []
    body = json.loads(got[0][2]) if got else json.loads(encode(r))
    assert body["district"] == "370105"


async def test_store_errors_other_than_conflicts_are_reported(store: EventStore) -> None:
    big = reported(description="长" * 4000)
    # A message far over max_msg_size would be refused; simulate with a stream that does not
    # match the subject instead: publishing to an unknown stream is an AppendError, not silence.
    other = EventStore(store.nc, Subjects(store.subjects.prefix + "_nostream"))
    with pytest.raises(Exception) as info:
        await other.append(big.case_id, [big], 0)
    assert not isinstance(info.value, ConcurrencyError)
    assert isinstance(info.value, (AppendError, nats.errors.NoRespondersError,
                                   nats.js.errors.NoStreamResponseError))


async def test_every_case_is_a_hash_chain_and_the_audit_finds_a_rewrite(store: EventStore) -> None:
    from gridloop_events.audit import verify_all, verify_case
    from gridloop_events.codec import content_hash

    r = reported()
    v = await store.append(r.case_id, [r], 0)
    d = dispatched(r)
    v = await store.append(r.case_id, [d, accepted(d)], v)  # a batch chains inside too
    history = await store.read(r.case_id)
    assert history[0].envelope.prev_hash is None
    assert history[1].envelope.prev_hash == history[0].content_hash
    assert history[2].envelope.prev_hash == history[1].content_hash
    assert (await verify_case(store, r.case_id)).ok
    report = await verify_all(store)
    assert report.ok and report.events == 3 and report.cases == 1

    # Rewrite history into a second stream the way a tamperer would: change one stored event.
    tampered = EventStore(store.nc, Subjects(store.subjects.prefix + "_x"))
    await tampered.ensure_stream()
    for i, h in enumerate(history):
        body = encode(h.envelope)
        if i == 1:
            body = body.replace(b"triage", b"TRIAGE")
        await tampered.js.publish(
            tampered.subjects.event("370105", r.case_id, h.envelope.event_type), body,
            headers={"Gridloop-Content-Hash": h.content_hash})
    found = (await verify_all(tampered)).findings
    assert [(f.position, "content changed" in f.problem) for f in found] == [(1, True)]
    assert found[0].case_id == r.case_id
    assert content_hash(encode(history[1].envelope)) == history[1].content_hash


async def test_a_command_on_a_lagging_read_model_is_decided_again_on_the_log(
        store: EventStore) -> None:
    """An HTTP command seeded with a projection's fold that has not yet seen the dispatch:
    the refusal it gets there is not the answer; the log's state is."""
    from gridloop_events.lifecycle import Status, fold

    r = reported()
    v = await store.append(r.case_id, [r], 0)
    d = dispatched(r)
    await store.append(r.case_id, [d], v)
    lagging = fold(await store.read(r.case_id))
    lagging_before_dispatch = fold((await store.read(r.case_id))[:1])
    seen: list[Status] = []

    def accept(state):  # type: ignore[no-untyped-def]
        seen.append(state.status)
        if state.status is not Status.dispatched:
            raise ValueError("not dispatched")
        return [accepted(d)]

    outcome = await execute(store, r.case_id, accept, known=lagging_before_dispatch,
                            may_lag=True)
    assert seen == [Status.reported, Status.dispatched]
    assert [e.event_type for e in outcome.events] == ["CaseAccepted"]
    # A current fold is decided on once, with no read of the log; a refusal there stands.
    seen.clear()
    current = fold(await store.read(r.case_id))
    with pytest.raises(ValueError):
        await execute(store, r.case_id, accept, known=current, may_lag=False)
    assert seen == [Status.accepted]
    # Without may_lag (a reaction's exact state) a refusal on the known state is final.
    seen.clear()
    with pytest.raises(ValueError):
        await execute(store, r.case_id, accept, known=lagging_before_dispatch)
    assert seen == [Status.reported]
    # A no-op decided on a lagging state is decided again on the log too.
    calls: list[int] = []

    def nothing_until_accepted(state):  # type: ignore[no-untyped-def]
        calls.append(state.version)
        return []

    out = await execute(store, r.case_id, nothing_until_accepted, known=lagging, may_lag=True)
    assert out.events == () and len(calls) == 2 and calls[1] == current.version


async def test_a_stale_state_is_caught_up_from_the_log_not_read_again_from_the_start(
        store: EventStore) -> None:
    """A recheck or a conflict reads only the events after the state it found stale (a read
    from the case's first event makes the server scan the stream from there), and the state it
    decides on is the same as a fold of the whole case."""
    from gridloop_events.lifecycle import fold

    r = reported()
    v = await store.append(r.case_id, [r], 0)
    d = dispatched(r)
    after_dispatch = await store.append(r.case_id, [d], v)
    lagging = fold((await store.read(r.case_id))[:1])
    reads: list[int] = []
    real_read = store.read

    async def recorded_read(case_id: str, after: int = 0):  # type: ignore[no-untyped-def]
        reads.append(after)
        return await real_read(case_id, after)

    store.read = recorded_read  # type: ignore[method-assign]
    decided_on = []

    def accept(state):  # type: ignore[no-untyped-def]
        decided_on.append(state)
        if state.status.value != "dispatched":
            raise ValueError("not dispatched")
        return [accepted(d)]

    outcome = await execute(store, r.case_id, accept, known=lagging, may_lag=True)
    assert reads == [v]
    whole = await real_read(r.case_id)
    assert decided_on[-1] == fold(h for h in whole if h.sequence <= after_dispatch)
    assert outcome.version > after_dispatch

    # A conflict: the state was current when read, then another writer moved the case on.
    reads.clear()
    current = fold(await real_read(r.case_id))
    from gridloop_events.catalogue import ProgressNoted
    from gridloop_events.envelope import Actor

    await store.append(r.case_id, [d.caused(ProgressNoted(author_id="w", note="meanwhile"),
                                            actor=Actor(kind="grid_worker", id="w"),
                                            purpose="meanwhile")], current.version)
    reads.clear()
    noted: list[int] = []

    def note(state):  # type: ignore[no-untyped-def]
        noted.append(state.events)
        return [d.caused(ProgressNoted(author_id="w2", note="after"),
                         actor=Actor(kind="grid_worker", id="w2"), purpose="after")]

    await execute(store, r.case_id, note, known=current)
    # The store's check that the refused events are not its own, then the catch-up.
    assert reads == [current.version, current.version]
    assert noted == [current.events, current.events + 1]
    assert fold(await real_read(r.case_id)).events == current.events + 2
