"""`gridloop check`: the independent invariant checker, for operators after an incident.

Reads the stream and every projection's schema (never the services' counters), prints a short
report and exits 1 on any violation, 2 when it could not read what it must check.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import typer

from gridloop_events.invariants import CheckOptions, parse_specs, run_check
from gridloop_events.subjects import DEFAULT_PREFIX


def check(
    nats_url: str = typer.Option("nats://127.0.0.1:4222", envvar="GRIDLOOP_NATS_URL"),
    database_url: str = typer.Option("postgresql://postgres@127.0.0.1:55432/gridloop",
                                     envvar="GRIDLOOP_DATABASE_URL"),
    prefix: str = typer.Option(DEFAULT_PREFIX, envvar="GRIDLOOP_SUBJECT_PREFIX",
                               help="Subject prefix (the stream is <PREFIX>_CASES)."),
    projections: str = typer.Option(
        "intake,dispatch,escalation,feedback",
        help="Read models to check: service or service=schema, comma-separated."),
    feedback_url: str = typer.Option(None, help="Also compare feedback's /v1/stats."),
    escalation_url: str = typer.Option(
        None, help="Take `now` from escalation's test clock, if it has one."),
    now: datetime = typer.Option(None, help="Escalation's now (default: the wall clock)."),
    settle_seconds: float = typer.Option(
        30.0, help="Cases quiet this long must not be stranded."),
    late_tolerance: float = typer.Option(
        60.0, help="Seconds a due deadline may wait for its DeadlineMissed."),
    token: str = typer.Option(None, envvar="GRIDLOOP_TOKEN",
                              help="Bearer token for the services' HTTP APIs, where they need one."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report here."),
    max_violations: int = typer.Option(50, help="Violations listed in the printed report."),
) -> None:
    """Prove nothing is lost, duplicated, stranded or stuck; exit 1 on any violation."""
    options = CheckOptions(now=now, settle_seconds=settle_seconds,
                           late_tolerance_seconds=late_tolerance)
    try:
        specs = parse_specs(projections)
        report = asyncio.run(run_check(
            nats_url, database_url, prefix=prefix, specs=specs, feedback_url=feedback_url,
            escalation_url=escalation_url, options=options,
            http_headers={"Authorization": f"Bearer {token}"} if token else None))
    except Exception as exc:  # noqa: BLE001 - an operator needs the reason, not a traceback
        typer.echo(f"gridloop check: could not check: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.render(max_violations))
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=2, default=str))
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
