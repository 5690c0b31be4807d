"""GeoReport v2 documents and their two renderings, JSON and XML, on plain data.

Element and key names, their order and the root/row element names follow the published spec
(wiki.open311.org/GeoReport_v2), so a generic Open311 client parses the answers unchanged.
Absent values are JSON null and empty XML elements, as in the spec's examples.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import Open311Error, not_found


class Format(StrEnum):
    json = "json"
    xml = "xml"

    @property
    def media_type(self) -> str:
        return f"application/{self.value}; charset=utf-8"


def parse_format(extension: str) -> Format:
    try:
        return Format(extension)
    except ValueError:
        raise not_found(f"format {extension!r} is not supported; use json or xml") from None


@dataclass(frozen=True)
class ServiceDoc:
    service_code: str
    service_name: str
    description: str
    metadata: bool
    type: str
    keywords: str
    group: str


@dataclass(frozen=True)
class ServiceDefinitionDoc:
    service_code: str
    # Every service is metadata=false, so it defines no attributes; the list is still sent.
    attributes: tuple[Any, ...] = ()


@dataclass(frozen=True)
class PostedDoc:
    service_request_id: str
    service_notice: str | None
    account_id: str | None


@dataclass(frozen=True)
class RequestDoc:
    service_request_id: str
    status: str
    status_notes: str | None
    service_name: str | None
    service_code: str | None
    description: str | None
    agency_responsible: str | None
    service_notice: str | None
    requested_datetime: datetime | None
    updated_datetime: datetime | None
    expected_datetime: datetime | None
    address: str | None
    address_id: str | None
    zipcode: str | None
    lat: float | None
    long: float | None
    media_url: str | None


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    status: int = 200


def w3c(at: datetime) -> str:
    """W3C date-time with an explicit offset (e.g. 2010-04-14T06:37:38+00:00), whole seconds."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.isoformat(timespec="seconds")


def _json_value(value: Any) -> Any:
    return w3c(value) if isinstance(value, datetime) else value


def _row(doc: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(doc, f.name)) for f in fields(doc)]


# XML 1.0 cannot carry most C0 controls even escaped; ElementTree would write them through.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return w3c(value)
    return _NOT_XML.sub("", str(value))


def _xml_fields(parent: ET.Element, doc: Any) -> None:
    for name, value in _row(doc):
        if isinstance(value, tuple):
            holder = ET.SubElement(parent, name)
            for item in value:
                _xml_fields(ET.SubElement(holder, name.removesuffix("s")), item)
            continue
        ET.SubElement(parent, name).text = _xml_text(value)


def _xml(root: ET.Element, status: int = 200) -> Rendered:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Rendered(body, Format.xml.media_type, status)


def _json(data: Any, status: int = 200) -> Rendered:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Rendered(body, Format.json.media_type, status)


def _json_doc(doc: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in _row(doc):
        if isinstance(value, tuple):
            out[name] = [_json_doc(item) for item in value]
        else:
            out[name] = _json_value(value)
    return out


def _list(fmt: Format, docs: list[Any], root: str, row: str) -> Rendered:
    if fmt is Format.json:
        return _json([_json_doc(d) for d in docs])
    top = ET.Element(root)
    for doc in docs:
        _xml_fields(ET.SubElement(top, row), doc)
    return _xml(top)


def render_services(fmt: Format, services: list[ServiceDoc]) -> Rendered:
    return _list(fmt, services, "services", "service")


def render_service_definition(fmt: Format, definition: ServiceDefinitionDoc) -> Rendered:
    if fmt is Format.json:
        return _json(_json_doc(definition))
    top = ET.Element("service_definition")
    _xml_fields(top, definition)
    return _xml(top)


def render_posted(fmt: Format, posted: list[PostedDoc]) -> Rendered:
    return _list(fmt, posted, "service_requests", "request")


def render_requests(fmt: Format, requests: list[RequestDoc]) -> Rendered:
    return _list(fmt, requests, "service_requests", "request")


def render_errors(fmt: Format, errors: list[Open311Error]) -> Rendered:
    """The spec's error document; the HTTP status is the first error's code."""
    status = errors[0].code if errors else 400
    if fmt is Format.json:
        return _json([{"code": e.code, "description": e.description} for e in errors], status)
    top = ET.Element("errors")
    for e in errors:
        el = ET.SubElement(top, "error")
        ET.SubElement(el, "code").text = str(e.code)
        ET.SubElement(el, "description").text = _xml_text(e.description)
    return _xml(top, status)
