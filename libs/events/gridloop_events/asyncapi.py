"""The AsyncAPI 3.0 document of Gridloop's events, generated from the code.

One channel per event type on the case stream (`<prefix>.case.{district}.{case_id}.<Type>`, the
full events, for Gridloop's own services) and one on the public stream
(`<prefix>.public.{district}.{case_id}.<Type>`, without personal data, for other systems). Each
channel carries one message whose payload is the event's JSON Schema — the same schemas that are
checked in as files, with their `$defs` moved to `components.schemas` so that every `$ref`
resolves inside this one document.

`python -m gridloop_events.asyncapi [FILE]` writes it (docs/asyncapi.json is checked in; a test
fails when it drifts); `asyncapi_router()` serves it at `/asyncapi.json`.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .codec import REGISTRY, Registry
from .public_view import (
    REDACTED_HEADER,
    SOURCE_SEQUENCE_HEADER,
    PublicSubjects,
    public_schema,
    removed_fields,
)
from .schema_export import event_schema
from .store import CONTENT_HASH_HEADER
from .subjects import DEFAULT_PREFIX, Subjects

if TYPE_CHECKING:
    from fastapi import APIRouter

ASYNCAPI_VERSION = "3.0.0"
CONTRACT_VERSION = "1.0.0"

PARAMETERS: dict[str, dict[str, Any]] = {
    "district": {
        "description": "The district's administrative code (e.g. 370105). Letters, digits, "
        "'_' and '-' only, so it can never inject a '.' or a wildcard into a subject.",
        "examples": ["370105"],
    },
    "case_id": {
        "description": "The case's id: a UUIDv7 for cases reported through Gridloop, at most 64 "
        "characters of [A-Za-z0-9_-].",
        "examples": ["019a8f3e-7c2b-7d40-9a51-3f0c2e6b1d77"],
    },
}
# Only in case-stream subjects, when the scheme has it: a hash of the case id, so a service's
# instances can split the cases between them. The public view has no partition token.
PARTITION_PARAMETER = {
    "description": "Two digits, the partition of the case (a hash of case_id modulo the stream's "
    "partition count): every event of a case has the same one. Subscribe with '*' unless you "
    "split the load by partition.",
    "examples": ["07"],
}
_DISTRICT, _CASE = "DISTRICT0PROBE", "CASE0PROBE"


def address_template(subject_of: Any, prefix: str, event_type: str) -> tuple[str, list[str]]:
    """The channel address of `subject_of(district, case_id, type)` with its variable tokens as
    parameters, read off the subject scheme in force rather than restated here."""
    probe = subject_of(_DISTRICT, _CASE, event_type)
    head, tail = probe[: len(prefix)], probe[len(prefix) + 1 :].split(".")
    assert head == prefix, f"{probe} does not start with {prefix}"
    out, params = [], []
    district_at, case_at = tail.index(_DISTRICT), tail.index(_CASE)
    for i, token in enumerate(tail):
        if i == district_at:
            out.append("{district}")
            params.append("district")
        elif i == case_at:
            out.append("{case_id}")
            params.append("case_id")
        elif district_at < i < case_at:
            out.append("{partition}")
            params.append("partition")
        else:
            out.append(token)
    return ".".join([prefix, *out]), params


def _ref_names(node: Any, rename: dict[str, str]) -> Any:
    """A copy of `node` whose `#/$defs/X` references point at `#/components/schemas/<X'>`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = "#/components/schemas/" + rename[value.removeprefix("#/$defs/")]
            else:
                out[key] = _ref_names(value, rename)
        return out
    if isinstance(node, list):
        return [_ref_names(v, rename) for v in node]
    return node


