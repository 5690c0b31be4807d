"""The operators' commands against the four real services on real NATS JetStream and PostgreSQL.

The services run as processes; a closed loop goes round through them: the people's steps
(report, accept, close, rate) are appended to the log as the APIs would append them, and the
services do the rest (dispatch triages and dispatches, feedback schedules the callback,
escalation keeps the timers). Then every command is run through the CLI as an operator would,
and each of its figures is checked against what the log and the live tables independently say.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from itertools import takewhile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from typer.testing import CliRunner

from gridloop_cli.main import app
from gridloop_district import default_district
from gridloop_events import testing
from gridloop_events.auth_keys import Issuer, KeyFolder
from gridloop_events.catalogue import (
    CallbackRated,
    CaseAccepted,
    CaseClosed,
    CaseReported,
    GridPath,
    Location,
    ProgressNoted,
)
from gridloop_events.commands import execute
from gridloop_events.envelope import Actor, ActorKind, Envelope, Payload, StoredEvent
from gridloop_events.lifecycle import fold
from gridloop_events.rebuild import table_checksum
from gridloop_events.servers import create_database, drop_database, find_free_port
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.vocabulary import CallbackMethod, Outcome, Rating

pytestmark = pytest.mark.timeout(300)

SERVICES = ("intake", "dispatch", "escalation", "feedback")
TABLES = {
    "intake": ("case_state", "cases"),
    "dispatch": ("case_state", "assignment", "triage_queue"),
    "escalation": ("case_state", "timers", "overdue_case", "escalation_dispatch", "report_in"),
    "feedback": ("case_state", "feedback_case", "closure", "callback", "callback_rating",
                 "escalation_dispatch"),
}
LONG_HANDLER = "handler-0123456789"  # longer than the too-narrow column the poison test makes
HOTLINE = Actor(kind=ActorKind.operator, id="op-7", role="hotline")


@dataclass
class Loop:
    """The four services as processes, on one database and one stream of their own."""

    nats_url: str
    database_url: str
    prefix: str
    log_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cases: dict[str, str] = field(default_factory=dict)
    # Every string of the reporters' contacts as the events carry them: none may be printed.
    secrets: set[str] = field(default_factory=set)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def conn_args(self) -> list[str]:
        return ["--nats-url", self.nats_url, "--prefix", self.prefix]

    @property
    def db_args(self) -> list[str]:
        return ["--database-url", self.database_url]

    @property
    def key_dir(self) -> Path:
        return self.log_dir / "keys"

    def token(self, role: str) -> str:
        return Issuer(KeyFolder(self.key_dir).signing_key()).token(role)

    def start(self) -> None:
        # One key before any service starts, so all four trust the one the tests sign with.
        KeyFolder(self.key_dir).ensure()
        env = {**os.environ, "GRIDLOOP_NATS_URL": self.nats_url,
               "GRIDLOOP_DATABASE_URL": self.database_url,
               "GRIDLOOP_SUBJECT_PREFIX": self.prefix, "GRIDLOOP_ENV": "production",
               "GRIDLOOP_AUTH": "dev", "GRIDLOOP_KEY_DIR": str(self.key_dir)}
        for name in SERVICES:
            self.ports[name] = find_free_port()
            env[f"GRIDLOOP_{name.upper()}_PORT"] = str(self.ports[name])
        for name in SERVICES:
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"gridloop_{name}"], env=env, stdout=log,
                    stderr=subprocess.STDOUT)
        for name in SERVICES:
            poll(lambda n=name: self._ready(n), bool, timeout=60)

    def _ready(self, service: str) -> bool:
        if self.procs[service].poll() is not None:
            raise RuntimeError(f"{service} exited:\n{self.logs()[-3000:]}")
        try:
            return httpx.get(f"{self.url(service)}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if until(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s; last: {last}")


def cli(*args: str) -> Any:
    # Wide, so a Rich table is not cut to an 80-column terminal's width.
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# --- reading the truth independently of the CLI ------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(loop: Loop, work: Callable[[EventStore], Any]) -> Any:
    nc = await nats.connect(loop.nats_url)
    try:
        return await work(EventStore(nc, Subjects(loop.prefix)))
    finally:
        await nc.close()


def history(loop: Loop, case_id: str) -> list[StoredEvent]:
    return run(_with_store(loop, lambda store: store.read(case_id)))


def stored_at(loop: Loop) -> dict[int, datetime]:
    """When the server stored each event, by sequence."""
    async def read(store: EventStore) -> dict[int, datetime]:
        return {raw.sequence: raw.stored_at async for raw in store.read_all()}

    return run(_with_store(loop, read))


def last_sequence(loop: Loop) -> int:
    return run(_with_store(loop, lambda store: store.last_sequence()))


def all_cases(loop: Loop) -> set[str]:
    async def read(store: EventStore) -> set[str]:
        return {raw.subject.split(".")[-2] async for raw in store.read_all()}

    return run(_with_store(loop, read))


async def _sql(loop: Loop, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(loop.database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(loop: Loop, query: str, *args: Any) -> list[asyncpg.Record]:
    return run(_sql(loop, query, *args))


async def _checksums(loop: Loop) -> dict[str, str]:
    conn = await asyncpg.connect(loop.database_url)
    try:
        return {s: await table_checksum(conn, s, TABLES[s]) for s in SERVICES}
    finally:
        await conn.close()


def settle(loop: Loop) -> dict[str, str]:
    """Wait until every projection has applied the whole log and nothing moves, then return the
    live tables' checksums."""

    def state() -> tuple[int, list[int]]:
        tip = last_sequence(loop)
        points = [sql(loop, f"SELECT coalesce(max(last_sequence), 0) FROM {s}.checkpoint")[0][0]
                  for s in SERVICES]
        return tip, points

    first = poll(state, lambda st: all(p == st[0] for p in st[1]))
    time.sleep(0.5)
    assert state() == first, "the log moved while settling"
    return run(_checksums(loop))


