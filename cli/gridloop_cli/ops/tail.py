"""The log as it grows: events in stream order from a sequence on, filtered by subject.

An ephemeral pull consumer without acks, like `EventStore.read_all`, but it knows from the
consumer's pending count when it has seen everything there is, so a tail without `--follow`
returns as soon as it is done instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import nats.errors
import nats.js.api as jsapi

from gridloop_events.codec import CodecError, decode
from gridloop_events.store import EventStore, RawEvent
from gridloop_events.subjects import Subjects

from .redaction import public_envelope

FETCH = 256
IDLE = 3.0  # seconds without a message while some are pending: they will not come


def subject_filter(
    subjects: Subjects, district: str | None, event_type: str | None, case_id: str | None
) -> str:
    """One subject filter for any mix of the three: `<prefix>.case.<district>.<partition>.<case>.<type>`."""
    partition = f"{subjects.partition(case_id):02d}" if case_id else "*"
    return (f"{subjects.prefix}.case.{district or '*'}.{partition}.{case_id or '*'}."
            f"{event_type or '*'}")


async def raw_events(
    store: EventStore, subject: str, from_seq: int = 1, follow: bool = False,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[RawEvent]:
    """Stored events matching `subject` from `from_seq` on, in stream order, as stored."""
    config = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, from_seq),
        ack_policy=jsapi.AckPolicy.NONE,
        inactive_threshold=30.0,
        filter_subject=subject,
        mem_storage=True,
    )
    sub = await store.js.pull_subscribe(subject, stream=store.stream, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending
        # Following ends when `stop` is set (Ctrl-C): checked between fetches of at most 1 s,
        # so the consumer and the connection close in order instead of being torn down.
        while (follow and not (stop and stop.is_set())) or pending > 0:
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0 if follow else IDLE)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # nats-py raises either when nothing came. Following, wait on; otherwise the
                # server counted a message it cannot deliver (a damaged record): stop, and let
                # the caller compare what it read with what the stream says it holds.
                if follow:
                    pending = 0
                    continue
                return
            for msg in msgs:
                pending = msg.metadata.num_pending
                yield RawEvent(msg.metadata.sequence.stream, msg.subject, msg.data,
                               dict(msg.headers or {}), msg.metadata.timestamp)
    finally:
        await sub.unsubscribe()


async def events(
    store: EventStore, subject: str, from_seq: int = 1, follow: bool = False,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Each matching event as a dict without personal data, `sequence` and `subject` added."""
    async with aclosing(raw_events(store, subject, from_seq, follow, stop)) as stored:
        async for raw in stored:
            yield {**shown(raw.sequence, raw.subject, raw.data, store),
                   "stored_at": raw.stored_at.isoformat() if raw.stored_at else None}


def shown(sequence: int, subject: str, data: bytes, store: EventStore) -> dict[str, Any]:
    try:
        envelope = decode(data, store.registry)
    except CodecError as exc:
        # Never the raw bytes: they may hold a resident's data.
        return {"sequence": sequence, "subject": subject, "undecodable": str(exc)}
    return {"sequence": sequence, "subject": subject, **public_envelope(envelope)}


def one_line(event: dict[str, Any]) -> str:
    if "undecodable" in event:
        return f"#{event['sequence']}  {event['subject']}  UNDECODABLE: {event['undecodable']}"
    actor = event["actor"]
    payload = ", ".join(f"{k}={_short(v)}" for k, v in event["payload"].items() if v not in
                        (None, (), [], ""))
    when = event.get("stored_at") or event["recorded_at"]
    return (f"#{event['sequence']}  {when}  {event['district']}  "
            f"{event['case_id']}  {event['event_type']}  by {actor['kind']}:{actor['id']}  "
            f"{payload}")


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items() if v is not None) + "}"
    return str(value)
