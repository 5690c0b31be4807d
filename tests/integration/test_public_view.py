"""The public view against a real nats-server: residents' personal data never reaches it, each
event is there once and in order, and the republisher resumes exactly where it stopped — after a
stop mid-stream, beside a second republisher, and behind an event only newer code can read."""

from __future__ import annotations

import asyncio
import json
import typing
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pydantic
import pytest
import pytest_asyncio
from nats.js.errors import APIError

from gridloop_events.catalogue import ALL_PAYLOADS, CallbackRated, ReporterContact
from gridloop_events.codec import encode
from gridloop_events.envelope import Actor, Envelope
from gridloop_events.public_view import (
    FREE_TEXT,
    REDACTED_HEADER,
    RESIDENT_ACTOR_ID,
    SOURCE_SEQUENCE_HEADER,
    PublicView,
    mask_contacts,
    redact,
    removed_fields,
    run_public_view,
)
from gridloop_events.service import Runtime, ServiceSettings
from gridloop_events.store import EventStore
from gridloop_events.subjects import Subjects
from gridloop_events.testing import (
    ClosedV2,
    accepted,
    closed,
    closed_v2_registry,
    dispatched,
    reported,
)
from gridloop_events.vocabulary import CallbackMethod, Outcome, Rating

PUBLIC_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "public"
NAME, PHONE, ID_NUMBER = "张三", "13800000000", "370105199001011234"
RESIDENT_ACCOUNT = "wx-openid-8f2c"


# --- helpers shared with test_example_subscriber -------------------------------------------


def case_loop() -> list[Envelope]:
    """One case round the whole loop, with personal data where residents put it."""
    r = reported(
        description=f"楼道堆放杂物，堵塞消防通道。请回电 {PHONE} 或 0531-88886666",
        reporter=ReporterContact(name=NAME, phone=PHONE, id_number=ID_NUMBER,
                                 contact_note="晚上七点后在家"),
    )
    d = dispatched(r)
    a = accepted(d)
    c = closed(a)
    rated = c.caused(
        CallbackRated(rating=Rating.satisfied, handled_lawfully=True, measures_carried_out=True,
                      party_accepts=True, method=CallbackMethod.phone,
                      comment=f"{NAME}很满意，谢谢网格员", rated_by="op-7"),
        actor=Actor(kind="resident", id=RESIDENT_ACCOUNT),
        purpose="rate",
    )
    return [r, d, a, c, rated]


async def append_case(store: EventStore, events: list[Envelope]) -> list[int]:
    version, seqs = 0, []
    for e in events:
        version = await store.append(e.case_id, [e], version)
        seqs.append(version)
    return seqs


async def public_messages(view: PublicView) -> list[Any]:
    """Every message of the public stream, in order, as stored."""
    info = await view.js.stream_info(view.stream)
    return [await view.js.get_msg(view.stream, seq=s) for s in range(1, info.state.last_seq + 1)]


def assert_exactly_once_in_order(messages: list[Any], tip: int) -> None:
    sources = [int(m.headers[SOURCE_SEQUENCE_HEADER]) for m in messages]
    assert sources == list(range(1, tip + 1)), "every case event once, in case-stream order"
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(set(ids)) == len(ids)
    assert ids == [json.loads(m.data)["event_id"] for m in messages]


