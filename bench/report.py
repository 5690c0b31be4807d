"""The targets, judged on one run's figures, and the markdown table of that run."""

from __future__ import annotations

from typing import Any


def _drain_ceiling(r: dict[str, Any]) -> int | None:
    """The faster of the two raw no-ack drains: replays are measured against the best a raw
    client did, not against the slower way to read."""
    rates = [_get(r, "ceilings", key, "events_per_s")
             for key in ("drain_no_ack", "drain_no_ack_batched")]
    return max((x for x in rates if x), default=None)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _target(name: str, met: bool | None, figures: str) -> dict[str, Any]:
    return {"target": name, "status": "n/a" if met is None else ("met" if met else "missed"),
            "figures": figures}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    ceiling = _get(r, "ceilings", "publish_pipelined", "events_per_s")
    windows = _get(r, "loop", "windows") or []
    best = max(windows, key=lambda w: w.get("events_per_s", 0), default=None)
    if ceiling and best:
        ratio = best["events_per_s"] / ceiling
        out.append(_target(
            "full-loop events/s ≥ 60% of the raw fsync-before-ack publish ceiling",
            ratio >= 0.6,
            f"{best['events_per_s']:,.0f} events/s ({best['name']}) = {ratio:.1%} of "
            f"{ceiling:,} events/s pipelined publish "
            f"(awaited one by one: {_get(r, 'ceilings', 'publish_awaited', 'events_per_s'):,})"))
    else:
        out.append(_target("full-loop events/s ≥ 60% of the raw publish ceiling", None,
                           "not measured"))

    at100 = next((w for w in windows if w.get("offered_cases_per_s") == 100), None)
    p99 = _get(at100, "report_to_dispatched_ms", "p99")
    out.append(_target(
        "report → dispatched p99 ≤ 100 ms at 100 cases/s", None if p99 is None else p99 <= 100,
        "not measured" if p99 is None else
        f"p99 {p99:,.0f} ms (p50 {at100['report_to_dispatched_ms']['p50']:,.0f} ms); "
        f"{at100['completed_cases_per_s']} of 100 cases/s completed"))

    app1 = _get(r, "peer", "gridloop", "append_one_writer", "appends_per_s")
    sav1 = _get(r, "peer", "eventsourcing", "save_one_writer", "saves_per_s")
    appn = _get(r, "peer", "gridloop", "append_concurrent", "appends_per_s")
    savn = _get(r, "peer", "eventsourcing", "save_concurrent", "saves_per_s")
    if None not in (app1, sav1, appn, savn):
        out.append(_target(
            "per-case append (concurrency check, durable) faster than the peer's save",
            app1 > sav1 and appn > savn,
            f"one writer: {app1:,}/s vs {sav1:,}/s (p50 "
            f"{_get(r, 'peer', 'gridloop', 'append_one_writer', 'latency_ms', 'p50')} vs "
            f"{_get(r, 'peer', 'eventsourcing', 'save_one_writer', 'latency_ms', 'p50')} ms); "
            f"{_get(r, 'peer', 'gridloop', 'append_concurrent', 'writers')} writers: "
            f"{appn:,}/s vs {savn:,}/s"))
    else:
        out.append(_target("per-case append faster than the peer's save", None, "not measured"))

    drain = _drain_ceiling(r)
    peer_read = _get(r, "peer", "eventsourcing", "read_notification_log", "events_per_s")
    rebuilds = _get(r, "replay", "rebuilds") or []
    ok_rebuilds = [b for b in rebuilds if "events_per_s" in b]
    if drain and peer_read and ok_rebuilds:
        # Each projection at its best process count (`gridloop replay --workers`), then the
        # slowest projection of those.
        best: dict[str, dict[str, Any]] = {}
        for b in ok_rebuilds:
            if b["projection"] not in best or b["events_per_s"] > best[b["projection"]]["events_per_s"]:
                best[b["projection"]] = b
        slowest = min(best.values(), key=lambda b: b["events_per_s"])
        rate = slowest["events_per_s"]
        out.append(_target(
            "replay ≥ 80% of the raw no-ack drain and ≥ 1.5× the peer's read-back",
            rate >= 0.8 * drain and rate >= 1.5 * peer_read,
            f"slowest rebuild {slowest['projection']} {rate:,} events/s "
            f"({slowest.get('processes', 1)} processes) = "
            f"{rate / drain:.1%} of the drain ({drain:,}/s), {rate / peer_read:.2f}× the "
            f"peer's read-back ({peer_read:,}/s); all, events/s by processes: "
            + "; ".join(f"{name} " + ", ".join(
                f"{b['events_per_s']:,} ({b.get('processes', 1)})"
                for b in ok_rebuilds if b["projection"] == name)
                for name in best)))
    else:
        out.append(_target("replay vs drain and peer read-back", None, "not measured"))

    late = _get(r, "deadlines", "lateness_ms")
    if late and late.get("n"):
        timers = _get(r, "deadlines", "open_timers")
        complete = late["n"] >= _get(r, "deadlines", "probes")
        out.append(_target(
            "DeadlineMissed p99 ≤ 1 s after due with the open timers",
            late["p99"] <= 1000 and complete,
            f"{timers:,} open timers: p50 {late['p50']:,.0f} ms, p99 {late['p99']:,.0f} ms, "
            f"max {late['max']:,.0f} ms ({late['n']}/{_get(r, 'deadlines', 'probes')} reported);"
            f" idle CPU {_get(r, 'deadlines', 'idle_cpu_percent')}%"))
    else:
        out.append(_target("DeadlineMissed p99 ≤ 1 s after due", None, "not measured"))

    mem = r.get("memory") or {}
    marks = mem.get("marks") or []
    first = mem.get(f"at_{marks[0]}") if marks else None
    reached = [m for m in marks if f"at_{m}" in mem]
    last = mem.get(f"at_{reached[-1]}") if reached else None
    if mem.get("capped") and mem.get("series"):
        last = mem["series"][-1]  # as far as the time budget got
    if first and last and last is not first:
        growth = {k: last["rss_mib"][k] / v for k, v in first["rss_mib"].items()
                  if k in last["rss_mib"] and v}
        worst = max(growth, key=lambda k: growth[k])
        complete = last["cases"] >= marks[-1]
        out.append(_target(
            f"RSS at {marks[-1]:,} cases within 20% of RSS at {marks[0]:,}",
            all(g <= 1.2 for g in growth.values()) and complete,
            ", ".join(f"{k} {first['rss_mib'][k]:.0f}→{last['rss_mib'][k]:.0f} MiB"
                      for k in growth) + f" (worst {worst} ×{growth[worst]:.2f})"
            + ("" if complete else
               f"; only {last['cases']:,} of {marks[-1]:,} cases within the time budget")))
    else:
        out.append(_target("RSS within 20% between the two case counts", None, "not measured"))
    return out


