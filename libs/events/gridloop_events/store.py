"""The log of record: a JetStream stream with per-case optimistic concurrency.

A case's *version* is the stream sequence of its last event (0 before the first). `append` sends
`Nats-Expected-Last-Subject-Sequence` over the case's wildcard subject, so the server itself
refuses a write when the case moved on; nothing is checked client-side and then raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import nats.js.api as jsapi
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NotFoundError

from .codec import REGISTRY, Registry, content_hash, decode, encode
from .envelope import Envelope, StoredEvent
from .logging import get_logger
from .pull import pull_batches, request_batch
from .subjects import Subjects

log = get_logger(__name__)

WRONG_LAST_SEQUENCE = 10071
DEFAULT_DUPLICATE_WINDOW = 120.0  # seconds: long enough for client retries, short for memory
READ_BATCH = 1000
CONTENT_HASH_HEADER = "Gridloop-Content-Hash"
PARTITIONS_METADATA = "gridloop.partitions"


_CHECKED = ("subjects", "num_replicas", "duplicate_window", "deny_delete", "deny_purge",
            "allow_direct", "allow_atomic", "max_msgs", "max_bytes", "max_age")


def _differs(current: jsapi.StreamConfig, wanted: jsapi.StreamConfig) -> bool:
    def norm(value: object) -> object:
        return getattr(value, "value", value)

    for name in _CHECKED:
        if norm(getattr(current, name, None)) != norm(getattr(wanted, name, None)):
            return True
    return norm(current.discard) != norm(wanted.discard) or (
        (current.metadata or {}).get(PARTITIONS_METADATA)
        != (wanted.metadata or {}).get(PARTITIONS_METADATA)
    )


@dataclass(frozen=True)
class AppendResult:
    version: int
    duplicate: bool = False


class RawEvent(NamedTuple):
    sequence: int
    subject: str
    data: bytes
    headers: dict[str, str]
    # When the server stored it: ordered like the stream, unlike an envelope's own times.
    stored_at: datetime | None = None


def chain(events: Sequence[Envelope], prev_hash: str | None) -> list[Envelope]:
    """Link events into the case's hash chain, each to the content hash of the one before."""
    linked = []
    for event in events:
        if event.prev_hash != prev_hash:
            event = event.model_copy(update={"prev_hash": prev_hash})
        linked.append(event)
        prev_hash = content_hash(encode(event))
    return linked


class ConcurrencyError(Exception):
    """The case moved on since the caller read it: reload, decide again, retry."""

    def __init__(self, case_id: str, expected: int | None, detail: str = "") -> None:
        super().__init__(f"case {case_id} is no longer at version {expected} {detail}".strip())
        self.case_id = case_id
        self.expected = expected


class AppendError(Exception):
    """The store refused the events for a reason other than concurrency."""


@dataclass(frozen=True)
class StreamSettings:
    replicas: int = 1
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW


