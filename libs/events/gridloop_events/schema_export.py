"""JSON Schema of every event, generated from the pydantic models and checked in.

`python -m gridloop_events.schema_export [DIR]` rewrites the files; a test fails when the code
and the checked-in files drift apart, so the public contract never changes by accident.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .codec import REGISTRY, Registry
from .envelope import Envelope

SCHEMA_DIR = Path(__file__).parent / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(event_type: str, registry: Registry = REGISTRY) -> dict[str, Any]:
    cls = registry.payload_class(event_type)
    payload = cls.model_json_schema(mode="serialization")
    envelope = Envelope.model_json_schema(mode="serialization")
    defs = {**envelope.pop("$defs", {}), **payload.pop("$defs", {})}
    defs.pop("Payload", None)
    envelope["properties"]["payload"] = {"$ref": f"#/$defs/{cls.__name__}"}
    envelope["properties"]["event_type"] = {"const": event_type, "type": "string"}
    envelope["properties"]["schema_version"] = {"const": cls.schema_version, "type": "integer"}
    defs[cls.__name__] = payload
    personal = sorted(cls.personal_fields)
    return {
        "$schema": DIALECT,
        "$id": f"https://gridloop.example/schemas/{event_type}.v{cls.schema_version}.json",
        "title": f"{event_type} v{cls.schema_version}",
        "description": (cls.__doc__ or event_type).strip(),
        **{k: v for k, v in envelope.items() if k not in ("title", "description")},
        "x-personal-data": personal,
        "$defs": defs,
    }


def all_schemas(registry: Registry = REGISTRY) -> dict[str, dict[str, Any]]:
    return {
        f"{cls.event_type}.v{cls.schema_version}.json": event_schema(cls.event_type, registry)
        for cls in sorted(registry.types(), key=lambda c: c.event_type)
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR
    for p in write(target):
        print(p)