# --- the people's steps, appended as the services' APIs append them ---------------------------


def step(loop: Loop, case_id: str, payload: Payload, actor: Actor) -> None:
    event = Envelope.new(payload, case_id=case_id, district=default_district().code, actor=actor,
                         correlation_id=f"corr-{case_id}")
    run(_with_store(loop, lambda store: execute(store, case_id, lambda _: [event])))


def report(loop: Loop) -> str:
    district = default_district()
    grid = district.grids[0].code
    case_id = f"C{uuid.uuid4().hex[:12]}"
    path = GridPath(district=district.code, street=grid[:9], community=grid[:12], grid=grid)
    built = testing.reported(case_id, at=datetime.now(UTC), category="CM-0101",
                             location=Location(grid_path=path))
    payload = built.payload
    assert isinstance(payload, CaseReported) and payload.reporter is not None
    # Sealed, the contact's ciphertext and nonce; in clear, its values. Not the key's id (the
    # case id) nor the algorithm's name, which say nothing about the resident.
    contact = payload.reporter.model_dump(exclude={"key_id", "alg"})
    loop.secrets |= {v for v in _strings(contact) if v}
    loop.secrets |= {v for v in _strings(testing.RESIDENT.model_dump()) if v}
    step(loop, case_id, payload, HOTLINE)
    return case_id


def _strings(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings(v)]
    return [data] if isinstance(data, str) else []


def reacted(loop: Loop, case_id: str, event_type: str) -> StoredEvent:
    """The service's reaction, once it is in the log."""
    found = poll(lambda: [s for s in history(loop, case_id)
                          if s.envelope.event_type == event_type], bool)
    return found[-1]


def dispatched_unit(loop: Loop, case_id: str) -> str:
    return reacted(loop, case_id, "CaseDispatched").envelope.payload.unit_code  # type: ignore[attr-defined]


def accept(loop: Loop, case_id: str, handler: str) -> None:
    unit = dispatched_unit(loop, case_id)
    step(loop, case_id, CaseAccepted(unit_code=unit, handler_id=handler),
         Actor(kind=ActorKind.grid_worker, id=handler))


def assert_private(loop: Loop, text: str) -> None:
    assert loop.secrets
    for secret in loop.secrets:
        assert secret not in text


