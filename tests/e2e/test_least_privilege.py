"""The end-to-end fixture runs the services as deployed: each is connected as its own NATS user
and PostgreSQL role from deploy/, and the credentials each was handed cannot do what another
service owns. (The configs themselves are checked in tests/integration/test_deploy_configs.py;
this checks that the fixture really uses them.)"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from gridloop_district import default_district
from gridloop_events.store import EventStore

SERVICES = ("intake", "dispatch", "escalation", "feedback")


def _nats_users(system: Any) -> set[str]:
    url = f"{system.deployed.nats.monitor_url}/connz?auth=true&limit=1024"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return {c.get("authorized_user", "") for c in json.load(resp)["connections"]}


async def test_each_service_is_connected_as_itself(system: Any) -> None:
    assert _nats_users(system) == set(SERVICES)
    # The superuser only for looking: it sees every session on the database.
    conn = await asyncpg.connect(system.deployed.database_url)
    try:
        rows = await conn.fetch("SELECT DISTINCT usename FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await conn.close()
    assert {r["usename"] for r in rows} == {f"gridloop_{s}" for s in SERVICES}
    # Without credentials nobody gets in.
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(system.deployed.nats_url, allow_reconnect=False,
                           max_reconnect_attempts=0)


async def _wait_for(errors: list[str], needle: str) -> None:
    for _ in range(100):
        # nats-py lower-cases the server's -ERR text.
        if any(needle.lower() in e.lower() for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no error containing {needle!r}: {errors}")


async def test_the_services_credentials_reach_no_further_than_their_own(system: Any) -> None:
    district = default_district()
    grid = district.grids[0]
    category = next(c for c in district.catalogue.items if c.kind.value == "general")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"{system.url('intake')}/v1/cases",
                              headers=system.headers("dispatcher", district.code, "op-lp"),
                              json={"channel": "hotline", "category_code": category.code,
                                    "description": "井盖缺失",
                                    "location": {"grid_code": grid.code}, "severity": "normal"})
    assert r.status_code == 201, r.text
    case_id = r.json()["case_id"]

    # intake's NATS user appends CaseReported only: a closure (dispatch's) is refused by the
    # server and never reaches the log.
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    intake = await nats.connect(system.env["GRIDLOOP_INTAKE_NATS_URL"], error_cb=on_error,
                                inbox_prefix="_INBOX_intake", allow_reconnect=False)
    operator = await nats.connect(system.deployed.nats_url_as("operator"))
    try:
        store = EventStore(intake)
        history = await store.read(case_id)  # its reads do work: a live, permitted connection
        assert history[0].envelope.event_type == "CaseReported"
        closing = store.subjects.event(history[0].envelope.district, case_id, "CaseClosed")
        await intake.publish(closing, b"{}", headers={"Nats-Msg-Id": f"lp-{case_id}"})
        await intake.flush()
        await _wait_for(errors, "Permissions Violation for Publish")
        assert closing.lower() in " ".join(errors).lower()
        # … nor listen to what the others are told.
        await intake.subscribe("_INBOX_dispatch.>")
        await intake.flush()
        await _wait_for(errors, 'Subscription to "_INBOX_dispatch.>"')
        kinds = [s.envelope.event_type for s in await EventStore(operator).read(case_id)]
        assert "CaseClosed" not in kinds
    finally:
        await intake.close()
        await operator.close()

    # The public view's subscribers get the public view, not the log of record.
    errors.clear()
    public = await nats.connect(system.deployed.nats_url_as("public"), error_cb=on_error,
                                inbox_prefix="_INBOX_PUBLIC", allow_reconnect=False)
    try:
        await public.subscribe("gridloop.case.>")
        await public.flush()
        await _wait_for(errors, 'Subscription to "gridloop.case.>"')
    finally:
        await public.close()

    # dispatch's database role owns its schema and cannot read intake's register; the auditor
    # reads both and writes neither.
    dispatch = await asyncpg.connect(system.env["GRIDLOOP_DISPATCH_DATABASE_URL"])
    auditor = await asyncpg.connect(system.deployed.database_url_as("auditor"))
    try:
        assert await dispatch.fetchval("SELECT current_user") == "gridloop_dispatch"
        await dispatch.fetchval("SELECT count(*) FROM dispatch.assignment")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await dispatch.fetch("SELECT * FROM intake.cases")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await dispatch.execute("CREATE TABLE intake.stolen (x int)")
        # The register applies the report shortly after intake answered 201.
        deadline = asyncio.get_running_loop().time() + 15
        while not await auditor.fetchval("SELECT count(*) FROM intake.cases "
                                         "WHERE case_id::text = $1", case_id):
            assert asyncio.get_running_loop().time() < deadline, "the register never had it"
            await asyncio.sleep(0.1)
        with pytest.raises(asyncpg.PostgresError):
            await auditor.execute("DELETE FROM dispatch.assignment")
    finally:
        await dispatch.close()
        await auditor.close()
