"""Each service serves its own OpenAPI document: the contract schemathesis and clients read."""

from __future__ import annotations

import pytest
from hostile_system import System

SERVICES = ("intake", "dispatch", "escalation", "feedback")


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_json_is_served(sut: System, service: str) -> None:
    response = sut.request(service, "GET", "/openapi.json")
    assert response.status_code == 200, response.text[:300]
    paths = response.json()["paths"]
    assert "/healthz" in paths and any(p.startswith(("/v1/", "/open311/")) for p in paths)
