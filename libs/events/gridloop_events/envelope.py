"""The envelope every Gridloop event travels in.

An envelope is immutable and serialises to the same bytes every time, so an event's content hash
and its `Nats-Msg-Id` are stable across retries, hosts and Python versions.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SerializeAsAny, field_validator


def utcnow() -> datetime:
    return datetime.now(UTC)


def _uuid7_from(ms: int, tail: bytes) -> UUID:
    """Lay out a UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, 74 bits of `tail`."""
    rand = int.from_bytes(tail[:10], "big") & ((1 << 74) - 1)
    rand_a = rand >> 62  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return UUID(int=value)


def new_event_id(at: datetime | None = None) -> UUID:
    """A fresh time-ordered id: ids sort by creation time, which keeps B-tree inserts local."""
    ms = int((at.timestamp() if at else time.time()) * 1000)
    return _uuid7_from(ms, os.urandom(10))


def derived_event_id(cause: UUID, purpose: str, index: int = 0, at: datetime | None = None) -> UUID:
    """The id of an event caused by another: the same cause and purpose always give the same id.

    A redelivered cause therefore re-emits byte-identical events, which the store recognises
    (Nats-Msg-Id within the duplicate window, the id already in the case's history beyond it).
    """
    digest = hashlib.sha256(f"{cause}|{purpose}|{index}".encode()).digest()
    ms = int(at.timestamp() * 1000) if at else (cause.int >> 80)
    return _uuid7_from(ms, digest)


class ActorKind(StrEnum):
    resident = "resident"
    grid_worker = "grid_worker"
    operator = "operator"
    department = "department"
    system = "system"


class Actor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ActorKind
    id: str = Field(min_length=1, max_length=128)
    role: str | None = Field(default=None, max_length=64)

    @classmethod
    def system(cls, service: str) -> Actor:
        return cls(kind=ActorKind.system, id=service, role="service")


class Payload(BaseModel):
    """Base of every event's payload. Subclasses set `event_type` and `schema_version`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    # Fields whose values are a resident's personal data: never logged, stripped from public views.
    personal_fields: ClassVar[frozenset[str]] = frozenset()


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID
    event_type: str
    schema_version: int = Field(ge=1)
    case_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    district: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    actor: Actor
    correlation_id: str = Field(min_length=1, max_length=128)
    causation_id: str | None = Field(default=None, max_length=128)
    # The content hash of the case's previous event: a hash chain per case, so any change,
    # removal or reordering of a stored event breaks the chain where it happened.
    prev_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    payload: SerializeAsAny[Payload]

    @field_validator("occurred_at", "recorded_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @classmethod
    def new(
        cls,
        payload: Payload,
        *,
        case_id: str,
        district: str,
        actor: Actor,
        correlation_id: str,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
        event_id: UUID | None = None,
    ) -> Envelope:
        occurred = occurred_at or utcnow()
        return cls(
            event_id=event_id or new_event_id(occurred),
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            case_id=case_id,
            district=district,
            occurred_at=occurred,
            recorded_at=utcnow(),
            actor=actor,
            correlation_id=correlation_id,
            causation_id=causation_id,
            payload=payload,
        )

    def caused(
        self,
        payload: Payload,
        *,
        actor: Actor,
        purpose: str,
        index: int = 0,
        occurred_at: datetime | None = None,
    ) -> Envelope:
        """An event that follows from this one, with a derived id and the same correlation."""
        occurred = occurred_at or self.occurred_at
        return Envelope(
            event_id=derived_event_id(self.event_id, purpose, index, occurred),
            event_type=payload.event_type,
            schema_version=payload.schema_version,
            case_id=self.case_id,
            district=self.district,
            occurred_at=occurred,
            # Derived from the cause, not the wall clock, so a retried reaction is byte-identical.
            recorded_at=occurred,
            actor=actor,
            correlation_id=self.correlation_id,
            causation_id=str(self.event_id),
            payload=payload,
        )

    def log_context(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "correlation_id": self.correlation_id,
            "event_type": self.event_type,
            "event_id": str(self.event_id),
        }


class StoredEvent(BaseModel):
    """An envelope as read back from the stream, with its position there."""

    model_config = ConfigDict(frozen=True)

    sequence: int
    subject: str
    envelope: Envelope
    # sha256 of the bytes as stored: what the next event of the case chains to.
    content_hash: str = ""

    @property
    def event(self) -> Envelope:
        return self.envelope
