"""Reading and writing district files (.json, .yaml, .yml).

Every way a file can be wrong ends in one ReferenceDataError naming the file and, for each
problem, the path of the field inside it.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .district import District
from .errors import Problem, ReferenceDataError
from .model import SCHEMA_VERSION, DistrictData

ENV_FILE = "GRIDLOOP_DISTRICT_FILE"
DEMO_RESOURCE = "data/demo_district.json"

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SUFFIXES = (".json", ".yaml", ".yml")


def load_district(path: str | Path) -> District:
    p = Path(path)
    return district_from_dict(_read(p), source=str(p))


def default_district() -> District:
    """The district named by $GRIDLOOP_DISTRICT_FILE, else the shipped demo district."""
    override = os.environ.get(ENV_FILE)
    if override:
        return load_district(override)
    with resources.as_file(resources.files("gridloop_district").joinpath(DEMO_RESOURCE)) as p:
        return load_district(p)


def district_from_dict(raw: Any, *, source: str | None = None) -> District:
    if not isinstance(raw, dict):
        raise ReferenceDataError(
            source, [Problem("", f"the top level must be a mapping, not {type(raw).__name__}")]
        )
    version = raw.get("schema_version")
    if isinstance(version, int) and version != SCHEMA_VERSION:
        # A different format version makes every other complaint noise.
        message = f"schema_version {version} is not supported; this package reads {SCHEMA_VERSION}"
        raise ReferenceDataError(source, [Problem("schema_version", message)])
    try:
        data = DistrictData.model_validate(raw)
    except ValidationError as e:
        errors = [err for err in e.errors() if not _cascade(err)]
        raise ReferenceDataError(source, [_problem(err, raw) for err in errors]) from None
    return District(data, source=source)


def district_to_dict(district: District | DistrictData) -> dict[str, Any]:
    data = district.data if isinstance(district, District) else district
    return data.model_dump(mode="json", exclude_none=True)


def dump_district(district: District | DistrictData, path: str | Path) -> None:
    """Write a district file; the suffix picks JSON or YAML."""
    p = Path(path)
    doc = district_to_dict(district)
    if p.suffix.lower() == ".json":
        p.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    elif p.suffix.lower() in (".yaml", ".yml"):
        p.write_text(
            yaml.dump(doc, Dumper=_YAML_DUMPER, allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
    else:
        raise ValueError(f"{p}: a district file ends in one of {', '.join(_SUFFIXES)}")


def _read(p: Path) -> Any:
    suffix = p.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ReferenceDataError(
            str(p),
            [Problem("", f"unknown file type {suffix!r}; use one of {', '.join(_SUFFIXES)}")],
        )
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ReferenceDataError(
            str(p), [Problem("", f"cannot read the file: {e.strerror or e}")]
        ) from e
    except UnicodeDecodeError as e:
        raise ReferenceDataError(
            str(p), [Problem("", f"the file is not UTF-8: {e.reason} at byte {e.start}")]
        ) from e
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ReferenceDataError(
                str(p),
                [Problem("", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")],
            ) from e
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e)
        raise ReferenceDataError(str(p), [Problem("", f"not valid YAML: {what}{where}")]) from e


def _cascade(err: Any) -> bool:
    """pydantic drops a tuple's invalid items and then also finds the tuple too short; the
    item errors already say what is wrong."""
    value, ctx = err.get("input"), err.get("ctx") or {}
    return (
        err["type"] == "too_short"
        and isinstance(value, (list, tuple))
        and len(value) >= ctx.get("min_length", 0)
    )


def _problem(err: Any, raw: Any) -> Problem:
    loc = tuple(err["loc"])
    is_key = bool(loc) and loc[-1] == "[key]"
    path, code = _path(loc[:-1] if is_key else loc, raw)
    msg = ("key: " if is_key else "") + err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "missing" and (value is None or isinstance(value, (str, int, float, bool))):
        msg += f" (got {_short(value)})"
    if code is not None:
        msg += f" [in {code}]"
    return Problem(path, msg)


def _path(loc: tuple[Any, ...], raw: Any) -> tuple[str, str | None]:
    """'streets[0].communities[3].code', and the code of the deepest node on the way, because
    index paths alone are hard to find in a large file."""
    out = ""
    node, code = raw, None
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            node = None
        if isinstance(node, dict) and isinstance(node.get("code"), str):
            code = node["code"]
    return out, code


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
