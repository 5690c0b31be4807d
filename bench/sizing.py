"""The sizing table of docs/SIZING.md, computed from measured figures.

    python -m bench.sizing                      # print the table from the latest runs
    python -m bench.sizing --write docs/SIZING.md   # replace the table between its markers
    python -m bench.sizing --results bench/results/A.json bench/results/B.json

Each figure is taken from the newest result file that measured it (the scale phase for the
loop's rates and CPU per case, the replay phase for rebuild rates, the ceilings for the broker),
and the table says which run each came from, so it can be refreshed after every benchmark run
without editing prose. The demand side (cases a day, peak share, burst) is the assumptions
below, written out in docs/SIZING.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .system import BENCH_DIR, SERVICES

RESULTS = BENCH_DIR / "results"
BEGIN = "<!-- sizing:begin (python -m bench.sizing --write docs/SIZING.md) -->"
END = "<!-- sizing:end -->"


@dataclass(frozen=True)
class Tier:
    name: str
    districts: int
    cases_per_day_per_district: float


# docs/SIZING.md explains each figure (../shared/DOMAIN.md, seed 003: 380,000+ reports a year in
# one district ≈ 1,040 a day; a city of 12 districts and counties, a province of 136).
TIERS = (Tier("district", 1, 1_040), Tier("city", 12, 1_040), Tier("province", 136, 1_040))
PEAK_HOUR_SHARE = 0.15  # of a day's cases, in its busiest hour
BURST = 3.0  # a sudden event (storm, outage) on top of the busiest hour
UTILISATION = 0.5  # of a core or of a measured rate, planned at peak
REBUILD_BUDGET_HOURS = 4.0  # one projection rebuilt from its stream within this
RETENTION_YEARS = 1.0  # history a stream holds (rebuild time grows with it)
REPLICAS = 3  # JetStream replicas of the stream in a cluster (deploy/compose: 3 nodes)
PARTITIONS = 16  # GRIDLOOP_PARTITIONS default (gridloop_events.subjects)
POOL_CONNECTIONS = 10  # per service process: the asyncpg pool's maximum (lock sessions included)


def _load(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in sorted(paths, key=lambda p: p.stem):
        try:
            out.append((p.stem, json.loads(p.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _newest(runs: list[tuple[str, dict[str, Any]]], ok) -> tuple[str, dict[str, Any]] | None:  # type: ignore[no-untyped-def]
    for run_id, r in reversed(runs):
        try:
            if ok(r):
                return run_id, r
        except (KeyError, TypeError, IndexError):
            continue
    return None


def _label(run_id: str, r: dict[str, Any]) -> str:
    """The run, and the code it measured: a run on uncommitted work says so."""
    run = r.get("run", {})
    dirty = " + uncommitted changes" if run.get("dirty") else ""
    return f"`{run_id}`, commit {run.get('commit', '?')}{dirty}"


def measured(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The figures sizing needs, each with the run it came from."""
    m: dict[str, Any] = {}
    sc = _newest(runs, lambda r: r["scale"]["rows"][0]["windows"][-1]["completed_cases_per_s"] > 0)
    if sc:
        run_id, r = sc
        rows = r["scale"]["rows"]
        one = rows[0]["windows"][-1]
        many = rows[-1]["windows"][-1]
        # CPU per case is higher at a low rate (a batch per event, nothing shared): plan with
        # the dearer of the one-instance windows.
        dear = max((w for w in rows[0]["windows"] if w["cpu_ms_per_case"]),
                   key=lambda w: w["cpu_ms_per_case"])
        per_service = {s: dear["cpu_by_service"].get(s, 0.0) * 10 / dear["completed_cases_per_s"]
                       for s in (*SERVICES, "nats", "postgres")}
        m["scale"] = {
            "run": _label(run_id, r),
            "contended": r["run"].get("contended"),
            "others_percent": one["cpu_by_service"].get("others"),
            "cases_per_s_1": one["completed_cases_per_s"],
            "events_per_s_1": one["events_per_s"],
            "cases_per_s_n": many["completed_cases_per_s"],
            "instances_n": rows[-1]["instances"],
            "ratio": r["scale"]["ratio"].get("max_throughput", {}).get("cases_per_s"),
            "cpu_ms_per_case": dear["cpu_ms_per_case"],
            "cpu_window": dear["name"],
            "cpu_ms_per_case_by": {k: round(v, 1) for k, v in per_service.items()},
            "events_per_case": rows[0]["sizes"]["events_per_case"],
            "stream_bytes_per_event": rows[0]["sizes"]["stream_bytes_per_event"],
            "database_bytes_per_case": max(row["sizes"]["database_bytes_per_case"]
                                           for row in rows),
            "rss_mib": max(rows[0]["rss_mib_after"].values()),
        }
    rp = _newest(runs, lambda r: any("events_per_s" in b for b in r["replay"]["rebuilds"]))
    if rp:
        run_id, r = rp
        ok = [b for b in r["replay"]["rebuilds"] if "events_per_s" in b]
        # One process: what a rebuild gets when the live services keep the other cores busy.
        ok = [b for b in ok if b.get("processes", 1) == 1] or ok
        slowest = min(ok, key=lambda b: b["events_per_s"])
        m["replay"] = {"run": _label(run_id, r), "slowest": slowest["projection"],
                       "events_per_s": slowest["events_per_s"]}
    dl = _newest(runs, lambda r: r["deadlines"]["idle_cpu_percent"] is not None)
    if dl:
        run_id, r = dl
        m["idle"] = {"run": _label(run_id, r), "percent": r["deadlines"]["idle_cpu_percent"],
                     "open_timers": r["deadlines"]["open_timers"]}
    ce = _newest(runs, lambda r: r["ceilings"]["publish_pipelined"]["events_per_s"] > 0)
    if ce:
        run_id, r = ce
        m["publish"] = {"run": _label(run_id, r),
                        "events_per_s": r["ceilings"]["publish_pipelined"]["events_per_s"]}
    return m