class _Schemas:
    """components.schemas, filled without clashes: a definition that already exists with the
    same content is shared, one that differs (a public payload) gets the suffix it is given."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def add_event(self, schema: dict[str, Any], name: str, suffix: str) -> str:
        schema = copy.deepcopy(schema)
        defs = schema.pop("$defs", {})
        # An embedded `$id` would change the base that `#/components/…` resolves against.
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        # Names are decided first (all at once), so references between definitions agree.
        rename = {def_name: def_name for def_name in defs}
        # Renaming one definition changes those that refer to it: repeat until settled (each
        # is renamed at most once, so this ends).
        for _ in range(len(defs) + 1):
            changed = False
            for def_name in sorted(defs):
                target = rename[def_name]
                body = _ref_names(defs[def_name], rename)
                if target in self.items and self.items[target] != body:
                    if target != def_name:
                        raise ValueError(f"two different schemas named {target}")
                    rename[def_name] = def_name + suffix
                    changed = True
            if not changed:
                break
        for def_name in sorted(defs):
            self.items.setdefault(rename[def_name], _ref_names(defs[def_name], rename))
        body = _ref_names(schema, rename)
        if name in self.items and self.items[name] != body:
            raise ValueError(f"two different schemas named {name}")
        self.items[name] = body
        return name


def _headers(public: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "Nats-Msg-Id": {
            "type": "string",
            "format": "uuid",
            "description": "The event id: JetStream stores a retried publish once.",
        },
    }
    if public:
        props[SOURCE_SEQUENCE_HEADER] = {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The event's sequence in the case stream, the republisher's "
            "checkpoint.",
        }
        props[REDACTED_HEADER] = {
            "type": "string",
            "description": "Comma-separated payload fields removed from this event, if any.",
        }
    else:
        props[CONTENT_HASH_HEADER] = {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "sha256 of the message body; the next event of the case carries it "
            "as prev_hash (the per-case hash chain).",
        }
    return {"type": "object", "properties": props}


def asyncapi_document(
    prefix: str = DEFAULT_PREFIX,
    registry: Registry = REGISTRY,
    nats_host: str = "127.0.0.1:4222",
) -> dict[str, Any]:
    case = Subjects(prefix)
    public = PublicSubjects(prefix)
    schemas = _Schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    parameters = dict(PARAMETERS)
    for cls in sorted(registry.types(), key=lambda c: c.event_type):
        t, version = cls.event_type, cls.schema_version
        meaning = " ".join((cls.__doc__ or t).split())
        gone = sorted(removed_fields(cls))
        for scope, is_public in (("case", False), ("public", True)):
            message_name = f"{t}Public" if is_public else t
            schema_name = schemas.add_event(
                public_schema(t, registry) if is_public else event_schema(t, registry),
                f"{message_name}Event",
                "Public",
            )
            subjects = public if is_public else case
            address, names = address_template(subjects.event, prefix, t)
            if "partition" in names:
                parameters["partition"] = PARTITION_PARAMETER
            channel_id = f"{scope}.{t}"
            message: dict[str, Any] = {
                "name": t,
                "title": f"{t} v{version}" + (" (public view)" if is_public else ""),
                "summary": meaning,
                "contentType": "application/json",
                "headers": _headers(is_public),
                "payload": {"$ref": f"#/components/schemas/{schema_name}"},
                "x-schema-version": version,
            }
            if is_public:
                message["x-removed-fields"] = gone
            else:
                message["x-personal-data"] = sorted(cls.personal_fields)
            messages[message_name] = message
            channels[channel_id] = {
                "address": address,
                "title": f"{t} ({'public view' if is_public else 'case stream'})",
                "description": (
                    f"{t} events without residents' personal data, in stream "
                    f"{public.stream_name}. Other systems subscribe here."
                    if is_public
                    else f"{t} events as recorded, in stream {case.stream_name}, the log of "
                    "record. Carries personal data: Gridloop's own services only."
                ),
                "messages": {message_name: {"$ref": f"#/components/messages/{message_name}"}},
                "parameters": {
                    n: {"$ref": f"#/components/parameters/{n}"} for n in names
                },
                "x-stream": public.stream_name if is_public else case.stream_name,
            }
            operations[f"send{'Public' if is_public else ''}{t}"] = {
                "action": "send",
                "title": f"Record {t}" if not is_public else f"Republish {t} without personal data",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_name}"}],
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:gridloop:events",
        "info": {
            "title": "Gridloop case events",
            "version": CONTRACT_VERSION,
            "description": (
                "Every step of a community case (网格化服务管理) as an immutable event on NATS "
                "JetStream. Subscribe to the public channels (stream "
                f"{public.stream_name}, subjects {public.all}): the same events without "
                "residents' personal data. Subscribe to one district with "
                f"{public.district('<district>')}, to one event type with "
                f"{public.of_type('<EventType>')}. Additive changes keep an event's version; "
                "a breaking change adds a version and old events are upcast on read, never "
                "rewritten. See docs/EVENTS.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "district": {
                "host": nats_host,
                "protocol": "nats",
                "description": "The district's NATS JetStream (as deployed).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items.items())),
            "messages": dict(sorted(messages.items())),
            "parameters": dict(sorted(parameters.items())),
        },
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def asyncapi_router(prefix: str = DEFAULT_PREFIX, registry: Registry = REGISTRY) -> APIRouter:
    """`GET /asyncapi.json`: the document for the subject prefix this service runs with."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    router = APIRouter(tags=["contract"])
    document = asyncapi_document(prefix, registry)

    @router.get("/asyncapi.json", summary="The AsyncAPI 3.0 document of Gridloop's events",
                response_class=JSONResponse, response_model=None)
    async def asyncapi_json():  # type: ignore[no-untyped-def]
        return JSONResponse(document)

    return router


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render(asyncapi_document())
    if not args:
        sys.stdout.write(text)
        return 0
    target = Path(args[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
