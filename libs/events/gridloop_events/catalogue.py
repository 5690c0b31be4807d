"""The event catalogue: every event Gridloop records, with its domain fields.

The first five are the contract other government systems build on; the rest exist because the
seeds' loop needs them (签收 accept, 退回 return, extensions, 回访 scheduling, pre-breach warnings).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .envelope import Payload
from .vocabulary import (
    CallbackMethod,
    Channel,
    DeadlineKind,
    Outcome,
    ProblemKind,
    Rating,
    Severity,
    Tier,
    TriageReason,
)

CODE = r"^[A-Za-z0-9_-]{1,64}$"


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GridPath(_Value):
    """Where a case lies: district → street → community → (compound) → grid."""

    district: str = Field(pattern=CODE)
    street: str = Field(pattern=CODE)
    community: str = Field(pattern=CODE)
    compound: str | None = Field(default=None, pattern=CODE)
    grid: str = Field(pattern=CODE)


class Location(_Value):
    grid_path: GridPath | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=300)

    @model_validator(mode="after")
    def _coordinates_pair(self) -> Location:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class ReporterContact(_Value):
    """A resident's personal data, in clear. Never in an event: events carry it sealed
    (`SealedContact`); only intake opens it, and never logs it."""

    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=40)
    id_number: str | None = Field(default=None, max_length=40)
    contact_note: str | None = Field(default=None, max_length=300)


B64URL = r"^[A-Za-z0-9_-]+$"


class SealedContact(_Value):
    """A ReporterContact encrypted with its case's data key (AES-256-GCM, see
    `gridloop_events.crypto`). The data key is held by intake alone; destroying it erases the
    contact everywhere the event went (crypto-shredding), while the event stays as it was."""

    alg: Literal["A256GCM"] = "A256GCM"
    # The data key's id in intake's key store: the case id (one key per case).
    key_id: str = Field(pattern=CODE)
    nonce: str = Field(min_length=16, max_length=16, pattern=B64URL)  # 12 bytes, base64url
    # Ciphertext and 16-byte tag, base64url without padding.
    ciphertext: str = Field(min_length=22, max_length=8192, pattern=B64URL)


class AttachmentRef(_Value):
    uri: str = Field(min_length=1, max_length=1000)
    media_type: str = Field(default="application/octet-stream", max_length=100)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Deadlines(_Value):
    accept_due: AwareDatetime
    resolve_due: AwareDatetime


# --- the five contract events --------------------------------------------------------------


class CaseReported(Payload):
    event_type: ClassVar[str] = "CaseReported"
    schema_version: ClassVar[int] = 1
    personal_fields: ClassVar[frozenset[str]] = frozenset({"reporter"})

    channel: Channel
    category_code: str = Field(pattern=CODE)
    description: str = Field(min_length=1, max_length=4000)
    location: Location
    severity: Severity = Severity.normal
    kind_hint: ProblemKind | None = None
    reporter: SealedContact | None = None
    attachments: tuple[AttachmentRef, ...] = ()
    # Who took the report (首问责任人): the hotline operator or grid worker, if not the resident.
    first_contact: str | None = Field(default=None, max_length=128)
    # A digest of the client's Idempotency-Key, so the checker can prove one key made one case.
    idempotency_digest: str | None = Field(default=None, max_length=64)


class CaseDispatched(Payload):
    event_type: ClassVar[str] = "CaseDispatched"
    schema_version: ClassVar[int] = 1

    unit_code: str = Field(pattern=CODE)
    tier: Tier
    kind: ProblemKind
    urgent: bool = False
    dispatcher: str = Field(min_length=1, max_length=128)
    deadlines: Deadlines
    reason: str = Field(min_length=1, max_length=500)
    redispatch: bool = False
    escalation: bool = False
    escalation_level: int = Field(default=0, ge=0)
    previous_unit: str | None = Field(default=None, pattern=CODE)


class DeadlineMissed(Payload):
    event_type: ClassVar[str] = "DeadlineMissed"
    schema_version: ClassVar[int] = 1

    deadline: DeadlineKind
    deadline_id: str = Field(min_length=1, max_length=200)
    due_at: AwareDatetime
    detected_at: AwareDatetime
    assignee_unit: str | None = Field(default=None, pattern=CODE)
    tier: Tier | None = None
    escalation_level: int = Field(ge=0)


class CaseClosed(Payload):
    event_type: ClassVar[str] = "CaseClosed"
    schema_version: ClassVar[int] = 1

    outcome: Outcome
    resolution: str = Field(min_length=1, max_length=4000)
    closed_by: str = Field(min_length=1, max_length=128)
    unit_code: str | None = Field(default=None, pattern=CODE)
    duplicate_of: str | None = Field(default=None, pattern=CODE)

    @model_validator(mode="after")
    def _duplicate_names_original(self) -> CaseClosed:
        if (self.outcome is Outcome.duplicate) != (self.duplicate_of is not None):
            raise ValueError("duplicate_of is required for, and only for, outcome 'duplicate'")
        return self


class CallbackRated(Payload):
    event_type: ClassVar[str] = "CallbackRated"
    schema_version: ClassVar[int] = 1

    rating: Rating
    handled_lawfully: bool
    measures_carried_out: bool
    party_accepts: bool
    method: CallbackMethod
    comment: str | None = Field(default=None, max_length=2000)
    rated_by: str = Field(min_length=1, max_length=128)


# --- events the loop needs besides ---------------------------------------------------------


class CaseTriageQueued(Payload):
    """The rules could not place the case: it waits for a human dispatcher."""

    event_type: ClassVar[str] = "CaseTriageQueued"
    schema_version: ClassVar[int] = 1

    reason: TriageReason
    detail: str = Field(default="", max_length=500)
    dispatch_due: AwareDatetime


class CaseAccepted(Payload):
    """签收: the first to accept becomes the first responsible person (第一责任人)."""

    event_type: ClassVar[str] = "CaseAccepted"
    schema_version: ClassVar[int] = 1

    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)


class CaseReturned(Payload):
    """退回: the unit says the case is not theirs; it goes back to triage."""

    event_type: ClassVar[str] = "CaseReturned"
    schema_version: ClassVar[int] = 1

    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=500)
    dispatch_due: AwareDatetime


class ExtensionRequested(Payload):
    event_type: ClassVar[str] = "ExtensionRequested"
    schema_version: ClassVar[int] = 1

    unit_code: str = Field(pattern=CODE)
    handler_id: str = Field(min_length=1, max_length=128)
    requested_resolve_due: AwareDatetime
    reason: str = Field(min_length=1, max_length=500)


class ExtensionDecided(Payload):
    event_type: ClassVar[str] = "ExtensionDecided"
    schema_version: ClassVar[int] = 1

    request_event_id: str = Field(min_length=1, max_length=64)
    approved: bool
    resolve_due: AwareDatetime | None = None
    supervisor_id: str = Field(min_length=1, max_length=128)
    note: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _approval_sets_due(self) -> ExtensionDecided:
        if self.approved and self.resolve_due is None:
            raise ValueError("an approved extension needs resolve_due")
        return self


class ProgressNoted(Payload):
    event_type: ClassVar[str] = "ProgressNoted"
    schema_version: ClassVar[int] = 1

    unit_code: str | None = Field(default=None, pattern=CODE)
    author_id: str = Field(min_length=1, max_length=128)
    note: str = Field(min_length=1, max_length=2000)


class DeadlineApproaching(Payload):
    """A recorded warning before the breach, at a configured share of the allowed time."""

    event_type: ClassVar[str] = "DeadlineApproaching"
    schema_version: ClassVar[int] = 1

    deadline: DeadlineKind
    deadline_id: str = Field(min_length=1, max_length=200)
    due_at: AwareDatetime
    warned_at: AwareDatetime
    assignee_unit: str | None = Field(default=None, pattern=CODE)


class CallbackScheduled(Payload):
    """回访 is due: the centre must call the resident back by `due_at`."""

    event_type: ClassVar[str] = "CallbackScheduled"
    schema_version: ClassVar[int] = 1

    due_at: AwareDatetime
    round: int = Field(ge=1)


ALL_PAYLOADS: tuple[type[Payload], ...] = (
    CaseReported,
    CaseDispatched,
    DeadlineMissed,
    CaseClosed,
    CallbackRated,
    CaseTriageQueued,
    CaseAccepted,
    CaseReturned,
    ExtensionRequested,
    ExtensionDecided,
    ProgressNoted,
    DeadlineApproaching,
    CallbackScheduled,
)


def deadline_id(kind: DeadlineKind, set_by: str) -> str:
    """A deadline is named by its kind and the event that set it: unique, stable, replayable."""
    return f"{kind.value}:{set_by}"


__all__ = [
    "ALL_PAYLOADS",
    "AttachmentRef",
    "CallbackRated",
    "CallbackScheduled",
    "CaseAccepted",
    "CaseClosed",
    "CaseDispatched",
    "CaseReported",
    "CaseReturned",
    "CaseTriageQueued",
    "DeadlineApproaching",
    "DeadlineMissed",
    "Deadlines",
    "ExtensionDecided",
    "ExtensionRequested",
    "GridPath",
    "Location",
    "ProgressNoted",
    "ReporterContact",
    "SealedContact",
    "deadline_id",
]
