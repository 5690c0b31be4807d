"""Playing a drawn history through the four services, and comparing read models row for row."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
from case_histories import Miss, Step, case_steps, misses, reports
from four_services import DISTRICT, SERVICES, Moment, System, primary_key, projection_of
from gridloop_events.codec import decode
from gridloop_events.rebuild import rebuild
from hypothesis import event
from hypothesis import strategies as st


@dataclass
class Played:
    """What a history did: its lines (for the report of a failing example) and its moments."""

    lines: list[str] = field(default_factory=list)
    moments: list[Moment] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(self.lines)


async def send(system: System, step: Step) -> httpx.Response:
    client = system.clients[step.service]
    headers = {"X-Actor-Id": "property-test"}
    if system.tokens is not None:
        headers.update(caller(system, step))
    return await client.post(step.path, json=step.body, headers=headers)


def caller(system: System, step: Step) -> dict[str, str]:
    """Who a deployment lets give this command, as a bearer token naming the body's person."""
    tokens = system.tokens
    assert tokens is not None
    body = step.body
    if step.action in ("accept", "return", "extension"):
        return tokens.headers("unit_handler", body["handler_id"], body["unit_code"])
    if step.action == "close":
        return tokens.headers("unit_handler", body.get("closed_by"), step.unit)
    if step.action == "decide":
        return tokens.headers("supervisor", body["supervisor_id"])
    if step.action == "notes":
        return tokens.headers("dispatcher", body["author_id"])
    if step.action == "rate":
        return tokens.headers("dispatcher", body["rated_by"])
    return tokens.headers("dispatcher", "dispatcher-1")  # report, dispatch


async def play(system: System, data: st.DataObject, *, rounds: int,
               moments: bool = False) -> Played:
    """Rounds of commands: a few new reports and at most one command per known case, sent
    together; then the system settles, and may be told a deadline passed. With `moments`, the
    live read models are captured after one to three of the rounds before the last."""
    played = Played()
    capture_after = (data.draw(st.sets(st.integers(0, rounds - 2), min_size=1, max_size=3))
                     if moments else set())
    for r in range(rounds):
        states = await asyncio.gather(*(system.state(c) for c in played.cases))
        new = data.draw(st.integers(2, 4) if r == 0 else st.integers(0, 3))
        steps: list[Step] = [data.draw(reports(DISTRICT)) for _ in range(new)]
        for state in states:
            options = case_steps(state, DISTRICT, played.cases)
            if options is not None:
                step = data.draw(options | st.none())
                if step is not None:
                    steps.append(step)
        responses = await asyncio.gather(*(send(system, s) for s in steps))
        for step, response in zip(steps, responses, strict=True):
            if step.case is None and response.status_code == 201:
                case_id = response.json()["case_id"]
                played.cases.append(case_id)
                played.names[case_id] = f"case{len(played.cases)}"
                step = Step(**{**step.__dict__, "case": case_id})
            event(f"command: {step.action}")
            played.lines.append(f"round {r}: {step.describe(played.names)} -> "
                                f"{response.status_code}")
            # Each command was drawn for the state the log gives: refusing it means a service
            # disagrees with the shared lifecycle about what is allowed.
            assert response.status_code in (200, 201), (
                f"{step.describe(played.names)} refused: {response.text}\n{played.text()}")
        await system.settle()

        states = await asyncio.gather(*(system.state(c) for c in played.cases))
        candidates = misses(list(states))
        if candidates is not None:
            miss: Miss | None = data.draw(st.none() | st.none() | candidates)
            if miss is not None:
                event(f"deadline passed: {miss.kind.value}")
                played.lines.append(f"round {r}: {miss.describe(played.names)}")
                await system.pass_deadline(miss.due_at)
        if r in capture_after:
            moment = await system.moment()
            played.moments.append(moment)
            played.lines.append(f"round {r}: moment {len(played.moments)} captured at "
                                f"sequence {moment.sequence}, {moment.at.isoformat()}")
    await system.settle()
    return played


async def rebuilt_tables(system: System, service: str, target: str,
                         **until: Any) -> dict[str, list[dict[str, Any]]]:
    """`rebuild` of the service's projection class from the stream into schema `target`."""
    projection = projection_of(service, service)
    await rebuild(system.pool, system.store, projection, projection.tables,
                  target_schema=target, **until)
    return await system.tables(service, target)


async def differences(system: System, service: str, live: dict[str, list[dict[str, Any]]],
                      rebuilt: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Row-level differences, by primary key: rows only on one side, and for rows on both,
    the columns whose values differ."""
    out: list[str] = []
    async with system.pool.acquire() as conn:
        for table in live:
            if live[table] == rebuilt[table]:
                continue
            key = await primary_key(conn, service, table)

            def by_key(rows: list[dict[str, Any]], key: list[str] = key
                       ) -> dict[tuple[Any, ...], dict[str, Any]]:
                return {tuple(r[k] for k in key): r for r in rows}

            a, b = by_key(live[table]), by_key(rebuilt[table])
            for k in sorted(set(a) | set(b), key=repr):
                where = f"{service}.{table} {dict(zip(key, k, strict=True))}"
                if k not in b:
                    out.append(f"{where}: only live: {a[k]}")
                elif k not in a:
                    out.append(f"{where}: only rebuilt: {b[k]}")
                elif a[k] != b[k]:
                    cols = [c for c in a[k] if a[k][c] != b[k].get(c)]
                    out.append(f"{where}: " + "; ".join(
                        f"{c}: live={a[k][c]!r} rebuilt={b[k][c]!r}" for c in cols))
    return out


async def compare(system: System, label: str,
                  expected: dict[str, dict[str, list[dict[str, Any]]]],
                  actual: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    out = []
    for service in SERVICES:
        for line in await differences(system, service, expected[service], actual[service]):
            out.append(f"[{label}] {line}")
    return out


async def out_of_order_stamps(system: System, moment: Moment, names: dict[str, str],
                              most: int = 6) -> list[str]:
    """Events on the wrong side of `moment.at` by their recorded_at: appended by then but
    stamped later, or appended after it but stamped earlier. `rebuild(to_time=...)` cuts the
    stream at the first event stamped after the time, so either kind moves the cut."""
    late: list[str] = []
    early: list[str] = []
    async for seq, _, data, *_ in system.store.read_all(1, await system.store.last_sequence()):
        e = decode(data, system.store.registry)
        line = (f"#{seq} {e.event_type} of {names.get(e.case_id, e.case_id)} by {e.actor.id}: "
                f"recorded_at {e.recorded_at.isoformat()}, occurred_at "
                f"{e.occurred_at.isoformat()}")
        if seq <= moment.sequence and e.recorded_at > moment.at:
            late.append(line)
        elif seq > moment.sequence and e.recorded_at <= moment.at:
            early.append(line)
    out = []
    if late:
        out.append(f"appended by #{moment.sequence} but stamped after {moment.at.isoformat()} "
                   f"({len(late)}):")
        out += [f"  {x}" for x in late[:most]]
    if early:
        out.append(f"appended after #{moment.sequence} but stamped by {moment.at.isoformat()} "
                   f"({len(early)}):")
        out += [f"  {x}" for x in early[:most]]
    return out


def capped(lines: list[str], most: int = 40) -> list[str]:
    return lines if len(lines) <= most else [*lines[:most], f"... and {len(lines) - most} more"]
