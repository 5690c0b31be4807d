"""docs/examples/subscriber.py, run as another system would run it: a separate process on a real
NATS, reading public events the real republisher published, resuming after a restart without
printing anything twice, and refusing (not acknowledging) an event that breaks the schema."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import sys
from pathlib import Path

import nats
import pytest_asyncio

from gridloop_events.codec import encode
from gridloop_events.public_view import PublicView
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects

from test_public_view import NAME, PHONE, append_case, case_loop, public_messages

SUBSCRIBER = Path(__file__).resolve().parents[2] / "docs" / "examples" / "subscriber.py"


@pytest_asyncio.fixture
async def published(nats_url: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    store = EventStore(nc, Subjects(fresh_stream_prefix))
    await store.ensure_stream()
    view = PublicView(nc, store, fetch_timeout=0.2)

    async def publish(cases: int) -> list[str]:
        """Record `cases` full loops and let the real republisher publish them; the lines the
        subscriber should print for them."""
        await view.ensure_stream()
        before = len(await public_messages(view))
        for _ in range(cases):
            await append_case(store, case_loop())
        await view.start()
        try:
            await view.wait_caught_up()
        finally:
            await view.stop()
        lines = []
        for msg in (await public_messages(view))[before:]:
            e = json.loads(msg.data)
            lines.append(f"{msg.seq} {e['district']} {e['case_id']} {e['event_type']} "
                         f"v{e['schema_version']} {e['occurred_at']} ")
        return lines

    yield store, view, publish
    for stream in (store.stream, view.stream):
        await store.js.delete_stream(stream)
    await nc.close()


async def subscriber(nats_url: str, prefix: str, *extra: str) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SUBSCRIBER), "--nats-url", nats_url, "--prefix", prefix,
        "--durable", "supervision-office", "--idle-exit", "1", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode().splitlines(), err.decode()


def test_the_example_needs_only_nats_py_and_jsonschema() -> None:
    tree = ast.parse(SUBSCRIBER.read_text(encoding="utf-8"))
    roots = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"nats", "jsonschema"}


async def test_subscriber_prints_validated_events_and_resumes_after_restart(
    nats_url: str, published
) -> None:  # type: ignore[no-untyped-def]
    store, view, publish = published
    prefix = store.subjects.prefix
    first = await publish(2)
    code, lines, err = await subscriber(nats_url, prefix)
    assert code == 0, err
    assert len(lines) == len(first) == 10
    for line, expected in zip(lines, first, strict=True):
        assert line.startswith(expected), (line, expected)
    assert lines[0].endswith("category=CM-0101 severity=normal")
    assert lines[4].endswith("rating=satisfied")
    assert not any(secret in "\n".join(lines) for secret in (NAME, PHONE))

    # Restarted with new events waiting: it prints those, and only those.
    second = await publish(1)
    code, lines, err = await subscriber(nats_url, prefix)
    assert code == 0, err
    assert [line.split(" ")[:4] for line in lines] == [e.split(" ")[:4] for e in second]
    assert [int(line.split(" ")[0]) for line in lines] == list(range(11, 16))

    # Another district's subscriber (its own durable) sees none of them.
    code, lines, _ = await subscriber(nats_url, prefix, "--district", "110101",
                                      "--durable", "other-district")
    assert code == 0 and lines == []

    # Running as a service, stopped with SIGTERM: it exits cleanly and keeps its place.
    third = await publish(1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SUBSCRIBER), "--nats-url", nats_url, "--prefix", prefix,
        "--durable", "supervision-office", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    printed = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in third]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert [p.split(" ")[0] for p in printed] == [e.split(" ")[0] for e in third]
    code, lines, _ = await subscriber(nats_url, prefix)
    assert (code, lines) == (0, []), "nothing new: nothing printed"


async def test_subscriber_refuses_an_event_that_breaks_the_public_schema(
    nats_url: str, published
) -> None:  # type: ignore[no-untyped-def]
    store, view, publish = published
    await publish(1)
    code, lines, _ = await subscriber(nats_url, store.subjects.prefix)
    assert code == 0 and len(lines) == 5
    # A full event, personal data and all, put on a public subject by mistake.
    leaked = case_loop()[0]
    subject = view.subjects.event(leaked.district, leaked.case_id, leaked.event_type)
    await store.js.publish(subject, encode(leaked), headers={"Nats-Msg-Id": str(leaked.event_id)})
    for _ in range(2):  # not acknowledged, so not lost: refused again on the next run
        code, lines, err = await subscriber(nats_url, store.subjects.prefix)
        assert code == 3 and lines == [], (code, lines, err)
        assert "is invalid" in err and "reporter" in err and PHONE not in err
