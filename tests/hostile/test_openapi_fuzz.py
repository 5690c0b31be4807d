"""Every operation of every service's OpenAPI, fuzzed by schemathesis with valid and invalid
inputs, sent with a token of a role the endpoint admits: never a 5xx, and every answer is what
the schema says (status documented or a refusal, body and content type as declared).

Bounded on purpose (a few examples per operation and mode): the point is that nothing a client
can send takes a service down or makes it answer off its contract, not exhaustive search.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from hostile_system import AUDITOR, DISPATCHER, HANDLER, SUPERVISOR, System
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

pytestmark = pytest.mark.timeout(240)

SERVICES = ("intake", "dispatch", "escalation", "feedback")
EXAMPLES = 12


# Prometheus' exposition format, which the library's /metrics route does not declare.
PLAIN_TEXT = {"/metrics"}


def refusal_problem(response: Any) -> str | None:
    """422s come from the library's handler in the DomainError shape (gridloop_events.service.
    invalid_request) or a domain check, not FastAPI's HTTPValidationError the OpenAPI declares:
    checked here."""
    try:
        detail = response.json()["detail"]
        ok = (isinstance(detail["reason"], str) and detail["reason"]
              and isinstance(detail["field"], str)
              and all(isinstance(e["field"], str) and isinstance(e["message"], str)
                      for e in detail.get("errors", ())))
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"not a refusal with a reason: {response.text[:200]}"


def token_for(method: str, path: str) -> dict[str, str]:
    """The broadest role the endpoint admits (see tests/integration/test_auth_matrix.py)."""
    if path.startswith("/v1/admin/"):
        return SUPERVISOR
    if path.endswith("/reporter"):
        return DISPATCHER
    if method == "GET":
        return AUDITOR
    if path.endswith(("/accept", "/return", "/extension", "/close")):
        return HANDLER
    if path.endswith("/extension/decision"):
        return SUPERVISOR
    return DISPATCHER  # reports, Open311 requests, notes, dispatch, callbacks


def openapi_of(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built as FastAPI builds /openapi.json but without the
    library's /asyncapi.json route, whose return annotation FastAPI cannot resolve (see
    test_openapi_served.py): the fuzzing should not wait on that fix."""
    routes = [r for r in app.routes if _paths(r) != {"/asyncapi.json"}]
    return get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                       routes=routes)


def _paths(route: Any) -> set[str]:
    # FastAPI ≥ 0.16x keeps an included router as one route holding its candidates.
    candidates = getattr(route, "_effective_candidates", None)
    if candidates is None:
        return {getattr(route, "path", "")}
    return set().union(*(_paths(c) for c in candidates))


def operations(sut_apps: dict[str, FastAPI]) -> list[tuple[str, Any]]:
    out = []
    for service in SERVICES:
        schema = schemathesis.openapi.from_dict(openapi_of(sut_apps[service]))
        for result in schema.get_all_operations():
            out.append((service, result.ok()))
    return out


def fuzz_operation(sut: System, service: str, operation: Any, mode: GenerationMode,
                   failures: list[str]) -> int:
    """Send EXAMPLES generated requests to one operation; returns how many were sent."""
    token = token_for(operation.method.upper(), operation.path)
    sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        nonlocal sent
        kwargs = case.as_transport_kwargs(base_url=f"http://{service}")
        request_headers = {**(kwargs.pop("headers", None) or {}), **token}
        response = sut.request(service, kwargs.pop("method"), kwargs.pop("url"),
                               headers=request_headers, **_httpx_kwargs(kwargs))
        sent += 1
        checks = [not_a_server_error]
        if operation.path not in PLAIN_TEXT:
            checks.append(content_type_conformance)
        if response.status_code == 422:
            problem = refusal_problem(response)
            if problem:
                failures.append(f"{service} {case.method} {case.formatted_path} → 422: {problem}")
        else:
            checks.append(response_schema_conformance)
        try:
            case.validate_response(response, checks=checks, headers=request_headers)
        except (AssertionError, FailureGroup) as exc:  # collected, reported together below
            failures.append(f"{service} {case.method} {case.formatted_path} "
                            f"→ {response.status_code}: {str(exc)[:400]}")

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing to make invalid: the operation takes no parameters and no body.
        assert mode is GenerationMode.NEGATIVE, operation.path
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_fails_or_breaks_its_contract(sut: System, mode: GenerationMode) -> None:
    ops = operations(sut.apps)
    assert {s for s, _ in ops} == set(SERVICES)
    failures: list[str] = []
    sent = sum(fuzz_operation(sut, service, op, mode, failures) for service, op in ops)
    assert sent >= len(ops), sent
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis speaks `requests`; the ASGI client is httpx."""
    out: dict[str, Any] = {}
    if kwargs.get("params"):
        out["params"] = kwargs["params"]
    if kwargs.get("cookies"):
        out["cookies"] = kwargs["cookies"]
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    if kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content" if isinstance(data, (bytes, str)) else "data"] = data
    if kwargs.get("files"):
        out["files"] = kwargs["files"]
    return out
