"""The tamper-evident audit trail: recompute every case's hash chain from the stream.

Each stored event carries `prev_hash`, the content hash of its case's previous event, and a
`Gridloop-Content-Hash` header with its own. A change to a stored event breaks its own hash (or,
if the header was rewritten too, the next event's link); a removal or a reordering breaks the
chain where it happened. The findings name the case and the position.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from .codec import CodecError, Registry, content_hash, decode
from .store import CONTENT_HASH_HEADER, EventStore, RawEvent


@dataclass(frozen=True)
class Finding:
    case_id: str
    position: int  # 0-based index of the event within its case
    sequence: int  # stream sequence
    problem: str

    def __str__(self) -> str:
        return f"case {self.case_id} event #{self.position} (seq {self.sequence}): {self.problem}"


@dataclass
class AuditReport:
    cases: int = 0
    events: int = 0
    findings: list[Finding] = field(default_factory=list)
    # A digest over every case's last hash: publish it somewhere else (the anchor) and a later
    # run proves that nothing at all changed since.
    anchor: str = ""

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class _Chain:
    position: int = 0
    last_hash: str | None = None


def _case_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[-2] if len(parts) >= 2 else subject


def check_event(
    chain: _Chain, raw: RawEvent, registry: Registry
) -> tuple[list[str], str]:
    """Problems with one event given its case's chain so far, and its recomputed hash."""
    problems: list[str] = []
    actual = content_hash(raw.data)
    declared = raw.headers.get(CONTENT_HASH_HEADER)
    if declared is None:
        problems.append("no content hash header")
    elif declared != actual:
        problems.append(f"content changed: stored hash {declared[:12]}…, content {actual[:12]}…")
    try:
        envelope = decode(raw.data, registry)
    except CodecError as exc:
        problems.append(f"undecodable: {exc}")
        return problems, actual
    if envelope.case_id != _case_of(raw.subject):
        problems.append(f"stored under case {_case_of(raw.subject)} but names {envelope.case_id}")
    if envelope.prev_hash != chain.last_hash:
        if chain.position == 0:
            problems.append("first event of the case links to a predecessor: events removed")
        elif envelope.prev_hash is None:
            problems.append("links to nothing mid-chain: events removed or reordered")
        else:
            problems.append("does not link to the previous event: removed, reordered or changed")
    return problems, actual


async def verify_events(
    events: AsyncIterator[RawEvent] | Iterable[RawEvent],
    registry: Registry,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    report = AuditReport()
    chains: dict[str, _Chain] = {}

    async def each() -> AsyncIterator[RawEvent]:
        if hasattr(events, "__aiter__"):
            async for raw in events:  # type: ignore[union-attr]
                yield raw
        else:
            for raw in events:  # type: ignore[union-attr]
                yield raw

    async for raw in each():
        case_id = _case_of(raw.subject)
        chain = chains.setdefault(case_id, _Chain())
        problems, actual = check_event(chain, raw, registry)
        for problem in problems:
            report.findings.append(Finding(case_id, chain.position, raw.sequence, problem))
        chain.position += 1
        # Link the next event to the hash the stream declares: a rewritten body is then named
        # once, where it is, and a rewritten header too shows as the next event's broken link.
        chain.last_hash = raw.headers.get(CONTENT_HASH_HEADER, actual)
        report.events += 1
        if progress:
            progress(1)
    report.cases = len(chains)
    digest = hashlib.sha256()
    for case_id in sorted(chains):
        digest.update(f"{case_id}:{chains[case_id].last_hash}\n".encode())
    report.anchor = digest.hexdigest()
    return report


async def verify_case(store: EventStore, case_id: str) -> AuditReport:
    return await verify_events(
        store.read_all(1, None, [store.subjects.case(case_id)]), store.registry
    )


async def verify_all(
    store: EventStore, progress: Callable[[int], None] | None = None
) -> AuditReport:
    return await verify_events(store.read_all(), store.registry, progress)
