"""`gridloop audit verify` detects a rewritten log, and names the case and the position.

Detection is proved by actually rewriting stored data: the bytes of one event in NATS's own
message block file on disk, with the server stopped; and a copy of the log with one event left
out or two swapped, as someone with write access to the server could make.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from gridloop_cli.main import app
from gridloop_events import testing
from gridloop_events.envelope import Envelope
from gridloop_events.servers import LocalNats
from gridloop_events.store import CONTENT_HASH_HEADER, EventStore
from gridloop_events.subjects import Subjects

pytestmark = pytest.mark.timeout(120)


def audit(nats_url: str, prefix: str) -> tuple[int, dict[str, Any], str]:
    """Exit code, the JSON report and the text report."""
    runner = CliRunner()
    args = ["audit", "verify", "--all", "--nats-url", nats_url, "--prefix", prefix]
    as_json = runner.invoke(app, [*args, "--json"])
    as_text = runner.invoke(app, args)
    assert as_json.exit_code == as_text.exit_code, as_text.output
    return as_json.exit_code, json.loads(as_json.stdout), as_text.stdout


def a_case(case_id: str) -> list[Envelope]:
    """Reported, dispatched, accepted, closed: four events, each linking to the one before."""
    report = testing.reported(case_id)
    dispatch = testing.dispatched(report)
    accept = testing.accepted(dispatch)
    return [report, dispatch, accept, testing.closed(accept)]


async def write(nats_url: str, prefix: str, cases: dict[str, list[Envelope]]) -> None:
    nc = await nats.connect(nats_url)
    try:
        store = EventStore(nc, Subjects(prefix))
        await store.ensure_stream()
        for case_id, events in cases.items():
            version = 0
            for event in events:  # one at a time: each append chains to the case's last hash
                version = await store.append(case_id, [event], version)
    finally:
        await nc.close()


def findings(report: dict[str, Any]) -> set[tuple[str, int]]:
    return {(f["case_id"], f["position"]) for f in report["findings"]}


def test_a_byte_changed_in_the_stored_block_file_is_named(tmp_path: Path) -> None:
    prefix = "tamper"
    server = LocalNats(tmp_path / "nats")
    server.start()
    try:
        asyncio.run(write(server.url, prefix, {"case-T": a_case("case-T"),
                                               "case-U": a_case("case-U")[:2]}))
        code, before, _ = audit(server.url, prefix)
        assert code == 0 and before["events"] == 6 and before["findings"] == []
        assert before["missing_sequences"] == [] and before["unreadable"] == []

        server.stop()
        [block] = list(server.store_dir.glob("*/streams/TAMPER_CASES/msgs/*.blk"))
        data = block.read_bytes()
        # Case T's acceptance (its event #2): who accepted it is rewritten, same length.
        accepted = b'"handler_id":"gw-1"'
        assert data.count(accepted) == 1
        data = data.replace(accepted, b'"handler_id":"gw-9"')
        # Case U's last event, its dispatch (the stream's last message): no later event of the
        # case links to it, so only the stream's sequence numbers can tell.
        reason = b'"reason":"triage'
        at = data.rindex(reason)
        data = data[:at] + b'"reason":"TRIAGE' + data[at + len(reason):]
        block.write_bytes(data)
        server.start()

        code, after, text = audit(server.url, prefix)
    finally:
        server.stop()
    # nats-server keeps its own checksum per message and stops serving a record that fails it
    # (2.14 does so silently, the stream still counting it). The chain of case T then breaks at
    # its event #2 ...
    assert code == 1
    assert findings(after) == {("case-T", 2)}
    assert "FINDING case case-T event #2" in text and "NOT intact" in text
    # ... and the sequences no longer served are named with their cases — the tail of case U
    # too, which no chain could show: nothing of case U comes after it.
    assert after["missing_sequences"] == [3, 6]
    assert {(u["case_id"], u["event_type"]) for u in after["unreadable"]} == {
        ("case-T", "CaseAccepted"), ("case-U", "CaseDispatched")}
    assert "FINDING sequence 3 missing from the stream" in text
    assert "FINDING case case-U an event: a CaseDispatched the stream holds cannot be read" in text


async def copy_stream(nats_url: str, source: str, target: str, order: list[int]) -> None:
    """Copy the source log into a fresh stream, in `order` of source sequences (so some can be
    left out or swapped), bytes and content-hash headers exactly as stored."""
    nc = await nats.connect(nats_url)
    try:
        src = EventStore(nc, Subjects(source))
        raws = {raw.sequence: raw async for raw in src.read_all()}
        dst = EventStore(nc, Subjects(target))
        await dst.ensure_stream()
        for seq in order:
            raw = raws[seq]
            subject = target + raw.subject[len(source):]
            await dst.js.publish(subject, raw.data,
                                 headers={CONTENT_HASH_HEADER: raw.headers[CONTENT_HASH_HEADER]})
    finally:
        await nc.close()


def test_an_event_left_out_or_two_swapped_are_named(nats_url: str) -> None:
    source = f"t_src_{uuid.uuid4().hex[:10]}"
    # Sequences: case X 1-4, case Y 5-6.
    asyncio.run(write(nats_url, source, {"case-X": a_case("case-X"), "case-Y": a_case("case-Y")[:2]}))
    code, intact, _ = audit(nats_url, source)
    assert code == 0 and intact["events"] == 6

    faithful = f"t_copy_{uuid.uuid4().hex[:10]}"
    asyncio.run(copy_stream(nats_url, source, faithful, [1, 2, 3, 4, 5, 6]))
    code, copied, _ = audit(nats_url, faithful)
    assert code == 0 and copied["anchor"] == intact["anchor"]  # the copy itself is faithful

    removed = f"t_rm_{uuid.uuid4().hex[:10]}"
    asyncio.run(copy_stream(nats_url, source, removed, [1, 3, 4, 5, 6]))  # X's dispatch gone
    code, report, text = audit(nats_url, removed)
    assert code == 1 and findings(report) == {("case-X", 1)}
    assert "FINDING case case-X event #1" in text

    first_gone = f"t_rm0_{uuid.uuid4().hex[:10]}"
    asyncio.run(copy_stream(nats_url, source, first_gone, [1, 2, 3, 4, 6]))  # Y's report gone
    code, report, _ = audit(nats_url, first_gone)
    assert code == 1 and findings(report) == {("case-Y", 0)}
    assert "events removed" in report["findings"][0]["problem"]

    swapped = f"t_swap_{uuid.uuid4().hex[:10]}"
    asyncio.run(copy_stream(nats_url, source, swapped, [1, 3, 2, 4, 5, 6]))  # X's #1 and #2
    code, report, text = audit(nats_url, swapped)
    assert code == 1 and ("case-X", 1) in findings(report)
    assert {case for case, _ in findings(report)} == {"case-X"}
    assert "FINDING case case-X event #1" in text
