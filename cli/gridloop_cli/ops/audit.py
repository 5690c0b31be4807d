"""The audit of the log: every case's hash chain recomputed (gridloop_events.audit), and, for the
whole log, every stream sequence accounted for.

The chains name a changed, removed or reordered event by case and position. What no chain can
see is a message gone without a trace — the last events of a case, or a record the server can no
longer read — so the whole-log audit also checks that every sequence from 1 to the tip was read:
the stream denies deletes and purges, so a missing sequence is a removed or unreadable message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from gridloop_events.audit import AuditReport, verify_events
from gridloop_events.store import EventStore, RawEvent

from .connection import Connected
from .output import progress_bar
from .tail import raw_events


@dataclass(frozen=True)
class Unreadable:
    """A message the stream still counts on a case's subject but could not deliver."""

    case_id: str
    event_type: str
    sequence: int | None  # known when one case accounts for every missing sequence
    position: int | None

    def __str__(self) -> str:
        where = (f"event #{self.position} (seq {self.sequence})" if self.position is not None
                 else "an event")
        return (f"case {self.case_id} {where}: a {self.event_type} the stream holds cannot be "
                "read (damaged or removed)")


@dataclass
class Audit:
    report: AuditReport
    case_id: str | None
    tip: int = 0
    missing: list[int] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if self.case_id is not None and self.report.events == 0:
            return False  # asked about a case the log does not hold
        return self.report.ok and not self.missing and not self.unreadable


async def verify(conn: Connected, case_id: str | None) -> Audit:
    store = conn.need_store()
    tip = await store.last_sequence()
    subject = store.subjects.case(case_id) if case_id is not None else store.subjects.all
    seen: dict[int, str] = {}
    with progress_bar("audit", tip) as advance:
        report = await verify_events(_upto(store, subject, tip, seen), store.registry, advance)
    audit = Audit(report, case_id, tip)
    if case_id is None:
        audit.missing = [s for s in range(1, tip + 1) if s not in seen]
        if audit.missing:
            audit.unreadable = await _name_unreadable(store, seen, audit.missing)
    return audit


async def _name_unreadable(
    store: EventStore, seen: dict[int, str], missing: list[int]
) -> list[Unreadable]:
    """Which case's subject lost a message: the stream's own per-subject counts (asked only when
    something is missing; they can be long) against what could be read."""
    info = await store.js.stream_info(store.stream, subjects_filter=store.subjects.all)
    read: dict[str, int] = {}
    for subject in seen.values():
        read[subject] = read.get(subject, 0) + 1
    short = {s: n - read.get(s, 0) for s, n in (info.state.subjects or {}).items()
             if n > read.get(s, 0)}
    named = []
    cases = {s.split(".")[-2] for s in short}
    for subject, lost in sorted(short.items()):
        case_id, event_type = subject.split(".")[-2:]
        if len(cases) == 1 and sum(short.values()) == len(missing):
            mine = sorted(q for q, subj in seen.items() if subj.split(".")[-2] == case_id)
            gone = missing if len(short) == 1 else []
            for seq in gone:
                named.append(Unreadable(case_id, event_type, seq,
                                        sum(1 for q in mine if q < seq) + missing.index(seq)))
            if gone:
                continue
        named.extend(Unreadable(case_id, event_type, None, None) for _ in range(lost))
    return named


async def _upto(store: EventStore, subject: str, tip: int, seen: dict[int, str]
                ) -> AsyncIterator[RawEvent]:
    """The log as it stood when the audit began: events appended meanwhile wait for the next."""
    # Closed here, not whenever the garbage collector gets to it: its consumer is unsubscribed
    # while the connection is still open.
    async with aclosing(raw_events(store, subject)) as stored:
        async for raw in stored:
            if raw.sequence > tip:
                return
            seen[raw.sequence] = raw.subject
            yield raw
            if raw.sequence == tip:
                return


def missing_ranges(missing: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for seq in missing:
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def missing_text(first: int, last: int) -> str:
    span = f"sequence {first}" if first == last else f"sequences {first}-{last}"
    return (f"{span} missing from the stream: deletes and purges are denied, so a stored "
            "message was removed or can no longer be read")


def as_dict(audit: Audit) -> dict[str, Any]:
    report = audit.report
    return {
        "scope": f"case {audit.case_id}" if audit.case_id else "all",
        "ok": audit.ok,
        "cases": report.cases,
        "events": report.events,
        "tip": audit.tip,
        "anchor": report.anchor,
        "findings": [
            {"case_id": f.case_id, "position": f.position, "sequence": f.sequence,
             "problem": f.problem}
            for f in report.findings
        ],
        "missing_sequences": audit.missing,
        "unreadable": [
            {"case_id": u.case_id, "event_type": u.event_type, "sequence": u.sequence,
             "position": u.position}
            for u in audit.unreadable
        ],
    }
