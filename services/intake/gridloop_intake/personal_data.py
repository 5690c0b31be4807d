"""Intake's key store and the only place a resident's contact is opened again.

One data key per case, wrapped by the current master key, in its own schema `<intake>_keys`
beside the register's. Not in the register's schema: a rebuild swaps that schema whole and drops
the old one, which would shred every case's contact. This table is not derived from the log, it
is the one thing intake holds that the log does not; its loss is the loss of the contacts, never
of the cases.

Erasure (crypto-shredding) removes the wrapped key and keeps the row as a tombstone with who,
when and why: the stream is never rewritten, and no key can be made again for an erased case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from gridloop_events.catalogue import CaseReported, ReporterContact
from gridloop_events.crypto import (
    CryptoError,
    DataKey,
    MasterKeys,
    WrappedKey,
    open_contact,
)
from gridloop_events.logging import get_logger
from gridloop_events.projection import check_schema
from gridloop_events.store import EventStore

if TYPE_CHECKING:
    from .reporting import IntakeService

log = get_logger(__name__)

KEYS_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.case_keys (
    case_id         text PRIMARY KEY,
    wrapped_key     bytea,        -- NULL once erased
    master_key_id   text,         -- which master key wrapped it
    created_at      timestamptz NOT NULL DEFAULT now(),
    erased_at       timestamptz,
    erased_by       text,
    erasure_reason  text,
    erasure_ref     text,
    CONSTRAINT a_key_until_erased CHECK ((erased_at IS NULL) = (wrapped_key IS NOT NULL))
)
"""


class ErasureReason(StrEnum):
    """Why a contact was erased: a closed list, so the record cannot itself carry personal data
    the way free text would."""

    resident_request = "resident_request"  # the resident asked (right to erasure)
    retention_expired = "retention_expired"
    legal_order = "legal_order"
    recorded_in_error = "recorded_in_error"


def keys_schema(intake_schema: str) -> str:
    return check_schema(f"{intake_schema}_keys")


@dataclass(frozen=True)
class Erasure:
    case_id: str
    erased_at: datetime
    erased_by: str
    reason: str
    reference: str | None = None
    already: bool = False  # erased before this request


def _erasure(row: asyncpg.Record, already: bool = False) -> Erasure:
    return Erasure(row["case_id"], row["erased_at"], row["erased_by"], row["erasure_reason"],
                   row["erasure_ref"], already)


class CaseKeys:
    """The data keys of cases, wrapped. Master keys come from configuration (the environment
    unless given), read when first needed: erasing needs none."""

    def __init__(self, pool: asyncpg.Pool | Callable[[], asyncpg.Pool], *,
                 schema: str = "intake_keys", master_keys: MasterKeys | None = None) -> None:
        self._pool = pool
        self.schema = check_schema(schema)
        self._master = master_keys
        self._ready = False
        self._lock = asyncio.Lock()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool() if callable(self._pool) else self._pool

    @property
    def master(self) -> MasterKeys:
        if self._master is None:
            self._master = MasterKeys.from_env()
        return self._master

    async def ensure_tables(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            async with self.pool.acquire() as conn, conn.transaction():
                # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogue.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"gridloop:{self.schema}")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                await conn.execute(KEYS_DDL.format(schema=self.schema))
            self._ready = True

    async def ensure(self, case_id: str) -> DataKey | Erasure:
        """The case's data key, made and stored (committed) first if the case has none yet.
        The caller appends its event only after this returns: a key never trails its event."""
        await self.ensure_tables()
        fresh = DataKey.new(case_id)
        wrapped = self.master.wrap(case_id, fresh)
        async with self.pool.acquire() as conn:
            inserted = await conn.fetchval(
                f"INSERT INTO {self.schema}.case_keys (case_id, wrapped_key, master_key_id) "
                f"VALUES ($1, $2, $3) ON CONFLICT (case_id) DO NOTHING RETURNING true",
                case_id, wrapped.blob, wrapped.master_key_id)
        if inserted:
            return fresh
        found = await self.get(case_id)
        if found is None:
            raise RuntimeError(f"the key row of case {case_id} vanished")  # rows are never deleted
        return found

    async def get(self, case_id: str) -> DataKey | Erasure | None:
        await self.ensure_tables()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT * FROM {self.schema}.case_keys WHERE case_id = $1",
                                      case_id)
        if row is None:
            return None
        if row["erased_at"] is not None:
            return _erasure(row, already=True)
        return self.master.unwrap(case_id, case_id,
                                  WrappedKey(row["master_key_id"], bytes(row["wrapped_key"])))

    async def erase(self, case_id: str, *, erased_by: str, reason: ErasureReason,
                    reference: str | None = None) -> Erasure:
        """Destroy the case's data key; idempotent. A case without one gets a tombstone, so no
        key can be made for it later (a retried report cannot bring its contact back)."""
        await self.ensure_tables()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT * FROM {self.schema}.case_keys WHERE case_id = $1 FOR UPDATE", case_id)
            if row is not None and row["erased_at"] is not None:
                return _erasure(row, already=True)
            if row is None:
                row = await conn.fetchrow(
                    f"INSERT INTO {self.schema}.case_keys (case_id, wrapped_key, master_key_id, "
                    f"erased_at, erased_by, erasure_reason, erasure_ref) "
                    f"VALUES ($1, NULL, NULL, now(), $2, $3, $4) RETURNING *",
                    case_id, erased_by, reason.value, reference)
            else:
                row = await conn.fetchrow(
                    f"UPDATE {self.schema}.case_keys SET wrapped_key = NULL, "
                    f"master_key_id = NULL, erased_at = now(), erased_by = $2, "
                    f"erasure_reason = $3, erasure_ref = $4 WHERE case_id = $1 RETURNING *",
                    case_id, erased_by, reason.value, reference)
        log.info("personal_data.erased", case_id=case_id, erased_by=erased_by,
                 reason=reason.value)
        return _erasure(row)

    async def rewrap(self, batch: int = 500) -> int:
        """Rewrap every live data key not wrapped by the current master key, so an old master
        key can then be retired. Returns how many were rewrapped."""
        await self.ensure_tables()
        current = self.master.current_id
        done = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT case_id, wrapped_key, master_key_id FROM {self.schema}.case_keys "
                    f"WHERE erased_at IS NULL AND master_key_id <> $1 LIMIT $2 "
                    f"FOR UPDATE SKIP LOCKED", current, batch)
                for row in rows:
                    key = self.master.unwrap(row["case_id"], row["case_id"], WrappedKey(
                        row["master_key_id"], bytes(row["wrapped_key"])))
                    wrapped = self.master.wrap(row["case_id"], key)
                    await conn.execute(
                        f"UPDATE {self.schema}.case_keys SET wrapped_key = $2, "
                        f"master_key_id = $3 WHERE case_id = $1",
                        row["case_id"], wrapped.blob, wrapped.master_key_id)
            done += len(rows)
            if len(rows) < batch:
                return done


