"""Replay fidelity, as a property: whatever valid history many cases go through, every read model
rebuilt from the stream equals the live one row for row, now and at any moment in the past.

Hypothesis draws the history — reports of every kind, dispatches by hand, accepts, returns,
extensions asked and approved or refused, notes, closures (duplicates too), ratings satisfied or
not, and deadlines passed on escalation's clock — one command at a time from the case's state in
the log; the four real services (see four_services.py) do the rest: triage, escalation up the
ladder, 重办 after an unsatisfied rating, callbacks scheduled after each closure, whistles. Then
each service's projection class is replayed with `gridloop_events.rebuild.rebuild` into a
separate schema and compared with the live schema, every table of the projection's `tables`.

Each example is a fresh stream prefix and a fresh database, so examples cannot see each other.
Shrinking is off by default (an example takes seconds of real servers, and a failure prints its
whole history anyway); GRIDLOOP_PROPERTY_SHRINK=1 turns it on to minimise a failing history.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from four_services import SERVICES, running_system
from gridloop_events.lifecycle import Status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from replay import capped, compare, out_of_order_stamps, play, rebuilt_tables

ROUNDS = 10

PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("GRIDLOOP_PROPERTY_SHRINK") == "1":
    PHASES.append(Phase.shrink)

replaying = settings(
    max_examples=int(os.environ.get("GRIDLOOP_PROPERTY_EXAMPLES", "5")),
    deadline=None,
    derandomize=True,
    database=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

pytestmark = pytest.mark.timeout(300)


@replaying
@given(data=st.data())
def test_every_projection_rebuilt_from_the_stream_equals_its_live_tables(
    nats_url: str, database_url: str, data: st.DataObject
) -> None:
    asyncio.run(_rebuilt_equals_live(nats_url, database_url, data))


async def _rebuilt_equals_live(nats_url: str, database_url: str, data: st.DataObject) -> None:
    async with running_system(nats_url, database_url, "full") as system:
        played = await play(system, data, rounds=ROUNDS)
        tip = await system.settle()
        history = played.text()

        # Caught up means every runner's committed checkpoint is the stream's last sequence.
        assert await system.checkpoints() == {s: tip for s in SERVICES}, history
        assert await system.dead_letters() == {s: [] for s in SERVICES}, history
        # Settled means no case is left waiting for a service's reaction (triage, 重办).
        for case in played.cases:
            state = await system.state(case)
            assert state.status not in (Status.reported, Status.reopened), (
                f"{played.names[case]} stranded {state.status.value}\n{history}")

        live = {s: await system.tables(s, s) for s in SERVICES}
        rebuilt = {s: await rebuilt_tables(system, s, f"{s}_replay", to_sequence=tip)
                   for s in SERVICES}
        diffs = await compare(system, f"rebuilt to #{tip}", live, rebuilt)
        assert not diffs, "\n".join(["live != rebuilt:", *capped(diffs), "history:", history])
        assert await system.store.last_sequence() == tip, "the stream moved during the check"


@replaying
@given(data=st.data())
def test_a_rebuild_to_a_past_sequence_equals_the_live_tables_at_that_moment(
    nats_url: str, database_url: str, data: st.DataObject
) -> None:
    asyncio.run(_past_equals_live(nats_url, database_url, data, by="sequence"))


@replaying
@given(data=st.data())
def test_a_rebuild_to_a_past_time_equals_the_live_tables_at_that_moment(
    nats_url: str, database_url: str, data: st.DataObject
) -> None:
    asyncio.run(_past_equals_live(nats_url, database_url, data, by="time"))


async def _past_equals_live(nats_url: str, database_url: str, data: st.DataObject,
                            by: str) -> None:
    async with running_system(nats_url, database_url, f"past_{by}") as system:
        played = await play(system, data, rounds=ROUNDS, moments=True)
        history = played.text()
        assert played.moments, "no moment was captured"
        tip = await system.settle()
        assert all(m.sequence < tip for m in played.moments[:-1]), history

        diffs: list[str] = []
        stamps: list[str] = []
        for i, moment in enumerate(played.moments, start=1):
            until = ({"to_sequence": moment.sequence} if by == "sequence"
                     else {"to_time": moment.at})
            past = {s: await rebuilt_tables(system, s, f"{s}_{by}{i}", **until)
                    for s in SERVICES}
            label = (f"moment {i}: rebuilt to #{moment.sequence}" if by == "sequence"
                     else f"moment {i}: rebuilt to {moment.at.isoformat()}")
            found = await compare(system, label, moment.tables, past)
            if found and by == "time":
                stamps += [f"moment {i}:", *await out_of_order_stamps(system, moment,
                                                                      played.names)]
            diffs += found
        assert not diffs, "\n".join(["live then != rebuilt past:", *capped(diffs), *stamps,
                                      "history:", history])
