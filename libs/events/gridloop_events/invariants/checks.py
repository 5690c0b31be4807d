"""The invariants, as pure functions of the log and the read models (no I/O here).

Every fact is derived from the log by the shared fold and compared with what each projection
holds at its own checkpoint; the services' counters are never consulted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace, dataclass
from datetime import UTC, datetime, timedelta

from ..case_projection import state_to_json
from ..catalogue import CallbackScheduled, CaseReported, DeadlineApproaching, DeadlineMissed
from ..envelope import ActorKind
from ..lifecycle import CaseState, Status, evolve, fold
from ..vocabulary import DeadlineKind
from .log import LogSnapshot
from .rates import FIGURES, figures_of
from .readmodels import ReadModel
from .report import Report
from .rules import HANDLING, transition_error

ACTIVE_TIMER = frozenset({"pending", "warned"})


@dataclass(frozen=True)
class CheckOptions:
    # The escalation service's `now` (its clock may be moved in tests); default: wall clock.
    now: datetime | None = None
    # A case whose last event is older than this must be settled: not stranded, not stuck.
    settle_seconds: float = 30.0
    # How long a due deadline may wait for its DeadlineMissed before it counts as stuck.
    late_tolerance_seconds: float = 60.0
    # A DeadlineMissed detected this far ahead of its store time was fired by a jumped clock.
    jump_tolerance_seconds: float = 5.0
    wall_now: datetime | None = None


def check(log: LogSnapshot, models: list[ReadModel], options: CheckOptions | None = None,
          served: tuple[dict[int | None, int], dict[str, tuple[int, int]]] | None = None,
          ) -> Report:
    """`served`: feedback's /v1/stats totals and the feedback checkpoints they were read at."""
    options = options or CheckOptions()
    report = Report(tip=log.tip, messages=log.messages, events=log.events,
                    copies=len(log.copies), cases=len(log.cases), case_ids=set(log.cases))
    for seq, why in log.undecodable:
        report.add("log.decodable", None, f"sequence {seq}: {why}")
    for copy in log.copies:
        report.notes.append(f"event {copy.event_id} ({copy.event_type}) of case {copy.case_id} "
                            f"stored again at {copy.sequence} (first at {copy.first_sequence})")
    tip_states = _log_checks(log, report, options)
    escalation = next((m for m in models if m.spec.service == "escalation" and m.present), None)
    _stranded(log, tip_states, escalation, report, options)
    for model in models:
        _projection_checks(log, model, report)
    report.figures = {name: _rate(*value) for name, value in
                      figures_of(log.history(c) for c in log.cases).items()}
    if served is not None:
        _served_figures(log, served, report)
    return report


def _rate(numerator: int, denominator: int) -> dict[str, object]:
    return {"numerator": numerator, "denominator": denominator,
            "rate": numerator / denominator if denominator else None}


# --- the log on its own ----------------------------------------------------------------------


