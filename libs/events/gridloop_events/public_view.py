"""The public view: every case event, without residents' personal data, for other systems.

Other government systems subscribe here, never to the case stream, which holds what residents
told us about themselves. A republisher reads the case stream in order and writes each event,
redacted, to

    <prefix>.public.<district>.<case_id>.<EventType>      in the stream <PREFIX>_PUBLIC

(file storage, deletes and purges denied, like the log of record).

Redaction keeps the event's JSON shape and drops only:
- the payload fields its class names in `personal_fields` (CaseReported.reporter: name, phone,
  id number, free-text contact note), plus `PRIVATE_BEYOND_CATALOGUE` (a resident's callback
  comment);
- contact details typed into free text (a phone number in a description) — masked as `***`;
- the id of an actor who is a resident (shown as `resident`).

Exactly once, and resumable, without a checkpoint table: each public message carries the case
stream sequence it came from (`Gridloop-Source-Sequence`), so the last public message *is* the
checkpoint; the republisher reads it back on every start. Each publish also carries
`Nats-Expected-Last-Sequence` (the public stream's last sequence as the republisher knows it), so
a retry of a publish that did land, or a second republisher racing the first, is refused by the
server instead of stored twice; `Nats-Msg-Id` is the event id, so a retry within the duplicate
window is dropped by the server as well.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.api as jsapi
import nats.js.errors
from nats.aio.client import Client as NATS

from .codec import REGISTRY, CodecError, Registry, canonical_json, decode
from .envelope import ActorKind, Envelope, Payload
from .logging import get_logger
from .schema_export import event_schema, render
from .store import DEFAULT_DUPLICATE_WINDOW, EventStore

if TYPE_CHECKING:  # the service runtime imports FastAPI; the republisher itself does not need it
    from .service import Runtime

log = get_logger(__name__)

SOURCE_SEQUENCE_HEADER = "Gridloop-Source-Sequence"
REDACTED_HEADER = "Gridloop-Redacted"
WRONG_LAST_SEQUENCE = 10071
MASK = "***"
RESIDENT_ACTOR_ID = "resident"
SCHEMA_BASE = "https://gridloop.example/schemas/public"

# Private, though the catalogue does not (yet) list them in `personal_fields`: what a resident
# said about the handling in the callback is theirs, and may name them or their neighbours.
PRIVATE_BEYOND_CATALOGUE: dict[str, frozenset[str]] = {
    "CallbackRated": frozenset({"comment"}),
}

# Free text a person typed. A resident writes "call me on 138…" into a description, a handler
# copies an address or a number into a note: contact details found there are masked. Every free
# text field of the catalogue is named here or dropped whole (a unit test keeps the list complete).
FREE_TEXT: dict[str, tuple[tuple[str, ...], ...]] = {
    "CaseReported": (("description",), ("location", "address")),
    "CaseDispatched": (("reason",),),
    "CaseTriageQueued": (("detail",),),
    "CaseReturned": (("reason",),),
    "CaseClosed": (("resolution",),),
    "ExtensionRequested": (("reason",),),
    "ExtensionDecided": (("note",),),
    "ProgressNoted": (("note",),),
}

# Mobile numbers (optionally +86, spaced or dashed), landlines with area code, 18-digit resident
# id numbers, e-mail addresses. Digit look-arounds keep grid and unit codes (15 digits) intact.
CONTACT = re.compile(
    r"(?<![\dA-Za-z])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"
    r"|(?<![\dA-Za-z-])0\d{2,3}[ -]?\d{7,8}(?!\d)"
    r"|(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)


# --- subjects and stream -------------------------------------------------------------------


@dataclass(frozen=True)
class PublicSubjects:
    """`<prefix>.public.<district>.<case_id>.<EventType>`, beside `<prefix>.case.…`."""

    prefix: str = "gridloop"

    @property
    def stream_name(self) -> str:
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_PUBLIC"

    @property
    def all(self) -> str:
        return f"{self.prefix}.public.>"

    def event(self, district: str, case_id: str, event_type: str) -> str:
        return f"{self.prefix}.public.{district}.{case_id}.{event_type}"

    def district(self, district: str) -> str:
        return f"{self.prefix}.public.{district}.*.*"

    def of_type(self, event_type: str) -> str:
        return f"{self.prefix}.public.*.*.{event_type}"


def public_stream_config(
    subjects: PublicSubjects, replicas: int = 1, duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
) -> jsapi.StreamConfig:
    return jsapi.StreamConfig(
        name=subjects.stream_name,
        description="Gridloop case events without residents' personal data",
        subjects=[subjects.all],
        retention=jsapi.RetentionPolicy.LIMITS,
        storage=jsapi.StorageType.FILE,
        num_replicas=replicas,
        # Same promise as the case stream: nothing ages out, nothing is silently dropped.
        discard=jsapi.DiscardPolicy.NEW,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        duplicate_window=duplicate_window,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


# --- redaction -----------------------------------------------------------------------------


def removed_fields(cls: type[Payload]) -> frozenset[str]:
    """The payload fields the public view drops for this event type."""
    return frozenset(cls.personal_fields) | PRIVATE_BEYOND_CATALOGUE.get(
        cls.event_type, frozenset()
    )


def mask_contacts(text: str) -> str:
    return CONTACT.sub(MASK, text)


def _mask_at(payload: dict[str, Any], path: tuple[str, ...]) -> None:
    *parents, leaf = path
    node: Any = payload
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict) and isinstance(node.get(leaf), str):
        node[leaf] = mask_contacts(node[leaf])


def redact(envelope: Envelope, registry: Registry = REGISTRY) -> tuple[dict[str, Any], list[str]]:
    """The public form of an event as JSON data, and the names of the fields that were dropped."""
    cls = registry.payload_class(envelope.event_type)
    data = envelope.model_dump(mode="json")
    payload = data["payload"]
    dropped = sorted(name for name in removed_fields(cls) if name in payload)
    for name in dropped:
        del payload[name]
    for path in FREE_TEXT.get(envelope.event_type, ()):
        _mask_at(payload, path)
    if envelope.actor.kind is ActorKind.resident:
        data["actor"] = {**data["actor"], "id": RESIDENT_ACTOR_ID, "role": None}
    return data, dropped


def public_bytes(envelope: Envelope, registry: Registry = REGISTRY) -> tuple[bytes, list[str]]:
    data, dropped = redact(envelope, registry)
    return canonical_json(data), dropped


# --- the public JSON Schemas ---------------------------------------------------------------


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _drop_unreferenced(schema: dict[str, Any]) -> None:
    """Remove $defs nothing reaches any more (ReporterContact once `reporter` is gone)."""
    defs = schema.get("$defs", {})
    reached: set[str] = set()
    pending = [r for r in _refs({k: v for k, v in schema.items() if k != "$defs"})]
    while pending:
        ref = pending.pop()
        name = ref.removeprefix("#/$defs/")
        if name in reached or name not in defs:
            continue
        reached.add(name)
        pending.extend(_refs(defs[name]))
    schema["$defs"] = {k: v for k, v in defs.items() if k in reached}


def public_schema(event_type: str, registry: Registry = REGISTRY) -> dict[str, Any]:
    """The event's JSON Schema without the fields the public view drops.

    Masked free text and a resident actor's replaced id keep their types, so only the removed
    fields change the schema. `additionalProperties: false` stays: a public event that carried a
    removed field would be invalid, which is how a subscriber can tell a leak.
    """
    cls = registry.payload_class(event_type)
    schema = copy.deepcopy(event_schema(event_type, registry))
    gone = sorted(removed_fields(cls))
    payload = schema["$defs"][cls.__name__]
    for name in gone:
        payload.get("properties", {}).pop(name, None)
    if "required" in payload:
        payload["required"] = [n for n in payload["required"] if n not in gone]
    _drop_unreferenced(schema)
    schema.pop("x-personal-data", None)
    version = cls.schema_version
    schema["$id"] = f"{SCHEMA_BASE}/{event_type}.v{version}.json"
    schema["title"] = f"{event_type} v{version} (public view)"
    schema["x-removed-fields"] = gone
    schema["x-masked-free-text"] = [".".join(p) for p in FREE_TEXT.get(event_type, ())]
    return schema


def all_public_schemas(registry: Registry = REGISTRY) -> dict[str, dict[str, Any]]:
    return {
        f"{cls.event_type}.v{cls.schema_version}.json": public_schema(cls.event_type, registry)
        for cls in sorted(registry.types(), key=lambda c: c.event_type)
    }


def write_public_schemas(directory: Path, registry: Registry = REGISTRY) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_public_schemas(registry).items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


# --- the republisher -----------------------------------------------------------------------


class UpgradeNeeded(Exception):
    """An event this code cannot read yet (a newer version or a new type): wait for the
    upgrade rather than skip it, or the public view would miss it for ever."""


@dataclass
class PublicViewStats:
    published: int = 0
    skipped: int = 0
    recoveries: int = 0
    position: int = 0  # the last case-stream sequence handled
    public_sequence: int = 0  # the last public-stream sequence written or found


class PublicView:
    """Consumes the case stream in order and publishes each event's public form."""

    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        *,
        batch_size: int = 256,
        fetch_timeout: float = 1.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout)
        self.store = store
        self.subjects = PublicSubjects(store.subjects.prefix)
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.stats = PublicViewStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stream(self) -> str:
        return self.subjects.stream_name

    async def ensure_stream(self) -> None:
        config = public_stream_config(
            self.subjects, self.store.settings.replicas, self.store.settings.duplicate_window
        )
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
            log.info("public_view.stream_created", stream=self.stream)
            return
        await self.js.update_stream(config)

    async def checkpoint(self) -> tuple[int, int]:
        """(last public sequence, the case-stream sequence it came from); (0, 0) when empty."""
        info = await self.js.stream_info(self.stream)
        last = info.state.last_seq
        if not last:
            return 0, 0
        msg = await self.js.get_msg(self.stream, seq=last)
        source = (msg.headers or {}).get(SOURCE_SEQUENCE_HEADER)
        if source is None:
            raise RuntimeError(
                f"{self.stream} message {last} has no {SOURCE_SEQUENCE_HEADER}: "
                "something other than the republisher writes to the public stream"
            )
        return last, int(source)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="public-view")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def wait_caught_up(self, sequence: int | None = None, timeout: float = 30.0) -> None:
        """Wait until every case event up to `sequence` (default: the tip now) was handled."""
        target = sequence if sequence is not None else await self.store.last_sequence()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.stats.position < target:
            if loop.time() > deadline:
                raise TimeoutError(f"public view at {self.stats.position}, wanted {target}")
            await asyncio.sleep(0.02)

    async def lag(self) -> int:
        return max(0, await self.store.last_sequence() - self.stats.position)

    async def run(self) -> None:
        """Republish for ever; every failure is retried from the checkpoint in the stream."""
        backoff = 0.1
        while True:
            resumed_at: int | None = None
            try:
                await self.ensure_stream()
                public_seq, position = await self.checkpoint()
                self.stats.public_sequence, self.stats.position = public_seq, position
                resumed_at = position
                log.info("public_view.resuming", after=position, public_sequence=public_seq)
                await self._follow(position + 1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure here is retried, loudly
                if self._stopping or _cancel_requested():
                    raise asyncio.CancelledError from exc
                if resumed_at is not None and self.stats.position > resumed_at:
                    backoff = 0.1  # it got somewhere: this is a new problem, not the same one
                self.stats.recoveries += 1
                report = log.error if isinstance(exc, UpgradeNeeded) else log.warning
                report(
                    "public_view.recovering",
                    error=f"{type(exc).__name__}: {exc}",
                    position=self.stats.position,
                    backoff=backoff,
                )
                await asyncio.sleep(backoff + random.random() * backoff)
                backoff = min(backoff * 2, 5.0)

    # --- the loop --------------------------------------------------------------------------

    async def _follow(self, start: int) -> None:
        # An ephemeral consumer without acks: the public stream, not consumer state, decides
        # where to start. Consumer sequences must be gapless; a gap (a pull that expired while
        # messages were on their way) means the consumer is recreated from the checkpoint.
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=30.0,
            filter_subjects=[self.store.subjects.all],
            mem_storage=True,
        )
        sub = await self.js.pull_subscribe(
            self.store.subjects.all, stream=self.store.stream, config=config
        )
        try:
            delivered = 0
            while True:
                if self._stopping or _cancel_requested():
                    raise asyncio.CancelledError
                try:
                    msgs = await sub.fetch(self.batch_size, timeout=self.fetch_timeout)
                except asyncio.TimeoutError:
                    # Nothing new (nats-py raises its own TimeoutError or asyncio's, by path).
                    continue
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.consumer != delivered + 1:
                        raise RuntimeError(
                            f"consumer skipped from {delivered} to {meta.sequence.consumer}"
                        )
                    delivered = meta.sequence.consumer
                    await self._republish(meta.sequence.stream, msg.data)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the consumer expires by itself anyway
                pass

    async def _republish(self, sequence: int, data: bytes) -> None:
        if sequence <= self.stats.position:
            return
        try:
            envelope = decode(data, self.store.registry)
        except CodecError as exc:
            if _needs_upgrade(data, self.store.registry):
                raise UpgradeNeeded(f"case stream sequence {sequence}: {exc}") from exc
            # Bytes no version of the code can read: publishing them could leak, waiting would
            # stop the view for ever. Skipped, loudly; the case stream still holds them.
            log.error("public_view.skipped", sequence=sequence, error=str(exc))
            self.stats.skipped += 1
            self.stats.position = sequence
            return
        body, dropped = public_bytes(envelope, self.store.registry)
        headers = {
            "Nats-Msg-Id": str(envelope.event_id),
            "Nats-Expected-Last-Sequence": str(self.stats.public_sequence),
            SOURCE_SEQUENCE_HEADER: str(sequence),
        }
        if dropped:
            headers[REDACTED_HEADER] = ",".join(dropped)
        subject = self.subjects.event(envelope.district, envelope.case_id, envelope.event_type)
        try:
            ack = await self.js.publish(subject, body, headers=headers, stream=self.stream)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                # Our earlier publish landed after all, or another republisher is running:
                # the stream knows better than we do; resume from its last message.
                raise RuntimeError(f"public stream moved on: {exc.description}") from exc
            raise
        if ack.duplicate:
            # The same event id reached the public stream before (the server kept the first).
            log.warning("public_view.duplicate", sequence=sequence, **envelope.log_context())
        else:
            self.stats.public_sequence = ack.seq
            self.stats.published += 1
        self.stats.position = sequence


