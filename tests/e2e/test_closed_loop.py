"""The whole loop, four services as separate processes on real NATS and PostgreSQL:

report → triage → dispatch → accept → resolve deadline missed (moved clock) → escalated a tier →
closed → rated unsatisfied → reopened and re-dispatched (重办) → closed again → rated satisfied;
and every projection and /v1/stats says exactly that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from gridloop_district import default_district



RESIDENT = {"name": "李四", "phone": "13912345678", "contact_note": "住3号楼2单元"}


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if until(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s; last: {last}")


def test_report_to_satisfied_rating_through_escalation_and_reopening(system: Any) -> None:
    district = default_district()
    grid = district.grids[0]
    category = next(c for c in district.catalogue.items if c.kind.value == "general")
    # The hotline operator (a dispatcher of the district) reports and follows the case; each
    # other step is taken by whoever's token it needs.
    client = httpx.Client(timeout=10.0,
                          headers=system.headers("dispatcher", district.code, "op-hotline"))
    intake, dispatch, feedback, escalation = (system.url(s) for s in
                                              ("intake", "dispatch", "feedback", "escalation"))
    supervisor = system.headers("supervisor", district.code, "sup-1")

    def case() -> dict[str, Any]:
        r = client.get(f"{intake}/v1/cases/{case_id}")
        assert r.status_code == 200, r.text
        return r.json()

    # 1. A resident reports through the hotline.
    r = client.post(f"{intake}/v1/cases", headers={"Idempotency-Key": "e2e-1"}, json={
        "channel": "hotline",
        "category_code": category.code,
        "description": "楼道堆放杂物，堵塞消防通道",
        "location": {"grid_code": grid.code},
        "severity": "normal",
        "reporter": RESIDENT,
    })
    assert r.status_code == 201, r.text
    case_id = r.json()["case_id"]

    # 2. Dispatch triages it to the grid's own team.
    view = poll(case, lambda v: v["status"] == "dispatched")
    grid_team = district.grid_team(grid.code).code
    assert view["unit_code"] == grid_team and view["tier"] == "grid"

    # 3. The grid worker accepts (签收) at once.
    r = client.post(f"{dispatch}/v1/cases/{case_id}/accept",
                    json={"unit_code": grid_team, "handler_id": "gw-1"},
                    headers=system.headers("unit_handler", grid_team, "gw-1"))
    assert r.status_code == 200, r.text
    poll(case, lambda v: v["status"] == "accepted")

    # 4. A day passes on escalation's clock: the resolve deadline is missed, the case climbs a tier.
    r = client.post(f"{escalation}/v1/admin/clock", json={"offset_seconds": 86400 + 120},
                    headers=supervisor)
    assert r.status_code == 200, r.text
    committee = district.committee(district.community_of(grid.code).code).code
    view = poll(case, lambda v: v["unit_code"] == committee and v["status"] == "dispatched")
    client.post(f"{escalation}/v1/admin/clock", json={"offset_seconds": 0}, headers=supervisor)
    assert view["tier"] == "community" and view["escalation_level"] == 1

    # 5. The community committee accepts and closes it.
    handler = system.headers("unit_handler", committee, "cc-1")
    for action, body in (("accept", {"unit_code": committee, "handler_id": "cc-1"}),
                         ("close", {"outcome": "resolved", "resolution": "已清理楼道杂物",
                                    "closed_by": "cc-1"})):
        r = client.post(f"{dispatch}/v1/cases/{case_id}/{action}", json=body, headers=handler)
        assert r.status_code == 200, r.text
    poll(case, lambda v: v["status"] == "closed")

    # 6. The callback: unsatisfied → reopened and re-dispatched to the same unit (重办).
    def rate(rating: str) -> None:
        body = {"rating": rating, "handled_lawfully": True,
                "measures_carried_out": rating != "unsatisfied",
                "party_accepts": rating != "unsatisfied", "method": "phone",
                "comment": "回访", "rated_by": "callback-1"}
        centre = system.headers("dispatcher", district.code, "callback-1")
        # The callback centre works from its due list: the call happens once it is scheduled.
        poll(lambda: client.get(f"{feedback}/v1/callbacks/due", headers=centre).json(),
             lambda body: case_id in str(body))
        poll(lambda: client.post(f"{feedback}/v1/cases/{case_id}/callback", json=body,
                                 headers=centre),
             lambda resp: resp.status_code == 201)

    rate("unsatisfied")
    view = poll(case, lambda v: v["status"] == "dispatched"
                and [e["event_type"] for e in v["timeline"]].count("CaseDispatched") == 3)
    assert view["unit_code"] == committee

    # 7. Handled again, closed again, rated satisfied: the loop is complete.
    for action, body in (("accept", {"unit_code": committee, "handler_id": "cc-1"}),
                         ("close", {"outcome": "resolved", "resolution": "已彻底清理并设置提示牌",
                                    "closed_by": "cc-1"})):
        r = client.post(f"{dispatch}/v1/cases/{case_id}/{action}", json=body, headers=handler)
        assert r.status_code == 200, r.text
    poll(case, lambda v: v["status"] == "closed")
    rate("satisfied")
    view = poll(case, lambda v: v["status"] == "done")

    # The log says exactly what happened, in order.
    kinds = [e["event_type"] for e in view["timeline"]]
    expected = ["CaseReported", "CaseDispatched", "CaseAccepted", "DeadlineMissed",
                "CaseDispatched", "CaseAccepted", "CaseClosed", "CallbackScheduled",
                "CallbackRated", "CaseDispatched", "CaseAccepted", "CaseClosed",
                "CallbackScheduled", "CallbackRated"]
    assert [k for k in kinds if k != "DeadlineApproaching"] == expected
    assert kinds.count("DeadlineMissed") == 1

    # Every projection agrees. intake's register:
    listed = poll(lambda: client.get(f"{intake}/v1/cases", params={"status": "done"}).json(),
                  lambda body: body["total"] == 1)
    row = listed["items"][0]
    assert row["case_id"] == case_id and row["rating"] == "satisfied"
    # dispatch: nothing open anywhere.
    workload = poll(lambda: client.get(f"{dispatch}/v1/units/workload").json(),
                    lambda body: all(u.get("open", 0) == 0 for u in _units(body)))
    assert all(u.get("overdue", 0) == 0 for u in _units(workload))
    # escalation: no live timer left, the missed one recorded once, nothing overdue.
    timers = poll(lambda: client.get(f"{escalation}/v1/cases/{case_id}/timers").json(),
                  lambda body: not any(t["status"] in ("pending", "warned")
                                       for t in _items(body)))
    assert sum(1 for t in _items(timers) if t["status"] == "missed") == 1
    overdue = client.get(f"{escalation}/v1/overdue").json()
    assert _items(overdue) == []
    report_in = client.get(f"{escalation}/v1/report-in").json()
    assert _report_in_totals(report_in) == (1, 1)
    # feedback: exact figures.
    stats = poll(lambda: client.get(f"{feedback}/v1/stats",
                                    params={"group_by": "district"}).json(),
                 lambda body: body["total"]["satisfaction"]["denominator"] == 2)
    total = stats["total"]
    assert (total["satisfaction"]["numerator"], total["satisfaction"]["denominator"]) == (1, 2)
    assert (total["resolution"]["numerator"], total["resolution"]["denominator"]) == (1, 1)
    assert total["report_in"]["numerator"] == 1 and total["report_in"]["denominator"] == 1

    client.close()
    # Nothing of the resident's personal data reached a log line, a metric, a dead-letter
    # record, a read model or the public view.
    logs = system.logs()
    assert case_id in logs  # the logs do carry the case id
    metrics = "".join(httpx.get(f"{system.url(s)}/metrics", timeout=10).text
                      for s in ("intake", "dispatch", "escalation", "feedback"))
    stored = asyncio.run(_everything_stored(system.deployed))
    assert case_id in stored  # the scan did read the read models
    for secret in RESIDENT.values():
        assert secret not in logs
        assert secret not in metrics
        assert secret not in stored


async def _everything_stored(deployed: Any) -> str:
    """Every row of every table of the four services' schemas (dead letters included), read as
    the auditor, and every message of the public view, read as an external subscriber (the
    `public` NATS user), as one text to search."""
    import asyncpg
    import nats

    from gridloop_events.public_view import PublicSubjects

    conn = await asyncpg.connect(deployed.database_url_as("auditor"))
    parts: list[str] = []
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('intake', 'dispatch', 'escalation', 'feedback')")
        for t in tables:
            rows = await conn.fetch(
                f'SELECT t::text AS r FROM "{t["table_schema"]}"."{t["table_name"]}" t')
            parts.extend(r["r"] for r in rows)
    finally:
        await conn.close()
    nc = await nats.connect(deployed.nats_url_as("public"), inbox_prefix="_INBOX_PUBLIC")
    try:
        js = nc.jetstream()
        public = PublicSubjects().stream_name
        last = (await js.stream_info(public)).state.last_seq
        assert last > 0  # intake republished the case's public view
        for seq in range(1, last + 1):
            msg = await js.get_msg(public, seq, direct=True)
            parts.append(msg.data.decode())
    finally:
        await nc.close()
    return "\n".join(parts)


def _items(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    for key in ("items", "timers", "cases", "overdue"):
        if isinstance(body, dict) and key in body:
            return body[key]
    raise AssertionError(f"no list in {body}")


def _units(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and "units" in body:
        return body["units"]
    return _items(body)


def _report_in_totals(body: Any) -> tuple[int, int]:
    if isinstance(body, dict) and "total" in body:
        t = body["total"]
        return t["reported_in"], t["dispatched"]
    rows = _items(body) if not (isinstance(body, dict) and "departments" in body) else body["departments"]
    return (sum(r.get("accepted", 0) for r in rows), sum(r.get("dispatched", 0) for r in rows))
