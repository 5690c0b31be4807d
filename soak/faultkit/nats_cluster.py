"""A Gridloop on the district's 3-node JetStream cluster: three nats-server processes on loopback
from deploy/nats/cluster.conf (fsync before every ack, accounts.conf's per-service users), the
streams at R3, and the four services each given all three nodes' URLs as its own NATS user.

Any node may be SIGKILLed and restarted on its ports and data; the services ride over it on the
other two."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats

from gridloop_events.servers import find_free_port, nats_server_binary
from gridloop_events.subjects import DEFAULT_PREFIX, Subjects

from .cluster import SERVICES, Cluster
from .faults import Fault, FaultLog, random_fault

# deploy/ is a folder of the repository, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from deploy import secure_local  # noqa: E402

NODES = 3


@dataclass
class NodePorts:
    client: int
    monitor: int
    route: int


@dataclass
class NatsTrio:
    """Three nodes named nats-0..2; ports are chosen once so a restarted node is found again."""

    folder: Path
    passwords: dict[str, str] = field(
        default_factory=lambda: secure_local.nats_password_env("faults"))
    ports: list[NodePorts] = field(default_factory=list)
    nodes: list[secure_local.NatsNode | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = [NodePorts(find_free_port(), find_free_port(), find_free_port())
                          for _ in range(NODES)]
        self.nodes = [None] * NODES

    def name(self, index: int) -> str:
        return f"nats-{index}"

    def index(self, name: str) -> int:
        return int(name.rpartition("-")[2])

    def _env(self, index: int) -> dict[str, str]:
        routes = {f"GRIDLOOP_NATS_ROUTE_{i + 1}":
                  f"nats-route://route:route-faults@127.0.0.1:{p.route}"
                  for i, p in enumerate(self.ports)}
        return {**self.passwords, **routes, "GRIDLOOP_NATS_SERVER_NAME": self.name(index),
                "GRIDLOOP_NATS_ROUTE_PASSWORD": "route-faults"}

    def start_node(self, index: int) -> secure_local.NatsNode:
        p = self.ports[index]
        node = secure_local.start_nats_node(
            nats_server_binary(), self.folder / self.name(index), conf="cluster.conf",
            port=p.client, monitor_port=p.monitor, cluster_port=p.route, wait=False,
            env=self._env(index))
        self.nodes[index] = node
        return node

    def launch(self) -> None:
        """All three at once, not waiting: a node waits for its peers before JetStream reports
        healthy (then `wait_healthy`)."""
        for index in range(NODES):
            self.start_node(index)

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Healthy, and agreed on a meta leader: a node answers /healthz before one is elected,
        and until then no stream can be created (a service would fail to start)."""
        started = time.monotonic()
        secure_local.wait_healthy([n for n in self.nodes if n is not None], timeout)
        while time.monotonic() - started < timeout:
            leaders = {self.meta_leader(i) for i in self.up()}
            if len(leaders) == 1 and None not in leaders:
                return
            time.sleep(0.1)
        raise TimeoutError(f"no meta leader agreed on after {timeout}s")

    def meta_leader(self, index: int) -> str | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.ports[index].monitor}/jsz", timeout=2)
            return (r.json().get("meta_cluster") or {}).get("leader") or None
        except (httpx.HTTPError, ValueError):
            return None

    def kill(self, index: int) -> None:
        """SIGKILL: no lame duck, no clean shutdown; the store keeps what was fsynced."""
        node = self.nodes[index]
        assert node is not None, f"{self.name(index)} is not running"
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
        self.nodes[index] = None

    def url(self, user: str, indexes: range | list[int] = range(NODES)) -> str:
        """Comma-separated URLs of the nodes, logging in as `user`."""
        return ",".join(secure_local.nats_url(self.ports[i].client, user, self.passwords)
                        for i in indexes)

    def clients(self, index: int) -> list[str]:
        """The services connected to a node (their connection names), from its /connz."""
        r = httpx.get(f"http://127.0.0.1:{self.ports[index].monitor}/connz", timeout=3)
        r.raise_for_status()
        names = (c.get("name") or "" for c in r.json().get("connections") or [])
        return sorted(n.removeprefix("gridloop-") for n in names
                      if n.removeprefix("gridloop-") in SERVICES)

    def syncs_always(self, index: int) -> bool:
        """Whether the node fsyncs before every acknowledgement, as it reports in /varz."""
        r = httpx.get(f"http://127.0.0.1:{self.ports[index].monitor}/varz", timeout=3)
        return bool(((r.json().get("jetstream") or {}).get("config") or {}).get("sync_always"))

    def up(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n is not None and n.proc.poll() is None]

    async def operator(self) -> nats.NATS:
        return await nats.connect(self.url("operator", self.up()).split(","),
                                  name="faults-operator", max_reconnect_attempts=5)

    async def replicas(self, stream: str, timeout: float = 3.0
                       ) -> tuple[str | None, dict[str, bool]]:
        """The stream's leader and, for each other peer, whether it is current."""
        nc = await self.operator()
        try:
            info = await nc.jetstream(timeout=timeout).stream_info(stream)
        finally:
            await nc.close()
        cluster = info.cluster
        if cluster is None:
            return None, {}
        return cluster.leader, {r.name: bool(r.current) for r in cluster.replicas or []}

    async def wait_replicated(self, stream: str, timeout: float = 60.0) -> str:
        """Until the stream has a leader and both other peers are current; returns the leader."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                leader, peers = await self.replicas(stream)
                last = (leader, peers)
                if leader and len(peers) == NODES - 1 and all(peers.values()):
                    return leader
            except Exception as exc:  # noqa: BLE001 - no leader yet: asked again
                last = exc
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{stream} not replicated on {NODES} nodes after {timeout}s: {last}")

    def close(self) -> None:
        for index, node in enumerate(self.nodes):
            if node is not None:
                node.stop()
                self.nodes[index] = None


class ReplicatedCluster(Cluster):
    """`Cluster` with its one nats-server replaced by the 3-node JetStream cluster. The subject
    prefix is the production one: accounts.conf grants the services nothing else."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trio = NatsTrio(self.workdir / "nats-cluster")

    def start_servers(self) -> None:
        # PostgreSQL's initdb runs while the nodes find each other and elect a meta leader.
        self.trio.launch()
        self.postgres.start()
        self.trio.wait_healthy()
        self.new_system()

    def _fresh_nats(self, token: str) -> None:
        """The trio keeps its stream: each module starts it afresh."""

    @property
    def nats_url(self) -> str:
        # The checker's connection: the operator on a node that is up.
        return self.trio.url("operator", self.trio.up()[:1])

    @property
    def stream(self) -> str:
        return Subjects(self.prefix).stream_name

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items()
               if k not in ("GRIDLOOP_NATS_URL", "NATS_URL")}
        env["GRIDLOOP_STREAM_REPLICAS"] = str(NODES)
        for service in SERVICES:
            env[f"GRIDLOOP_{service.upper()}_NATS_URL"] = self.trio.url(service)
        return env

    def close(self) -> None:
        self.stop_services()
        self.trio.close()
        self.postgres.stop()


