"""The log as the checker sees it: every stored event, decoded, grouped by case.

Read through its own ephemeral consumer (no acks, memory only), so checking never moves a
service's consumer. Each event keeps the server's store time, the one wall clock the checker
trusts: it tells a deadline fired by a jumped service clock from one fired on time.

A copy of an event (same event id at a later sequence, e.g. republished raw bytes) is kept
apart: the reference history of a case holds each event id once, at its first sequence.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
import nats.js.api as jsapi
import nats.js.errors
from nats.aio.client import Client as NATS

from ..codec import REGISTRY, CodecError, Registry, content_hash, decode
from ..envelope import StoredEvent
from ..subjects import Subjects


@dataclass(frozen=True)
class LoggedEvent:
    stored: StoredEvent
    stored_at: datetime  # when the server stored it (its wall clock)

    @property
    def sequence(self) -> int:
        return self.stored.sequence


@dataclass
class Copy:
    """A later stream message carrying an event id already seen at `first_sequence`."""

    case_id: str
    event_id: str
    event_type: str
    sequence: int
    first_sequence: int
    partition: int | None = None


@dataclass
class LogSnapshot:
    tip: int = 0
    messages: int = 0
    cases: dict[str, list[LoggedEvent]] = field(default_factory=lambda: defaultdict(list))
    # The case's partition when subjects carry one (`<district>.<partition>.<case>.<type>`).
    partitions: dict[str, int | None] = field(default_factory=dict)
    copies: list[Copy] = field(default_factory=list)
    undecodable: list[tuple[int, str]] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(v) for v in self.cases.values())

    def history(self, case_id: str, upto: int | None = None) -> list[StoredEvent]:
        """The case's events, each id once, at or below sequence `upto`."""
        return [e.stored for e in self.cases.get(case_id, ())
                if upto is None or e.sequence <= upto]

    def copies_upto(self, case_id: str, upto: int) -> int:
        return sum(1 for c in self.copies if c.case_id == case_id and c.sequence <= upto)

    def partition(self, case_id: str) -> int | None:
        return self.partitions.get(case_id)


def partition_in(subjects: Subjects, subject: str) -> int | None:
    tokens = subject[len(f"{subjects.prefix}.case."):].split(".")
    return int(tokens[1]) if len(tokens) == 4 and tokens[1].isdigit() else None


async def read_log(nc: NATS, subjects: Subjects, registry: Registry = REGISTRY,
                   batch: int = 2000, patience: float = 60.0) -> LogSnapshot:
    """Every message up to the stream's tip when called (copies included), decoded."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.stream_name)
    snapshot = LogSnapshot(tip=info.state.last_seq)
    if snapshot.tip == 0:
        return snapshot
    first_seen: dict[str, int] = {}
    last = 0
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            last = await _read_from(js, subjects, registry, snapshot, first_seen, last, batch)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
            # A cluster electing a leader answers 503s and timeouts for a while: the snapshot
            # must still be the whole log up to the tip, so read on from where it stopped.
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the log could not be read past sequence {last} of "
                                   f"{snapshot.tip}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0.5)
            continue
        if last >= snapshot.tip:
            return snapshot


async def _read_from(js, subjects: Subjects, registry: Registry, snapshot: LogSnapshot,  # type: ignore[no-untyped-def]
                     first_seen: dict[str, int], last: int, batch: int) -> int:
    """Read after sequence `last` up to the tip; returns the last sequence read."""
    config = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=last + 1,
        ack_policy=jsapi.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subjects.all, stream=subjects.stream_name, config=config)
    try:
        while last < snapshot.tip:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if (await sub.consumer_info()).num_pending == 0:
                    return snapshot.tip  # nothing more to read: the log ends before the tip
                raise
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > snapshot.tip:
                    return snapshot.tip
                if seq <= last:
                    continue
                last = seq
                snapshot.messages += 1
                _take(snapshot, first_seen, registry, seq, msg, partition_in(subjects, msg.subject))
        return last
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - an ephemeral consumer expires by itself
            pass


def _take(snapshot: LogSnapshot, first_seen: dict[str, int], registry: Registry, seq: int,
          msg, partition: int | None) -> None:  # type: ignore[no-untyped-def]
    try:
        envelope = decode(msg.data, registry)
    except CodecError as exc:
        snapshot.undecodable.append((seq, str(exc)))
        return
    event_id = str(envelope.event_id)
    if event_id in first_seen:
        snapshot.copies.append(Copy(envelope.case_id, event_id, envelope.event_type, seq,
                                    first_seen[event_id], partition))
        return
    first_seen[event_id] = seq
    snapshot.partitions.setdefault(envelope.case_id, partition)
    stamp = msg.metadata.timestamp
    stored_at = stamp if isinstance(stamp, datetime) else datetime.now(UTC)
    if stored_at.tzinfo is None:
        stored_at = stored_at.replace(tzinfo=UTC)
    snapshot.cases[envelope.case_id].append(LoggedEvent(
        StoredEvent(sequence=seq, subject=msg.subject, envelope=envelope,
                    content_hash=content_hash(msg.data)),
        stored_at,
    ))
