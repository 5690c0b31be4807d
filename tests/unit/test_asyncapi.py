"""The published contract documents: docs/asyncapi.json and docs/schemas/public/ are generated
from the code and checked in (they fail here when they drift), every reference in them resolves,
real events validate against them, and none of them lets a resident's personal data through."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import httpx
from fastapi import FastAPI

from gridloop_events.asyncapi import asyncapi_document, asyncapi_router, render
from gridloop_events.catalogue import CallbackRated
from gridloop_events.codec import REGISTRY, encode
from gridloop_events.envelope import Actor
from gridloop_events.public_view import (
    PublicSubjects,
    all_public_schemas,
    redact,
    removed_fields,
)
from gridloop_events.schema_export import render as render_schema
from gridloop_events.subjects import Subjects
from gridloop_events.testing import accepted, closed, dispatched, reported
from gridloop_events.vocabulary import CallbackMethod, Rating

DOCS = Path(__file__).resolve().parents[2] / "docs"
ASYNCAPI = DOCS / "asyncapi.json"
PUBLIC_SCHEMAS = DOCS / "schemas" / "public"
EVENTS_MD = DOCS / "EVENTS.md"


def _events() -> list[Any]:
    r = reported()
    d = dispatched(r)
    c = closed(accepted(d))
    rated = c.caused(
        CallbackRated(rating=Rating.unsatisfied, handled_lawfully=True, measures_carried_out=False,
                      party_accepts=False, method=CallbackMethod.on_site, comment="还是很脏",
                      rated_by="op-7"),
        actor=Actor(kind="resident", id="wx-openid-1"), purpose="rate")
    return [r, d, accepted(d), c, rated]


def _against(document: dict[str, Any], pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for one schema inside the document, resolving its refs in the document."""
    return jsonschema.Draft202012Validator({**document, "$ref": pointer},
                                           format_checker=jsonschema.FormatChecker())


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- drift ---------------------------------------------------------------------------------


def test_checked_in_asyncapi_matches_the_code() -> None:
    assert ASYNCAPI.read_text(encoding="utf-8") == render(asyncapi_document()), (
        "docs/asyncapi.json drifted: run python -m gridloop_events.asyncapi docs/asyncapi.json"
    )


def test_checked_in_public_schemas_match_the_code() -> None:
    generated = all_public_schemas()
    hint = "run: python -m gridloop_events.public_view --schemas docs/schemas/public"
    assert {p.name for p in PUBLIC_SCHEMAS.glob("*.json")} == set(generated), hint
    for name, schema in generated.items():
        assert (PUBLIC_SCHEMAS / name).read_text(encoding="utf-8") == render_schema(schema), (
            f"{name} drifted: {hint}")


# --- the AsyncAPI document -----------------------------------------------------------------


def test_every_event_type_has_a_case_and_a_public_channel() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    case, public = Subjects(), PublicSubjects()
    for cls in REGISTRY.types():
        t = cls.event_type
        case_channel, public_channel = doc["channels"][f"case.{t}"], doc["channels"][f"public.{t}"]
        # The address is the real subject with its variable tokens named.
        real = case.event("370105", "019a-case", t)
        pattern = re.escape(case_channel["address"]).replace(r"\{district\}", "370105").replace(
            r"\{case_id\}", "019a-case").replace(r"\{partition\}", r"\d\d")
        assert re.fullmatch(pattern, real), (case_channel["address"], real)
        assert public_channel["address"] == public.event("{district}", "{case_id}", t)
        assert {"district", "case_id"} <= set(case_channel["parameters"])
        assert set(public_channel["parameters"]) == {"district", "case_id"}
        message = doc["components"]["messages"][f"{t}Public"]
        assert message["x-removed-fields"] == sorted(removed_fields(cls))
        assert doc["components"]["messages"][t]["x-schema-version"] == cls.schema_version
        assert public_channel["x-stream"] == public.stream_name
        assert case_channel["x-stream"] == case.stream_name
    assert len(doc["channels"]) == 2 * len(list(REGISTRY.types()))


def test_every_reference_resolves_inside_the_document() -> None:
    doc = asyncapi_document()
    refs = set(_refs(doc))
    assert any(r.startswith("#/components/schemas/") for r in refs)
    for ref in refs:
        _resolve(doc, ref)
    for op in doc["operations"].values():
        assert op["action"] == "send"
        for m in op["messages"]:
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/")


def test_real_events_and_their_public_form_validate_against_the_document() -> None:
    doc = asyncapi_document()
    for event in _events():
        t = event.event_type
        full = json.loads(encode(event))
        _against(doc, doc["components"]["messages"][t]["payload"]["$ref"]).validate(full)
        public_ref = doc["components"]["messages"][f"{t}Public"]["payload"]["$ref"]
        public, _ = redact(event)
        _against(doc, public_ref).validate(public)
        if removed_fields(type(event.payload)) & set(full["payload"]):
            with pytest.raises(jsonschema.ValidationError):
                _against(doc, public_ref).validate(full)  # a leak would not pass


def test_public_schemas_have_no_personal_field() -> None:
    for name, schema in all_public_schemas().items():
        t = name.split(".")[0]
        cls = REGISTRY.payload_class(t)
        payload = schema["$defs"][cls.__name__]
        assert not removed_fields(cls) & set(payload["properties"]), name
        assert "ReporterContact" not in schema["$defs"] and "SealedContact" not in schema["$defs"]
        assert schema["$id"].endswith(f"/public/{name}")
    reported_schema = all_public_schemas()["CaseReported.v1.json"]
    assert reported_schema["x-removed-fields"] == ["reporter"]
    assert all_public_schemas()["CallbackRated.v1.json"]["x-removed-fields"] == ["comment"]


def test_the_document_follows_the_subject_prefix() -> None:
    doc = asyncapi_document(prefix="gov.pilot")
    assert doc["channels"]["public.CaseClosed"]["address"] == (
        "gov.pilot.public.{district}.{case_id}.CaseClosed")
    assert doc["channels"]["case.CaseClosed"]["address"].startswith("gov.pilot.case.{district}.")


async def test_asyncapi_router_serves_the_document() -> None:
    app = FastAPI()
    app.include_router(asyncapi_router("gridloop"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        answer = await c.get("/asyncapi.json")
    assert answer.status_code == 200
    assert answer.json() == json.loads(render(asyncapi_document()))


# --- the prose ----------------------------------------------------------------------------


def test_events_md_names_every_event_and_the_subjects_in_force() -> None:
    text = EVENTS_MD.read_text(encoding="utf-8")
    doc = asyncapi_document()
    for cls in REGISTRY.types():
        assert f"### {cls.event_type}" in text, f"docs/EVENTS.md does not describe {cls.event_type}"
    assert doc["channels"]["public.CaseClosed"]["address"].replace("CaseClosed", "<EventType>") \
        in text
    assert doc["channels"]["case.CaseClosed"]["address"].replace("CaseClosed", "<EventType>") \
        in text
