"""Idempotency by construction: one Idempotency-Key names one case, forever.

The case id and the event id are derived from the key (the event id also from the body), and
the first append is guarded by expected_version=0. So a retry — within JetStream's duplicate
window or years later, before or after a restart — either finds its own event already stored, or
finds the case the key made and is answered with it (same body) or refused (different body).
Only a digest of the key is stored: keys may carry client data and are not ours to keep.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from gridloop_events.catalogue import CaseReported
from gridloop_events.codec import canonical_json
from gridloop_events.envelope import Envelope

from .commands import ReportRejected

# Fixed forever: changing it would give old keys new case ids.
NAMESPACE = uuid.UUID("6f1c3c52-5b4e-4d0c-9a57-1d2b7f0e8a11")
KEY_FIELD = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ReportRejected(KEY_FIELD, f"must be 1 to {MAX_KEY_LENGTH} characters", status=400)
    if any(not (0x21 <= ord(ch) <= 0x7E) for ch in key):
        raise ReportRejected(KEY_FIELD, "must be visible ASCII characters without spaces",
                             status=400)
    return key


def key_digest(district: str, key: str) -> str:
    """sha256 hex (64 characters, the payload's limit), scoped to the district."""
    return hashlib.sha256(f"gridloop-intake|{district}|{key}".encode()).hexdigest()


def body_digest(payload: CaseReported, *, without_reporter: bool = False) -> str:
    """What the report says, without the key's digest: equal bodies give equal digests.

    The reporter is in it sealed, and sealing is deterministic for one case key, so the same
    contact under the same key gives the same digest."""
    exclude = {"idempotency_digest", "reporter"} if without_reporter else {"idempotency_digest"}
    body = payload.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class KeyedIds:
    digest: str

    @property
    def case_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE, f"case|{self.digest}"))

    def event_id(self, payload: CaseReported) -> uuid.UUID:
        # The body is part of the id: a different body under the same key must not be taken
        # by the store for "already stored".
        return uuid.uuid5(NAMESPACE, f"event|{self.digest}|{body_digest(payload)}")


def keyed_ids(district: str, key: str) -> KeyedIds:
    return KeyedIds(key_digest(district, check_key(key)))


def settle_retry(first: Envelope, payload: CaseReported, ids: KeyedIds, *,
                 contact_erased: bool = False) -> None:
    """The case the key names already exists: accept the retry if it is the same report.

    `contact_erased`: the retry names a contact, but the case's data key was destroyed, so it
    can no longer be compared with the one recorded; the rest of the report must still match, and
    the retry is answered with the case without its contact being recorded again."""
    stored = first.payload
    if not isinstance(stored, CaseReported) or stored.idempotency_digest != ids.digest:
        raise ReportRejected(KEY_FIELD, "this key names a case recorded by another request",
                             status=409)
    if contact_erased:
        # A first report without a contact cannot be the same as a retry with one.
        same = stored.reporter is not None and (
            body_digest(stored, without_reporter=True)
            == body_digest(payload, without_reporter=True))
    else:
        same = body_digest(stored) == body_digest(payload)
    if not same:
        raise ReportRejected(KEY_FIELD, "this key was already used for a different report",
                             status=409)
