"""Hostile input against every service: what cannot be a valid value is refused with a clear
4xx naming the field, and nothing reaches the stream (its last sequence does not move).

Free text a resident writes (a description, an address, their own name) may legitimately hold
anything, `'; DROP TABLE` and `a.>` included: there the test asserts the opposite danger — the
text is stored verbatim as data, and the events' subjects are built from the case id alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hostile_system import (
    AUDITOR,
    DISPATCHER,
    GRID_A,
    HANDLER,
    RESIDENT,
    SUPERVISOR,
    TEAM_A,
    System,
)

pytestmark = pytest.mark.timeout(240)

SUBJECT_INJECTION = ["a.>", "*", ">", "a b", "..", "\r\n", "x.>", "abc\n", "a\x00b"]
SQL_INJECTION = ["'; DROP TABLE cases; --", "1' OR '1'='1", "$1", "\\x27; SELECT pg_sleep(5)"]
HOSTILE = SUBJECT_INJECTION + SQL_INJECTION
REPORT: dict[str, Any] = {"channel": "app", "category_code": "CM-0101", "description": "杂物",
                          "location": {"grid_code": GRID_A}}
SUBJECT = re.compile(r"^[a-z0-9_]+\.case\.[0-9]+\.[0-9]{2}\.[A-Za-z0-9_-]{1,64}\.[A-Za-z]+$")


def refused(response: Any, statuses: tuple[int, ...] = (400, 403, 404, 409, 413, 415, 422)
            ) -> str:
    """The refusal's reason; fails unless the answer is a 4xx that says why."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    detail = body["detail"] if isinstance(body, dict) else body[0]  # Open311: a list
    if isinstance(detail, str):  # FastAPI's own refusal of an unparsable body
        return detail
    reason = detail.get("reason") or detail.get("description")
    assert isinstance(reason, str) and reason, body
    return reason


def quiet(sut: System) -> int:
    """The stream's tip once every projection (and what it reacts with) has caught up."""
    sut.run(sut.caught_up())
    return sut.last_sequence()


def with_field(path: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(REPORT))
    *parents, leaf = path.split(".")
    node = body
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return body


# --- POST /v1/cases -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["category_code", "location.grid_code", "channel", "severity",
                                   "first_contact"])
def test_report_code_fields_refuse_hostile_values(sut: System, field: str) -> None:
    before = quiet(sut)
    for value in HOSTILE:
        r = sut.request("intake", "POST", "/v1/cases", headers=DISPATCHER,
                        json=with_field(field, value))
        refused(r)
        named = r.json()["detail"]["field"]
        assert named in (field, field.split(".")[0]), (value, named)
    assert quiet(sut) == before


@pytest.mark.parametrize("field", ["description", "location.address", "reporter.name",
                                   "reporter.contact_note"])
def test_report_free_text_is_stored_verbatim_never_interpreted(sut: System, field: str) -> None:
    for value in HOSTILE:
        before = quiet(sut)
        r = sut.request("intake", "POST", "/v1/cases", headers=RESIDENT,
                        json=with_field(field, value))
        if "\x00" in value:  # what no PostgreSQL text holds never reaches the log
            refused(r)
            assert r.json()["detail"]["field"] == field, r.text
            assert quiet(sut) == before
            continue
        if r.status_code == 422 and not value.strip():  # a required text left blank
            refused(r)
            assert quiet(sut) == before
            continue
        assert r.status_code == 201, (value, r.text[:300])
        case_id = r.json()["case_id"]
        after = quiet(sut)
        appended = sut.run(sut.store.read(case_id))
        # What moved the stream is this case's report and what the services did with it.
        assert appended and after - before == len(appended), (value, after - before)
        assert all(SUBJECT.match(e.subject) and e.subject.split(".")[4] == case_id
                   for e in appended), [e.subject for e in appended]
        if field in ("description", "location.address"):
            view = sut.request("intake", "GET", f"/v1/cases/{case_id}", headers=AUDITOR).json()
            stored = view["description"] if field == "description" else \
                view["location"]["address"]
            assert stored == (value.strip() or None), (value, stored)  # trimmed, no more
        else:  # sealed with the case's key: readable only through the contact endpoint
            contact = sut.request("intake", "GET", f"/v1/cases/{case_id}/reporter",
                                  headers=RESIDENT)
            if not value.strip(" \r\n"):  # a blank name is no contact at all
                assert contact.status_code == 404, contact.text
                continue
            assert contact.status_code == 200, contact.text
            assert contact.json()["reporter"][field.split(".")[1]] in (value, value.strip())
    # Every projection took every such case in: none was dead-lettered.
    dead = {(name, r.projection.name if hasattr(r, "projection") else i): r.stats.dead_lettered
            for name, app in sut.apps.items()
            for i, r in enumerate(app.state.runtime.runners) if r.stats.dead_lettered}
    assert not dead, dead
    # The tables the text went through are all still there and answering.
    assert sut.request("intake", "GET", "/v1/cases", headers=AUDITOR).status_code == 200
    assert sut.request("dispatch", "GET", "/v1/queue/triage", headers=AUDITOR).status_code == 200