def size(tier: Tier, m: dict[str, Any]) -> dict[str, Any]:
    """One tier's sizing: the formulas of docs/SIZING.md, in the same order."""
    sc, rp = m["scale"], m["replay"]
    e = sc["events_per_case"]
    c_d = tier.cases_per_day_per_district
    # Demand, per district deployment (one stream each) and in total.
    peak_d = c_d * PEAK_HOUR_SHARE / 3600 * BURST
    peak = peak_d * tier.districts
    # Stream granularity: the most districts one stream may hold and still rebuild in budget.
    events_year_d = c_d * 365 * e
    max_per_stream = max(1, math.floor(REBUILD_BUDGET_HOURS * 3600 * rp["events_per_s"]
                                       / (events_year_d * RETENTION_YEARS)))
    # Today's services load one district's reference data: one stream per district. The
    # grouped figure is what a multi-district service would allow.
    streams = tier.districts
    rebuild_h = events_year_d * RETENTION_YEARS / rp["events_per_s"] / 3600
    # Instances per service per stream: by CPU (a Python process uses at most one core) and by
    # the measured rate of one instance of each service, whichever needs more.
    by_cpu = max(peak_d * ms / 1000 / UTILISATION for s, ms in sc["cpu_ms_per_case_by"].items()
                 if s in SERVICES)
    by_rate = peak_d / (sc["cases_per_s_1"] * UTILISATION)
    active = max(1, math.ceil(max(by_cpu, by_rate)))
    with_standby = 2 * active
    processes = streams * len(SERVICES) * with_standby
    # Work at peak, plus what every process burns idle (escalation's ticker is the dearest).
    idle = processes * (m["idle"]["percent"] if m.get("idle") else 0.0) / 100
    cores = peak * sc["cpu_ms_per_case"] / 1000 / UTILISATION + idle
    return {
        "tier": tier.name,
        "districts": tier.districts,
        "cases_per_day": c_d * tier.districts,
        "peak_cases_per_s": peak,
        "peak_events_per_s": peak * e,
        "streams": streams,
        "max_districts_per_stream": max_per_stream,
        "rebuild_hours": rebuild_h,
        "partitions": PARTITIONS,
        "active_instances": active,
        "load_share_of_one_instance": max(by_cpu, by_rate),
        "processes": processes,
        "cores": cores,
        "ram_gib": processes * sc["rss_mib"] / 1024,
        "broker_share": peak * e / (m["publish"]["events_per_s"] * UTILISATION)
        if m.get("publish") else None,
        "nats_gb_year": c_d * tier.districts * 365 * e * sc["stream_bytes_per_event"]
        * REPLICAS / 1e9,
        "pg_gb_year": c_d * tier.districts * 365 * sc["database_bytes_per_case"] / 1e9,
        "pg_connections": processes * POOL_CONNECTIONS,
    }


