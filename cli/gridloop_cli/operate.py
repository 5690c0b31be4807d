"""Operators' commands: replay projections, read a case's history, audit the log, tail events,
handle dead letters, and see the closed-loop figures.

Exit codes, the same for every command: 0 done (and, for `audit verify`, intact), 1 the command
found something wrong or refused (a finding, an unknown case, a retry out of order), 2 NATS,
PostgreSQL, the stream or the feedback service could not be reached.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from datetime import datetime
from typing import Annotated, Any, Optional

import asyncpg
import nats.errors
import typer
from rich.table import Table

from gridloop_events.deadletter import RetryFailed, RetryRefused

from .ops import audit as audit_ops
from .ops import cases as case_ops
from .ops import dlq as dlq_ops
from .ops import output, projections
from .ops import replay as replay_ops
from .ops import stats as stats_ops
from .ops import tail as tail_ops
from .ops.connection import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    Refused,
    Target,
    Unreachable,
    connected,
)
from .ops.output import iso, line

NatsUrl = Annotated[str, typer.Option("--nats-url", envvar="GRIDLOOP_NATS_URL",
                                      help="The NATS server holding the log.")]
DatabaseUrl = Annotated[str, typer.Option("--database-url", envvar="GRIDLOOP_DATABASE_URL",
                                          help="The PostgreSQL database of the read models.")]
Prefix = Annotated[str, typer.Option("--prefix", envvar="GRIDLOOP_SUBJECT_PREFIX",
                                     help="Subject prefix; the stream is <PREFIX>_CASES.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    nats.errors.Error,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def _run(work: Coroutine[Any, Any, int | None]) -> None:
    try:
        code = asyncio.run(work)
    except Unreachable as exc:
        output.problem(str(exc))
        raise typer.Exit(2) from None
    except (Refused, RetryRefused, RetryFailed) as exc:
        output.problem(str(exc))
        raise typer.Exit(1) from None
    except CONNECTION_ERRORS as exc:
        output.problem(f"lost the connection: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code or 0)


def _time_option(value: Optional[str]) -> datetime | None:
    if value is None:
        return None
    try:
        return output.parse_time(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time") from None


def _projection(value: str, allow_all: bool) -> str:
    names = projections.SERVICES + (("all",) if allow_all else ())
    if value not in names:
        raise typer.BadParameter(f"{value!r}: one of {', '.join(names)}")
    return value


# --- replay -----------------------------------------------------------------------------------


def replay(
    projection: Annotated[str, typer.Argument(help="intake, dispatch, escalation, feedback or all")],
    to_seq: Annotated[Optional[int], typer.Option("--to-seq", min=0,
                      help="Build history up to this stream sequence into a separate schema.")] = None,
    to_time: Annotated[Optional[str], typer.Option("--to-time",
                       help="Build history as the log held it at this ISO time (UTC unless an "
                            "offset is given) into a separate schema.")] = None,
    schema: Annotated[Optional[str], typer.Option("--schema",
                      help="Schema for --to-seq/--to-time (default <service>_asof).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64,
                       help="Processes, each rebuilding a share of the partitions (a case's "
                            "order is kept). More than the cores free beside the live "
                            "services slows them down.")] = 1,
    json_out: Json = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """Rebuild a projection from the log and swap it in atomically.

    With --to-seq/--to-time the past is built into <service>_asof for inspection instead, and the
    live tables are not touched. Prints events/s and the checksum of the tables built.
    """
    names = projections.chosen(_projection(projection, allow_all=True))
    until_time = _time_option(to_time)
    historical = to_seq is not None or until_time is not None
    if schema is not None and (not historical or len(names) > 1):
        raise typer.BadParameter("--schema goes with --to-seq/--to-time and one projection")

    async def work() -> int:
        results = []
        async with connected(Target(nats_url, database_url, prefix)) as conn:
            for name in names:
                done = await replay_ops.replay(conn, name, to_sequence=to_seq,
                                               to_time=until_time, target_schema=schema,
                                               workers=workers)
                results.append(done)
                if not json_out:
                    _print_replay(done)
        if json_out:
            output.as_json([r.as_dict() for r in results])
        return 0

    _run(work())


def _print_replay(done: replay_ops.Replayed) -> None:
    d = done.as_dict()
    rate = f"{d['events_per_second']:,.0f} events/s" if d["events_per_second"] else "—"
    line(f"{d['projection']}: {d['events']:,} events applied up to sequence {d['last_sequence']} "
         f"in {d['seconds']:.2f} s ({rate})")
    if done.historical:
        point = (f"sequence {d['to_sequence']}" if d["to_sequence"] is not None
                 else f"stored at or before {d['to_time']}")
        line(f"  schema {d['schema']}: history as of {point}; the live tables are untouched")
    else:
        line(f"  schema {d['schema']}: rebuilt and swapped in atomically")
    line(f"  checksum {d['checksum']}")


# --- case -------------------------------------------------------------------------------------

case_app = typer.Typer(no_args_is_help=True, help="A case's history and state, from the log.")


@case_app.command("show")
def case_show(
    case_id: Annotated[str, typer.Argument(help="The case id.")],
    as_of: Annotated[Optional[str], typer.Option("--as-of",
                     help="The case as the log held it at this ISO time (UTC unless an offset is given).")] = None,
    json_out: Json = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """A case's timeline and state, from the log.

    Who, when, what and caused by what, for every event; the state is the shared lifecycle fold.
    The reporter's personal data is never shown.
    """
    moment = _time_option(as_of)

    async def work() -> int:
        async with connected(Target(nats_url, prefix=prefix), database=False) as conn:
            view = await case_ops.load(conn.need_store(), case_id, moment)
        if not view.shown and not view.later:
            raise Refused(f"no events for case {case_id} in the log")
        if json_out:
            output.as_json(case_ops.as_dict(view))
        else:
            _print_case(view)
        return 0

    _run(work())


def _print_case(view: case_ops.CaseAsOf) -> None:
    s = view.state
    when = f" as of {iso(view.as_of)}" if view.as_of else ""
    later = f" ({view.later} stored later, not shown)" if view.later else ""
    line(f"case {view.case_id}{when}: {len(view.shown)} events{later}", style="bold")
    if not view.shown:
        line("  the log held nothing of it by then")
        return
    fields = [
        ("status", s.status.value), ("district", s.district),
        ("category", s.category_code), ("severity", s.severity and s.severity.value),
        ("grid", s.grid), ("tier", s.tier and s.tier.value), ("unit", s.unit_code),
        ("handler", s.handler_id), ("escalation level", s.escalation_level),
        ("dispatches", s.dispatch_count), ("closures", s.close_count),
        ("outcome", s.outcome and s.outcome.value), ("rating", s.rating and s.rating.value),
        ("unsatisfied ratings", s.unsatisfied_count), ("missed deadlines", len(s.missed)),
        ("reported at", iso(s.reported_at)), ("last event at", iso(s.last_event_at)),
        ("version", s.version),
    ]
    line("state:")
    for name, value in fields:
        line(f"  {name:<20} {'—' if value is None else value}")
    for kind, deadline in sorted(s.deadlines.items()):
        unit = f" ({deadline.unit_code})" if deadline.unit_code else ""
        line(f"  {kind.value + ' due':<20} {iso(deadline.due_at)}{unit}")
    line("timeline:")
    for row in case_ops.timeline(view):
        actor = row["actor"]
        who = f"{actor['kind']}:{actor['id']}" + (f" ({actor['role']})" if actor["role"] else "")
        line(f"  #{row['sequence']}  {row['stored_at']}  {row['event_type']}  by {who}  "
             f"<- {row['caused_by']}")
        line(f"      {row['summary']}")


# --- audit ------------------------------------------------------------------------------------

audit_app = typer.Typer(no_args_is_help=True, help="Prove the log was not rewritten.")


@audit_app.command("verify")
def audit_verify(
    case_id: Annotated[Optional[str], typer.Option("--case", help="Verify one case.")] = None,
    all_cases: Annotated[bool, typer.Option("--all", help="Verify every case (the default).")] = False,
    json_out: Json = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """Prove the log was not rewritten: every case's hash chain, every sequence.

    Exit 0 intact, 1 any finding (each names the case and the event's position), 2 the log
    could not be reached. Prints the anchor digest.
    """
    if case_id is not None and all_cases:
        raise typer.BadParameter("--case and --all exclude each other")

    async def work() -> int:
        async with connected(Target(nats_url, prefix=prefix), database=False) as conn:
            audit = await audit_ops.verify(conn, case_id)
        report = audit.report
        data = audit_ops.as_dict(audit)
        if json_out:
            output.as_json(data)
        else:
            for f in report.findings:
                line(f"FINDING {f}", style="bold red")
            for first, last in audit_ops.missing_ranges(audit.missing):
                line(f"FINDING {audit_ops.missing_text(first, last)}", style="bold red")
            for unreadable in audit.unreadable:
                line(f"FINDING {unreadable}", style="bold red")
            if case_id is not None and report.events == 0:
                line(f"case {case_id}: no events in the log", style="bold red")
            problems = (len(report.findings) + len(audit_ops.missing_ranges(audit.missing))
                        + len(audit.unreadable))
            verdict = "intact" if audit.ok else f"NOT intact: {problems} finding(s)"
            line(f"{data['scope']}: {report.events} events in {report.cases} case(s) verified, "
                 f"{verdict}")
            line(f"anchor {report.anchor}")
        return 0 if audit.ok else 1

    _run(work())


# --- events -----------------------------------------------------------------------------------

events_app = typer.Typer(no_args_is_help=True, help="The log itself.")


@events_app.command("tail")
def events_tail(
    district: Annotated[Optional[str], typer.Option("--district", help="Only this district.")] = None,
    event_type: Annotated[Optional[str], typer.Option("--type", help="Only this event type.")] = None,
    case_id: Annotated[Optional[str], typer.Option("--case", help="Only this case.")] = None,
    from_seq: Annotated[int, typer.Option("--from-seq", min=1, help="Start at this sequence.")] = 1,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                      help="Keep printing new events until Ctrl-C.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """Print events in stream order, without the reporter's personal data."""
    for token in (district, event_type, case_id):
        if token is not None and not token.replace("-", "").replace("_", "").isalnum():
            raise typer.BadParameter(f"{token!r}: letters, digits, '-' and '_' only")

    async def work() -> int:
        async with connected(Target(nats_url, prefix=prefix), database=False) as conn:
            store = conn.need_store()
            subject = tail_ops.subject_filter(store.subjects, district, event_type, case_id)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async for event in tail_ops.events(store, subject, from_seq, follow, stop):
                if json_out:
                    output.json_line(event)
                else:
                    line(tail_ops.one_line(event))
                    output.out.file.flush()
        return 0

    try:
        _run(work())
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# --- dlq --------------------------------------------------------------------------------------

dlq_app = typer.Typer(no_args_is_help=True, help="Events a projection could not apply.")
ProjectionOpt = Annotated[Optional[str], typer.Option(
    "--projection", help="intake, dispatch, escalation or feedback (default: all / the one).")]


@dlq_app.command("list")
def dlq_list(
    projection: ProjectionOpt = None,
    include_retried: Annotated[bool, typer.Option("--all", help="Also rows already retried.")] = False,
    json_out: Json = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Dead letters in stream order: sequence, case, event type and the cause."""
    names = projections.chosen(_projection(projection, False)) if projection else projections.SERVICES

    async def work() -> int:
        async with connected(Target(database_url=database_url), log=False) as conn:
            rows = [dlq_ops.row(schema, letter)
                    for schema, letter in await dlq_ops.listing(conn, names, include_retried)]
        if json_out:
            output.as_json(rows)
            return 0
        if not rows:
            line("no dead letters")
            return 0
        table = Table(title=f"{len(rows)} dead letter(s)")
        for column in ("seq", "schema", "case", "event type", "failed at", "retried at", "error"):
            table.add_column(column, no_wrap=column != "error", overflow="fold")
        for r in rows:
            table.add_row(str(r["sequence"]), r["schema"], r["case_id"], r["event_type"] or "?",
                          r["failed_at"], r["retried_at"] or "—", r["error"])
        output.out.print(table)
        return 0

    _run(work())


@dlq_app.command("show")
def dlq_show(
    sequence: Annotated[int, typer.Argument(help="The dead-lettered stream sequence.")],
    projection: ProjectionOpt = None,
    json_out: Json = False,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """One dead letter: its cause, and the event read back from the log (no personal data)."""
    service = _projection(projection, False) if projection else None

    async def work() -> int:
        async with connected(Target(nats_url, database_url, prefix)) as conn:
            data = await dlq_ops.detail(conn, sequence, service)
        if json_out:
            output.as_json(data)
            return 0
        for key in ("sequence", "schema", "projection", "case_id", "event_type", "event_id",
                    "subject", "failed_at", "retried_at", "error"):
            line(f"{key:<11} {data[key] if data[key] is not None else '—'}")
        line("event:")
        line("  " + tail_ops.one_line(data["event"]))
        return 0

    _run(work())


@dlq_app.command("retry")
def dlq_retry(
    sequence: Annotated[int, typer.Argument(help="The dead-lettered stream sequence.")],
    projection: ProjectionOpt = None,
    react: Annotated[bool, typer.Option("--react/--no-react",
                     help="Run the projection's reactions, as the live runner would have.")] = True,
    nats_url: NatsUrl = DEFAULT_NATS_URL,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    prefix: Prefix = "gridloop",
) -> None:
    """Apply a dead-lettered event again, once its cause is fixed.

    The event is read from the log by SEQUENCE; the row is kept, marked retried. Refused (exit 1)
    when it would fold the case out of order: replay the projection then.
    """
    service = _projection(projection, False) if projection else None

    async def work() -> int:
        async with connected(Target(nats_url, database_url, prefix)) as conn:
            done = await dlq_ops.retry(conn, sequence, service, react)
        reacted = " and its reactions ran" if done.reacted else ""
        line(f"sequence {sequence} ({done.event_type} of case {done.case_id}) applied to "
             f"{done.dead_letter.projection}{reacted}; marked retried at "
             f"{iso(done.dead_letter.retried_at)}")
        return 0

    _run(work())


# --- stats ------------------------------------------------------------------------------------


def stats(
    url: Annotated[str, typer.Option("--url", envvar="GRIDLOOP_FEEDBACK_URL",
                                     help="The feedback service.")] = "http://127.0.0.1:8004",
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="GRIDLOOP_TOKEN",
        help="Bearer token (an auditor's sees the whole district).")] = None,
    group_by: Annotated[str, typer.Option("--group-by",
                        help="district, grid, unit, category or month.")] = "district",
    from_month: Annotated[Optional[str], typer.Option("--from", help="First report month, YYYY-MM.")] = None,
    to_month: Annotated[Optional[str], typer.Option("--to", help="Last report month, YYYY-MM.")] = None,
    grid: Annotated[Optional[str], typer.Option("--grid", help="Only this grid.")] = None,
    unit: Annotated[Optional[str], typer.Option("--unit", help="Only this unit.")] = None,
    category: Annotated[Optional[str], typer.Option("--category", help="Only this category.")] = None,
    json_out: Json = False,
) -> None:
    """Satisfaction, resolution, on-time closure and report-in, each as numerator/denominator."""
    params = {"group_by": group_by, "from": from_month, "to": to_month, "grid": grid,
              "unit": unit, "category": category}
    try:
        body = stats_ops.fetch(url, {k: v for k, v in params.items() if v}, token)
    except Unreachable as exc:
        output.problem(str(exc))
        raise typer.Exit(2) from None
    except Refused as exc:
        output.problem(str(exc))
        raise typer.Exit(1) from None
    if json_out:
        output.as_json(body)
    else:
        output.out.print(stats_ops.table(body))


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.add_typer(case_app, name="case")
    app.add_typer(audit_app, name="audit")
    app.add_typer(events_app, name="events")
    app.add_typer(dlq_app, name="dlq")
    app.command("stats")(stats)
