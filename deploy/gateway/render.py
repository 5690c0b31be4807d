"""Render the gateway's nginx configuration from deploy/gateway/templates/.

Two profiles share one set of routes and limits:

- ``local``: in front of ``make run`` (services on 127.0.0.1:8001–8004, gateway on 8080), every
  path (pid, logs, temp) under one run folder, nginx in the foreground as a child process;
- ``deployed``: compose and Kubernetes (services by DNS name, TLS on 443, port 80 redirecting),
  written to deploy/gateway/nginx.deployed.conf, which a test keeps equal to this renderer.

    python deploy/gateway/render.py local --run-dir .run/gateway --listen 8080 \
        --port intake=8001 --port dispatch=8002 --port escalation=8003 --port feedback=8004
    python deploy/gateway/render.py deployed --out deploy/gateway/nginx.deployed.conf
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping
from pathlib import Path

SERVICES = ("intake", "dispatch", "escalation", "feedback")
TEMPLATES = Path(__file__).resolve().parent / "templates"
DEPLOYED_CONF = Path(__file__).resolve().parent / "nginx.deployed.conf"
DEFAULT_LOCAL_PORTS = {"intake": 8001, "dispatch": 8002, "escalation": 8003, "feedback": 8004}
# The compose service names and the Kubernetes Service names are the same.
DEPLOYED_UPSTREAMS = {name: f"{name}:{port}" for name, port in DEFAULT_LOCAL_PORTS.items()}
DEPLOYED_TLS_DIR = "/etc/gridloop/tls"

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request size, rates and timeouts. Rates are nginx rates (``20r/s``, ``600r/m``)."""

    max_body: str = "1m"
    rate_per_addr: str = "20r/s"
    burst_per_addr: int = 40
    rate_per_key: str = "10r/s"
    burst_per_key: int = 20
    rate_writes: str = "5r/s"
    burst_writes: int = 10
    connections_per_addr: int = 50
    client_timeout: str = "10s"
    connect_timeout: str = "2s"
    upstream_timeout: str = "30s"


# make run serves one developer and `make simulate`, which reports from a single address.
LOCAL_LIMITS = Limits(rate_per_addr="200r/s", burst_per_addr=400, rate_per_key="100r/s",
                      burst_per_key=200, rate_writes="100r/s", burst_writes=200)


@dataclasses.dataclass(frozen=True)
class Tls:
    port: int
    certificate: str
    certificate_key: str
    # Deployed: plain HTTP only redirects. Local/tests: plain HTTP serves the API as well.
    redirect_http: bool = True


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    profile: str
    upstreams: Mapping[str, str]  # service -> host:port
    http_port: int
    pid_path: str
    error_log: str
    access_log: str
    temp_dir: str
    listen_address: str = ""  # "" = every address; "127.0.0.1:" = loopback only
    tls: Tls | None = None
    limits: Limits = Limits()
    foreground: bool = False
    worker_processes: str = "auto"
    trusted_proxies: tuple[str, ...] = ()  # X-Forwarded-For is believed only from these


def local_config(run_dir: Path | str, ports: Mapping[str, int], listen_port: int, *,
                 limits: Limits = LOCAL_LIMITS, tls: Tls | None = None) -> GatewayConfig:
    missing = [name for name in SERVICES if name not in ports]
    if missing:
        raise ValueError(f"no port for {', '.join(missing)}")
    run = Path(run_dir).resolve()
    return GatewayConfig(
        profile="local",
        upstreams={name: f"127.0.0.1:{ports[name]}" for name in SERVICES},
        http_port=listen_port,
        listen_address="127.0.0.1:",
        pid_path=str(run / "nginx.pid"),
        error_log=str(run / "logs" / "error.log"),
        access_log=str(run / "logs" / "access.log"),
        temp_dir=str(run / "tmp"),
        tls=tls,
        limits=limits,
        foreground=True,
        worker_processes="1",
    )


