"""The log as the checker sees it: every stored event, decoded, grouped by case.

Read through its own ephemeral consumer (no acks, memory only), so checking never moves a
service's consumer. Each event keeps the server's store time, the one wall clock the checker
trusts: it tells a deadline fired by a jumped service clock from one fired on time.

A copy of an event (same event id at a later sequence, e.g. republished raw bytes) is kept
apart: the reference history of a case holds each event id once, at its first sequence.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
import nats.js.api as jsapi
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
                   batch: int = 2000) -> LogSnapshot:
    js = nc.jetstream()
    info = await js.stream_info(subjects.stream_name)
    snapshot = LogSnapshot(tip=info.state.last_seq)
    if snapshot.tip == 0:
        return snapshot
    config = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_policy=jsapi.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subjects.all, stream=subjects.stream_name, config=config)
    first_seen: dict[str, int] = {}
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except nats.errors.TimeoutError:
                return snapshot
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > snapshot.tip:
                    return snapshot
                snapshot.messages += 1
                _take(snapshot, first_seen, registry, seq, msg, partition_in(subjects, msg.subject))
                if seq == snapshot.tip:
                    return snapshot
    finally:
        await sub.unsubscribe()


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
