"""`gridloop erase-person CASE`: erase a resident's personal data from a case, for good.

Destroys the case's data key in intake's key store (crypto-shredding). The case's events stay
exactly as stored, so its history, its rates and its hash chain are untouched; its sealed
contact can no longer be opened by anyone, in the stream or in any copy or replay of it. The
erasure is kept (who, when, why from a closed list, an optional ticket reference) without any
personal data.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import asyncpg
import nats
import typer

from gridloop_events.store import EventStore
from gridloop_events.subjects import DEFAULT_PREFIX, Subjects
from gridloop_intake.personal_data import CaseKeys, Erasure, ErasureReason, keys_schema

CASE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REFERENCE = re.compile(r"^[A-Za-z0-9_./:-]{1,128}$")


@dataclass(frozen=True)
class Outcome:
    erasure: Erasure | None  # None: no such case


async def erase_person(nats_url: str, database_url: str, *, prefix: str, intake_schema: str,
                       case_id: str, erased_by: str, reason: ErasureReason,
                       reference: str | None) -> Outcome:
    nc = await nats.connect(nats_url, name="gridloop-erase", max_reconnect_attempts=2)
    try:
        # Only a case the log knows: a mistyped id must not leave a tombstone and a "done".
        if not await EventStore(nc, Subjects(prefix)).read(case_id):
            return Outcome(None)
    finally:
        await nc.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        keys = CaseKeys(pool, schema=keys_schema(intake_schema))
        return Outcome(await keys.erase(case_id, erased_by=erased_by, reason=reason,
                                        reference=reference))
    finally:
        await pool.close()


def erase_person_command(
    case_id: str = typer.Argument(..., metavar="CASE",
                                  help="The case whose reporter's personal data goes."),
    erased_by: str = typer.Option(..., "--by", help="Who orders the erasure (an operator id)."),
    reason: ErasureReason = typer.Option(ErasureReason.resident_request, help="Why."),
    reference: str = typer.Option(None, help="A ticket or order number (no personal data)."),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", envvar="GRIDLOOP_NATS_URL"),
    database_url: str = typer.Option("postgresql://postgres@127.0.0.1:55432/gridloop",
                                     envvar="GRIDLOOP_DATABASE_URL"),
    prefix: str = typer.Option(DEFAULT_PREFIX, envvar="GRIDLOOP_SUBJECT_PREFIX",
                               help="Subject prefix (the stream is <PREFIX>_CASES)."),
    intake_schema: str = typer.Option("intake", envvar="GRIDLOOP_INTAKE_SCHEMA",
                                      help="Intake's schema; its keys live in <schema>_keys."),
) -> None:
    """Erase the reporter's personal data of CASE (crypto-shredding); the case stays."""
    if not CASE_ID.match(case_id):
        typer.echo(f"gridloop erase-person: {case_id!r} is not a case id", err=True)
        raise typer.Exit(2)
    if not erased_by.strip() or len(erased_by) > 128:
        typer.echo("gridloop erase-person: --by must be 1 to 128 characters", err=True)
        raise typer.Exit(2)
    if reference is not None and not REFERENCE.match(reference):
        typer.echo("gridloop erase-person: --reference: letters, digits and _./:- only", err=True)
        raise typer.Exit(2)
    try:
        outcome = asyncio.run(erase_person(
            nats_url, database_url, prefix=prefix, intake_schema=intake_schema, case_id=case_id,
            erased_by=erased_by.strip(), reason=reason, reference=reference))
    except Exception as exc:  # noqa: BLE001 - an operator needs the reason, not a traceback
        typer.echo(f"gridloop erase-person: could not erase: {type(exc).__name__}: {exc}",
                   err=True)
        raise typer.Exit(2) from exc
    if outcome.erasure is None:
        typer.echo(f"gridloop erase-person: no case {case_id} in the log", err=True)
        raise typer.Exit(1)
    e = outcome.erasure
    when = e.erased_at.isoformat()
    if e.already:
        typer.echo(f"case {case_id}: personal data already erased at {when} by {e.erased_by} "
                   f"({e.reason})")
    else:
        typer.echo(f"case {case_id}: personal data erased at {when} by {e.erased_by} "
                   f"({e.reason}); the case's events are unchanged")


def register(app: typer.Typer) -> None:
    app.command("erase-person")(erase_person_command)