@pytest.fixture(scope="module")
def loop(nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Loop]:
    name = f"t_operate_{uuid.uuid4().hex[:10]}"
    db = create_database(database_url, name)
    the_loop = Loop(nats_url, db, f"t_operate_{uuid.uuid4().hex[:8]}",
                    tmp_path_factory.mktemp("operate"))
    try:
        the_loop.start()
        # Case "done": the whole loop, rated satisfied.
        done = report(the_loop)
        accept(the_loop, done, "gw-1")
        step(the_loop, done, CaseClosed(outcome=Outcome.resolved, resolution="已清理楼道杂物",
                                        closed_by="gw-1", unit_code=dispatched_unit(the_loop, done)),
             Actor(kind=ActorKind.grid_worker, id="gw-1"))
        reacted(the_loop, done, "CallbackScheduled")
        step(the_loop, done, CallbackRated(rating=Rating.satisfied, handled_lawfully=True,
                                           measures_carried_out=True, party_accepts=True,
                                           method=CallbackMethod.phone, rated_by="callback-1"),
             Actor(kind=ActorKind.operator, id="callback-1"))
        # Case "held": accepted, its resolve deadline a day away, so nothing moves.
        held = report(the_loop)
        accept(the_loop, held, "gw-2")
        the_loop.cases = {"done": done, "held": held}
        settle(the_loop)
        yield the_loop
    finally:
        the_loop.stop()
        drop_database(database_url, name)


# --- replay ------------------------------------------------------------------------------------


def test_replay_each_projection_equals_the_live_tables(loop: Loop) -> None:
    live = settle(loop)
    tip = last_sequence(loop)
    for service in SERVICES:
        result = cli("replay", service, "--json", *loop.conn_args, *loop.db_args)
        assert result.exit_code == 0, result.output
        [replayed] = json.loads(result.stdout)
        assert replayed["schema"] == service and replayed["swapped"] is True
        assert replayed["checksum"] == live[service], service
        assert replayed["last_sequence"] == tip
        assert replayed["events"] == tip  # every projection here takes every event
        assert replayed["events_per_second"] > 0
    # The swapped-in tables are the live ones, and the runners carry on on them.
    assert settle(loop) == live
    # Again by two processes, each a share of the partitions: the same tables.
    text = cli("replay", "all", "--workers", "2", *loop.conn_args, *loop.db_args)
    assert text.exit_code == 0, text.output
    for service in SERVICES:
        assert f"checksum {live[service]}" in text.stdout
        assert f"schema {service}: rebuilt and swapped in atomically" in text.stdout
    assert "events/s" in text.stdout
    # The live runners carry on on the swapped-in tables.
    fresh = report(loop)
    accept(loop, fresh, "gw-5")
    loop.cases["fresh"] = fresh
    settle(loop)
    assert sql(loop, "SELECT status FROM intake.cases WHERE case_id = $1",
               fresh)[0]["status"] == "accepted"


def test_replay_to_seq_and_to_time_build_the_past_beside_the_live_tables(loop: Loop) -> None:
    live = settle(loop)
    events = history(loop, loop.cases["done"])
    accepted = next(s for s in events if s.envelope.event_type == "CaseAccepted")
    before = accepted.sequence - 1

    result = cli("replay", "intake", "--to-seq", str(before), "--json",
                 *loop.conn_args, *loop.db_args)
    assert result.exit_code == 0, result.output
    [past] = json.loads(result.stdout)
    assert past["schema"] == "intake_asof" and past["swapped"] is False
    assert past["last_sequence"] == before
    then = sql(loop, "SELECT status, handler_id FROM intake_asof.cases WHERE case_id = $1",
               loop.cases["done"])
    assert [tuple(r) for r in then] == [("dispatched", None)]
    now = sql(loop, "SELECT status FROM intake.cases WHERE case_id = $1", loop.cases["done"])
    assert now[0]["status"] == "done"
    # The second case was not reported yet at that point.
    assert sql(loop, "SELECT 1 FROM intake_asof.cases WHERE case_id = $1",
               loop.cases["held"]) == []

    moment = stored_at(loop)[accepted.sequence]
    result = cli("replay", "feedback", "--to-time", moment.isoformat(), "--schema",
                 "feedback_then", "--json", *loop.conn_args, *loop.db_args)
    assert result.exit_code == 0, result.output
    [then_] = json.loads(result.stdout)
    assert then_["schema"] == "feedback_then" and then_["last_sequence"] == accepted.sequence
    state = sql(loop, "SELECT state->>'status' AS s FROM feedback_then.case_state "
                "WHERE case_id = $1", loop.cases["done"])
    assert state[0]["s"] == "accepted"
    text = cli("replay", "feedback", "--to-time", moment.isoformat(), "--schema",
               "feedback_then", *loop.conn_args, *loop.db_args)
    assert "schema feedback_then: history as of stored at or before" in text.stdout
    assert f"checksum {then_['checksum']}" in text.stdout
    assert settle(loop) == live  # the live tables were not touched


