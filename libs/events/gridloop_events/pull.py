"""Draining a stream range in batches, with a callback subscription instead of nats-py's `fetch`.

`PullSubscription.fetch` waits for every message with its own task, timer and uuid: about 35 µs
a message on these machines, more than half of a replay's reading. Here the pull requests go to
the consumer's `MSG.NEXT` subject directly and the messages land through one callback into
lists; the next batch is requested before the current one is handed over, so the server sends
while the caller works. Measured on a 50k-event stream: 68k msg/s against `fetch`'s 28k.

Used for reads without acks (replays, audits): an ephemeral AckNone consumer, created here and
deleted when the read ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
import nats.js.api as jsapi
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

REQUEST_EXPIRES = 5.0  # seconds the server may take to fill one request
ANSWER_GRACE = 5.0  # beyond that, before a silent server counts as gone
NO_MESSAGES = ("404", "408")  # nothing (more) to send for this request


class PullError(nats.errors.Error):
    """The server ended a pull with an error status (the consumer deleted, a leader change)."""


def _status(msg: Msg) -> tuple[str, str] | None:
    """(code, description) of a server status message; None for a message carrying data."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if status is None or msg.data:
        return None
    return status, headers.get("Description", "")


@dataclass
class _Request:
    want: int
    msgs: list[Msg] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: str | None = None
    description: str = ""


async def pull_batches(
    nc: NATS,
    js: JetStreamContext,
    stream: str,
    config: jsapi.ConsumerConfig,
    *,
    batch: int = 2000,
) -> AsyncIterator[list[Msg]]:
    """Every message the (ephemeral, AckNone) consumer `config` matches when it is created, in
    stream order, as lists of at most `batch`. Messages stored after that are not waited for
    (though a read that had to ask the consumer again may include some)."""
    info = await js.add_consumer(stream, config)
    consumer = info.name
    remaining = info.num_pending
    requests: deque[_Request] = deque()

    async def on_message(msg: Msg) -> None:
        if not requests:
            return
        head = requests[0]
        status = _status(msg)
        if status is not None:
            if status[0] == "100":  # heartbeat or flow control: not asked for, but harmless
                return
            head.status, head.description = status
        else:
            head.msgs.append(msg)
            if len(head.msgs) < head.want:
                return
        head.done.set()
        requests.popleft()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=batch * 4,
                             pending_bytes_limit=-1)
    subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    async def ask() -> _Request | None:
        nonlocal remaining
        want = min(batch, remaining)
        if want <= 0:
            return None
        remaining -= want
        request = _Request(want)
        requests.append(request)
        body = {"batch": want, "expires": int(REQUEST_EXPIRES * 1e9)}
        await nc.publish(subject, json.dumps(body).encode(), reply=inbox)
        return request

    try:
        current = await ask()
        while current is not None:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
                # arrives as its inner wait completes, and a reader cancelled by its stopped
                # applier then carried on into a full queue, hanging the rebuild.
                async with asyncio.timeout(REQUEST_EXPIRES + ANSWER_GRACE):
                    await current.done.wait()
            except TimeoutError:
                raise nats.errors.TimeoutError from None
            if current.status and current.status not in NO_MESSAGES:
                raise PullError(f"pull from {stream}: {current.status} {current.description}")
            if current.status:
                # Fewer came than asked: the request expired while the server was still
                # scanning (a sparse filter on a long stream), or nothing is left. Only the
                # consumer knows which; ask again for what it still holds.
                if current.msgs:
                    yield current.msgs
                remaining = (await js.consumer_info(stream, consumer)).num_pending
                current = await ask()
                continue
            following = await ask()
            yield current.msgs
            current = following
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer)


async def request_batch(nc: NATS, subject: str, body: dict[str, object],
                        timeout: float) -> tuple[list[Msg], str, str]:
    """Send one request whose answer is several messages ended by a status message (a batch
    direct get ends with 204, or 404 when nothing matched). (messages, status, description)."""
    msgs: list[Msg] = []
    done = asyncio.Event()
    end: tuple[str, str] = ("", "")

    async def on_message(msg: Msg) -> None:
        nonlocal end
        status = _status(msg)
        if status is not None:
            end = status
            done.set()
        else:
            msgs.append(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message, pending_bytes_limit=-1)
    try:
        await nc.publish(subject, json.dumps(body).encode(), reply=inbox)
        try:
            async with asyncio.timeout(timeout):  # see pull_batches
                await done.wait()
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        return msgs, *end
    finally:
        await sub.unsubscribe()