@pytest.mark.parametrize("value", ["a b", "\r\n", "x\ty", "http://x/\r\nSet-Cookie: a=b"])
def test_attachment_uri_with_whitespace_or_controls_is_refused(sut: System, value: str) -> None:
    before = quiet(sut)
    r = sut.request("intake", "POST", "/v1/cases", headers=RESIDENT,
                    json={**REPORT, "attachments": [{"uri": value}]})
    refused(r)
    assert r.json()["detail"]["field"] == "attachments[0].uri"
    assert quiet(sut) == before


def test_malformed_report_bodies_are_refused(sut: System) -> None:
    before = quiet(sut)
    json_type = {"Content-Type": "application/json"}
    bodies = {
        "oversized": json.dumps({**REPORT, "description": "x" * 1_100_000}).encode(),
        "deeply nested": b"[" * 100_000 + b"]" * 100_000,
        "deeply nested object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "invalid UTF-8": b'{"channel": "app", "description": "\xff\xfe\xc3("}',
        "NaN": b'{"channel": "app", "location": {"lat": NaN}}',
        "top-level array": b"[1, 2]",
        "truncated": b'{"channel": "app", ',
        "empty": b"",
    }
    for name, body in bodies.items():
        r = sut.request("intake", "POST", "/v1/cases", headers={**RESIDENT, **json_type},
                        content=body)
        assert r.status_code in (400, 413, 422), (name, r.status_code, r.text[:200])
        refused(r)
    r = sut.request("intake", "POST", "/v1/cases", headers={**RESIDENT, "Content-Type":
                                                            "text/plain"}, content=b"hi")
    assert r.status_code == 415
    assert quiet(sut) == before


@pytest.mark.parametrize("service,path", [
    ("dispatch", "/v1/cases/{case}/accept"),
    ("feedback", "/v1/cases/{case}/callback"),
    ("escalation", "/v1/admin/clock"),
])
def test_malformed_json_bodies_to_the_other_services(sut: System, service: str,
                                                     path: str) -> None:
    case = sut.new_case("closed" if service == "feedback" else "dispatched")
    before = quiet(sut)
    token = {"dispatch": HANDLER, "feedback": DISPATCHER, "escalation": SUPERVISOR}[service]
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                 b'{"unit_code": "\xff\xfe"}', b'{"offset_seconds": NaN}',
                 json.dumps({"x": "y" * 2_000_000}).encode()):
        r = sut.request(service, "POST", path.format(case=case), content=body,
                        headers={**token, "Content-Type": "application/json"})
        refused(r)
    assert quiet(sut) == before


# --- path parameters ------------------------------------------------------------------------


PATHS = [
    ("intake", "GET", "/v1/cases/{x}", AUDITOR),
    ("intake", "GET", "/v1/cases/{x}/reporter", DISPATCHER),
    ("intake", "GET", "/open311/v2/requests/{x}.json", AUDITOR),
    ("dispatch", "POST", "/v1/cases/{x}/accept", HANDLER),
    ("dispatch", "POST", "/v1/cases/{x}/notes", DISPATCHER),
    ("dispatch", "GET", "/v1/units/{x}/queue", AUDITOR),
    ("escalation", "GET", "/v1/cases/{x}/timers", AUDITOR),
    ("feedback", "POST", "/v1/cases/{x}/callback", DISPATCHER),
    ("feedback", "GET", "/v1/cases/{x}/ratings", AUDITOR),
]
BODIES = {"/accept": {"unit_code": TEAM_A, "handler_id": "h-1"},
          "/notes": {"author_id": "d-1", "note": "n"},
          "/callback": {"rating": "satisfied", "handled_lawfully": True,
                        "measures_carried_out": True, "party_accepts": True, "method": "phone",
                        "rated_by": "d-1"}}


@pytest.mark.parametrize("service,method,template,token", PATHS,
                         ids=[f"{s}:{t}" for s, _, t, _ in PATHS])
def test_hostile_path_parameters_are_refused(sut: System, service: str, method: str,
                                             template: str, token: dict[str, str]) -> None:
    before = quiet(sut)
    body = next((b for suffix, b in BODIES.items() if template.endswith(suffix)), None)
    for value in HOSTILE + ["x" * 65, "%2e%2e", "..%2f..%2fetc"]:
        url = template.format(x=value.replace("\r", "%0D").replace("\n", "%0A")
                              .replace(" ", "%20").replace("\x00", "%00"))
        r = sut.request(service, method, url, headers=token, json=body)
        assert 400 <= r.status_code < 500, (value, r.status_code, r.text[:200])
        if r.status_code != 404 or service != "intake" or "open311" not in template:
            assert r.content, value
    assert quiet(sut) == before


# --- Open311 POST ---------------------------------------------------------------------------


BLANK_IS_ABSENT = {"media_url", "jurisdiction_id"}
OPEN311 = {"service_code": "CM-0101", "address_id": GRID_A, "description": "Bins full"}