def _log_checks(log: LogSnapshot, report: Report, options: CheckOptions) -> dict[str, CaseState]:
    states: dict[str, CaseState] = {}
    digests: dict[str, set[str]] = defaultdict(set)
    missed: dict[str, set[str]] = defaultdict(set)
    warned: dict[str, set[str]] = defaultdict(set)
    for case_id, events in log.cases.items():
        state = CaseState()
        effects: dict[tuple[str, str, str], str] = {}
        for logged in events:
            stored = logged.stored
            e = stored.envelope
            p = e.payload
            report.checks["transitions"] += 1
            why = transition_error(state, e.event_type, p)
            if why is not None:
                report.add("lifecycle.reachable", case_id, f"sequence {stored.sequence}: {why}")
            if e.actor.kind is ActorKind.system and e.causation_id:
                # A reaction or a timer: one cause, one effect of each kind.
                report.checks["effects"] += 1
                key = (e.event_type, e.causation_id or "", _effect_key(p))
                if key in effects:
                    report.add("effects.once", case_id,
                               f"{e.event_type} caused by {e.causation_id} twice: "
                               f"{effects[key]} and {e.event_id}")
                effects[key] = str(e.event_id)
            if isinstance(p, CaseReported) and p.idempotency_digest:
                digests[p.idempotency_digest].add(case_id)
            if isinstance(p, DeadlineMissed):
                missed[p.deadline_id].add(str(e.event_id))
                _lateness(report, p, logged.stored_at, options)
            if isinstance(p, DeadlineApproaching):
                warned[p.deadline_id].add(str(e.event_id))
            before, state = state, evolve(state, stored)
            _overtaken(report, before, state, logged.stored_at, e.occurred_at, missed, options)
        states[case_id] = state
        report.statuses[state.status.value] += 1
    for digest, cases in digests.items():
        report.checks["idempotency_keys"] += 1
        if len(cases) > 1:
            for case_id in sorted(cases):
                report.add("idempotency.one_case", case_id,
                           f"key digest {digest[:12]}… made {len(cases)} cases")
    for name, seen in (("deadline.missed_once", missed), ("deadline.warned_once", warned)):
        for deadline_id, ids in seen.items():
            report.checks[name] += 1
            if len(ids) > 1:
                report.add(name, None, f"{deadline_id} reported {len(ids)} times: "
                           + ", ".join(sorted(ids)))
    return states


def _effect_key(payload: object) -> str:
    if isinstance(payload, DeadlineMissed | DeadlineApproaching):
        return payload.deadline_id
    if isinstance(payload, CallbackScheduled):
        return str(payload.round)
    return ""


def _lateness(report: Report, p: DeadlineMissed, stored_at: datetime,
              options: CheckOptions) -> None:
    report.deadlines_missed += 1
    if (p.detected_at - stored_at).total_seconds() > options.jump_tolerance_seconds:
        report.missed_under_clock_jump += 1
        return
    late = (p.detected_at - p.due_at).total_seconds()
    report.max_lateness_seconds = max(report.max_lateness_seconds, late)


def _overtaken(report: Report, before: CaseState, after: CaseState, stored_at: datetime,
               at: datetime, missed: dict[str, set[str]], options: CheckOptions) -> None:
    """A deadline the case moved past after it was due, never reported missed: the action came
    first (say escalation could not append while the stream had no leader). Not a violation —
    the late action is in the log and the figures count it late — but a wait past a deadline
    the reported ones alone would hide."""
    if (at - stored_at).total_seconds() > options.jump_tolerance_seconds:
        return  # moved by a jumped clock: its lateness says nothing
    for kind, deadline in before.deadlines.items():
        current = after.deadlines.get(kind)
        if (current is not None and current.id == deadline.id) or deadline.id in missed:
            continue
        late = (at - deadline.due_at).total_seconds()
        if late > 0:
            report.deadlines_overtaken += 1
            report.max_overtaken_seconds = max(report.max_overtaken_seconds, late)


# --- nothing stranded ------------------------------------------------------------------------