def validator(event_type: str, version: int) -> jsonschema.Draft202012Validator:
    schema = json.loads((PUBLIC_SCHEMAS / f"{event_type}.v{version}.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest_asyncio.fixture
async def store(nats_url: str, fresh_stream_prefix: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    s = EventStore(nc, Subjects(fresh_stream_prefix))
    await s.ensure_stream()
    yield s
    for stream in (s.stream, PublicView(nc, s).stream):
        try:
            await s.js.delete_stream(stream)
        except Exception:  # noqa: BLE001 - a test that never created the public stream
            pass
    await nc.close()


async def running_view(store: EventStore) -> PublicView:
    view = PublicView(store.nc, store, fetch_timeout=0.2)
    await view.start()
    return view


# --- redaction on plain data ---------------------------------------------------------------


def test_contact_details_in_free_text_are_masked_and_codes_are_not() -> None:
    text = (f"请联系 138-0000-1234、+86 139 1234 5678、0531-88886666，身份证{ID_NUMBER}，"
            "邮箱 li.si@example.cn；网格 370105001007012，单位 GT-370105001007012，2026-11-23")
    masked = mask_contacts(text)
    for leak in ("138-0000-1234", "139 1234 5678", "0531-88886666", ID_NUMBER, "li.si@example.cn"):
        assert leak not in masked
    for kept in ("370105001007012", "GT-370105001007012", "2026-11-23", "请联系"):
        assert kept in masked


def _string_fields(model: type[pydantic.BaseModel], path: str = "") -> list[tuple[str, int]]:
    """(dotted path, max_length) of every unconstrained string field, nested models included."""
    out: list[tuple[str, int]] = []
    for name, info in model.model_fields.items():
        where = f"{path}{name}"
        args = typing.get_args(info.annotation) or (info.annotation,)
        for arg in args:
            inner = typing.get_args(arg) or (arg,)
            for t in inner:
                if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
                    out += _string_fields(t, f"{where}.")
        if str in args or info.annotation is str:
            pattern = any(getattr(m, "pattern", None) for m in info.metadata)
            limit = next((m.max_length for m in info.metadata
                          if getattr(m, "max_length", None)), 0)
            if not pattern:
                out.append((where, limit))
    return out


# Ids of staff, units, events and deadlines, digests, and references into the attachment store:
# not text a person typed. Anything else must be masked or dropped.
IDENTIFIERS = {
    "first_contact", "idempotency_digest", "attachments.uri", "attachments.media_type",
    "dispatcher", "deadline_id", "closed_by", "rated_by", "handler_id", "request_event_id",
    "supervisor_id", "author_id",
}


def test_every_free_text_field_is_masked_or_dropped() -> None:
    """A new text field in the catalogue must be classified before it reaches the public."""
    seen = set()
    for cls in ALL_PAYLOADS:
        masked = {".".join(p) for p in FREE_TEXT.get(cls.event_type, ())}
        for where, _ in _string_fields(cls):
            seen.add(where)
            dropped = where.split(".")[0] in removed_fields(cls)
            assert dropped or where in masked or where in IDENTIFIERS, (
                f"{cls.event_type}.{where}: free text to mask (FREE_TEXT), personal data to "
                "drop (personal_fields), or an identifier (IDENTIFIERS here)?"
            )
    assert IDENTIFIERS <= seen, f"stale: {IDENTIFIERS - seen}"
    assert {"description", "location.address", "resolution", "note"} <= seen


def test_redaction_keeps_the_shape_minus_the_removed_fields() -> None:
    events = case_loop()
    for event in events:
        public, dropped = redact(event)
        full = json.loads(encode(event))
        assert set(public) == set(full)
        assert set(public["payload"]) == set(full["payload"]) - set(dropped)
        assert dropped == sorted(removed_fields(type(event.payload)) & set(full["payload"]))
        validator(event.event_type, event.schema_version).validate(public)
    leaked = dict(json.loads(encode(events[0])))
    with pytest.raises(jsonschema.ValidationError, match="reporter"):
        validator("CaseReported", 1).validate(leaked)


# --- the republisher on a real stream ------------------------------------------------------


async def test_public_stream_is_kept_like_the_log_of_record(store: EventStore) -> None:
    view = PublicView(store.nc, store)
    await view.ensure_stream()
    await view.ensure_stream()  # idempotent
    info = await view.js.stream_info(view.stream)
    c = info.config
    assert view.stream == f"{store.subjects.prefix.upper()}_PUBLIC"
    assert c.subjects == [f"{store.subjects.prefix}.public.>"]
    assert getattr(c.storage, "value", c.storage) == "file"
    assert getattr(c.discard, "value", c.discard) == "new"
    assert c.deny_delete and c.deny_purge and not c.max_age
    await append_case(store, case_loop()[:1])
    await view.start()
    try:
        await view.wait_caught_up()
    finally:
        await view.stop()
    with pytest.raises(APIError):
        await view.js.delete_msg(view.stream, 1)
    with pytest.raises(APIError):
        await view.js.purge_stream(view.stream)


async def test_events_reach_the_public_view_without_personal_data(store: EventStore) -> None:
    events = case_loop()
    seqs = await append_case(store, events)
    view = await running_view(store)
    try:
        await view.wait_caught_up()
    finally:
        await view.stop()
    messages = await public_messages(view)
    assert_exactly_once_in_order(messages, seqs[-1])
    prefix = store.subjects.prefix
    for event, seq, msg in zip(events, seqs, messages, strict=True):
        assert msg.subject == f"{prefix}.public.370105.{event.case_id}.{event.event_type}"
        assert msg.headers["Nats-Msg-Id"] == str(event.event_id)
        assert msg.headers[SOURCE_SEQUENCE_HEADER] == str(seq)
        for secret in (NAME, PHONE, ID_NUMBER, "0531-88886666", "晚上七点后在家", RESIDENT_ACCOUNT):
            assert secret not in msg.data.decode(), f"{secret} leaked in {event.event_type}"
        body = json.loads(msg.data)
        validator(body["event_type"], body["schema_version"]).validate(body)
        assert body["event_id"] == str(event.event_id) and body["case_id"] == event.case_id
    reported_body, rated_body = json.loads(messages[0].data), json.loads(messages[-1].data)
    assert messages[0].headers[REDACTED_HEADER] == "reporter"
    assert "reporter" not in reported_body["payload"]
    assert reported_body["payload"]["description"].startswith("楼道堆放杂物，堵塞消防通道。请回电 ***")
    assert reported_body["payload"]["category_code"] == events[0].payload.category_code
    assert "comment" not in rated_body["payload"] and rated_body["payload"]["rating"] == "satisfied"
    assert rated_body["actor"] == {"kind": "resident", "id": RESIDENT_ACTOR_ID, "role": None}
    # An event without personal data passes through unchanged, byte for byte.
    as_stored = (await store.read(events[1].case_id))[1].envelope
    assert messages[1].data == encode(as_stored) and REDACTED_HEADER not in messages[1].headers


async def test_a_republisher_stopped_between_publish_and_ack_resumes_exactly(
    store: EventStore,
) -> None:
    for _ in range(6):
        await append_case(store, case_loop())
    first = PublicView(store.nc, store, fetch_timeout=0.2)
    real_publish, calls = first.js.publish, 0

    async def publish_then_die(*args: Any, **kwargs: Any) -> Any:
        # The message reaches the stream; the process dies before it learns so.
        nonlocal calls
        calls += 1
        ack = await real_publish(*args, **kwargs)
        if calls == 15:
            raise asyncio.CancelledError
        return ack

    first.js.publish = publish_then_die  # type: ignore[method-assign]
    await first.start()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first._task, 10)  # type: ignore[arg-type]
    assert first.stats.position == 14 and len(await public_messages(first)) == 15

    await append_case(store, case_loop())
    second = await running_view(store)
    try:
        await second.wait_caught_up()
    finally:
        await second.stop()
    tip = await store.last_sequence()
    assert second.stats.published == tip - 15  # the 15th is not published again
    assert_exactly_once_in_order(await public_messages(second), tip)


async def test_a_cancelled_republisher_stops_at_once_and_loses_nothing(store: EventStore) -> None:
    """Runtime.stop cancels background jobs; cancelled at any moment, nothing is lost."""
    await append_case(store, case_loop())
    for round_ in range(8):
        view = PublicView(store.nc, store, fetch_timeout=0.2)
        task = asyncio.create_task(view.run())
        await asyncio.sleep(0.03 * round_)
        if round_ % 2:
            await append_case(store, case_loop())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    final = await running_view(store)
    try:
        await final.wait_caught_up()
    finally:
        await final.stop()
    assert_exactly_once_in_order(await public_messages(final), await store.last_sequence())


async def test_two_republishers_at_once_still_store_each_event_once(store: EventStore) -> None:
    views = [await running_view(store), await running_view(store)]
    try:
        for _ in range(8):
            await append_case(store, case_loop())
        tip = await store.last_sequence()
        await asyncio.gather(*(v.wait_caught_up(tip) for v in views))
    finally:
        for v in views:
            await v.stop()
    assert_exactly_once_in_order(await public_messages(views[0]), tip)
    assert sum(v.stats.published for v in views) == tip


async def test_a_retried_publish_is_stored_once(store: EventStore) -> None:
    await append_case(store, case_loop()[:2])
    view = await running_view(store)
    try:
        await view.wait_caught_up()
    finally:
        await view.stop()
    last = (await public_messages(view))[-1]
    headers = {k: v for k, v in last.headers.items() if not k.startswith("Nats-Expected")}
    # The retry as it was first sent (expecting the sequence before it): refused by the guard.
    with pytest.raises(APIError) as refused:
        await view.js.publish(last.subject, last.data, headers={
            **headers, "Nats-Expected-Last-Sequence": str(last.seq - 1)})
    assert refused.value.err_code == 10071
    # Without the guard, the event id alone makes it a duplicate the server does not store.
    ack = await view.js.publish(last.subject, last.data, headers=headers)
    assert ack.duplicate and ack.seq == last.seq
    assert len(await public_messages(view)) == 2


async def test_an_event_only_newer_code_reads_holds_the_view_until_the_upgrade(
    store: EventStore,
) -> None:
    r, d, a, _, _ = case_loop()
    v = await append_case(store, [r, d, a])
    newer = EventStore(store.nc, store.subjects, closed_v2_registry())
    c = a.caused(ClosedV2(outcome=Outcome.resolved, summary="已清理", details="已清理，通道畅通",
                          closed_by="gw-1"), actor=Actor(kind="grid_worker", id="gw-1"),
                 purpose="close")
    await newer.append(r.case_id, [c], v[-1])  # a CaseClosed v2, which the old code cannot read
    after = await newer.append(r.case_id, [closed(dispatched(r))], None)

    old = await running_view(store)
    try:
        await old.wait_caught_up(v[-1])
        await asyncio.sleep(1.0)
        # Neither skipped (lost for ever) nor published half-understood: it waits.
        assert old.stats.position == v[-1] and old.stats.recoveries >= 1
        assert len(await public_messages(old)) == 3
    finally:
        await old.stop()

    upgraded = await running_view(newer)
    try:
        await upgraded.wait_caught_up(after)
    finally:
        await upgraded.stop()
    messages = await public_messages(upgraded)
    assert_exactly_once_in_order(messages, after)
    body = json.loads(messages[3].data)
    assert body["schema_version"] == 2 and body["payload"]["details"] == "已清理，通道畅通"


async def test_run_public_view_is_a_runtime_background_job(
    nats_url: str, fresh_database: str, fresh_stream_prefix: str
) -> None:
    settings = ServiceSettings(service="intake", nats_url=nats_url, database_url=fresh_database,
                               subject_prefix=fresh_stream_prefix)
    runtime = Runtime(settings)
    runtime.background.append(run_public_view)
    await runtime.start()
    try:
        assert runtime.store is not None
        seqs = await append_case(runtime.store, case_loop())
        for _ in range(500):
            view = getattr(runtime, "public_view", None)
            if view is not None and view.stats.position == seqs[-1]:
                break
            await asyncio.sleep(0.02)
        assert view is not None and view.stats.position == seqs[-1]
        messages = await public_messages(view)
        assert_exactly_once_in_order(messages, seqs[-1])
        await runtime.store.js.delete_stream(view.stream)
        await runtime.store.js.delete_stream(runtime.store.stream)
    finally:
        await runtime.stop()
