"""Gridloop's one plumbing: the event contract and the machinery every service shares."""

from .catalogue import *  # noqa: F401,F403 - the catalogue is the package's public face
from .codec import REGISTRY, CodecError, Registry, decode, encode
from .envelope import Actor, ActorKind, Envelope, Payload, StoredEvent, derived_event_id, new_event_id
from .lifecycle import CaseState, Deadline, Status, evolve, fold
from .store import AppendError, ConcurrencyError, EventStore, StreamSettings
from .subjects import Subjects
from .vocabulary import *  # noqa: F401,F403

__all__ = [
    "REGISTRY",
    "Actor",
    "ActorKind",
    "AppendError",
    "CaseState",
    "CodecError",
    "ConcurrencyError",
    "Deadline",
    "Envelope",
    "EventStore",
    "Payload",
    "Registry",
    "Status",
    "StoredEvent",
    "StreamSettings",
    "Subjects",
    "decode",
    "derived_event_id",
    "encode",
    "evolve",
    "fold",
    "new_event_id",
]
