"""Soak: the whole system under a steady load with random faults for a long time, the invariant
checker run periodically and at the end; writes a JSON and a Markdown report.

    .venv/bin/python soak/run.py --duration 600 --out soak/reports

Everything runs on servers of its own (nats-server, PostgreSQL, the four services), which the
faults SIGKILL, SIGSTOP and restart; nothing else on the machine is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultkit import faults, scenario  # noqa: E402
from faultkit.cluster import Cluster  # noqa: E402
from faultkit.faults import FaultLog  # noqa: E402
from faultkit.load import Load  # noqa: E402
from faultkit.nats_cluster import NODE_FAULTS, SHARED_FAULTS, ReplicatedCluster  # noqa: E402
from faultkit.nats_cluster import random_cluster_fault  # noqa: E402
from gridloop_events.invariants import CheckOptions, Report, run_check  # noqa: E402

FAULT_KINDS = ["service", "nats-kill", "nats-stall", "postgres", "clock", "republish",
               *NODE_FAULTS]
# Copies of stored events are applied again by the projections of this version of the
# library (see tests/faults/test_duplicate_deliveries.py): opt in with --faults.
DEFAULT_FAULTS = ["service", "nats-kill", "nats-stall", "postgres", "clock"]
# On the 3-node cluster (--nats-cluster) a node or the stream's leader is killed instead.
CLUSTER_FAULTS = ["service", "nats-node", "nats-leader", "postgres", "clock"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults")
    p.add_argument("--rate", type=float, default=2.0, help="new cases per second")
    p.add_argument("--fault-every", type=float, nargs=2, default=(15.0, 35.0),
                   metavar=("MIN", "MAX"), help="seconds between faults (random in range)")
    p.add_argument("--check-every", type=float, default=60.0, help="seconds between checks")
    p.add_argument("--faults", default=None,
                   help=f"comma-separated, of: {', '.join(FAULT_KINDS)} (default "
                   f"{','.join(DEFAULT_FAULTS)}; with --nats-cluster {','.join(CLUSTER_FAULTS)})")
    p.add_argument("--nats-cluster", action="store_true",
                   help="run on the 3-node JetStream cluster of deploy/nats/cluster.conf, "
                   "streams at R3")
    p.add_argument("--idle-share", type=float, default=0.05,
                   help="share of cases left unaccepted for --idle-for seconds (deadlines run out)")
    p.add_argument("--idle-for", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "reports")
    p.add_argument("--keep", action="store_true", help="keep the servers' data folder")
    return p.parse_args(argv)


async def periodic_check(cluster: Cluster) -> Report:
    # Under load: cases younger than a minute may still be on their way.
    return await run_check(cluster.nats_url, cluster.database_url, prefix=cluster.prefix,
                           feedback_url=cluster.url("feedback"),
                           options=CheckOptions(settle_seconds=60.0),
                           http_headers=cluster.supervisor())


async def soak(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    kinds = [k for k in args.faults.split(",") if k]
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise SystemExit(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    allowed = {*NODE_FAULTS, *SHARED_FAULTS} if args.nats_cluster else set(FAULT_KINDS) - set(
        NODE_FAULTS)
    if set(kinds) - allowed:
        raise SystemExit(f"not on this setup: {', '.join(sorted(set(kinds) - allowed))}")
    rng = random.Random(args.seed)
    checks: list[dict[str, Any]] = []
    started = time.monotonic()

    async def inject(load: Load, log: FaultLog) -> None:
        next_check = time.monotonic() + args.check_every
        while time.monotonic() - started < args.duration:
            await asyncio.sleep(rng.uniform(*args.fault_every))
            if time.monotonic() - started >= args.duration:
                break
            fault = await (random_cluster_fault(cluster, log, rng, kinds)  # type: ignore[arg-type]
                           if args.nats_cluster else faults.random_fault(cluster, log, rng, kinds))
            print(f"[{time.monotonic() - started:6.0f}s] {fault.kind} {fault.target} "
                  f"down {fault.down_seconds}s, ready again after {fault.recovery_seconds}s "
                  f"{fault.detail}", flush=True)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + args.check_every
                report = await periodic_check(cluster)
                checks.append(_check_entry(report, time.monotonic() - started))
                print(f"[{time.monotonic() - started:6.0f}s] check: {report.events} events, "
                      f"{report.cases} cases, {len(report.violations)} violations", flush=True)

    outcome = await scenario.run(cluster, inject, rate=args.rate, seed=args.seed,
                                 warmup=5.0, drain_timeout=240.0,
                                 idle_share=args.idle_share, idle_for=args.idle_for)
    checks.append(_check_entry(outcome.report, outcome.seconds, final=True))
    return _result(args, kinds, outcome, checks)


def _check_entry(report: Report, at: float, final: bool = False) -> dict[str, Any]:
    return {"at_seconds": round(at, 1), "final": final, "events": report.events,
            "cases": report.cases, "violations": len(report.violations),
            "by_check": dict(report.violation_counts()),
            "examples": [vars(v) for v in report.violations[:10]]}


def _result(args: argparse.Namespace, kinds: list[str], outcome: scenario.Outcome,
            checks: list[dict[str, Any]]) -> dict[str, Any]:
    recoveries = [f.recovery_seconds for f in outcome.faults.faults
                  if f.recovery_seconds is not None]
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"duration_seconds": args.duration, "rate": args.rate, "faults": kinds,
                   "nats": "3-node cluster, R3" if args.nats_cluster else "one node",
                   "fault_every_seconds": list(args.fault_every), "seed": args.seed,
                   "idle_share": args.idle_share, "idle_for_seconds": args.idle_for},
        "summary": outcome.summary(),
        "faults_by_kind": dict(Counter(f"{f.kind} {f.target}" for f in outcome.faults.faults)),
        "recovery_seconds": {
            "max": max(recoveries, default=None),
            "median": statistics.median(recoveries) if recoveries else None,
        },
        "longest_case_seconds": round(outcome.load.stats.longest_case_seconds, 1),
        "checks": checks,
        "final_report": outcome.report.as_dict(),
        "faults": outcome.faults.as_list(),
        "lost_cases": outcome.lost,
        "stuck_cases": outcome.not_done,
        # A run that reported nothing proves nothing.
        "ok": outcome.report.ok and not outcome.lost and not outcome.not_done
        and all(c["violations"] == 0 for c in checks) and outcome.report.cases > 0
        and outcome.summary()["reports_refused"] == 0,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    c = result["config"]
    lines = [
        f"# Gridloop soak report ({result['finished_at']})",
        "",
        f"{c['duration_seconds']:.0f} s of load at {c['rate']} new cases/s with a random fault "
        f"every {c['fault_every_seconds'][0]:.0f}–{c['fault_every_seconds'][1]:.0f} s "
        f"({', '.join(c['faults'])}), seed {c['seed']}; every process real (nats-server with "
        f"fsync before ack, {c.get('nats', 'one node')}; PostgreSQL, four service processes).",
        "",
        "| | |",
        "|---|---|",
        f"| verdict | **{'no violation, nothing lost, nothing stuck' if result['ok'] else 'FAILED'}** |",
        f"| events in the log | {s['events']} ({s['stream_messages']} stream messages) |",
        f"| cases reported / acknowledged / done | {s['cases']} / {s['cases_acknowledged']} / "
        f"{s['cases_done']} |",
        f"| faults injected / recovered from | {s['faults']} / {s['recoveries']} |",
        f"| recovery to all-ready, median / max | {result['recovery_seconds']['median']} s / "
        f"{result['recovery_seconds']['max']} s |",
        f"| invariant checks run (periodic + final) | {len(result['checks'])} |",
        f"| violations | {sum(ch['violations'] for ch in result['checks'])} |",
        f"| lost cases / stuck cases | {s['lost_cases']} / {s['stuck_cases']} |",
        f"| deadlines missed (of which under a jumped clock) | {s['deadlines_missed']} "
        f"({s['missed_under_clock_jump']}) |",
        f"| longest wait past a deadline before its DeadlineMissed | "
        f"{s['longest_wait_past_deadline_seconds']} s |",
        f"| deadlines overtaken late with no DeadlineMissed, longest wait | "
        f"{s['deadlines_overtaken_unreported']}, "
        f"{s['longest_overtaken_past_deadline_seconds']} s |",
        f"| longest report→done of a case | {result['longest_case_seconds']} s |",
        "",
        "## Faults",
        "",
        "| fault | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(result["faults_by_kind"].items())],
        "",
        "## Checks",
        "",
        "| at (s) | events | cases | violations |",
        "|---|---|---|---|",
        *[f"| {ch['at_seconds']}{' (final)' if ch['final'] else ''} | {ch['events']} | "
          f"{ch['cases']} | {ch['violations']} {ch['by_check'] or ''} |"
          for ch in result["checks"]],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.faults is None:
        args.faults = ",".join(CLUSTER_FAULTS if args.nats_cluster else DEFAULT_FAULTS)
    workdir = Path(tempfile.mkdtemp(prefix="gridloop-soak-"))
    cluster = ReplicatedCluster(workdir) if args.nats_cluster else Cluster(workdir)
    try:
        cluster.start_servers()
        cluster.start_services()
        result = asyncio.run(soak(args, cluster))
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"soak-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"soak-{stamp}.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
