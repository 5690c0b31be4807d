"""Schema registry, upcasting and the wire codec.

Events are stored as canonical JSON (sorted keys, no spaces, UTC times, UTF-8), so the same event
always has the same bytes and the same content hash. Old versions are upcast on read: a stored
event is never rewritten, so old events replay forever.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError, create_model

from .catalogue import ALL_PAYLOADS
from .envelope import Envelope, Payload

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class CodecError(ValueError):
    """Bytes that are not a valid Gridloop event. Carries the reason a dead-letter record shows."""


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Registry:
    """Event type name ↔ payload class ↔ version, with the upcasters between versions."""

    _classes: dict[str, type[Payload]] = field(default_factory=dict)
    _upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    def register(self, cls: type[Payload]) -> type[Payload]:
        existing = self._classes.get(cls.event_type)
        if existing is not None and existing is not cls:
            raise ValueError(f"event type {cls.event_type!r} already registered by {existing}")
        self._classes[cls.event_type] = cls
        return cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning a payload of `from_version` into `from_version + 1`."""

        def add(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return add

    def payload_class(self, event_type: str) -> type[Payload]:
        try:
            return self._classes[event_type]
        except KeyError:
            raise CodecError(f"unknown event type {event_type!r}") from None

    def types(self) -> Iterable[type[Payload]]:
        return self._classes.values()

    def upcast(self, event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        current = self.payload_class(event_type).schema_version
        if version > current:
            raise CodecError(
                f"{event_type} v{version} is newer than this code knows (v{current}): upgrade"
            )
        while version < current:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise CodecError(f"no upcaster for {event_type} v{version} → v{version + 1}")
            payload = step(dict(payload))
            version += 1
        return payload

    def copy(self) -> Registry:
        return Registry(dict(self._classes), dict(self._upcasters))


def default_registry() -> Registry:
    registry = Registry()
    for cls in ALL_PAYLOADS:
        registry.register(cls)
    return registry


REGISTRY = default_registry()


def encode(envelope: Envelope) -> bytes:
    return canonical_json(envelope.model_dump(mode="json"))


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The top-level "event_type" of a stored event: inside a JSON string every quote is escaped, so
# this cannot match a string's contents.
_EVENT_TYPE = re.compile(rb'"event_type":"([A-Za-z0-9_]{1,64})"')


_ENVELOPE_FIELDS = tuple(Envelope.model_fields)


@functools.cache
def _typed_envelope(cls: type[Payload]) -> type[Envelope]:
    """An envelope whose payload is exactly `cls` at its current version: pydantic parses and
    validates the bytes in one pass, without building Python dicts first."""
    return create_model(  # type: ignore[no-any-return,call-overload]
        f"{cls.__name__}Envelope",
        __base__=Envelope,
        event_type=(Literal[cls.event_type], ...),
        schema_version=(Literal[cls.schema_version], ...),
        payload=(cls, ...),
    )


def decode(data: bytes, registry: Registry = REGISTRY) -> Envelope:
    """Bytes to an envelope at the current version of its event type.

    The common case (a known type stored at its current version) is validated straight from the
    bytes; anything else (an older version to upcast, invalid bytes) takes the general path,
    which gives the precise error."""
    found = _EVENT_TYPE.search(data) if isinstance(data, bytes | bytearray) else None
    if found is not None:
        cls = registry._classes.get(found.group(1).decode())
        if cls is not None:
            try:
                typed = _typed_envelope(cls).model_validate_json(data)
            except ValidationError:
                pass
            else:
                return Envelope.model_construct(
                    **{name: getattr(typed, name) for name in _ENVELOPE_FIELDS})
    return _decode_general(data, registry)


def _decode_general(data: bytes, registry: Registry) -> Envelope:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CodecError("an event must be a JSON object")
    try:
        event_type = raw["event_type"]
        version = int(raw["schema_version"])
        payload = raw["payload"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"missing or bad envelope field: {exc}") from exc
    if not isinstance(payload, dict):
        raise CodecError("payload must be a JSON object")
    cls = registry.payload_class(event_type)
    try:
        upcast = registry.upcast(event_type, version, payload)
        typed = cls.model_validate(upcast)
        fields = {**raw, "payload": typed, "schema_version": cls.schema_version}
        return Envelope.model_validate(fields)
    except ValidationError as exc:
        raise CodecError(f"invalid {event_type} v{version}: {_summarise(exc)}") from exc


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
