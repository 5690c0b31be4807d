"""The gateway in front of the four services, as deployed: a real nginx from deploy/gateway's
renderer, each service running as its own NATS user (deploy/nats/accounts.conf) and its own
PostgreSQL role (deploy/postgres/init.sql). A whole case goes round through the one entry point,
so every route, every service's publish permissions and every role's grants are exercised.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from gridloop_district import default_district
from gridloop_events.auth_keys import Issuer, SigningKey
from gridloop_events.deploy_security import SERVICES, Deployed, deployed_servers
from gridloop_events.servers import find_free_port, wait_service_ready
from gridloop_events.store import EventStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from deploy.gateway.local import Limits, Tls, nginx_binary, start_gateway, stop  # noqa: E402

RESIDENT = {"name": "王五", "phone": "13800001111", "contact_note": "住5号楼"}


def _require_nginx() -> None:
    # Installing is the Makefile's business (apt-get install -y nginx); a test installs nothing.
    if nginx_binary() is None:
        pytest.fail("nginx is not installed: run `apt-get install -y nginx` (see deploy/README.md)")


@dataclass
class Stack:
    deployed: Deployed
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]]
    log_dir: Path
    issuer: Issuer

    def as_(self, role: str, scope: str | list[str] = (), sub: str | None = None
            ) -> dict[str, str]:
        """Headers of a caller the services trust (a token from the stack's issuer)."""
        return self.issuer.headers(role, scope, sub=sub)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))

    def events(self, case_id: str) -> list[Any]:
        """The case's history as stored, read back by the operator user."""

        async def read() -> list[Any]:
            nc = await nats.connect(self.deployed.nats_url_as("operator"))
            try:
                return await EventStore(nc).read(case_id)
            finally:
                await nc.close()

        return asyncio.run(read())