def _stranded(log: LogSnapshot, states: dict[str, CaseState], escalation: ReadModel | None,
              report: Report, options: CheckOptions) -> None:
    wall = options.wall_now or datetime.now(UTC)
    now = options.now or wall
    settle = timedelta(seconds=options.settle_seconds)
    tolerance = timedelta(seconds=options.late_tolerance_seconds)
    jumped = abs((now - wall).total_seconds()) > options.jump_tolerance_seconds
    for case_id, state in states.items():
        if state.status is Status.done:
            continue
        last = log.cases[case_id][-1]
        stored_at = {str(e.stored.envelope.event_id): e.stored_at for e in log.cases[case_id]}
        for deadline in state.deadlines.values():
            waited = (now - deadline.due_at).total_seconds()
            if waited > 0 and not jumped:
                report.max_lateness_seconds = max(report.max_lateness_seconds, waited)
            # Stuck: due for longer than the tolerance, and known to the system for as long
            # (a deadline set after a clock jump is born overdue).
            known = wall - stored_at.get(deadline.id.partition(":")[2], last.stored_at)
            if now - deadline.due_at > tolerance and known > tolerance:
                report.add("deadline.fired", case_id,
                           f"{deadline.id} due {deadline.due_at.isoformat()} has no "
                           f"DeadlineMissed after {waited:.0f}s")
        if wall - last.stored_at < settle:
            report.checks["unsettled_cases_skipped"] += 1
            continue
        report.checks["stranded"] += 1
        if escalation is None:
            continue
        seen = escalation.checkpoint(log.partition(case_id))
        if seen < last.sequence:
            report.add("stranded.unseen", case_id,
                       f"escalation at {seen} has not applied sequence "
                       f"{last.sequence}, stored {(wall - last.stored_at).total_seconds():.0f}s ago")
            continue
        if state.deadlines:
            for deadline in state.deadlines.values():
                timer = escalation.timers.get(deadline.id)
                if timer is None or timer.status not in ACTIVE_TIMER:
                    report.add("stranded.no_timer", case_id,
                               f"live {deadline.id} has timer "
                               f"{timer.status if timer else 'none'}")
            continue
        callback_missed = any(m.startswith(f"{DeadlineKind.callback.value}:")
                              for m in state.missed)
        if state.status is Status.closed and callback_missed and case_id in escalation.overdue:
            report.checks["callbacks_overdue_supervised"] += 1
            continue
        report.add("stranded.no_deadline", case_id,
                   f"{state.status.value} since sequence {last.sequence} with no live deadline")


# --- each projection against the log at its checkpoint ----------------------------------------


def _projection_checks(log: LogSnapshot, model: ReadModel, report: Report) -> None:
    schema = model.spec.schema
    label = f"{model.spec.service}({schema})"
    if not model.present:
        report.add("projection.present", None, f"{label}: no checkpoint/case_state tables")
        return
    report.projections[schema] = {"service": model.spec.service, "checkpoint": model.highest,
                                  "lag": _lag(log, model), "cases": len(model.states)}
    for seq, event_id, error in model.dead_letters:
        report.add("projection.dead_letter", None,
                   f"{label} dead-lettered sequence {seq} ({event_id}): {error[:200]}")
    expected: dict[str, CaseState] = {}
    for case_id in log.cases:
        upto = model.checkpoint(log.partition(case_id))
        history = log.history(case_id, upto)
        if history:
            want = fold(history)
            # A copy of an event means nothing new but is the subject's latest message: the
            # fold moves the version on to it (see lifecycle.evolve).
            copies = [c.sequence for c in log.copies
                      if c.case_id == case_id and (upto is None or c.sequence <= upto)]
            if copies:
                want = replace(want, version=max(want.version, *copies))
            expected[case_id] = want
    for case_id in model.states:
        if case_id not in expected:
            report.add("projection.applied_once", case_id,
                       f"{label} has a state for a case with no event at or below its "
                       "checkpoint")
    for case_id, want in expected.items():
        report.checks[f"state:{model.spec.service}"] += 1
        cp = model.checkpoint(log.partition(case_id))
        row = model.states.get(case_id)
        if row is None:
            report.add("projection.none_skipped", case_id,
                       f"{label} at {cp} has no state; the log has {want.events} events")
            continue
        version, raw = row
        have = raw
        if version != want.version or have.get("events") != want.events:
            copies = log.copies_upto(case_id, cp)
            extra = f" ({copies} repeated event ids at or below {cp})" if copies else ""
            report.add("projection.applied_once", case_id,
                       f"{label} version {version}/{have.get('events')} events, log "
                       f"{want.version}/{want.events}{extra}")
            continue
        diff = _diff(json.loads(state_to_json(want)), have)
        if diff:
            report.add("projection.state", case_id, f"{label} differs from the fold in {diff}")
    service_check = {"intake": _intake, "dispatch": _dispatch, "escalation": _escalation,
                     "feedback": _feedback}[model.spec.service]
    service_check(log, model, expected, report, label)