@pytest.mark.parametrize("field", ["service_code", "address_id", "lat", "media_url",
                                   "jurisdiction_id"])
def test_open311_code_fields_refuse_hostile_values(sut: System, field: str) -> None:
    for value in HOSTILE:
        before = quiet(sut)
        form = {**OPEN311, field: value}
        if field == "lat":
            form["long"] = "117.0"
        r = sut.request("intake", "POST", "/open311/v2/requests.json", headers=DISPATCHER,
                        data=form)
        if r.status_code == 200 and field in BLANK_IS_ABSENT and not value.strip():
            continue  # reported without the field, as if it were not sent
        assert r.status_code in (400, 404), (value, r.status_code, r.text[:200])
        [error] = r.json()
        assert error["code"] == r.status_code and error["description"], error
        assert quiet(sut) == before


@pytest.mark.parametrize("field", ["description", "address_string", "first_name", "email"])
def test_open311_text_with_a_nul_is_refused(sut: System, field: str) -> None:
    before = quiet(sut)
    r = sut.request("intake", "POST", "/open311/v2/requests.json", headers=DISPATCHER,
                    data={**OPEN311, field: "bins\x00full"})
    assert r.status_code == 400, r.text[:200]
    [error] = r.json()
    assert field in error["description"], error
    assert quiet(sut) == before


# --- dispatch commands, feedback callbacks -----------------------------------------------------


COMMANDS = [
    ("/accept", HANDLER, "dispatched", {"unit_code": TEAM_A, "handler_id": "h-1"},
     ["unit_code", "handler_id"]),
    ("/return", HANDLER, "accepted", {"unit_code": TEAM_A, "handler_id": "h-1",
                                      "reason": "not ours"}, ["unit_code", "handler_id"]),
    ("/close", HANDLER, "accepted", {"outcome": "resolved", "resolution": "cleared"},
     ["outcome", "closed_by", "unit_code"]),
    ("/dispatch", DISPATCHER, "dispatched", {"unit_code": TEAM_A, "reason": "r"},
     ["unit_code", "kind", "dispatcher"]),
    ("/notes", DISPATCHER, "accepted", {"author_id": "d-1", "note": "n"},
     ["author_id", "unit_code"]),
    ("/extension/decision", SUPERVISOR, "accepted", {"approved": True, "supervisor_id": "s-1"},
     ["supervisor_id"]),
]


@pytest.mark.parametrize("suffix,token,stage,body,fields", COMMANDS,
                         ids=[c[0].strip("/") for c in COMMANDS])
def test_dispatch_command_ids_refuse_hostile_values(sut: System, suffix: str,
                                                    token: dict[str, str], stage: str,
                                                    body: dict[str, Any],
                                                    fields: list[str]) -> None:
    case = sut.new_case(stage)
    before = quiet(sut)
    for field in fields:
        for value in HOSTILE:
            r = sut.request("dispatch", "POST", f"/v1/cases/{case}{suffix}", headers=token,
                            json={**body, field: value})
            refused(r)
    assert quiet(sut) == before


@pytest.mark.parametrize("field", ["rated_by", "rating", "method", "handled_lawfully"])
def test_feedback_callback_refuses_hostile_values(sut: System, field: str) -> None:
    case = sut.new_case("closed")
    before = quiet(sut)
    for value in HOSTILE:
        body = {**BODIES["/callback"], field: value}
        r = sut.request("feedback", "POST", f"/v1/cases/{case}/callback", headers=DISPATCHER,
                        json=body)
        refused(r)
    assert quiet(sut) == before


def test_query_parameters_refuse_hostile_values(sut: System) -> None:
    before = quiet(sut)
    for value in HOSTILE:
        for service, path, param in (("intake", "/v1/cases", "grid"),
                                     ("intake", "/v1/cases", "status"),
                                     ("intake", "/v1/cases", "offset"),
                                     ("escalation", "/v1/overdue", "unit"),
                                     ("escalation", "/v1/report-in", "unit"),
                                     ("feedback", "/v1/stats", "grid"),
                                     ("dispatch", "/v1/queue/triage", "offset")):
            r = sut.request(service, "GET", path, headers=AUDITOR, params={param: value})
            # A blank filter is no filter; a grid that matches nothing lists nothing.
            listed = r.status_code == 200 and (param == "grid" or not value.strip())
            assert 400 <= r.status_code < 500 or listed, (
                service, path, param, value, r.status_code, r.text[:200])
            if listed and param == "grid" and value.strip():
                assert r.json().get("total", 0) == 0 and not r.json().get("items"), r.text[:200]
    for offset in ("9" * 30, "-1", str(2**63)):
        for service, path in (("dispatch", "/v1/queue/triage"), ("intake", "/v1/cases"),
                              ("escalation", "/v1/overdue")):
            r = sut.request(service, "GET", path, headers=AUDITOR, params={"offset": offset})
            refused(r)
    assert quiet(sut) == before