class EventStore:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects | None = None,
        registry: Registry = REGISTRY,
        settings: StreamSettings | None = None,
        publish_timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout)
        self.subjects = subjects or Subjects()
        self.registry = registry
        self.settings = settings or StreamSettings()
        self.publish_timeout = publish_timeout

    @property
    def stream(self) -> str:
        return self.subjects.stream_name

    def stream_config(self) -> jsapi.StreamConfig:
        return jsapi.StreamConfig(
            name=self.stream,
            description="Gridloop case events: the log of record",
            subjects=[self.subjects.all],
            retention=jsapi.RetentionPolicy.LIMITS,
            storage=jsapi.StorageType.FILE,
            num_replicas=self.settings.replicas,
            # No limit is set, so nothing ages out; should one ever be set, refuse new writes
            # loudly rather than silently dropping the oldest events of record.
            discard=jsapi.DiscardPolicy.NEW,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
            duplicate_window=self.settings.duplicate_window,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            allow_atomic=True,
            metadata={PARTITIONS_METADATA: str(self.subjects.partitions)},
        )

    async def ensure_stream(self) -> None:
        config = self.stream_config()
        try:
            await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(config)
            log.info("stream.created", stream=self.stream, subjects=config.subjects)
            return
        info = await self.js.stream_info(self.stream)
        recorded = (info.config.metadata or {}).get(PARTITIONS_METADATA)
        if recorded is not None and int(recorded) != self.subjects.partitions:
            raise AppendError(
                f"stream {self.stream} was created with {recorded} partitions, this code uses "
                f"{self.subjects.partitions}: a case's events would change partition"
            )
        if _differs(info.config, config):
            # Only when something changed: services then need no update rights on the log.
            await self.js.update_stream(config)

    # --- writing ---------------------------------------------------------------------------

    async def append(
        self,
        case_id: str,
        events: Sequence[Envelope],
        expected_version: int | None,
        *,
        prev_hash: str | None = None,
    ) -> int:
        return (await self.append_once(case_id, events, expected_version,
                                       prev_hash=prev_hash)).version

    async def append_once(
        self,
        case_id: str,
        events: Sequence[Envelope],
        expected_version: int | None,
        *,
        prev_hash: str | None = None,
    ) -> AppendResult:
        """Append events to one case, telling whether these very events were already stored
        (a retry or a concurrent twin): then this call added nothing.

        `expected_version=None` skips the check (only for events whose order does not matter).
        `prev_hash` is the content hash of the case's event at `expected_version`; callers that
        folded the case have it (`CaseState.last_hash`), otherwise the store reads it.
        """
        if not events:
            raise ValueError("nothing to append")
        for e in events:
            if e.case_id != case_id:
                raise ValueError(f"event {e.event_id} belongs to case {e.case_id}, not {case_id}")
        if prev_hash is None and expected_version != 0:
            prev_hash = await self._hash_at(case_id, expected_version)
        events = chain(events, prev_hash)
        try:
            if len(events) == 1:
                return await self._publish_one(case_id, events[0], expected_version)
            return AppendResult(await self._publish_batch(case_id, events, expected_version))
        except ConcurrencyError:
            # The server checks the guard before Nats-Msg-Id dedup, so a retry of a write that
            # did land shows up as a conflict. Recognise our own events and report success.
            stored = await self._already_stored(case_id, events, expected_version or 0)
            if stored is None:
                raise
            return AppendResult(stored, duplicate=True)

    async def _hash_at(self, case_id: str, version: int | None) -> str | None:
        history = await self.read(case_id)
        if version is not None:
            history = [h for h in history if h.sequence <= version]
        return history[-1].content_hash if history else None

    async def _already_stored(
        self, case_id: str, events: Sequence[Envelope], after: int
    ) -> int | None:
        wanted = {e.event_id for e in events}
        found: dict[object, int] = {}
        for stored in await self.read(case_id, after=after):
            if stored.envelope.event_id in wanted:
                found[stored.envelope.event_id] = stored.sequence
        if len(found) != len(wanted):
            return None
        return found[events[-1].event_id]

    def _guard(self, case_id: str, expected: int | None) -> dict[str, str]:
        if expected is None:
            return {}
        return {
            "Nats-Expected-Last-Subject-Sequence": str(expected),
            "Nats-Expected-Last-Subject-Sequence-Subject": self.subjects.case(case_id),
        }

    async def _publish_one(
        self, case_id: str, event: Envelope, expected: int | None
    ) -> AppendResult:
        subject = self.subjects.event(event.district, case_id, event.event_type)
        data = encode(event)
        headers = {
            "Nats-Msg-Id": str(event.event_id),
            CONTENT_HASH_HEADER: content_hash(data),
            **self._guard(case_id, expected),
        }
        for attempt in range(3):
            try:
                ack = await self.js.publish(subject, data, headers=headers)
                return AppendResult(ack.seq, duplicate=bool(ack.duplicate))
            except APIError as exc:
                raise self._translate(case_id, expected, exc) from exc
            except NatsTimeout:
                # Outcome unknown: the same Nats-Msg-Id makes the retry a no-op if it landed.
                log.warning("append.timeout", case_id=case_id, attempt=attempt + 1)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AppendError(f"no acknowledgement for case {case_id} after 3 attempts")

    async def _publish_batch(
        self, case_id: str, events: Sequence[Envelope], expected: int | None
    ) -> int:
        """All events of one decision land together or not at all (JetStream atomic batch).

        Atomic batches refuse Nats-Msg-Id, so a retried batch is recognised by the concurrency
        guard on its first message instead: the case moved on, the caller reloads and finds its
        events already there.
        """
        batch_id = str(events[0].event_id)
        last = len(events)
        for i, event in enumerate(events, start=1):
            subject = self.subjects.event(event.district, case_id, event.event_type)
            data = encode(event)
            headers = {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(i),
                CONTENT_HASH_HEADER: content_hash(data),
            }
            if i == 1:
                headers.update(self._guard(case_id, expected))
            if i < last:
                await self.nc.publish(subject, data, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await self.nc.request(
                subject, data, headers=headers, timeout=self.publish_timeout
            )
            body = json.loads(reply.data or b"{}")
            if "error" in body:
                err = body["error"]
                exc = APIError(code=err.get("code"), err_code=err.get("err_code"))
                exc.description = err.get("description")
                raise self._translate(case_id, expected, exc)
            return int(body["seq"])
        raise AssertionError("unreachable")

    def _translate(self, case_id: str, expected: int | None, exc: APIError) -> Exception:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return ConcurrencyError(case_id, expected, f"({exc.description})")
        return AppendError(f"append to case {case_id} refused: {exc.description} ({exc.err_code})")

    # --- reading ---------------------------------------------------------------------------

    async def read(self, case_id: str, after: int = 0) -> list[StoredEvent]:
        """The case's events in order, in as few round trips as the batch size allows."""
        events: list[StoredEvent] = []
        start = after + 1
        while True:
            # Everything on the case's subject, copies of events included: the fold recognises
            # a copy by its id, and the last message is what the concurrency guard compares.
            chunk = await self._direct_get_batch(self.subjects.case(case_id), start)
            events.extend(chunk)
            if len(chunk) < READ_BATCH:
                return events
            start = chunk[-1].sequence + 1

    async def version(self, case_id: str) -> int:
        events = await self.read(case_id)
        return events[-1].sequence if events else 0

    async def _direct_get_batch(self, filter_subject: str, start: int) -> list[StoredEvent]:
        request = {"seq": start, "next_by_subj": filter_subject, "batch": READ_BATCH}
        msgs, status, description = await request_batch(
            self.nc, f"$JS.API.DIRECT.GET.{self.stream}", request, self.publish_timeout)
        if status not in ("204", "404"):
            raise AppendError(f"direct get failed: {status} {description}")
        out: list[StoredEvent] = []
        for msg in msgs:
            headers = msg.headers or {}
            out.append(
                StoredEvent(
                    sequence=int(headers["Nats-Sequence"]),
                    subject=headers["Nats-Subject"],
                    envelope=decode(msg.data, self.registry),
                    content_hash=content_hash(msg.data),
                )
            )
        return out

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return info.state.last_seq

    async def read_all(
        self,
        start: int = 1,
        until: int | None = None,
        filter_subjects: list[str] | None = None,
        batch: int = 2000,
    ):  # type: ignore[no-untyped-def]
        """Every stored event from `start` to `until` (default: the tip when called), in order.

        An ephemeral consumer without acks, drained by `pull_batches`: the fastest way to read
        the log, for replays. Yields raw `(sequence, subject, data, headers, stored_at)` so a
        caller decides when to pay for decoding.
        """
        tip = until if until is not None else await self.last_sequence()
        if tip < start:
            return
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=jsapi.AckPolicy.NONE,
            # Deleted when the read ends; the threshold only clears up after a crashed reader,
            # and must outlast a caller busy between batches (a rebuild writing a chunk).
            inactive_threshold=300.0,
            filter_subjects=filter_subjects or [self.subjects.all],
            mem_storage=True,
        )
        # Closed on the way out, also when the caller stops early: the consumer is deleted then,
        # not whenever the generator happens to be collected.
        async with contextlib.aclosing(
            pull_batches(self.nc, self.js, self.stream, config, batch=batch)
        ) as batches:
            async for msgs in batches:
                for msg in msgs:
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if seq > tip:
                        return
                    yield RawEvent(seq, msg.subject, msg.data, msg.headers or {},
                                   meta.timestamp)
                    if seq == tip:
                        return
