"""Residents' personal data against real NATS JetStream and PostgreSQL: sealed before it enters
the log, opened only by intake, erased for good by destroying its case's data key — while the
case's events, their hash chain and every read model stay exactly as they were.

Reports go through IntakeService as the API's handler calls it (the HTTP layer and its
authentication are tested with the API); the reporter endpoint is served by its own router."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from gridloop_district import default_district
from gridloop_events.audit import AuditReport, verify_all, verify_events
from gridloop_events.catalogue import CaseReported, ReporterContact, SealedContact
from gridloop_events.clock import FixedClock
from gridloop_events.crypto import ENV_KEY_ID, ENV_KEYS, MasterKeys
from gridloop_events.envelope import Actor
from gridloop_events.rebuild import rebuild
from gridloop_events.service import Runtime, ServiceSettings, create_service_app
from gridloop_events.store import EventStore, RawEvent
from typer.testing import CliRunner

from gridloop_cli.main import app as cli
from gridloop_intake.domain.commands import ReportRejected
from gridloop_intake.domain.parsing import parse_report
from gridloop_intake.personal_data import ReporterState, reporter_router
from gridloop_intake.projection import IntakeProjection
from gridloop_intake.reporting import IntakeService, ReportResult

DISTRICT = default_district()
GRID = DISTRICT.grids[0]
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
NAME, PHONE, ID_NUMBER, NOTE = "赵六", "13655557777", "370105198802023456", "住3号楼2单元"
CONTACT = ReporterContact(name=NAME, phone=PHONE, id_number=ID_NUMBER, contact_note=NOTE)
SECRETS = (NAME, PHONE, ID_NUMBER, NOTE)
HEADERS = {"X-Actor-Kind": "operator", "X-Actor-Id": "op-7"}


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def use_master_keys(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str], current: str) -> None:
    monkeypatch.setenv(ENV_KEYS, json.dumps(keys))
    monkeypatch.setenv(ENV_KEY_ID, current)


@pytest.fixture
def settings(nats_url: str, fresh_database: str, fresh_stream_prefix: str,
             monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    use_master_keys(monkeypatch, {"m-2026": new_master_key()}, "m-2026")
    return ServiceSettings(service="intake", nats_url=nats_url, database_url=fresh_database,
                           subject_prefix=fresh_stream_prefix, schema="intake")


@asynccontextmanager
async def running(settings: ServiceSettings) -> AsyncIterator[tuple[IntakeService, httpx.AsyncClient]]:
    runtime = Runtime(settings, [IntakeProjection(schema="intake")], clock=FixedClock(T0))
    service = IntakeService(runtime, DISTRICT, schema="intake", clock=runtime.clock)
    app = create_service_app(runtime, title="intake", description="personal data",
                             routers=[reporter_router(service)])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield service, client


async def post(service: IntakeService, body: dict[str, Any], key: str | None = None
               ) -> ReportResult:
    return await service.report(parse_report(body, key), Actor(kind="operator", id="op-7"),
                                "req-1")


def report(**changes: Any) -> dict[str, Any]:
    return {
        "channel": "hotline",
        "category_code": "CM-0101",
        "description": "楼道灯坏了一周",
        "location": {"grid_code": GRID.code},
        "reporter": CONTACT.model_dump(),
        **changes,
    }


def leaks(data: bytes | str) -> list[str]:
    text = data.decode() if isinstance(data, bytes) else data
    return [s for s in SECRETS if s in text]


async def schema_text(pool: asyncpg.Pool, schema: str) -> str:
    """Every row of every table of a schema, as text."""
    async with pool.acquire() as conn:
        tables = await conn.fetch("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = $1", schema)
        assert tables, f"no tables in {schema}"
        parts = []
        for t in tables:
            rows = await conn.fetch(f'SELECT x::text AS row FROM {schema}."{t["table_name"]}" x')
            parts.extend(r["row"] for r in rows)
    return "\n".join(parts)


async def verify_case(store: EventStore, case_id: str) -> AuditReport:
    """audit.verify_case over the case's stored bytes and headers, read by direct get.
    (audit.verify_case itself reads through EventStore.read_all, whose filtered read can end
    in an uncaught asyncio.TimeoutError; reported for store.py.)"""
    raws = []
    for stored in await store.read(case_id):
        msg = await store.js.get_msg(store.stream, stored.sequence, direct=True)
        raws.append(RawEvent(stored.sequence, msg.subject, msg.data, dict(msg.headers or {})))
    return await verify_events(raws, store.registry)


async def erase(settings: ServiceSettings, *args: str) -> Any:
    env = {"GRIDLOOP_NATS_URL": settings.nats_url, "GRIDLOOP_DATABASE_URL": settings.database_url,
           "GRIDLOOP_SUBJECT_PREFIX": settings.subject_prefix}
    return await asyncio.to_thread(CliRunner().invoke, cli, ["erase-person", *args], env=env)


async def test_a_contact_is_sealed_in_the_log_opened_by_intake_only_and_erased_for_good(
        settings: ServiceSettings) -> None:
    key = "hotline-20261123-0042"
    async with running(settings) as (service, client):
        store = service.store
        r = await post(service, report(), key)
        assert r.created
        case_id = r.case_id
        other_id = (await post(service, report(reporter={"name": "钱七",
                                                          "phone": "13500001111"}))).case_id
        nobody_id = (await post(service, report(reporter=None))).case_id

        # The log holds the contact sealed, and its raw bytes nowhere in clear.
        [stored] = await store.read(case_id)
        assert isinstance(stored.envelope.payload, CaseReported)
        sealed = stored.envelope.payload.reporter
        assert isinstance(sealed, SealedContact) and sealed.key_id == case_id
        raw_before = (await store.js.get_msg(store.stream, stored.sequence, direct=True)).data
        assert leaks(raw_before) == [] and sealed.ciphertext.encode() in raw_before
        assert [e.sequence async for e in store.read_all() if leaks(e.data)] == []

        # Intake opens it again; the key is in intake's own schema, wrapped by the master key.
        assert await service.reporter_of(case_id) == CONTACT
        assert await service.reporter_of(nobody_id) is None
        got = await client.get(f"/v1/cases/{case_id}/reporter", headers=HEADERS)
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
        assert got.json()["reporter"] == CONTACT.model_dump()
        assert (await client.get(f"/v1/cases/{nobody_id}/reporter")).status_code == 404
        assert (await client.get("/v1/cases/no-such-case/reporter")).status_code == 404
        async with service.pool.acquire() as conn:
            rows = await conn.fetch("SELECT case_id, master_key_id, length(wrapped_key) AS n "
                                    "FROM intake_keys.case_keys ORDER BY case_id")
        assert {r["case_id"] for r in rows} == {case_id, other_id}  # no contact, no key
        assert {(r["master_key_id"], r["n"]) for r in rows} == {("m-2026", 60)}

        # Retries under the same Idempotency-Key reuse the case's key: one case, one event.
        again = await post(service, report(), key)
        assert not again.created and again.case_id == case_id
        racing = await asyncio.gather(*(post(service, report(), "app-race-1") for _ in range(4)))
        [raced_id] = {x.case_id for x in racing}
        assert sum(x.created for x in racing) == 1
        assert len(await store.read(raced_id)) == 1 and len(await store.read(case_id)) == 1
        assert await service.reporter_of(raced_id) == CONTACT
        with pytest.raises(ReportRejected) as changed:
            await post(service, report(reporter={**CONTACT.model_dump(), "phone": "13655557778"}),
                       key)
        assert changed.value.status == 409

        # No read model holds the contact, sealed or not.
        for runner in service.runtime.runners:
            await runner.wait_caught_up(timeout=15)
        register = await schema_text(service.pool, "intake")
        assert case_id in register and leaks(register) == []
        assert sealed.ciphertext not in register

        # Erasure: the data key goes, the case stays.
        anchor = (await verify_all(store)).anchor
        done = await erase(settings, case_id, "--by", "dpo-1", "--reference", "REQ-2026-7")
        assert done.exit_code == 0, done.output
        assert "erased" in done.output and leaks(done.output) == []
        assert await service.reporter_of(case_id) is None
        answer = await service.reporter_lookup(case_id)
        assert answer.state is ReporterState.erased and answer.erased_at is not None
        gone = await client.get(f"/v1/cases/{case_id}/reporter", headers=HEADERS)
        assert gone.status_code == 410 and leaks(gone.text) == []
        async with service.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM intake_keys.case_keys WHERE case_id = $1",
                                      case_id)
        assert row["wrapped_key"] is None and row["master_key_id"] is None
        assert (row["erased_by"], row["erasure_reason"], row["erasure_ref"]) == (
            "dpo-1", "resident_request", "REQ-2026-7")

        # The log is untouched: same bytes, an intact hash chain.
        assert (await store.js.get_msg(store.stream, stored.sequence, direct=True)).data == raw_before
        audit = await verify_case(store, case_id)
        assert audit.ok and audit.events == 1, audit.findings
        after = await verify_all(store)
        assert after.ok and after.anchor == anchor  # not one stored byte changed anywhere

        # A retry of the erased report answers with its case, and brings no contact back.
        late = await post(service, report(), key)
        assert not late.created and late.case_id == case_id
        assert len(await store.read(case_id)) == 1
        assert (await service.reporter_lookup(case_id)).state is ReporterState.erased
        twice = await erase(settings, case_id, "--by", "dpo-1")
        assert twice.exit_code == 0 and "already erased" in twice.output
        unknown = await erase(settings, "no-such-case", "--by", "dpo-1")
        assert unknown.exit_code == 1

        # A replay rebuilds the register from the log as before, and still cannot read it;
        # the keys of other cases survive the rebuild's schema swap.
        projection = service.runtime.projections[0]
        await rebuild(service.pool, store, projection, projection.tables)
        rebuilt = await schema_text(service.pool, "intake")
        assert case_id in rebuilt and leaks(rebuilt) == []
        assert await service.reporter_of(case_id) is None
        assert await service.reporter_of(other_id) == ReporterContact(name="钱七",
                                                                      phone="13500001111")
        view = await service.case_view(case_id)
        assert view is not None and view.status == "reported"


async def test_rotating_the_master_key_keeps_every_contact_readable(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    old = json.loads(os.environ[ENV_KEYS])
    async with running(settings) as (service, _):
        first = (await post(service, report())).case_id

    use_master_keys(monkeypatch, {**old, "m-2027": new_master_key()}, "m-2027")
    async with running(settings) as (service, _):
        assert await service.reporter_of(first) == CONTACT
        second = (await post(service, report())).case_id
        async with service.pool.acquire() as conn:
            wrapped_by = dict(await conn.fetch(
                "SELECT case_id, master_key_id FROM intake_keys.case_keys"))
        assert wrapped_by == {first: "m-2026", second: "m-2027"}
        # Rewrap what the old key wrapped; then the old key can be retired.
        assert await service.keys.rewrap() == 1
        assert await service.keys.rewrap() == 0

    monkeypatch.setenv(ENV_KEYS, json.dumps({"m-2027": json.loads(os.environ[ENV_KEYS])["m-2027"]}))
    async with running(settings) as (service, _):
        assert MasterKeys.from_env().current_id == "m-2027"
        assert await service.reporter_of(first) == CONTACT
        assert await service.reporter_of(second) == CONTACT
