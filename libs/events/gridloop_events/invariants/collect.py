"""Gather the log and the read models (and, if asked, feedback's /v1/stats) and check them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import datetime

import asyncpg
import nats

from ..subjects import DEFAULT_PREFIX, Subjects
from .checks import CheckOptions, check
from .log import read_log
from .rates import FIGURES
from ..projection import check_schema
from .readmodels import SERVICES, ProjectionSpec, read_checkpoints, read_model
from .report import Report

DEFAULT_SPECS = [ProjectionSpec(s, s) for s in SERVICES]


async def run_check(
    nats_url: str,
    database_url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    specs: list[ProjectionSpec] | None = None,
    feedback_url: str | None = None,
    escalation_url: str | None = None,
    options: CheckOptions | None = None,
    http_headers: dict[str, str] | None = None,
) -> Report:
    """`http_headers` go with the requests to the services (a bearer token, where needed)."""
    started = time.monotonic()
    specs = specs if specs is not None else DEFAULT_SPECS
    options = options or CheckOptions()
    if options.now is None and escalation_url:
        now = await _service_now(escalation_url, http_headers or {})
        options = CheckOptions(**{**options.__dict__, "now": now})
    nc = await nats.connect(nats_url, name="gridloop-check", max_reconnect_attempts=3)
    conn = await asyncpg.connect(database_url)
    try:
        # Read models first, log second: the log then reaches every checkpoint read.
        models = [await read_model(conn, spec) for spec in specs]
        served = None
        feedback = next((s for s in specs if s.service == "feedback"), None)
        if feedback_url and feedback is not None:
            served = await _served_stats(conn, feedback, feedback_url, http_headers or {})
        log = await read_log(nc, Subjects(prefix))
    finally:
        await conn.close()
        await nc.close()
    report = check(log, models, options, served)
    report.seconds = round(time.monotonic() - started, 2)
    if feedback_url and served is None:
        report.notes.append("feedback /v1/stats kept moving under load: compared tables only")
    elif served is not None:
        report.notes.append("feedback /v1/stats compared at a checkpoint it held still")
    return report


async def _checkpoint(conn: asyncpg.Connection, spec: ProjectionSpec) -> dict[int | None, int]:
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL search_path TO {check_schema(spec.schema)}, public")
        return await read_checkpoints(conn, spec.projection)


async def _served_stats(conn: asyncpg.Connection, spec: ProjectionSpec, url: str,
                        headers: dict[str, str], attempts: int = 10,
                        ) -> tuple[dict[int | None, int], dict[str, tuple[int, int]]] | None:
    """/v1/stats read between two equal checkpoints, so it describes that checkpoint."""
    for _ in range(attempts):
        before = await _checkpoint(conn, spec)
        body = await asyncio.to_thread(_get_json, f"{url.rstrip('/')}/v1/stats?group_by=district",
                                       headers)
        if await _checkpoint(conn, spec) == before:
            total = body["total"]
            return before, {n: (int(total[n]["numerator"]), int(total[n]["denominator"]))
                            for n in FIGURES}
        await asyncio.sleep(0.2)
    return None


async def _service_now(url: str, headers: dict[str, str]) -> datetime | None:
    try:
        body = await asyncio.to_thread(_get_json, f"{url.rstrip('/')}/v1/admin/clock", headers)
    except OSError:
        return None  # no test clock mounted: the service runs on the wall clock
    return datetime.fromisoformat(body["now"])


def _get_json(url: str, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return json.loads(resp.read())