# --- case show ---------------------------------------------------------------------------------


def test_case_show_tells_the_timeline_and_the_state_without_personal_data(loop: Loop) -> None:
    case_id = loop.cases["done"]
    events = history(loop, case_id)

    result = cli("case", "show", case_id, "--json", *loop.conn_args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["state"]["status"] == "done" and shown["events"] == len(events)
    assert shown["state"]["version"] == events[-1].sequence == fold(events).version
    assert [e["sequence"] for e in shown["timeline"]] == [s.sequence for s in events]
    assert [e["event_type"] for e in shown["timeline"]] == [s.envelope.event_type for s in events]
    dispatch = next(e for e in shown["timeline"] if e["event_type"] == "CaseDispatched")
    assert dispatch["caused_by"] == f"#{events[0].sequence} CaseReported"
    assert dispatch["actor"]["kind"] == "system"
    assert "reporter" not in shown["timeline"][0]["payload"]
    assert shown["timeline"][0]["payload"]["category_code"] == events[0].envelope.payload.category_code

    text = cli("case", "show", case_id, *loop.conn_args)
    assert text.exit_code == 0, text.output
    assert f"case {case_id}: {len(events)} events" in text.stdout
    assert "status               done" in text.stdout
    assert f"<- #{events[0].sequence} CaseReported" in text.stdout
    assert "rated satisfied by phone" in text.stdout
    assert_private(loop, text.stdout + result.stdout)

    # As of just before the acceptance was stored: dispatched, with its accept deadline.
    accepted = next(s for s in events if s.envelope.event_type == "CaseAccepted")
    times = stored_at(loop)
    moment = times[accepted.sequence] - timedelta(microseconds=1)
    result = cli("case", "show", case_id, "--as-of", moment.isoformat(), "--json", *loop.conn_args)
    assert result.exit_code == 0, result.output
    then = json.loads(result.stdout)
    expected = list(takewhile(lambda s: times[s.sequence] <= moment, events))
    assert then["events"] == len(expected) and then["later_events"] == len(events) - len(expected)
    assert then["state"]["status"] == "dispatched" and "accept" in then["state"]["deadlines"]
    text = cli("case", "show", case_id, "--as-of", moment.isoformat(), *loop.conn_args)
    assert "status               dispatched" in text.stdout
    assert "stored later, not shown" in text.stdout

    missing = cli("case", "show", "no-such-case", *loop.conn_args)
    assert missing.exit_code == 1 and "no events for case no-such-case" in missing.output


# --- events tail -------------------------------------------------------------------------------


def _tail(loop: Loop, *args: str) -> list[dict[str, Any]]:
    result = cli("events", "tail", "--json", *args, *loop.conn_args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_events_tail_filters_and_never_shows_personal_data(loop: Loop) -> None:
    tip = last_sequence(loop)
    everything = _tail(loop)
    assert [e["sequence"] for e in everything] == list(range(1, tip + 1))
    reports = _tail(loop, "--type", "CaseReported")
    assert {e["case_id"] for e in reports} == set(loop.cases.values())
    assert all(e["event_type"] == "CaseReported" and "reporter" not in e["payload"]
               for e in reports)
    one_case = _tail(loop, "--case", loop.cases["done"])
    assert [e["sequence"] for e in one_case] == [s.sequence for s in history(loop, loop.cases["done"])]
    district = everything[0]["district"]
    assert len(_tail(loop, "--district", district)) == tip
    assert _tail(loop, "--district", "999999") == []
    assert [e["sequence"] for e in _tail(loop, "--from-seq", str(tip - 2))] == [tip - 2, tip - 1, tip]

    text = cli("events", "tail", "--type", "CaseReported", *loop.conn_args)
    assert text.exit_code == 0
    assert len(text.stdout.splitlines()) == len(reports)
    assert all(" CaseReported " in line for line in text.stdout.splitlines())
    assert_private(loop, text.stdout + json.dumps(everything, ensure_ascii=False))


def test_events_tail_follow_prints_events_as_they_arrive(loop: Loop) -> None:
    tip = last_sequence(loop)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridloop_cli.main", "events", "tail", "--follow", "--json",
         "--type", "CaseReported", "--from-seq", str(tip + 1), *loop.conn_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # the consumer is in place before the new report
        new = report(loop)
        loop.cases["followed"] = new
        assert proc.stdout is not None
        arrived = json.loads(proc.stdout.readline())
        assert arrived["case_id"] == new and arrived["event_type"] == "CaseReported"
        assert arrived["sequence"] > tip and "reporter" not in arrived["payload"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert_private(loop, out.decode())
    accept(loop, new, "gw-3")
    settle(loop)


# --- audit -------------------------------------------------------------------------------------


def test_audit_verify_passes_on_the_intact_log(loop: Loop) -> None:
    result = cli("audit", "verify", "--all", *loop.conn_args)
    assert result.exit_code == 0, result.output
    assert "NOT intact" not in result.stdout and "FINDING" not in result.stdout
    data = json.loads(cli("audit", "verify", "--json", *loop.conn_args).stdout)
    assert data["ok"] is True and data["findings"] == []
    assert data["events"] == last_sequence(loop) and data["cases"] == len(all_cases(loop))
    assert f"anchor {data['anchor']}" in result.stdout and len(data["anchor"]) == 64
    one = cli("audit", "verify", "--case", loop.cases["done"], "--json", *loop.conn_args)
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["events"] == len(
        history(loop, loop.cases["done"]))
    unknown = cli("audit", "verify", "--case", "no-such-case", *loop.conn_args)
    assert unknown.exit_code == 1, unknown.output

    down = cli("audit", "verify", "--nats-url", f"nats://127.0.0.1:{find_free_port()}",
               "--prefix", loop.prefix)
    assert down.exit_code == 2 and "does not answer" in down.output
    wrong = cli("audit", "verify", "--nats-url", loop.nats_url, "--prefix", "t_no_such_prefix")
    assert wrong.exit_code == 2 and "no stream T_NO_SUCH_PREFIX_CASES" in wrong.output


# --- dead letters ------------------------------------------------------------------------------


def _dead(loop: Loop, *args: str) -> list[dict[str, Any]]:
    result = cli("dlq", "list", "--json", *args, *loop.db_args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _poisoned_accept(loop: Loop) -> tuple[str, int]:
    """A case whose CaseAccepted intake's projection genuinely cannot apply."""
    case_id = report(loop)
    accept(loop, case_id, LONG_HANDLER)
    seq = next(s.sequence for s in history(loop, case_id)
               if s.envelope.event_type == "CaseAccepted")
    poll(lambda: _dead(loop, "--projection", "intake"),
         lambda rows: any(r["sequence"] == seq for r in rows))
    return case_id, seq


def test_dlq_list_show_and_retry_a_genuinely_poisoned_event(loop: Loop) -> None:
    settle(loop)
    assert _dead(loop) == []
    # A migration made a column too narrow: intake's projection fails on a longer handler id.
    sql(loop, "ALTER TABLE intake.cases ALTER COLUMN handler_id TYPE varchar(8)")
    try:
        case_id, seq = _poisoned_accept(loop)
        [row] = _dead(loop)
        assert (row["schema"], row["case_id"], row["event_type"]) == ("intake", case_id,
                                                                      "CaseAccepted")
        assert "too long" in row["error"] and row["retried_at"] is None
        listed = cli("dlq", "list", *loop.db_args)
        assert str(seq) in listed.stdout and case_id in listed.stdout

        shown = cli("dlq", "show", str(seq), "--json", *loop.conn_args, *loop.db_args)
        assert shown.exit_code == 0, shown.output
        detail = json.loads(shown.stdout)
        assert detail["event"]["payload"]["handler_id"] == LONG_HANDLER
        assert detail["event"]["sequence"] == seq and "too long" in detail["error"]
        text = cli("dlq", "show", str(seq), *loop.conn_args, *loop.db_args)
        assert "CaseAccepted  by" in text.stdout and "too long" in text.stdout

        # Not fixed yet: the retry fails again and says why; nothing changes.
        again = cli("dlq", "retry", str(seq), *loop.conn_args, *loop.db_args)
        assert again.exit_code == 1 and "too long" in again.output
        assert _dead(loop)[0]["retried_at"] is None
        stuck = sql(loop, "SELECT status FROM intake.cases WHERE case_id = $1", case_id)
        assert stuck[0]["status"] == "dispatched"

        # A second poisoned case that moves on before the fix: a retry would fold it out of
        # order, so it is refused and the replay is what repairs it.
        moved_id, moved_seq = _poisoned_accept(loop)
        step(loop, moved_id, ProgressNoted(author_id="gw-4", note="已到现场"),
             Actor(kind=ActorKind.grid_worker, id="gw-4"))
        settle(loop)
    finally:
        sql(loop, "ALTER TABLE intake.cases ALTER COLUMN handler_id TYPE text")

    fixed = cli("dlq", "retry", str(seq), "--projection", "intake", *loop.conn_args,
                *loop.db_args)
    assert fixed.exit_code == 0, fixed.output
    assert f"sequence {seq} (CaseAccepted of case {case_id}) applied to intake" in fixed.stdout
    now = sql(loop, "SELECT status, handler_id FROM intake.cases WHERE case_id = $1", case_id)
    assert tuple(now[0]) == ("accepted", LONG_HANDLER)
    # The same fold as every other projection's, which applied the event in stream order.
    assert sql(loop, "SELECT state FROM intake.case_state WHERE case_id = $1", case_id) == sql(
        loop, "SELECT state FROM dispatch.case_state WHERE case_id = $1", case_id)
    row_after_retry = sql(loop, "SELECT c::text FROM intake.cases c WHERE case_id = $1", case_id)
    assert [r["sequence"] for r in _dead(loop)] == [moved_seq]
    retried = next(r for r in _dead(loop, "--all") if r["sequence"] == seq)
    assert retried["retried_at"] is not None
    twice = cli("dlq", "retry", str(seq), *loop.conn_args, *loop.db_args)
    assert twice.exit_code == 1 and "already retried" in twice.output

    refused = cli("dlq", "retry", str(moved_seq), *loop.conn_args, *loop.db_args)
    assert refused.exit_code == 1 and "out of order" in refused.output
    assert sql(loop, "SELECT status FROM intake.cases WHERE case_id = $1",
               moved_id)[0]["status"] == "dispatched"

    # The retried case is exactly what a replay gives; the replay also repairs the other one.
    before = settle(loop)
    replayed = cli("replay", "intake", "--json", *loop.conn_args, *loop.db_args)
    assert replayed.exit_code == 0, replayed.output
    after = sql(loop, "SELECT status, handler_id FROM intake.cases WHERE case_id = ANY($1)",
                [case_id, moved_id])
    assert {tuple(r) for r in after} == {("accepted", LONG_HANDLER)}
    assert sql(loop, "SELECT c::text FROM intake.cases c WHERE case_id = $1",
               case_id) == row_after_retry
    assert json.loads(replayed.stdout)[0]["checksum"] != before["intake"]  # moved_id repaired
    assert _dead(loop) == []


# --- stats -------------------------------------------------------------------------------------


def test_stats_shows_the_feedback_figures(loop: Loop) -> None:
    token = loop.token("auditor")
    body = httpx.get(f"{loop.url('feedback')}/v1/stats", params={"group_by": "district"},
                     headers={"Authorization": f"Bearer {token}"}).json()
    total = body["total"]
    # One rating (satisfied) of one closure: the fixture's first case.
    assert (total["satisfaction"]["numerator"], total["satisfaction"]["denominator"]) == (1, 1)
    result = cli("stats", "--url", loop.url("feedback"), "--token", token, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == body
    table = cli("stats", "--url", loop.url("feedback"), "--token", token)
    assert table.exit_code == 0, table.output
    assert "satisfaction" in table.stdout and "total" in table.stdout
    resolution = total["resolution"]
    assert f"{resolution['numerator']}/{resolution['denominator']}" in table.stdout
    assert "1/1  100.0%" in table.stdout
    down = cli("stats", "--url", f"http://127.0.0.1:{find_free_port()}")
    assert down.exit_code == 2 and "does not answer" in down.output
    anonymous = cli("stats", "--url", loop.url("feedback"))
    assert anonymous.exit_code == 1 and "401" in anonymous.output
    bad = cli("stats", "--url", loop.url("feedback"), "--token", token, "--from", "2026-13")
    assert bad.exit_code == 1 and "422" in bad.output


def test_no_personal_data_in_any_service_log(loop: Loop) -> None:
    logs = loop.logs()
    assert loop.cases["done"] in logs
    assert_private(loop, logs)
