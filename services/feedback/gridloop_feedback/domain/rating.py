"""Recording the resident's rating of a closed case, with the three checks of 002's 爱心回访:
handled lawfully and by the rules, measures carried out, the party understands and accepts."""

from __future__ import annotations

from datetime import datetime

from gridloop_events.catalogue import CallbackRated
from gridloop_events.envelope import Actor, Envelope
from gridloop_events.http import DomainError
from gridloop_events.lifecycle import CaseState, Status
from gridloop_events.vocabulary import CallbackMethod, Rating
from pydantic import BaseModel, ConfigDict, Field


class RateCallback(BaseModel):
    """The command, and the HTTP body of `POST /v1/cases/{id}/callback`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rating: Rating
    handled_lawfully: bool = Field(description="处理是否依法依规")
    measures_carried_out: bool = Field(description="措施是否落实")
    party_accepts: bool = Field(description="当事人是否理解认可")
    method: CallbackMethod
    comment: str | None = Field(default=None, max_length=2000)
    rated_by: str = Field(min_length=1, max_length=128, description="who made the callback")


def rating_refusal(state: CaseState) -> DomainError | None:
    """Why `state` cannot take a rating now, or None when it can.

    A case takes one rating per closure round: after it the case is done (satisfied) or reopened
    (unsatisfied) until it is closed again, which opens the next round.
    """
    if state.version == 0:
        return DomainError("unknown case: no event was ever recorded for it", status=404)
    if state.status in (Status.done, Status.reopened):
        return DomainError(
            f"callback round {state.close_count} of this case is already rated "
            f"({state.rating.value if state.rating else 'rated'}); a new round opens when it is "
            "closed again",
            status=409,
        )
    if state.status is not Status.closed:
        return DomainError(
            f"the case is {state.status.value}, not closed: only a closed case is called back",
            status=409,
        )
    return None


def decide_rating(
    state: CaseState,
    command: RateCallback,
    *,
    actor: Actor,
    correlation_id: str,
    now: datetime,
) -> list[Envelope]:
    refusal = rating_refusal(state)
    if refusal is not None:
        raise refusal
    payload = CallbackRated(
        rating=command.rating,
        handled_lawfully=command.handled_lawfully,
        measures_carried_out=command.measures_carried_out,
        party_accepts=command.party_accepts,
        method=command.method,
        comment=command.comment,
        rated_by=command.rated_by,
    )
    return [
        Envelope.new(
            payload,
            case_id=state.case_id,
            district=state.district,
            actor=actor,
            correlation_id=correlation_id,
            occurred_at=now,
        )
    ]
