"""Open311 GeoReport v2 mapping and formatting, on plain data: no server, no I/O."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest
from gridloop_district import default_district
from gridloop_events.vocabulary import Channel
from hypothesis import given
from hypothesis import strategies as st

from gridloop_intake.domain.views import CaseView
from gridloop_intake.open311.catalogue import service_definition, services
from gridloop_intake.open311.documents import (
    Format,
    parse_format,
    render_errors,
    render_posted,
    render_requests,
    render_service_definition,
    render_services,
    w3c,
)
from gridloop_intake.open311.errors import Open311Error
from gridloop_intake.open311.query import MAX_RESULTS, parse_query
from gridloop_intake.open311.rendering import posted_doc, request_doc
from gridloop_intake.open311.submission import report_from_form

DISTRICT = default_district()
NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

SERVICE_ELEMENTS = ["service_code", "service_name", "description", "metadata", "type",
                    "keywords", "group"]
REQUEST_ELEMENTS = [
    "service_request_id", "status", "status_notes", "service_name", "service_code",
    "description", "agency_responsible", "service_notice", "requested_datetime",
    "updated_datetime", "expected_datetime", "address", "address_id", "zipcode", "lat",
    "long", "media_url",
]
PERSONAL = {
    "first_name": "Xiaoming",
    "last_name": "Wang",
    "phone": "13800138000",
    "email": "wang.xiaoming@example.org",
    "device_id": "device-7f3a",
    "account_id": "acct-991",
}


def a_grid():
    return DISTRICT.grids[0]


def a_view(**changes) -> CaseView:
    grid = a_grid()
    base = dict(
        case_id="case-1",
        status="dispatched",
        category_code="CM-0101",
        description="Garbage piled at the gate <b>&</b>",
        channel="open311",
        lat=grid.lat,
        lon=grid.lon,
        address="No. 3 Lane",
        grid_code=grid.code,
        reported_at=NOW,
        updated_at=NOW + timedelta(minutes=5),
        closed_at=None,
        outcome=None,
        resolution=None,
        unit_code=DISTRICT.units[0].code,
        resolve_due=NOW + timedelta(hours=12),
    )
    base.update(changes)
    return CaseView(**base)


def parse_xml(body: bytes) -> ET.Element:
    return ET.fromstring(body)


# --- services -------------------------------------------------------------------------------


def test_every_catalogue_item_is_a_realtime_service_without_metadata():
    # given the demo district's catalogue
    # when it is listed as Open311 services
    docs = services(DISTRICT)
    # then each item is one service, OTHER last, and none carries attributes
    assert [d.service_code for d in docs] == [i.code for i in DISTRICT.categories]
    assert docs[-1].service_code == "OTHER"
    assert all(d.metadata is False and d.type == "realtime" for d in docs)


def test_a_service_is_grouped_by_its_class_and_subclass():
    doc = next(d for d in services(DISTRICT) if d.service_code == "CM-0101")
    klass, sub = DISTRICT.class_of("CM-0101"), DISTRICT.subclass_of("CM-0101")
    assert doc.group == f"{klass.name}/{sub.name}"
    assert doc.service_name == DISTRICT.category("CM-0101").name
    assert sub.name in doc.keywords and doc.description == DISTRICT.category("CM-0101").name_en


def test_services_xml_has_the_spec_element_names_in_order():
    rendered = render_services(Format.xml, services(DISTRICT))
    root = parse_xml(rendered.body)
    assert rendered.media_type == "application/xml; charset=utf-8"
    assert root.tag == "services"
    rows = list(root)
    assert len(rows) == len(DISTRICT.categories) and {r.tag for r in rows} == {"service"}
    assert [child.tag for child in rows[0]] == SERVICE_ELEMENTS
    assert rows[0].findtext("metadata") == "false"


def test_services_json_is_a_list_of_spec_objects():
    rendered = render_services(Format.json, services(DISTRICT))
    data = json.loads(rendered.body)
    assert rendered.media_type == "application/json; charset=utf-8"
    assert list(data[0]) == SERVICE_ELEMENTS and data[0]["metadata"] is False


def test_a_service_definition_has_an_empty_attribute_list():
    definition = service_definition(DISTRICT, "CM-0101")
    assert json.loads(render_service_definition(Format.json, definition).body) == {
        "service_code": "CM-0101", "attributes": []}
    root = parse_xml(render_service_definition(Format.xml, definition).body)
    assert root.tag == "service_definition"
    assert [c.tag for c in root] == ["service_code", "attributes"] and len(root[1]) == 0


def test_an_unknown_service_code_is_a_404():
    with pytest.raises(Open311Error) as e:
        service_definition(DISTRICT, "NO-SUCH")
    assert e.value.code == 404


# --- requests -------------------------------------------------------------------------------


def test_a_request_renders_every_spec_field_in_json():
    view = a_view()
    doc = json.loads(render_requests(Format.json, [request_doc(DISTRICT, view)]).body)
    assert isinstance(doc, list) and len(doc) == 1
    row = doc[0]
    assert list(row) == REQUEST_ELEMENTS
    assert row["status"] == "open"
    assert row["service_code"] == "CM-0101"
    assert row["service_name"] == DISTRICT.category("CM-0101").name
    assert row["agency_responsible"] == DISTRICT.units[0].name
    assert row["requested_datetime"] == "2024-05-01T08:00:00+00:00"
    assert row["expected_datetime"] == "2024-05-01T20:00:00+00:00"
    assert row["lat"] == view.lat and row["long"] == view.lon
    assert row["address_id"] == view.grid_code and row["zipcode"] is None


def test_a_request_renders_in_xml_with_spec_names_and_escaped_text():
    rendered = render_requests(Format.xml, [request_doc(DISTRICT, a_view())])
    root = parse_xml(rendered.body)
    assert root.tag == "service_requests"
    (row,) = list(root)
    assert row.tag == "request"
    assert [c.tag for c in row] == REQUEST_ELEMENTS
    assert row.findtext("description") == "Garbage piled at the gate <b>&</b>"
    assert row.findtext("zipcode") == ""
    assert datetime.fromisoformat(row.findtext("requested_datetime")) == NOW


@pytest.mark.parametrize(
    ("case_status", "open311"),
    [("reported", "open"), ("triage", "open"), ("dispatched", "open"), ("accepted", "open"),
     ("reopened", "open"), ("closed", "closed"), ("done", "closed")],
)
def test_status_is_closed_once_the_case_is_closed_or_done(case_status, open311):
    assert request_doc(DISTRICT, a_view(status=case_status)).status == open311


def test_a_closed_request_notes_its_resolution_and_expects_nothing_more():
    view = a_view(status="closed", closed_at=NOW + timedelta(hours=2), outcome="resolved",
                  resolution="Collected by the sanitation team")
    doc = request_doc(DISTRICT, view)
    assert doc.status_notes == "Collected by the sanitation team"
    assert doc.expected_datetime is None


def test_dates_are_w3c_with_an_offset():
    assert w3c(datetime(2010, 4, 14, 6, 37, 38, 123456, tzinfo=UTC)) == "2010-04-14T06:37:38+00:00"
    east8 = timezone(timedelta(hours=8))
    assert w3c(datetime(2010, 4, 14, 14, 37, 38, tzinfo=east8)) == "2010-04-14T14:37:38+08:00"


@given(st.text(max_size=200))
def test_any_description_survives_the_xml_round_trip(text):
    rendered = render_requests(Format.xml, [request_doc(DISTRICT, a_view(description=text))])
    back = parse_xml(rendered.body)[0].findtext("description")
    legal = "".join(
        c for c in text
        if c in "\t\n\r" or ("\x20" <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd") or c > "\uffff"
    )
    # XML normalises line ends on parsing; the content is otherwise unchanged.
    assert back == legal.replace("\r\n", "\n").replace("\r", "\n")


def test_the_post_answer_lists_one_request_with_id_notice_and_account():
    posted = posted_doc(DISTRICT, "case-9", "CM-0101", "acct-1")
    data = json.loads(render_posted(Format.json, [posted]).body)
    assert list(data[0]) == ["service_request_id", "service_notice", "account_id"]
    assert data[0]["service_request_id"] == "case-9" and "12 hours" in data[0]["service_notice"]
    root = parse_xml(render_posted(Format.xml, [posted]).body)
    assert root.tag == "service_requests" and root[0].tag == "request"
    assert root[0].findtext("service_request_id") == "case-9"


# --- reporter data never leaves --------------------------------------------------------------


def test_reporter_details_become_contact_and_are_never_rendered():
    # given a form with every personal field
    form = {"service_code": "CM-0101", "lat": str(a_grid().lat), "long": str(a_grid().lon),
            "description": "Bins overflowing", **PERSONAL}
    # when it becomes a report
    cmd = report_from_form(DISTRICT, form)
    # then the contact holds them
    assert cmd.reporter is not None
    assert cmd.reporter.name == "Xiaoming Wang" and cmd.reporter.phone == "13800138000"
    assert "wang.xiaoming@example.org" in cmd.reporter.contact_note
    # and no GET rendering of the case shows any of them, in either format
    view = a_view(description=cmd.description)
    for fmt in Format:
        body = render_requests(fmt, [request_doc(DISTRICT, view)]).body.decode()
        for name, value in PERSONAL.items():
            assert value not in body
            assert name not in body


# --- POST form --------------------------------------------------------------------------------


def test_a_form_maps_to_an_open311_report():
    grid = a_grid()
    cmd = report_from_form(DISTRICT, {
        "service_code": "CM-0101", "lat": str(grid.lat), "long": str(grid.lon),
        "address_string": "No. 3 Lane", "description": " Bins overflowing ",
        "media_url": "https://img.example.org/p/1.jpg", "api_key": "k",
        "attribute[FOO]": "bar",
    }, idempotency_key="k-1")
    assert cmd.channel is Channel.open311
    assert (cmd.category_code, cmd.lat, cmd.lon) == ("CM-0101", grid.lat, grid.lon)
    assert cmd.address == "No. 3 Lane" and cmd.description == "Bins overflowing"
    assert [(a.uri, a.media_type) for a in cmd.attachments] == [
        ("https://img.example.org/p/1.jpg", "image/jpeg")]
    assert cmd.reporter is None and cmd.idempotency_key == "k-1"


def test_an_address_id_names_a_grid_or_one_of_its_buildings():
    grid = next(g for g in DISTRICT.grids if g.micro_grids)
    assert report_from_form(DISTRICT, {"service_code": "CM-0101",
                                       "address_id": grid.code}).grid_code == grid.code
    building = grid.micro_grids[0].code
    assert report_from_form(DISTRICT, {"service_code": "CM-0101",
                                       "address_id": building}).grid_code == grid.code


def test_a_missing_description_takes_the_service_name():
    cmd = report_from_form(DISTRICT, {"service_code": "CM-0101", "address_string": "Gate 2"})
    assert cmd.description == DISTRICT.category("CM-0101").name


@pytest.mark.parametrize(
    ("form", "code", "words"),
    [
        ({"address_string": "x"}, 400, "service_code"),
        ({"service_code": "NO-SUCH", "address_string": "x"}, 404, "service_code"),
        ({"service_code": "CM-0101"}, 400, "location"),
        ({"service_code": "CM-0101", "lat": "36.6"}, 400, "lat and long"),
        ({"service_code": "CM-0101", "lat": "north", "long": "117"}, 400, "lat"),
        ({"service_code": "CM-0101", "lat": "91", "long": "117"}, 400, "lat"),
        ({"service_code": "CM-0101", "address_id": "NOWHERE"}, 400, "address_id"),
        ({"service_code": "CM-0101", "address_string": "x", "description": "d" * 4001}, 400,
         "description"),
        ({"service_code": "CM-0101", "address_string": "x", "media_url": "ftp://a/b"}, 400,
         "media_url"),
        ({"service_code": "CM-0101", "address_string": "x", "email": "not-an-address"}, 400,
         "email"),
        ({"service_code": "CM-0101", "address_string": "x", "phone": "1" * 41}, 400, "phone"),
    ],
)
def test_a_bad_form_is_refused_naming_the_field(form, code, words):
    with pytest.raises(Open311Error) as e:
        report_from_form(DISTRICT, form)
    assert e.value.code == code and words in e.value.description


# --- GET filters ------------------------------------------------------------------------------


def test_without_dates_the_last_90_days_are_asked_for():
    q = parse_query({}, NOW)
    assert (q.start, q.end) == (NOW - timedelta(days=90), None)
    assert q.limit == MAX_RESULTS and q.offset == 0 and q.statuses is None


def test_filters_are_parsed_from_comma_lists_and_w3c_dates():
    q = parse_query({"service_code": "CM-0101,CM-0102", "status": "open",
                     "start_date": "2024-04-01T00:00:00Z", "end_date": "2024-04-30T00:00:00 08:00"},
                    NOW)
    assert q.service_codes == ("CM-0101", "CM-0102") and q.statuses == frozenset({"open"})
    assert q.start == datetime(2024, 4, 1, tzinfo=UTC)
    assert q.end == datetime(2024, 4, 29, 16, tzinfo=UTC)


def test_service_request_ids_override_every_other_filter():
    q = parse_query({"service_request_id": "a, b,a", "status": "bogus",
                     "start_date": "never"}, NOW)
    assert q.case_ids == ("a", "b") and q.start is None and q.statuses is None


def test_one_date_bounds_a_90_day_window():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_query({"start_date": "2024-01-01"}, NOW).end == start + timedelta(days=90)
    assert parse_query({"end_date": "2024-01-01"}, NOW).start == start - timedelta(days=90)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"status": "pending"}, "status"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2024-04-01", "end_date": "2024-03-01"}, "before"),
        ({"start_date": "2024-01-01", "end_date": "2024-06-01"}, "90 days"),
        ({"page_size": "1001"}, "page_size"),
        ({"page": "0"}, "page"),
    ],
)
def test_bad_filters_are_refused(params, words):
    with pytest.raises(Open311Error) as e:
        parse_query(params, NOW)
    assert e.value.code == 400 and words in e.value.description


def test_pages_move_the_offset():
    q = parse_query({"page_size": "10", "page": "3"}, NOW)
    assert (q.limit, q.offset) == (10, 20)


# --- errors -----------------------------------------------------------------------------------


def test_errors_render_as_the_spec_documents():
    err = Open311Error(400, "service_code was not provided <&>")
    rendered = render_errors(Format.json, [err])
    assert rendered.status == 400
    assert json.loads(rendered.body) == [{"code": 400,
                                          "description": "service_code was not provided <&>"}]
    rendered = render_errors(Format.xml, [err])
    root = parse_xml(rendered.body)
    assert rendered.status == 400 and root.tag == "errors"
    assert [(e.tag, e.findtext("code"), e.findtext("description")) for e in root] == [
        ("error", "400", "service_code was not provided <&>")]


def test_an_unknown_format_is_a_404():
    with pytest.raises(Open311Error) as e:
        parse_format("html")
    assert e.value.code == 404
    assert parse_format("xml") is Format.xml
