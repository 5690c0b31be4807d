"""The checker itself: silent on a healthy system, and it names the case of every kind of
damage planted in the log or a read model — so a clean report from the fault tests means
something."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import nats

from faultkit import scenario
from gridloop_district import default_district
from gridloop_events.catalogue import DeadlineMissed
from gridloop_events.envelope import Actor, Envelope, new_event_id
from gridloop_events.invariants import CheckOptions, Report, run_check
from gridloop_events.lifecycle import fold
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import DeadlineKind


async def _check(cluster, **options) -> Report:  # type: ignore[no-untyped-def]
    return await run_check(cluster.nats_url, cluster.database_url, prefix=cluster.prefix,
                           feedback_url=cluster.url("feedback"),
                           options=CheckOptions(**options), http_headers=cluster.supervisor())


async def _until(cluster, ready, timeout: float = 30.0, **options) -> Report:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        report = await _check(cluster, **options)
        if ready(report) or asyncio.get_running_loop().time() > deadline:
            return report
        await asyncio.sleep(0.5)


def _cli(cluster) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    token = cluster.token("supervisor", cluster_district(), "faults-supervisor")
    return subprocess.run(
        [sys.executable, "-m", "gridloop_cli.main", "check", "--nats-url", cluster.nats_url,
         "--database-url", cluster.database_url, "--prefix", cluster.prefix,
         "--feedback-url", cluster.url("feedback"), "--settle-seconds", "0",
         *(["--token", token] if token else [])],
        capture_output=True, text=True, timeout=120)


def cluster_district() -> str:
    return default_district().code


def _named(report: Report, check: str) -> set[str | None]:
    return {v.case_id for v in report.violations if v.check == check}


async def test_checker_is_silent_when_healthy_and_names_each_planted_violation(cluster) -> None:
    async def quiet(load, log) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(3.0)

    outcome = await scenario.run(cluster, quiet, rate=3.0, seed=5, warmup=1.0)
    assert outcome.report.ok, outcome.report.render()
    done = sorted(outcome.load.stats.done)
    assert len(done) >= 6

    # Two cases nobody handles: dispatched, their accept deadlines live.
    async with httpx.AsyncClient(timeout=10) as client:
        idle = []
        for i in range(2):
            r = await client.post(f"{cluster.url('intake')}/v1/cases",
                                  headers={"Idempotency-Key": f"idle-{i}-{cluster.prefix}",
                                           **cluster.headers("dispatcher", cluster_district(),
                                                             "op-hotline")},
                                  json={"channel": "hotline", "category_code": "CM-0101",
                                        "description": "路灯不亮", "severity": "normal",
                                        "location": {"grid_code": outcome.load.district
                                                     .grids[0].code}})
            assert r.status_code == 201, r.text
            idle.append(r.json()["case_id"])
    healthy = await _until(cluster, lambda r: r.statuses.get("dispatched") == 2
                           and not any(p["lag"] for p in r.projections.values()),
                           settle_seconds=0)
    assert healthy.ok, healthy.render()
    cli = _cli(cluster)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "violations: none" in cli.stdout

    nc = await nats.connect(cluster.nats_url)
    store = EventStore(nc, Subjects(cluster.prefix))
    db = await asyncpg.connect(cluster.database_url)
    try:
        # A read model row changed behind the projection's back, and an event counted twice.
        await db.execute("UPDATE intake.cases SET status = 'closed' WHERE case_id = $1", done[0])
        await db.execute("""UPDATE dispatch.case_state SET state = jsonb_set(state, '{events}',
                            to_jsonb((state->>'events')::int + 1)) WHERE case_id = $1""", done[1])
        # A live deadline's timer gone: nothing would ever fire for it.
        await db.execute("DELETE FROM escalation.timers WHERE case_id = $1", idle[0])
        # A rating changed: feedback's figures no longer what the log says.
        rated = await db.fetchval("""SELECT case_id FROM feedback.callback_rating
                                     WHERE rating <> 'unsatisfied' ORDER BY case_id LIMIT 1""")
        await db.execute("UPDATE feedback.callback_rating SET rating = 'unsatisfied' "
                         "WHERE case_id = $1", rated)
        # One deadline reported missed twice, under two event ids.
        history = await store.read(idle[1])
        state = fold(history)
        accept = state.deadlines[DeadlineKind.accept]
        for _ in range(2):
            missed = Envelope.new(
                DeadlineMissed(deadline=DeadlineKind.accept, deadline_id=accept.id,
                               due_at=accept.due_at, detected_at=accept.due_at,
                               escalation_level=1),
                case_id=idle[1], district=state.district, actor=Actor.system("escalation"),
                correlation_id="planted", occurred_at=accept.due_at,
                causation_id=accept.id.partition(":")[2])
            await store.append(idle[1], [missed], None)
        # One Idempotency-Key's digest making a second case.
        first = (await store.read(done[2]))[0].envelope
        twin_id = str(uuid.uuid4())
        twin = first.model_copy(update={"case_id": twin_id, "event_id": new_event_id()})
        await store.append(twin_id, [twin], 0)
        # A case nobody will ever dispatch: dispatch is down when it is reported.
        cluster.kill("dispatch")
        orphan = first.model_copy(update={"case_id": str(uuid.uuid4()),
                                          "event_id": new_event_id(),
                                          "payload": first.payload.model_copy(
                                              update={"idempotency_digest": None})})
        await store.append(orphan.case_id, [orphan], 0)
    finally:
        await db.close()
        await nc.close()

    report = await _until(cluster, lambda r: all(
        p["lag"] == 0 for s, p in r.projections.items() if s != "dispatch"), settle_seconds=0)
    print(report.render(100))
    assert not report.ok
    assert done[0] in _named(report, "state.one")
    assert done[1] in _named(report, "projection.applied_once")
    assert idle[0] in _named(report, "timers.live") & _named(report, "stranded.no_timer")
    assert _named(report, "figures.exact") == {None}
    assert _named(report, "figures.served") == {None}
    assert idle[1] in _named(report, "lifecycle.reachable") & _named(report, "effects.once")
    assert any(accept.id in v.detail for v in report.violations
               if v.check == "deadline.missed_once")
    assert {done[2], twin_id} <= _named(report, "idempotency.one_case")
    assert orphan.case_id in _named(report, "stranded.no_deadline")
    assert orphan.case_id in _named(report, "stranded.unseen") | _named(
        report, "projection.none_skipped") or report.projections["dispatch"]["lag"] > 0

    # A deadline whose time has come but no DeadlineMissed: stuck, as seen from a later now.
    later = await _check(cluster, settle_seconds=0,
                         now=datetime.now(UTC) + timedelta(hours=2), late_tolerance_seconds=1)
    assert idle[0] in _named(later, "deadline.fired")

    cli = _cli(cluster)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "stranded.no_deadline" in cli.stdout and orphan.case_id in cli.stdout


def test_a_deadline_overtaken_late_and_unreported_is_counted_with_its_wait() -> None:
    """The figure the cluster fault test reads: an accept that came 7 s past the accept
    deadline, with no DeadlineMissed for it (escalation could not append while the stream had no
    leader), counts as overtaken with its wait; one reported missed, one met in time, and one
    moved by a jumped clock do not."""
    from gridloop_events.invariants.checks import _overtaken
    from gridloop_events.lifecycle import CaseState, Deadline

    due = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    accept = Deadline("accept:a", DeadlineKind.accept, due, due - timedelta(seconds=60))
    before, after = CaseState(deadlines={DeadlineKind.accept: accept}), CaseState()
    options = CheckOptions()
    late = due + timedelta(seconds=7)

    report = Report()
    _overtaken(report, before, after, late, late, {}, options)
    assert (report.deadlines_overtaken, report.max_overtaken_seconds) == (1, 7.0)

    for stored_at, at, missed in (
        (late, late, {"accept:a": {"m1"}}),  # reported missed first
        (due - timedelta(seconds=1),) * 2 + ({},),  # accepted in time
        (late, late + timedelta(hours=1), {}),  # occurred by a jumped clock
    ):
        report = Report()
        _overtaken(report, before, after, stored_at, at, missed, options)
        assert report.deadlines_overtaken == 0, (stored_at, at, missed)
    # A deadline still live is not overtaken, however late it is.
    report = Report()
    _overtaken(report, before, before, late, late, {}, options)
    assert report.deadlines_overtaken == 0
