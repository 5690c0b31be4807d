"""What people ask of dispatch, and the rules that answer: 签收, 退回, extensions, notes,
closure and manual dispatch.

Each `decide_*` takes the case's state, the command and an explicit `now`, and returns the
payloads to record, or raises DomainError (409 wrong state, 404 unknown case, 422 bad input).
"""

from __future__ import annotations

from datetime import datetime

from gridloop_district import District, is_urgent
from gridloop_events.catalogue import (
    CODE,
    CaseAccepted,
    CaseClosed,
    CaseDispatched,
    CaseReturned,
    ExtensionDecided,
    ExtensionRequested,
    ProgressNoted,
)
from gridloop_events.envelope import Payload
from gridloop_events.http import DomainError
from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.vocabulary import DeadlineKind, Outcome, ProblemKind, Tier
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .placement import deadlines_from, dispatch_due_from, find_unit, kind_for, limits_for

HANDLING = frozenset({Status.dispatched, Status.accepted})


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AcceptCase(Command):
    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)


class ReturnCase(Command):
    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500)


class RequestExtension(Command):
    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)
    requested_resolve_due: AwareDatetime
    reason: str = Field(min_length=1, max_length=500)


class DecideExtension(Command):
    approved: bool
    supervisor_id: str = Field(min_length=1, max_length=128)
    # Defaults to the requested time when approving.
    resolve_due: AwareDatetime | None = None
    note: str = Field(default="", max_length=500)
    request_event_id: str | None = Field(default=None, min_length=1, max_length=64)


class NoteProgress(Command):
    author_id: str = Field(min_length=1, max_length=128)
    note: str = Field(min_length=1, max_length=2000)
    unit_code: str | None = Field(default=None, pattern=CODE)


class CloseCase(Command):
    outcome: Outcome
    resolution: str = Field(min_length=1, max_length=4000)
    closed_by: str | None = Field(default=None, min_length=1, max_length=128)
    unit_code: str | None = Field(default=None, pattern=CODE)
    duplicate_of: str | None = Field(default=None, pattern=CODE)

    @model_validator(mode="after")
    def _duplicate_names_original(self) -> CloseCase:
        if (self.outcome is Outcome.duplicate) != (self.duplicate_of is not None):
            raise ValueError("duplicate_of is required for, and only for, outcome 'duplicate'")
        return self


class DispatchCase(Command):
    unit_code: str = Field(pattern=CODE)
    reason: str = Field(default="manual dispatch", min_length=1, max_length=500)
    kind: ProblemKind | None = None
    urgent: bool | None = None
    dispatcher: str | None = Field(default=None, min_length=1, max_length=128)


# --- guards ----------------------------------------------------------------------------------


def require_case(state: CaseState) -> None:
    if state.status is Status.new:
        raise DomainError("unknown case", status=404)


def _require_status(state: CaseState, allowed: frozenset[Status], action: str) -> None:
    if state.status not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise DomainError(f"cannot {action} a case that is {state.status.value} (must be {names})")


def _require_assignee(state: CaseState, unit_code: str) -> None:
    if unit_code != state.unit_code:
        raise DomainError(f"unit {unit_code} is not the case's assignee", field="unit_code")


# --- decisions -------------------------------------------------------------------------------


def decide_accept(state: CaseState, cmd: AcceptCase) -> list[Payload]:
    require_case(state)
    if state.status is Status.accepted and cmd.unit_code == state.unit_code:
        return []  # already accepted; the first handler stays responsible (第一责任人)
    _require_status(state, frozenset({Status.dispatched}), "accept")
    _require_assignee(state, cmd.unit_code)
    return [CaseAccepted(unit_code=cmd.unit_code, handler_id=cmd.handler_id)]


def decide_return(
    state: CaseState, cmd: ReturnCase, now: datetime, district: District
) -> list[Payload]:
    require_case(state)
    _require_status(state, HANDLING, "return")
    _require_assignee(state, cmd.unit_code)
    limits = limits_for(district, state.category_code, state.severity)
    return [
        CaseReturned(
            unit_code=cmd.unit_code,
            handler_id=cmd.handler_id,
            reason=cmd.reason,
            dispatch_due=dispatch_due_from(limits, now),
        )
    ]