def _n(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def table(m: dict[str, Any]) -> str:
    sc, rp = m["scale"], m["replay"]
    pub = m.get("publish")
    rows = [size(t, m) for t in TIERS]
    contended = (f", contended: other processes used {sc['others_percent']}% CPU"
                 if sc["contended"] else "")
    cpu_by = ", ".join(f"{k} {v}" for k, v in sc["cpu_ms_per_case_by"].items())
    idle = (f"; idle, per process (deadlines phase, run {m['idle']['run']}, escalation with "
            f"{m['idle']['open_timers']:,} open timers) **{m['idle']['percent']}%** of a core"
            if m.get("idle") else "")
    ceiling = (f"; JetStream pipelined publish ceiling (run {pub['run']}) "
               f"**{pub['events_per_s']:,} events/s**" if pub else "")
    lines = [
        "Measured (refresh with `python -m bench.sizing --write docs/SIZING.md`):",
        "",
        f"- loop, one instance of each service (scale phase, run {sc['run']}{contended}): "
        f"**r₁ = {sc['cases_per_s_1']} cases/s** ({sc['events_per_s_1']} events/s); "
        f"{sc['instances_n']} instances: {sc['cases_per_s_n']} cases/s (×{sc['ratio']}); "
        f"**{sc['events_per_case']} events/case**;",
        f"- CPU per case (services + NATS + PostgreSQL, {sc['cpu_window']}, the dearer "
        f"window) **{sc['cpu_ms_per_case']} ms**: {cpu_by}{idle};",
        f"- stream **{sc['stream_bytes_per_event']:,} bytes/event**; PostgreSQL "
        f"**{sc['database_bytes_per_case']:,} bytes/case** (four schemas); service RSS "
        f"≤ {sc['rss_mib']:.0f} MiB;",
        f"- rebuild by one process (replay phase, run {rp['run']}): slowest projection "
        f"{rp['slowest']} "
        f"**{rp['events_per_s']:,} events/s**{ceiling}.",
        "",
        "| | " + " | ".join(r["tier"] for r in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]

    def row(label: str, fmt) -> None:  # type: ignore[no-untyped-def]
        lines.append(f"| {label} | " + " | ".join(fmt(r) for r in rows) + " |")

    row("districts", lambda r: _n(r["districts"]))
    row("cases a day", lambda r: _n(r["cases_per_day"]))
    row("design peak, cases/s (events/s)",
        lambda r: f"{_n(r['peak_cases_per_s'], 2)} ({_n(r['peak_events_per_s'], 1)})")
    row("streams (one per district, prefix per district)", lambda r: _n(r["streams"]))
    row(f"rebuild of one projection, one district, {RETENTION_YEARS:g} year(s) of history",
        lambda r: f"{_n(r['rebuild_hours'], 1)} h")
    row(f"districts one stream could hold within a {REBUILD_BUDGET_HOURS:g} h rebuild",
        lambda r: _n(r["max_districts_per_stream"]))
    row("partitions per stream (fixed for its lifetime)", lambda r: _n(r["partitions"]))
    row(f"peak per stream ÷ one instance's planned capacity (U = {UTILISATION:.0%})",
        lambda r: f"{r['load_share_of_one_instance']:.1%}")
    row("active instances per service per stream (i/n shares)",
        lambda r: _n(r["active_instances"]))
    row("service processes (with a standby per share)", lambda r: _n(r["processes"]))
    row("CPU cores at peak (services + NATS + PostgreSQL, + idle processes)",
        lambda r: _n(r["cores"], 2))
    row("RAM of the service processes", lambda r: f"{_n(r['ram_gib'], 1)} GiB")
    if pub:
        row("share of one JetStream server's publish ceiling",
            lambda r: f"{r['broker_share']:.1%}")
    row(f"JetStream storage a year (× {REPLICAS} replicas)",
        lambda r: f"{_n(r['nats_gb_year'], 1)} GB")
    row("PostgreSQL storage a year", lambda r: f"{_n(r['pg_gb_year'], 1)} GB")
    row("PostgreSQL connections at most (pool maximum)", lambda r: _n(r["pg_connections"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__)
    parser.add_argument("--results", nargs="*", type=Path,
                        help="result files (default: every bench/results/*.json)")
    parser.add_argument("--write", type=Path, help="replace the table in this markdown file")
    args = parser.parse_args()
    runs = _load(args.results or list(RESULTS.glob("*.json")))
    m = measured(runs)
    missing = [k for k in ("scale", "replay") if k not in m]
    if missing:
        parser.error(f"no result file has the {' and '.join(missing)} phase(s): run "
                     f"python -m bench --quick --phases {','.join(missing)}")
    text = table(m)
    if args.write:
        doc = args.write.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        if not pattern.search(doc):
            parser.error(f"{args.write} has no {BEGIN} … {END} block")
        args.write.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))
    print(text)


if __name__ == "__main__":
    main()