def _wait_ready(name: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_service_ready(f"http://127.0.0.1:{port}", proc, name, 60,
                       lambda: log.read_text(errors="replace")[-4000:])


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require_nginx()
    root = tmp_path_factory.mktemp("deployed")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with deployed_servers(database_url, data_dir=root / "nats") as deployed:
        try:
            yield from _started(deployed, root, procs)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _started(deployed: Deployed, root: Path, procs: dict[str, subprocess.Popen[bytes]]
             ) -> Iterator[Stack]:
    ports = {name: find_free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GRIDLOOP_", "NATS_URL", "DATABASE_URL"))}
    env.update(deployed.service_env())
    env.update({f"GRIDLOOP_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    # As deployed: tokens are required and only the identity provider's key is trusted;
    # intake seals residents' contacts with a master key of its own.
    issuer = Issuer(SigningKey.generate("gw-test"))
    env.update({
        "GRIDLOOP_ENV": "production",
        "GRIDLOOP_STREAM_REPLICAS": "1",
        "GRIDLOOP_AUTH": "required",
        "GRIDLOOP_JWT_PUBLIC_KEYS": issuer.trusted_keys_json(),
        "GRIDLOOP_MASTER_KEYS": json.dumps({"k1": base64.b64encode(os.urandom(32)).decode()}),
        "GRIDLOOP_MASTER_KEY_ID": "k1",
    })
    for name in SERVICES:
        log = open(root / f"{name}.log", "ab")
        procs[name] = subprocess.Popen([sys.executable, "-m", f"gridloop_{name}"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        log.close()
    for name in SERVICES:
        _wait_ready(name, ports[name], procs[name], root / f"{name}.log")
    yield Stack(deployed, ports, procs, root, issuer)


@pytest.fixture
def gateway(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = find_free_port()
    proc = start_gateway(tmp_path / "gateway", stack.ports, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if until(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s; last: {last}")


def test_a_case_goes_round_through_the_gateway_under_least_privilege(
    stack: Stack, gateway: str
) -> None:
    district = default_district()
    grid = district.grids[0]
    category = next(c for c in district.catalogue.items if c.kind.value == "general")
    client = httpx.Client(base_url=gateway, timeout=10.0, trust_env=False)
    request_id = f"hotline-{uuid.uuid4().hex}"
    operator = stack.as_("dispatcher", district.code, sub="hotline-1")
    supervisor = stack.as_("supervisor", district.code, sub="sup-1")

    r = client.post("/v1/cases", headers={**operator, "X-Request-Id": request_id,
                                          "Idempotency-Key": "gw-1"},
                    json={"channel": "hotline", "category_code": category.code,
                          "description": "路灯不亮", "location": {"grid_code": grid.code},
                          "severity": "normal", "reporter": RESIDENT})
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-Id"] == request_id
    case_id = r.json()["case_id"]
    reported = stack.events(case_id)[0].envelope
    assert reported.event_type == "CaseReported"
    assert reported.correlation_id == request_id

    def case() -> dict[str, Any]:
        resp = client.get(f"/v1/cases/{case_id}", headers=supervisor)
        assert resp.status_code == 200, resp.text
        return resp.json()

    # dispatch publishes CaseDispatched as its own user; escalation starts timers on it.
    view = poll(case, lambda v: v["status"] == "dispatched")
    unit = view["unit_code"]
    timers = poll(lambda: client.get(f"/v1/cases/{case_id}/timers", headers=supervisor),
                  lambda resp: resp.status_code == 200 and resp.json() != {})
    assert case_id in timers.text

    # Without a caller's id, nginx's own request id is the one the event carries.
    handler = stack.as_("unit_handler", unit, sub="gw-h")
    r = client.post(f"/v1/cases/{case_id}/accept", headers=handler,
                    json={"unit_code": unit, "handler_id": "gw-h"})
    assert r.status_code == 200, r.text
    generated = r.headers["X-Request-Id"]
    assert len(generated) == 32 and generated != request_id
    accepted = [s.envelope for s in stack.events(case_id)
                if s.envelope.event_type == "CaseAccepted"]
    assert [e.correlation_id for e in accepted] == [generated]

    r = client.post(f"/v1/cases/{case_id}/close", headers=handler,
                    json={"outcome": "resolved", "resolution": "已修复", "closed_by": "gw-h"})
    assert r.status_code == 200, r.text
    poll(case, lambda v: v["status"] == "closed")

    # The callback operator works from the callbacks due: wait for feedback to schedule it.
    poll(lambda: [s.envelope.event_type for s in stack.events(case_id)],
         lambda kinds: "CallbackScheduled" in kinds)
    body = {"rating": "satisfied", "handled_lawfully": True, "measures_carried_out": True,
            "party_accepts": True, "method": "phone", "comment": "好", "rated_by": "cb-1"}
    callback = stack.as_("dispatcher", district.code, sub="cb-1")
    poll(lambda: client.post(f"/v1/cases/{case_id}/callback", headers=callback, json=body),
         lambda resp: resp.status_code == 201)
    poll(case, lambda v: v["status"] == "done")
    # "done" is intake's view; feedback's own read model may apply the rating a moment later.
    ratings = poll(lambda: client.get(f"/v1/cases/{case_id}/ratings", headers=supervisor),
                   lambda resp: resp.status_code == 200 and resp.json()["ratings"])
    assert ratings.json()["ratings"][0]["rating"] == "satisfied"
    stats = poll(lambda: client.get("/v1/stats", headers=supervisor).json(),
                 lambda b: b["total"]["satisfaction"]["denominator"] == 1)
    assert stats["total"]["satisfaction"]["numerator"] == 1
    for path in ("/v1/overdue", "/v1/report-in", "/v1/queue/triage", "/v1/units/workload",
                 "/v1/callbacks/due", "/open311/v2/services.json"):
        assert client.get(path, headers=supervisor).status_code == 200, path

    kinds = [s.envelope.event_type for s in stack.events(case_id)]
    assert [k for k in kinds if k != "DeadlineApproaching"] == [
        "CaseReported", "CaseDispatched", "CaseAccepted", "CaseClosed", "CallbackScheduled",
        "CallbackRated"]
    # No permission was refused anywhere, and the resident's data reached no log.
    logs = stack.logs()
    assert "Permissions Violation" not in logs and "permission denied" not in logs
    for secret in RESIDENT.values():
        assert secret not in logs
    client.close()


def test_what_is_not_the_public_api_is_not_reachable(stack: Stack, gateway: str) -> None:
    client = httpx.Client(base_url=gateway, timeout=10.0, trust_env=False)
    for path in ("/metrics", "/readyz", "/docs", "/v1/admin/clock", "/intake/v1/cases"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["detail"]["reason"] == "no such route"
    # The services themselves do answer those paths: the 404 is the gateway's.
    assert httpx.get(f"http://127.0.0.1:{stack.ports['intake']}/metrics").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok", "service": "gateway"}
    client.close()


def test_an_oversized_body_is_refused_at_the_gateway(stack: Stack, gateway: str) -> None:
    client = httpx.Client(base_url=gateway, timeout=10.0, trust_env=False)
    before = httpx.get(f"http://127.0.0.1:{stack.ports['intake']}/metrics").text
    r = client.post("/v1/cases", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"]["field"] == "body"
    assert r.headers["X-Request-Id"]
    # The body never reached intake: its request counter for POST /v1/cases did not move.
    after = httpx.get(f"http://127.0.0.1:{stack.ports['intake']}/metrics").text
    assert _posts(after) == _posts(before)
    client.close()


def _posts(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("gridloop_http_requests_total{") and 'method="POST"' in line \
                and 'route="/v1/cases"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_rate_limits_answer_429_per_address_and_per_api_key(stack: Stack, tmp_path: Path) -> None:
    port = find_free_port()
    limits = Limits(rate_per_addr="2r/s", burst_per_addr=20, rate_per_key="1r/s", burst_per_key=3,
                    rate_writes="1r/s", burst_writes=2)
    proc = start_gateway(tmp_path / "gw", stack.ports, port, limits=limits)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0, trust_env=False,
                              headers=stack.as_("dispatcher", "370190", sub="rl-1"))
        # Per API key: key A runs out after its burst while key B, same address, still passes.
        statuses = [client.get("/v1/categories", headers={"X-Api-Key": "key-a"}).status_code
                    for _ in range(6)]
        assert statuses[:4] == [200] * 4 and 429 in statuses[4:]
        limited = client.get("/v1/categories", headers={"X-Api-Key": "key-a"})
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"
        assert limited.json()["detail"]["reason"].startswith("too many requests")
        assert client.get("/v1/categories", headers={"X-Api-Key": "key-b"}).status_code == 200
        # Per address: a new key each time never trips its own zone, but the address's does.
        statuses = [client.get("/v1/grids", headers={"X-Api-Key": f"k-{i}"}).status_code
                    for i in range(30)]
        assert statuses[0] == 200 and 429 in statuses
        client.close()
    finally:
        stop(proc)
    access = (tmp_path / "gw" / "logs" / "access.log").read_text()
    assert '"status":429' in access and "key-a" not in access and "key-b" not in access


def test_tls_is_terminated_at_the_gateway(stack: Stack, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificate"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    http_port, https_port = find_free_port(), find_free_port()
    proc = start_gateway(tmp_path / "gw", stack.ports, http_port,
                         tls=Tls(https_port, str(cert), str(key), redirect_http=False))
    try:
        with httpx.Client(verify=str(cert), trust_env=False, timeout=10.0) as client:
            r = client.get(f"https://127.0.0.1:{https_port}/v1/categories",
                           headers=stack.as_("auditor"))
            assert r.status_code == 200 and r.json()["district"]
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            assert r.headers["X-Request-Id"]
    finally:
        stop(proc)
