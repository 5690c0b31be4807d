"""The intake service's face for HTTP adapters (the native API and Open311): report a case,
show one, list many. Adapters build a ReportCase, call IntakeService, and render the result."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from gridloop_district import District
from gridloop_events.catalogue import CaseReported, ReporterContact
from gridloop_events.clock import Clock, SystemClock
from gridloop_events.crypto import MasterKeys, seal_contact
from gridloop_events.envelope import Actor, Envelope, StoredEvent, new_event_id
from gridloop_events.logging import get_logger
from gridloop_events.service import Runtime
from gridloop_events.store import ConcurrencyError, EventStore

from .domain.commands import ReportCase, ReportRejected
from .domain.idempotency import KEY_FIELD, KeyedIds, keyed_ids, settle_retry
from .domain.listing import CasePage, CaseQuery
from .domain.report import prepare_report, reporter_contact, with_reporter
from .domain.timeline import case_view_from_history
from .domain.views import CaseView, TimelineEntry
from .personal_data import CaseKeys, Erasure, ReporterAnswer, ReporterState, keys_schema
from .personal_data import reporter_lookup as _reporter_lookup
from .queries import fetch_page

log = get_logger(__name__)

CASE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


@dataclass(frozen=True)
class ReportResult:
    case_id: str
    created: bool  # False when an Idempotency-Key retry found its case already recorded
    reported_at: datetime


class IntakeService:
    """Holds the district (loaded once) and reaches the store and pool through the runtime,
    which opens them when the app starts."""

    def __init__(self, runtime: Runtime, district: District, *, schema: str = "intake",
                 clock: Clock | None = None, master_keys: MasterKeys | None = None) -> None:
        self.runtime = runtime
        self.district = district
        self.schema = schema
        self.clock = clock or runtime.clock or SystemClock()
        # Master keys from the environment unless given, read at the first contact to seal.
        self.keys = CaseKeys(lambda: self.pool, schema=keys_schema(schema),
                             master_keys=master_keys)

    @property
    def store(self) -> EventStore:
        if self.runtime.store is None:
            raise RuntimeError("the intake service is not started")
        return self.runtime.store

    @property
    def pool(self) -> asyncpg.Pool:
        if self.runtime.pool is None:
            raise RuntimeError("the intake service is not started")
        return self.runtime.pool

    # --- writing -------------------------------------------------------------------------------

    async def report(self, cmd: ReportCase, actor: Actor, correlation_id: str) -> ReportResult:
        """Record a CaseReported. Raises ReportRejected (nothing appended) when the report is
        wrong, or with status 409 when its Idempotency-Key was used for a different report."""
        now = self.clock.now()
        if cmd.idempotency_key is None:
            payload = prepare_report(cmd, self.district)
            case_id = str(new_event_id(now))
            sealed = await self._sealed(case_id, payload, reporter_contact(cmd))
            if sealed is None:
                raise RuntimeError(f"a fresh case id {case_id} names an erased key")
            envelope = Envelope.new(sealed, case_id=case_id, district=self.district.code,
                                    actor=actor, correlation_id=correlation_id,
                                    occurred_at=now, event_id=new_event_id(now))
            await self.store.append(case_id, [envelope], expected_version=0)
            return self._recorded(envelope)

        ids = keyed_ids(self.district.code, cmd.idempotency_key)
        payload = prepare_report(cmd, self.district, idempotency_digest=ids.digest)
        # Sealed with the case's key, made on first use and reused by every retry: sealing is
        # deterministic, so a retry builds the byte-identical event and the same event id.
        sealed = await self._sealed(ids.case_id, payload, reporter_contact(cmd))
        existing = await self._first_event(ids.case_id)
        if sealed is None:
            # The case's contact was erased; its report must exist to be retried.
            if existing is None:
                raise ReportRejected(KEY_FIELD, "this key names a case whose personal data "
                                     "was erased", status=409)
            return self._retried(existing, payload, ids, correlation_id, contact_erased=True)
        if existing is not None:
            return self._retried(existing, sealed, ids, correlation_id)
        envelope = Envelope.new(sealed, case_id=ids.case_id, district=self.district.code,
                                actor=actor, correlation_id=correlation_id, occurred_at=now,
                                event_id=ids.event_id(sealed))
        try:
            # A lost acknowledgement retried with the same body is recognised by the store
            # (same event id); a concurrent different body under the same key conflicts.
            appended = await self.store.append_once(ids.case_id, [envelope], expected_version=0)
        except ConcurrencyError:
            existing = await self._first_event(ids.case_id)
            if existing is None:
                raise
            return self._retried(existing, sealed, ids, correlation_id)
        if appended.duplicate:
            # A concurrent twin of this request stored it first: this one created nothing.
            existing = await self._first_event(ids.case_id)
            if existing is not None:
                return self._retried(existing, sealed, ids, correlation_id)
        return self._recorded(envelope)

    async def _sealed(self, case_id: str, payload: CaseReported,
                      contact: ReporterContact | None) -> CaseReported | None:
        """The payload with its contact sealed under the case's data key, which is stored
        (committed) before this returns, so before any append. None: the key was erased."""
        if contact is None:
            return payload
        key = await self.keys.ensure(case_id)
        if isinstance(key, Erasure):
            return None
        return with_reporter(payload, seal_contact(key, case_id, contact))

    def _recorded(self, envelope: Envelope) -> ReportResult:
        self.runtime.metrics.appended.labels(envelope.event_type).inc()
        log.info("case.reported", **envelope.log_context(),
                 channel=envelope.payload.channel.value,  # type: ignore[attr-defined]
                 category=envelope.payload.category_code)  # type: ignore[attr-defined]
        return ReportResult(envelope.case_id, True, envelope.occurred_at)

    def _retried(self, first: StoredEvent, payload: CaseReported, ids: KeyedIds,
                 correlation_id: str, *, contact_erased: bool = False) -> ReportResult:
        settle_retry(first.envelope, payload, ids, contact_erased=contact_erased)
        log.info("case.report_retried", case_id=first.envelope.case_id,
                 correlation_id=correlation_id)
        return ReportResult(first.envelope.case_id, False, first.envelope.occurred_at)

    async def _first_event(self, case_id: str) -> StoredEvent | None:
        history = await self.store.read(case_id)
        return history[0] if history else None

    # --- reading -------------------------------------------------------------------------------

    async def case_view(self, case_id: str) -> CaseView | None:
        """The case as its log tells it: the fold's status and every event's timeline entry."""
        if not re.match(CASE_ID_PATTERN, case_id):
            return None
        history = await self.store.read(case_id)
        if not history:
            return None
        return case_view_from_history(history)

    async def reporter_lookup(self, case_id: str, *, actor: str | None = None) -> ReporterAnswer:
        """The reporter's contact in clear, or why not (no case, no contact, erased). Only for
        the roles allowed to see it: the caller checks them."""
        if not re.match(CASE_ID_PATTERN, case_id):
            return ReporterAnswer(ReporterState.no_case)
        return await _reporter_lookup(self.store, self.keys, case_id, actor=actor)

    async def reporter_of(self, case_id: str) -> ReporterContact | None:
        """The contact in clear; None when there is none, or it was erased."""
        return (await self.reporter_lookup(case_id)).contact

    async def query_cases(self, query: CaseQuery) -> CasePage:
        return await fetch_page(self.pool, self.schema, query)

    async def list_cases(
        self,
        *,
        status: str | Iterable[str] | None = None,
        category: str | Iterable[str] | None = None,
        grid: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        case_ids: Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[CaseView]:
        """Register rows (timeline left empty), newest first. `since`/`until` bound reported_at."""
        query = CaseQuery(
            statuses=_as_tuple(status),
            categories=_as_tuple(category),
            grid=grid,
            reported_from=since,
            reported_to=until,
            case_ids=tuple(case_ids) if case_ids is not None else None,
            limit=limit,
            offset=offset,
        )
        return list((await self.query_cases(query)).items)


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


__all__ = [
    "CaseView",
    "IntakeService",
    "ReportCase",
    "ReportRejected",
    "ReportResult",
    "TimelineEntry",
]
