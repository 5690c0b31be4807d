"""Events as operators may see them: every field a payload class lists in `personal_fields`
(the reporter's name, phone, id number, contact note) is left out, at the source of each view."""

from __future__ import annotations

from typing import Any

from gridloop_events.envelope import Envelope


def public_payload(envelope: Envelope) -> dict[str, Any]:
    payload = envelope.payload
    hidden = set(type(payload).personal_fields)
    return payload.model_dump(mode="json", exclude=hidden)


def public_envelope(envelope: Envelope) -> dict[str, Any]:
    data = envelope.model_dump(mode="json", exclude={"payload"})
    data["payload"] = public_payload(envelope)
    return data
