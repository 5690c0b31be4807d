"""The district's 3-node JetStream cluster (deploy/nats/cluster.conf: fsync before every ack,
the streams at R3, the services as their own NATS users with all three nodes' URLs): under a
steady load, a node that is not the stream's leader is SIGKILLed and restarted, then the
leader itself. Two nodes of three are a quorum, so reports keep being acknowledged throughout,
and nothing acknowledged may be lost, applied twice or left stranded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultkit import scenario
from faultkit.nats_cluster import NODES, ReplicatedCluster, kill_nats_node
from gridloop_district import default_district
from gridloop_district.loader import ENV_FILE, district_from_dict, district_to_dict, dump_district

ACCEPT_SECONDS = 8


def hurried_district(path: Path) -> Path:
    """The demo district with every case to be accepted within ACCEPT_SECONDS, so that accept
    deadlines of the cases the load leaves idle fall due while nodes are down, not a minute on."""
    doc = district_to_dict(default_district())

    def hurry(item: dict[str, Any]) -> None:
        item["limits"]["accept_seconds"] = ACCEPT_SECONDS
        for override in item.get("overrides", {}).values():
            override.pop("accept_seconds", None)

    for klass in doc["catalogue"]["classes"]:
        for sub in klass["subclasses"]:
            for item in sub["items"]:
                hurry(item)
    hurry(doc["catalogue"]["other"])
    dump_district(district_from_dict(doc), path)
    return path


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedCluster]:
    folder = tmp_path_factory.mktemp("faults-r3")
    cluster = ReplicatedCluster(folder)
    cluster.extra_env[ENV_FILE] = str(hurried_district(folder / "district.json"))
    try:
        cluster.start_servers()
        cluster.start_services()
        yield cluster
    finally:
        cluster.close()


async def test_a_follower_then_the_leader_killed_loses_and_duplicates_nothing(
    replicated: ReplicatedCluster,
) -> None:
    cluster = replicated
    # deploy/nats/cluster.conf as deployed: every node fsyncs before it acknowledges.
    assert all(cluster.trio.syncs_always(i) for i in range(NODES))
    leaders: list[str] = []
    acknowledged_during_fault: list[int] = []
    cut: list[str] = []  # services whose node went down under them

    async def inject(load, log) -> None:  # type: ignore[no-untyped-def]
        for leader in (False, True):
            await asyncio.sleep(2.0)
            before = len(load.stats.acknowledged)
            fault, acting = await kill_nats_node(cluster, log, leader=leader, pause=3.0,
                                                 cut=cut)
            leaders.append(acting)
            acknowledged_during_fault.append(len(load.stats.acknowledged) - before)
            print(f"{fault.target}: down {fault.down_seconds}s, all ready again after "
                  f"{fault.recovery_seconds}s; {fault.detail}")

    # A third of the cases wait 15 s before anyone accepts them: their deadlines are missed,
    # escalation appends DeadlineMissed, dispatch escalates, during the faults too.
    outcome = await scenario.run(cluster, inject, rate=2.0, seed=53, idle_share=0.3,
                                 idle_for=15.0)
    print(outcome.describe())
    faults = outcome.faults.faults
    assert outcome.report.ok, outcome.report.render()
    assert outcome.lost == [] and outcome.not_done == []
    assert len(faults) == 2 == outcome.faults.recoveries
    assert [f.target.partition(" ")[2] for f in faults] == ["(follower)", "(stream leader)"]
    # The killed leader's place was taken by another node while it was down.
    assert leaders[1] != faults[1].target.partition(" ")[0]
    # Two nodes of three kept acknowledging reports through each fault.
    assert all(n > 0 for n in acknowledged_during_fault), acknowledged_during_fault
    assert outcome.report.copies == 0
    # Timers kept firing through the faults. A deadline due while the stream had no leader
    # waited for one (or the handler's late accept overtook it, unreported): either way no
    # longer than an election and a retry.
    assert outcome.report.deadlines_missed > 0
    assert outcome.report.missed_under_clock_jump == 0
    assert outcome.report.max_lateness_seconds < 30, outcome.report.render()
    assert outcome.report.max_overtaken_seconds < 30, outcome.report.render()
    # The follower killed is the one most services used, so some had to move to another node.
    assert cut, "no service was connected to a killed node"
    assert len(outcome.load.stats.done) == len(outcome.load.stats.acknowledged) > 10
    assert outcome.report.statuses == {"done": len(outcome.load.stats.done)}
    # Still R3 with every replica current once both nodes came back.
    _, peers = await cluster.trio.replicas(cluster.stream)
    assert len(peers) == NODES - 1 and all(peers.values()), peers