def _ms(d: dict[str, Any] | None, key: str) -> str:
    if not d or key not in d:
        return "–"
    return f"{d[key]:,.0f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"×{v:.2f}"


def _scale_lines(sc: dict[str, Any]) -> list[str]:
    rows = sc.get("rows") or []
    if not rows:
        return []
    lines = ["", "## Scale-out: 1 vs 2 instances of each service (GRIDLOOP_INSTANCE=i/n)", "",
             f"Same load per row, rows one after the other on a fresh stream and database; "
             f"HTTP requests round-robin over a service's instances; {sc.get('cpus')} CPUs.", "",
             "| instances | load | cases done/s | events/s | failed | report→dispatched "
             "p50/p99 ms | CPU % (intake, dispatch, escalation, feedback, nats, pg, loader, "
             "others) | system CPU % | CPU ms/case | machine busy % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for w in row.get("windows", []):
            d = w["report_to_dispatched_ms"]
            cpu_s = _cpu_cells(w["cpu_by_service"])
            lines.append(f"| {row['instances']} | {w['name']} | {w['completed_cases_per_s']} | "
                         f"{w['events_per_s']} | {w['cases_failed']} | {_ms(d, 'p50')}/"
                         f"{_ms(d, 'p99')} | {cpu_s} | {w['cpu_system_percent']} | "
                         f"{w['cpu_ms_per_case'] if w['cpu_ms_per_case'] is not None else '–'} | "
                         f"{w['machine_busy_percent']} |")
    ratio = sc.get("ratio") or {}
    for kind, label in (("max_throughput", "max throughput"), ("fixed_rate", "fixed rate")):
        v = ratio.get(kind)
        if v:
            n, one = ratio["of"]
            lines.append(f"\n{n}/{one} instances, {label}: cases/s {_x(v['cases_per_s'])}, "
                         f"events/s {_x(v['events_per_s'])}, report→dispatched p50 "
                         f"{_x(v['report_to_dispatched_p50'])}, p99 "
                         f"{_x(v['report_to_dispatched_p99'])}; system CPU "
                         f"{_x(v['cpu_system'])}, CPU per case {_x(v['cpu_ms_per_case'])}.")
    for note in sc.get("notes") or []:
        lines.append(f"\n{note}")
    for row in rows:
        claims = row.get("claimed") or {}
        parts = []
        for key, projections in claims.items():
            counts = sorted({len(v) for v in projections.values()})
            parts.append(f"{key} {'/'.join(str(c) for c in counts)}")
        served = row.get("served") or {}
        sizes = row.get("sizes") or {}
        lines.append(
            f"\n{row['instances']} instance(s): partitions claimed per process "
            f"({', '.join(parts) or 'none recorded'}); requests served per instance "
            f"{sorted(served.values())}; {sizes.get('events_per_case')} events/case, "
            f"{sizes.get('stream_bytes_per_event')} stream bytes/event, "
            f"{sizes.get('database_bytes_per_case')} PostgreSQL bytes/case; all alive: "
            f"{all((row.get('alive') or {'?': False}).values())}.")
    return lines


def markdown(r: dict[str, Any]) -> str:
    run = r["run"]
    lines = [
        f"# Gridloop benchmark {run['started']} ({run['profile']})",
        "",
        f"commit {run['commit']}{' + uncommitted changes' if run.get('dirty') else ''}"
        f"{' (code imported from ' + run['code'] + ')' if run.get('code') != run.get('repo') else ''}; "
        f"{run['cpus']} CPUs, {run['memory_gib']} GiB; load average at start "
        f"{run['loadavg_start']}; took {run.get('seconds', 0) / 60:.1f} min.",
        "",
    ]
    if run.get("contended"):
        lines += [f"**Warning: other processes used {run['others_cpu_percent_start']}% CPU "
                  "when the run began; every figure below is skewed by them.**", ""]
    lines += ["## Targets", "", "| target | status | figures |", "|---|---|---|"]
    for t in r.get("targets", []):
        lines.append(f"| {t['target']} | **{t['status']}** | {t['figures']} |")

    c = r.get("ceilings") or {}
    if c:
        lines += ["", "## Ceilings (raw clients, same run)", "",
                  "| what | events | events/s | latency p50 / p99 ms |", "|---|---|---|---|"]
    for key, label in (("publish_awaited", "JetStream publish, awaited one by one"),
                       ("publish_concurrent", "JetStream publish, concurrent writers"),
                       ("publish_pipelined", "JetStream publish_async, pipelined"),
                       ("drain_no_ack", "pull drain, no acks (nats-py fetch)"),
                       ("drain_no_ack_batched",
                        "pull drain, no acks (pull requests into a callback, as read_all)"),
                       ("drain_ack", "pull drain, ack per message"),
                       ("copy_jsonb", "asyncpg COPY into jsonb")):
        v = c.get(key)
        if v and "events_per_s" in v:
            lat = v.get("latency_ms")
            lines.append(f"| {label} | {v['events']:,} | {v['events_per_s']:,} | "
                         f"{_ms(lat, 'p50')} / {_ms(lat, 'p99')} |")

    p = r.get("peer") or {}
    g, e = p.get("gridloop") or {}, p.get("eventsourcing") or {}
    if g and e:
        lines += ["", f"## Peer: eventsourcing {p.get('version', '')} on PostgreSQL "
                  f"({p.get('aggregates', 0):,} aggregates × {p.get('events_per_aggregate')} "
                  "events)", "",
                  "| what | Gridloop (EventStore) | eventsourcing |", "|---|---|---|"]
        for gk, ek, label in (("append_one_writer", "save_one_writer", "one writer"),
                              ("append_concurrent", "save_concurrent", "concurrent writers")):
            gv, ev = g.get(gk, {}), e.get(ek, {})
            lines.append(
                f"| {label}: appends/saves per s (p50 / p99 ms) | {gv.get('appends_per_s', '–'):,}"
                f" ({_ms(gv.get('latency_ms'), 'p50')} / {_ms(gv.get('latency_ms'), 'p99')}) | "
                f"{ev.get('saves_per_s', '–'):,} ({_ms(ev.get('latency_ms'), 'p50')} / "
                f"{_ms(ev.get('latency_ms'), 'p99')}) |")
        lines.append(f"| read everything back, events/s | {_get(g, 'read_all', 'events_per_s'):,}"
                     f" (read_all) | {_get(e, 'read_notification_log', 'events_per_s'):,} "
                     "(notification log) |")
        lines.append(f"| read case by case, events/s | {_get(g, 'read_cases', 'events_per_s'):,}"
                     f" | {_get(e, 'read_aggregates', 'events_per_s'):,} |")

    windows = _get(r, "loop", "windows") or []
    if windows:
        projections = list(windows[0]["appended_to_visible_ms"])
        lines += ["", "## Full closed loop (HTTP: report → dispatch → accept → close → "
                  "callback)", "",
                  "| load | cases done/s | events/s | failed | report→dispatched p50/p95/p99 ms"
                  " | appended→visible p50/p99 ms (" + ", ".join(projections) + ") | CPU % "
                  "(services, nats, pg, loader, others) |", "|---|---|---|---|---|---|---|"]
        for w in windows:
            d = w["report_to_dispatched_ms"]
            vis = "; ".join(f"{_ms(w['appended_to_visible_ms'][n], 'p50')}/"
                            f"{_ms(w['appended_to_visible_ms'][n], 'p99')}" for n in projections)
            cpu_s = _cpu_cells(w["cpu_percent"])
            lines.append(f"| {w['name']} | {w['completed_cases_per_s']} | {w['events_per_s']} | "
                         f"{w['cases_failed']} | {_ms(d, 'p50')}/{_ms(d, 'p95')}/{_ms(d, 'p99')}"
                         f" | {vis} | {cpu_s} |")
        for note in _get(r, "loop", "notes") or []:
            lines.append(f"\n{note}")

    lines += _scale_lines(r.get("scale") or {})

    dl = r.get("deadlines") or {}
    if dl.get("lateness_ms"):
        lt = dl["lateness_ms"]
        lines += ["", "## Deadlines", "",
                  f"{dl.get('open_timers', 0):,} open timers (built by escalation at "
                  f"{dl.get('ingest_events_per_s', 0):,} events/s); idle CPU "
                  f"{dl.get('idle_cpu_percent')}% over {dl.get('idle_seconds')} s, RSS "
                  f"{dl.get('rss_mib')} MiB. {lt.get('n', 0)}/{dl.get('probes')} probe deadlines "
                  f"due over {dl.get('spread_seconds')} s: DeadlineMissed stored "
                  f"p50 {_ms(lt, 'p50')} ms, p99 {_ms(lt, 'p99')} ms, max {_ms(lt, 'max')} ms "
                  f"after due (escalation CPU {dl.get('cpu_percent_while_firing')}% meanwhile)."]

    rp = r.get("replay") or {}
    if rp.get("rebuilds"):
        lines += ["", f"## Replay ({rp.get('events', 0):,}-event stream"
                  f"{', rebuilt up to ' + format(rp['rebuild_to'], ',') if rp.get('rebuild_to') else ''})",
                  "", "| projection | processes | events | seconds | events/s | % of no-ack drain "
                  "| peak RSS MiB, all processes (before) | dead letters |",
                  "|---|---|---|---|---|---|---|---|"]
        drain = _drain_ceiling(r) or 0
        for b in rp["rebuilds"]:
            if "events_per_s" not in b:
                lines.append(f"| {b.get('projection')} | {b.get('processes', 1)} | error: "
                             f"{b.get('error', '')[:120]} |")
                continue
            share = f"{b['events_per_s'] / drain:.1%}" if drain else "–"
            lines.append(f"| {b['projection']} | {b.get('processes', 1)} | {b['events']:,} | "
                         f"{b['seconds']} | "
                         f"{b['events_per_s']:,} | {share} | {b['peak_rss_mib']} "
                         f"({b['rss_before_mib']}) | {b['dead_lettered']} |")

    mem = r.get("memory") or {}
    if mem.get("series"):
        names = list(mem["series"][0]["rss_mib"])
        lines += ["", "## Memory (RSS MiB by cases handled)", "",
                  "| cases | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        shown = [mem["series"][0]] + [mem[f"at_{m}"] for m in mem.get("marks", [])
                                      if f"at_{m}" in mem]
        if mem.get("capped") and mem["series"][-1] is not shown[-1]:
            shown.append(mem["series"][-1])
        for point in shown:
            lines.append(f"| {point['cases']:,} | " + " | ".join(
                f"{point['rss_mib'].get(n, 0):.0f}" for n in names) + " |")
        if mem.get("capped"):
            lines.append(f"\nStopped by the time budget after {mem['capped']['after_seconds']} s "
                         f"at {mem['capped']['cases']:,} cases.")

    errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["", "## Phases that failed", ""]
        lines += [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def _cpu_cells(cpu: dict[str, Any]) -> str:
    """CPU % per process group, in the tables' column order."""
    return ", ".join(str(cpu.get(k, "–")) for k in
                     ("intake", "dispatch", "escalation", "feedback", "nats", "postgres",
                      "loader", "others"))
