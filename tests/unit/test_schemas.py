"""The checked-in JSON Schemas are the public contract: they match the code, and real events
validate against them."""

from __future__ import annotations

import json

import jsonschema
import pytest

from gridloop_events.codec import REGISTRY, encode
from gridloop_events.schema_export import SCHEMA_DIR, all_schemas, render
from gridloop_events.testing import accepted, closed, dispatched, reported


def test_checked_in_schemas_match_the_code() -> None:
    generated = all_schemas()
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(generated), "run: python -m gridloop_events.schema_export"
    for name, schema in generated.items():
        assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == render(schema), (
            f"{name} drifted from the code: run python -m gridloop_events.schema_export"
        )


def test_every_registered_event_type_has_a_schema() -> None:
    names = {f"{c.event_type}.v{c.schema_version}.json" for c in REGISTRY.types()}
    assert names == set(all_schemas())


@pytest.mark.parametrize("build", [
    lambda: reported(),
    lambda: dispatched(reported()),
    lambda: accepted(dispatched(reported())),
    lambda: closed(dispatched(reported())),
])
def test_real_events_validate_against_their_schema(build) -> None:  # type: ignore[no-untyped-def]
    event = build()
    schema = json.loads((SCHEMA_DIR / f"{event.event_type}.v1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(json.loads(encode(event)))


def test_schema_rejects_a_wrong_event_and_marks_personal_data() -> None:
    schema = json.loads((SCHEMA_DIR / "CaseReported.v1.json").read_text())
    body = json.loads(encode(reported()))
    body["payload"]["channel"] = "fax"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(body)
    assert schema["x-personal-data"] == ["reporter"]
