"""Synthetic case histories, made by the services' own rules so a replay sees what a live run
writes: intake's `prepare_report`, dispatch's `react`, escalation's `missed_event`/`warning_event`
and feedback's `schedule_callback` decide every system event; people's actions (accept, close,
rate) are built the way the HTTP handlers build them. Events are hash-chained per case and
encoded exactly as the store encodes them.

No I/O here: `EncodedEvent`s go to the stream through `publish_pipelined`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from uuid import uuid4

from gridloop_district import District, default_district
from gridloop_dispatch.domain.reactions import react
from gridloop_escalation.domain.decisions import missed_event, warning_event
from gridloop_escalation.domain.timers import timer_for
from gridloop_events.catalogue import (
    CallbackRated,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    Deadlines,
    ReporterContact,
)
from gridloop_events.codec import content_hash, encode
from gridloop_events.envelope import Actor, Envelope, StoredEvent, new_event_id
from gridloop_events.lifecycle import CaseState, evolve
from gridloop_events.store import CONTENT_HASH_HEADER
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import CallbackMethod, Channel, DeadlineKind, Outcome, Rating
from gridloop_feedback.domain.callback import district_callback_limits, schedule_callback
from gridloop_intake.domain.commands import ReportCase
from gridloop_intake.domain.report import prepare_report

try:
    from gridloop_events.crypto import DataKey as _DataKey
    from gridloop_events.crypto import seal_contact as _seal
except ImportError:  # code from before contacts were sealed
    _seal = None

DESCRIPTIONS = (
    "楼道堆放杂物，堵塞消防通道，请尽快处理",
    "小区门口垃圾箱满溢，气味很大",
    "路灯不亮已经三天了，晚上出行不安全",
    "邻居装修噪音扰民，晚上十点后仍在施工",
    "楼顶太阳能热水器漏水，渗到楼下住户",
    "物业不按时清运垃圾，住户意见很大",
)
CHANNELS = ("hotline", "wechat", "app", "walk_in", "patrol")


class EncodedEvent(NamedTuple):
    subject: str
    data: bytes
    headers: dict[str, str]
    event_type: str


@dataclass(frozen=True)
class Mix:
    """Shares of the paths a case takes (the simulator's defaults)."""

    missed_share: float = 0.08  # nobody accepts in time: warned, missed, escalated a tier
    unsatisfied_share: float = 0.10  # rated unsatisfied: re-dispatched (重办) and done again


class CaseWriter:
    """Builds one case's history, folding it as it goes, so each rule sees the state a live
    service would have seen."""

    def __init__(self, district: District, subjects: Subjects) -> None:
        self.district = district
        self.subjects = subjects
        self.limits = district_callback_limits(district)
        self.grids = [g.code for g in district.grids]
        # Categories the rules place without a dispatcher (general problems go to the grid).
        self.categories = [c.code for c in district.catalogue.items if c.kind.value == "general"]

    def _case(self) -> tuple[list[Envelope], list[StoredEvent], CaseState]:
        return [], [], CaseState()

    def report_payload(self, rng: random.Random, case_id: str):  # type: ignore[no-untyped-def]
        cmd = ReportCase(
            channel=Channel(rng.choice(CHANNELS)),
            category_code=rng.choice(self.categories),
            description=rng.choice(DESCRIPTIONS),
            grid_code=rng.choice(self.grids),
            reporter=ReporterContact(name="模拟居民", phone=f"1380000{rng.randrange(10000):04d}"),
        )
        payload = prepare_report(cmd, self.district)
        if _seal is not None and payload.reporter is None:
            # Where intake seals contacts per case, so does the generator (a fresh data key:
            # nothing here needs to open it again).
            payload = payload.model_copy(update={
                "reporter": _seal(_DataKey.new(case_id), case_id, cmd.reporter)})
        return payload

    def history(self, rng: random.Random, start: datetime, mix: Mix = Mix()) -> list[Envelope]:
        """The whole loop of one case: reported → … → rated satisfied."""
        case, reported = self._reported(rng, start)
        case.react(reported)  # dispatched to the grid team
        t = start
        if rng.random() < mix.missed_share:
            accept = case.state.deadlines[DeadlineKind.accept]
            case.whistle(accept, accept.set_at + (accept.due_at - accept.set_at) * 0.85)
            missed = case.whistle(accept, accept.due_at + timedelta(seconds=1))
            case.react(missed)  # escalated one tier up
            t = missed.occurred_at
        self._handle(case, rng, t + timedelta(seconds=rng.randint(10, 50)))
        if rng.random() < mix.unsatisfied_share:
            rated = case.rate(rng, Rating.unsatisfied)
            case.react(rated)  # redone by the same unit
            self._handle(case, rng, rated.occurred_at + timedelta(minutes=5))
        case.rate(rng, Rating.satisfied)
        return case.events

    def _reported(self, rng: random.Random, start: datetime) -> tuple[_Case, Envelope]:
        """A new case with its hotline report, added."""
        case = _Case(self)
        case_id = str(new_event_id(start))
        reported = Envelope.new(
            self.report_payload(rng, case_id), case_id=case_id,
            district=self.district.code, actor=Actor(kind="operator", id="op-7", role="hotline"),
            correlation_id=str(uuid4()), occurred_at=start,
        )
        case.add(reported)
        return case, reported

    def _handle(self, case: _Case, rng: random.Random, at: datetime) -> None:
        unit = case.state.unit_code
        assert unit is not None
        handler = f"gw-{rng.randrange(500)}"
        case.add(case.person(CaseAccepted(unit_code=unit, handler_id=handler), handler, at))
        closed = case.person(
            CaseClosed(outcome=Outcome.resolved, resolution="已现场处理，并向居民反馈结果",
                       closed_by=handler, unit_code=unit),
            handler, at + timedelta(hours=rng.randint(1, 8)),
        )
        case.add(closed)
        stored = case.stored[-1]
        for event in schedule_callback(stored, case.state, self.limits)(case.state):
            case.add(event)

    def timer_case(self, start: datetime, accept_due: datetime, resolve_due: datetime,
                   rng: random.Random) -> list[Envelope]:
        """Reported and dispatched with the given deadlines: two open timers for escalation."""
        case, reported = self._reported(rng, start)
        grid = case.state.grid
        assert grid is not None
        payload = CaseDispatched(
            unit_code=self.district.grid_team(grid).code, tier="grid", kind="general",
            dispatcher="dispatch-rules", reason="triage: general → grid team",
            deadlines=Deadlines(accept_due=accept_due, resolve_due=resolve_due),
        )
        case.add(reported.caused(payload, actor=Actor.system("dispatch"),
                                 purpose="dispatch.triage", occurred_at=start))
        return case.events


class _Case:
    def __init__(self, writer: CaseWriter) -> None:
        self.writer = writer
        self.events: list[Envelope] = []
        self.stored: list[StoredEvent] = []
        self.state = CaseState()
        self.prev_hash: str | None = None

    def add(self, event: Envelope) -> StoredEvent:
        event = event.model_copy(update={"prev_hash": self.prev_hash})
        digest = content_hash(encode(event))
        self.prev_hash = digest
        stored = StoredEvent(sequence=len(self.stored) + 1, subject="", envelope=event,
                             content_hash=digest)
        before = self.state
        self.state = evolve(before, stored)
        self.events.append(event)
        self.stored.append(stored)
        self._before = before
        return stored

    def react(self, cause: Envelope) -> None:
        stored = self.stored[-1]
        assert stored.envelope.event_id == cause.event_id
        for event in react(stored, self._before, self.state, self.writer.district):
            self.add(event)

    def whistle(self, deadline, at: datetime) -> Envelope:  # type: ignore[no-untyped-def]
        timer = timer_for(deadline, self.state, self.events[0].correlation_id)
        decide = missed_event if at >= deadline.due_at else warning_event
        event = decide(self.state, timer, at)
        assert event is not None
        self.add(event)
        return event

    def person(self, payload, who: str, at: datetime) -> Envelope:  # type: ignore[no-untyped-def]
        return Envelope.new(payload, case_id=self.state.case_id, district=self.state.district,
                            actor=Actor(kind="grid_worker", id=who),
                            correlation_id=str(uuid4()), occurred_at=at)

    def rate(self, rng: random.Random, rating: Rating) -> Envelope:
        due = self.state.deadlines[DeadlineKind.callback]
        ok = rating is not Rating.unsatisfied
        payload = CallbackRated(rating=rating, handled_lawfully=True, measures_carried_out=ok,
                                party_accepts=ok, method=CallbackMethod.phone, comment="回访",
                                rated_by="callback-centre")
        event = Envelope.new(payload, case_id=self.state.case_id, district=self.state.district,
                             actor=Actor(kind="operator", id="callback-centre"),
                             correlation_id=str(uuid4()),
                             occurred_at=due.set_at + timedelta(hours=rng.randint(1, 20)))
        self.add(event)
        return event


def encoded(events: Sequence[Envelope], subjects: Subjects) -> list[EncodedEvent]:
    out = []
    for e in events:
        data = encode(e)
        out.append(EncodedEvent(
            subjects.event(e.district, e.case_id, e.event_type), data,
            {"Nats-Msg-Id": str(e.event_id), CONTENT_HASH_HEADER: content_hash(data)},
            e.event_type,
        ))
    return out


REPLAY_BASE = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def interleaved_stream(subjects: Subjects, total_events: int, seed: int = 7,
                       chunk_cases: int = 500,
                       base: datetime = REPLAY_BASE) -> Iterator[list[EncodedEvent]]:
    """About `total_events` events of whole cases, in chunks whose cases interleave by time
    the way concurrent cases do in the log. The last chunk is cut to the exact total."""
    rng = random.Random(seed)
    writer = CaseWriter(default_district(), subjects)
    produced = 0
    case_no = 0
    while produced < total_events:
        chunk: list[Envelope] = []
        for _ in range(chunk_cases):
            start = base + timedelta(seconds=case_no * 20)
            chunk.extend(writer.history(rng, start))
            case_no += 1
        chunk.sort(key=lambda e: e.occurred_at)
        out = encoded(chunk, subjects)[: total_events - produced]
        produced += len(out)
        yield out


async def publish_pipelined(js, events: Sequence[EncodedEvent], window: int = 2000) -> list[int]:  # type: ignore[no-untyped-def]
    """Publish in order with up to `window` acknowledgements outstanding; returns the stream
    sequences. Each event still waits for its own fsync before the server acknowledges it."""
    pending: list[asyncio.Future] = []  # type: ignore[type-arg]
    seqs: list[int] = []
    for ev in events:
        pending.append(await js.publish_async(ev.subject, ev.data, headers=ev.headers))
        if len(pending) >= window:
            seqs.extend(a.seq for a in await asyncio.gather(*pending))
            pending.clear()
    if pending:
        seqs.extend(a.seq for a in await asyncio.gather(*pending))
    return seqs