def _lag(log: LogSnapshot, model: ReadModel) -> int:
    """Stream messages (copies too) beyond the checkpoint of their partition."""
    behind = sum(1 for case_id, events in log.cases.items() for e in events
                 if e.sequence > model.checkpoint(log.partition(case_id)))
    return behind + sum(1 for c in log.copies if c.sequence > model.checkpoint(c.partition))


def _diff(want: dict, have: dict) -> list[str]:  # type: ignore[type-arg]
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


def _intake(log: LogSnapshot, model: ReadModel, expected: dict[str, CaseState],
            report: Report, label: str) -> None:
    for case_id, want in expected.items():
        row = model.register.get(case_id)
        if row is None:
            report.add("projection.none_skipped", case_id, f"{label} register has no row")
            continue
        status, count, version = row
        # The register's version is its last real event's: copies do not touch the register.
        history = log.history(case_id, model.checkpoint(log.partition(case_id)))
        real_version = history[-1].sequence if history else 0
        if (status, count, version) != (want.status.value, want.events, real_version):
            report.add("state.one", case_id, f"{label} register says {status}/{count} events/"
                       f"v{version}, log {want.status.value}/{want.events}/v{real_version}")


def _dispatch(log: LogSnapshot, model: ReadModel, expected: dict[str, CaseState],
              report: Report, label: str) -> None:
    for case_id, want in expected.items():
        held, queued = case_id in model.assigned, case_id in model.queued
        if held != (want.status in HANDLING) or queued != (want.status is Status.triage):
            report.add("state.one", case_id,
                       f"{label} assignment={held} triage_queue={queued} for a case that is "
                       f"{want.status.value}")


def _escalation(log: LogSnapshot, model: ReadModel, expected: dict[str, CaseState],
                report: Report, label: str) -> None:
    live_ids: set[str] = set()
    for case_id, want in expected.items():
        for deadline in want.deadlines.values():
            live_ids.add(deadline.id)
            report.checks["timers"] += 1
            timer = model.timers.get(deadline.id)
            if timer is None or timer.status not in ACTIVE_TIMER:
                report.add("timers.live", case_id, f"{label} live {deadline.id} has timer "
                           f"{timer.status if timer else 'none'}")
            elif timer.due_at != deadline.due_at:
                report.add("timers.live", case_id, f"{label} {deadline.id} due "
                           f"{timer.due_at.isoformat()}, log {deadline.due_at.isoformat()}")
    for timer in model.timers.values():
        if timer.status in ACTIVE_TIMER and timer.deadline_id not in live_ids:
            report.add("timers.live", timer.case_id,
                       f"{label} timer {timer.deadline_id} is {timer.status} but the deadline "
                       "is not live in the log")


def _feedback(log: LogSnapshot, model: ReadModel, expected: dict[str, CaseState],
              report: Report, label: str) -> None:
    want = figures_of(log.history(c, model.checkpoint(log.partition(c))) for c in expected)
    for name in FIGURES:
        report.checks["figures"] += 1
        if model.figures.get(name) != want[name]:
            report.add("figures.exact", None, f"{label} tables count {name} "
                       f"{model.figures.get(name)}, log {want[name]} at its checkpoint")


def _served_figures(log: LogSnapshot,
                    served: tuple[dict[int | None, int], dict[str, tuple[int, int]]],
                    report: Report) -> None:
    checkpoints, figures = served

    def upto(case_id: str) -> int:
        if None in checkpoints:
            return checkpoints[None]
        return checkpoints.get(log.partition(case_id), 0)  # type: ignore[arg-type]

    want = figures_of(log.history(c, upto(c)) for c in log.cases)
    for name in FIGURES:
        report.checks["figures_served"] += 1
        if figures.get(name) != want[name]:
            report.add("figures.served", None, f"/v1/stats {name} {figures.get(name)}, "
                       f"log {want[name]} at feedback's checkpoint")