def decide_extension_request(
    state: CaseState, cmd: RequestExtension, now: datetime
) -> list[Payload]:
    require_case(state)
    _require_status(state, HANDLING, "extend")
    _require_assignee(state, cmd.unit_code)
    if state.pending_extension is not None:
        raise DomainError("an extension request is already waiting for a decision")
    resolve = state.deadline(DeadlineKind.resolve)
    if resolve is None or now >= resolve.due_at:
        raise DomainError("the resolve deadline has passed; an extension must be asked before it")
    if cmd.requested_resolve_due <= resolve.due_at:
        raise DomainError(
            "requested_resolve_due must be later than the current resolve deadline "
            f"({resolve.due_at.isoformat()})",
            status=422,
            field="requested_resolve_due",
        )
    return [
        ExtensionRequested(
            unit_code=cmd.unit_code,
            handler_id=cmd.handler_id,
            requested_resolve_due=cmd.requested_resolve_due,
            reason=cmd.reason,
        )
    ]


def decide_extension(
    state: CaseState,
    cmd: DecideExtension,
    now: datetime,
    request: tuple[str, datetime] | None,
) -> list[Payload]:
    """`request` is the pending ExtensionRequested's (event id, requested due) the shell found
    in the log; it must still be the one pending in `state`."""
    require_case(state)
    _require_status(state, HANDLING, "decide an extension of")
    if state.pending_extension is None:
        raise DomainError("no extension request is waiting for a decision")
    if request is None or request[0] != state.pending_extension:
        raise DomainError("the pending extension request changed; look again and retry")
    if cmd.request_event_id is not None and cmd.request_event_id != state.pending_extension:
        raise DomainError(
            f"extension request {cmd.request_event_id} is not the pending one",
            field="request_event_id",
        )
    resolve_due = None
    if cmd.approved:
        resolve_due = cmd.resolve_due or request[1]
        if resolve_due <= now:
            raise DomainError("resolve_due must lie in the future", status=422, field="resolve_due")
    return [
        ExtensionDecided(
            request_event_id=state.pending_extension,
            approved=cmd.approved,
            resolve_due=resolve_due,
            supervisor_id=cmd.supervisor_id,
            note=cmd.note,
        )
    ]


def decide_note(state: CaseState, cmd: NoteProgress) -> list[Payload]:
    require_case(state)
    if not state.is_open:
        raise DomainError(f"cannot note progress on a case that is {state.status.value}")
    return [ProgressNoted(unit_code=cmd.unit_code, author_id=cmd.author_id, note=cmd.note)]


def decide_close(state: CaseState, cmd: CloseCase, actor_id: str) -> list[Payload]:
    require_case(state)
    _require_status(state, HANDLING, "close")
    if cmd.unit_code is not None:
        _require_assignee(state, cmd.unit_code)
    if cmd.duplicate_of is not None and cmd.duplicate_of == state.case_id:
        raise DomainError("a case cannot duplicate itself", status=422, field="duplicate_of")
    return [
        CaseClosed(
            outcome=cmd.outcome,
            resolution=cmd.resolution,
            closed_by=cmd.closed_by or actor_id,
            unit_code=cmd.unit_code or state.unit_code,
            duplicate_of=cmd.duplicate_of,
        )
    ]


def decide_dispatch(
    state: CaseState, cmd: DispatchCase, now: datetime, district: District, actor_id: str
) -> list[Payload]:
    """A dispatcher places the case by hand: from the triage queue, or over the rules."""
    require_case(state)
    if not state.is_open:
        raise DomainError(f"cannot dispatch a case that is {state.status.value}")
    unit = find_unit(district, cmd.unit_code)
    if unit is None:
        raise DomainError(f"unknown unit {cmd.unit_code}", status=422, field="unit_code")
    if state.status in HANDLING and state.unit_code == unit.code:
        raise DomainError(f"the case is already with {unit.code}", field="unit_code")
    kind = cmd.kind or state.kind or kind_for(district, state.category_code, state.severity)
    urgent = cmd.urgent if cmd.urgent is not None else (state.urgent or is_urgent(kind))
    limits = limits_for(district, state.category_code, state.severity)
    return [
        CaseDispatched(
            unit_code=unit.code,
            tier=Tier(unit.tier),
            kind=kind,
            urgent=urgent,
            dispatcher=cmd.dispatcher or actor_id,
            deadlines=deadlines_from(limits, now),
            reason=cmd.reason,
            redispatch=state.dispatch_count > 0,
            escalation_level=state.escalation_level,
            previous_unit=state.unit_code,
        )
    ]