def _cancel_requested() -> bool:
    """Whether this task was cancelled, even if a library swallowed the CancelledError (Python
    3.11's asyncio.wait_for can, when its inner future completes at the same moment)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _needs_upgrade(data: bytes, registry: Registry) -> bool:
    try:
        raw = json.loads(data)
        event_type, version = raw["event_type"], int(raw["schema_version"])
    except (ValueError, KeyError, TypeError):
        return False
    try:
        cls = registry.payload_class(event_type)
    except CodecError:
        return True
    return version > cls.schema_version


async def run_public_view(runtime: Runtime) -> None:
    """A `Runtime.background` job: the republisher over the runtime's connection and store."""
    assert runtime.nc is not None and runtime.store is not None, "runtime not started"
    view = PublicView(runtime.nc, runtime.store)
    # Where readiness or metrics code can find it.
    runtime.public_view = view  # type: ignore[attr-defined]
    await view.run()


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gridloop_events.public_view",
        description="Write the public view's JSON Schemas (the event schemas without personal "
        "data), one file per event type and version.",
    )
    parser.add_argument("--schemas", type=Path, required=True, metavar="DIR",
                        help="folder to write, e.g. docs/schemas/public")
    args = parser.parse_args(argv)
    for path in write_public_schemas(args.schemas):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