async def _new_leader(cluster: ReplicatedCluster, gone: str, timeout: float) -> str:
    """The stream's leader once it is a node other than `gone`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # A short timeout: the question goes unanswered until there is a leader again.
            leader, _ = await cluster.trio.replicas(cluster.stream, timeout=0.5)
            if leader and leader != gone:
                return leader
        except Exception:  # noqa: BLE001 - mid-election: asked again
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no leader for {cluster.stream} other than {gone} after {timeout}s")


async def kill_nats_node(cluster: ReplicatedCluster, log: FaultLog, *, leader: bool,
                         pause: float, cut: list[str] | None = None) -> tuple[Fault, str]:
    """SIGKILL the stream's leader, or a node that is not, once every replica is current; keep it
    down `pause` seconds, start it again on its data. Recovered when it has caught up and every
    service answers /readyz. Returns the fault and the leader while the node was down; `cut`
    gets the services whose connection went down with the node."""
    cut = [] if cut is None else cut
    trio = cluster.trio
    before = await trio.wait_replicated(cluster.stream)
    clients = await asyncio.to_thread(lambda: [trio.clients(i) for i in range(NODES)])
    # Of the followers, the one most services are connected to: they must move.
    index = trio.index(before) if leader else max(
        (i for i in range(NODES) if trio.name(i) != before), key=lambda i: len(clients[i]))
    name = trio.name(index)
    fault = log.begin("sigkill", f"{name} ({'stream leader' if leader else 'follower'})")
    cut.extend(clients[index])
    started = time.monotonic()
    await asyncio.to_thread(trio.kill, index)
    acting = await _new_leader(cluster, name, timeout=30.0) if leader else before
    elected = time.monotonic() - started
    await asyncio.sleep(max(0.0, pause - elected))
    await asyncio.to_thread(trio.start_node, index)
    fault.down_seconds = round(time.monotonic() - started, 2)
    await asyncio.to_thread(trio.wait_healthy, 60.0)
    restarted = time.monotonic()
    await trio.wait_replicated(cluster.stream)
    fault.detail = (f"leader {before} -> {acting} in {elected:.2f}s; " if leader else
                    f"leader {before} stayed; ") + \
        f"{name} current again {time.monotonic() - restarted:.2f}s after it was healthy; " \
        f"services cut off: {', '.join(clients[index]) or 'none'}"
    fault.recovery_seconds = round(await asyncio.to_thread(cluster.wait_all_ready, 120.0), 2)
    return fault, acting


# What the soak may inject on the cluster: its own node faults, and those of faults.py that do
# not need the single nats-server.
NODE_FAULTS = ("nats-node", "nats-leader")
SHARED_FAULTS = ("service", "postgres", "clock", "republish")


async def random_cluster_fault(cluster: ReplicatedCluster, log: FaultLog, rng: random.Random,
                               kinds: list[str]) -> Fault:
    kind = rng.choice(kinds)
    if kind in NODE_FAULTS:
        fault, _ = await kill_nats_node(cluster, log, leader=kind == "nats-leader",
                                        pause=rng.uniform(0.5, 5.0))
        return fault
    if kind not in SHARED_FAULTS:
        raise ValueError(f"fault {kind!r} needs the single nats-server, not the cluster")
    return await random_fault(cluster, log, rng, [kind])