# --- opening a contact again -------------------------------------------------------------------


class ReporterState(StrEnum):
    found = "found"
    no_case = "no_case"
    no_contact = "no_contact"  # the report named nobody
    erased = "erased"


@dataclass(frozen=True)
class ReporterAnswer:
    state: ReporterState
    contact: ReporterContact | None = None
    erased_at: datetime | None = None


async def reporter_lookup(store: EventStore, keys: CaseKeys, case_id: str, *,
                          actor: str | None = None) -> ReporterAnswer:
    """Open the contact recorded with the case, if it can still be opened. Every opening is
    logged with who asked (never what they saw)."""
    history = await store.read(case_id)
    if not history:
        return ReporterAnswer(ReporterState.no_case)
    first = history[0].envelope.payload
    if not isinstance(first, CaseReported) or first.reporter is None:
        return ReporterAnswer(ReporterState.no_contact)
    key = await keys.get(case_id)
    if isinstance(key, Erasure):
        return ReporterAnswer(ReporterState.erased, erased_at=key.erased_at)
    if key is None:
        # The key is written before its event, so this is a lost row, not a normal state.
        raise CryptoError(f"case {case_id} has a sealed contact but no data key")
    contact = open_contact(key, case_id, first.reporter)
    log.info("personal_data.opened", case_id=case_id, actor=actor)
    return ReporterAnswer(ReporterState.found, contact)


def _who(request: Request) -> str:
    """Who opened a contact, for the log: the verified caller the auth guard left on the
    request (the route is never served without one). A resident is logged as a role."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return "unverified"
    fields = principal.log_fields()
    return f"{fields['actor_role']}:{fields['actor_id']}"


def reporter_router(service: IntakeService, *, dependencies: Sequence[Any] = ()) -> APIRouter:
    """GET /v1/cases/{case_id}/reporter: the clear contact, for the roles `dependencies` allow
    (the auth layer supplies them). 404 no case or no contact, 410 erased."""
    router = APIRouter(tags=["personal data"], dependencies=list(dependencies))

    @router.get("/v1/cases/{case_id}/reporter")
    async def get_reporter(case_id: str, request: Request) -> JSONResponse:
        answer = await service.reporter_lookup(case_id, actor=_who(request))
        private = {"Cache-Control": "no-store"}
        if answer.state is ReporterState.found and answer.contact is not None:
            return JSONResponse(
                {"case_id": case_id,
                 "reporter": answer.contact.model_dump(mode="json", exclude_none=True)},
                headers=private)
        if answer.state is ReporterState.erased:
            return JSONResponse(
                {"detail": {"field": "case_id", "reason": "the reporter's personal data was "
                            "erased", "erased_at": answer.erased_at.isoformat()
                            if answer.erased_at else None}},
                status_code=410, headers=private)
        reason = (f"no case {case_id}" if answer.state is ReporterState.no_case
                  else "the case was reported without a contact")
        return JSONResponse({"detail": {"field": "case_id", "reason": reason}},
                            status_code=404, headers=private)

    return router


__all__ = [
    "CaseKeys",
    "Erasure",
    "ErasureReason",
    "ReporterAnswer",
    "ReporterState",
    "keys_schema",
    "reporter_lookup",
    "reporter_router",
]