def deployed_config() -> GatewayConfig:
    return GatewayConfig(
        profile="deployed",
        upstreams=DEPLOYED_UPSTREAMS,
        http_port=80,
        # The official nginx image links these to the container's stdout/stderr.
        pid_path="/var/run/nginx.pid",
        error_log="/var/log/nginx/error.log",
        access_log="/var/log/nginx/access.log",
        temp_dir="/var/cache/nginx",
        tls=Tls(443, f"{DEPLOYED_TLS_DIR}/tls.crt", f"{DEPLOYED_TLS_DIR}/tls.key"),
        # None: the LoadBalancer passes the client's own address (externalTrafficPolicy: Local).
        # Trusting X-Forwarded-For from a range any client can reach would let clients pick
        # the address their rate limit is counted under; name only a proxy that sets it.
        trusted_proxies=(),
        # The image's command already passes `-g "daemon off;"`; saying it twice is an error.
        foreground=False,
    )


def _fill(template: str, values: Mapping[str, object]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, template)


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(config: GatewayConfig) -> str:
    missing = set(SERVICES) - set(config.upstreams)
    if missing:
        raise ValueError(f"no upstream for {', '.join(sorted(missing))}")
    limits = dataclasses.asdict(config.limits)
    routes = _fill(_template("routes.conf.in"), limits)
    common = {"listen_address": config.listen_address, "http_port": config.http_port,
              "routes": routes}
    servers = []
    if config.tls is None or not config.tls.redirect_http:
        servers.append(_fill(_template("server-http.conf.in"), common))
    else:
        servers.append(_fill(_template("server-redirect.conf.in"), common))
    if config.tls is not None:
        servers.append(_fill(_template("server-tls.conf.in"), {
            **common,
            "https_port": config.tls.port,
            "tls_certificate": config.tls.certificate,
            "tls_certificate_key": config.tls.certificate_key,
        }))
    upstreams = "\n".join(
        f"    upstream gridloop_{name} {{\n"
        f"        server {config.upstreams[name]};\n"
        f"        keepalive 16;\n"
        f"    }}"
        for name in SERVICES
    )
    real_ip = "".join(f"    set_real_ip_from {cidr};\n" for cidr in config.trusted_proxies)
    if real_ip:
        real_ip = (
            "    # Behind a load balancer: the client is the first untrusted X-Forwarded-For.\n"
            + real_ip
            + "    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n"
        )
    return _fill(_template("nginx.conf.in"), {
        **limits,
        "profile": config.profile,
        "daemon": "daemon off;" if config.foreground else "",
        "worker_processes": config.worker_processes,
        "pid_path": config.pid_path,
        "error_log": config.error_log,
        "access_log": config.access_log,
        "temp_dir": config.temp_dir,
        "real_ip": real_ip,
        "upstreams": upstreams,
        "servers": "\n".join(servers),
    })


def _ports(pairs: list[str]) -> dict[str, int]:
    ports = dict(DEFAULT_LOCAL_PORTS)
    for pair in pairs:
        name, _, port = pair.partition("=")
        if name not in SERVICES or not port.isdigit():
            raise SystemExit(f"--port wants <service>=<port> with a service of {SERVICES}")
        ports[name] = int(port)
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="profile", required=True)
    local = sub.add_parser("local", help="in front of `make run`")
    local.add_argument("--run-dir", type=Path, default=Path(".run/gateway"))
    local.add_argument("--listen", type=int, default=8080)
    local.add_argument("--port", action="append", default=[], metavar="SERVICE=PORT")
    local.add_argument("--out", type=Path)
    deployed = sub.add_parser("deployed", help="compose and Kubernetes")
    deployed.add_argument("--out", type=Path, default=DEPLOYED_CONF)
    args = parser.parse_args(argv)
    if args.profile == "local":
        text = render(local_config(args.run_dir, _ports(args.port), args.listen))
    else:
        text = render(deployed_config())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
