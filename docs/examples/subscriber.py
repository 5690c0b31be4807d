"""A subscriber to Gridloop's public events, as another government system would write one.

It needs only nats-py and jsonschema (`pip install nats-py jsonschema`), not Gridloop's code:

    python subscriber.py --nats-url nats://127.0.0.1:4222 --durable my-system [--district 370105]

- A durable pull consumer on the public stream (`<PREFIX>_PUBLIC`), created on the first run: the
  server remembers which events this subscriber acknowledged, so after a stop, a crash or a
  restart it carries on with the first event it had not acknowledged.
- Each event is validated against the checked-in public JSON Schema of its type and version
  (docs/schemas/public/<EventType>.v<version>.json), printed as one line, and only then
  acknowledged. Handling is therefore at least once: a crash between printing and acknowledging
  prints that event again on the next run; a real subscriber makes its handling idempotent by
  `event_id`.
- An event that fails validation, or whose version has no schema here, is not acknowledged (it is
  handed back with a negative acknowledgement): the subscriber reports it on stderr and exits
  with status 3, so nothing is lost or half-handled; once the schemas are updated (or the
  producer is fixed) the next run resumes at that event.

Output, one line per event:

    <public sequence> <district> <case_id> <EventType> v<version> <occurred_at> <summary>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import jsonschema
import nats
import nats.errors
import nats.js.api as api

DEFAULT_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "public"
INVALID = 3


class Schemas:
    """The public JSON Schemas on disk, loaded once per (type, version)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._validators: dict[tuple[str, int], jsonschema.protocols.Validator] = {}

    def validator(self, event_type: str, version: int) -> jsonschema.protocols.Validator | None:
        key = (event_type, version)
        if key not in self._validators:
            path = self.directory / f"{event_type}.v{version}.json"
            if not path.is_file():
                return None
            schema = json.loads(path.read_text(encoding="utf-8"))
            cls = jsonschema.validators.validator_for(schema)
            self._validators[key] = cls(schema, format_checker=cls.FORMAT_CHECKER)
        return self._validators[key]


def summary(event: dict[str, Any]) -> str:
    p = event.get("payload", {})
    match event.get("event_type"):
        case "CaseReported":
            return f"category={p.get('category_code')} severity={p.get('severity')}"
        case "CaseDispatched":
            return f"unit={p.get('unit_code')} tier={p.get('tier')}"
        case "CaseAccepted":
            return f"unit={p.get('unit_code')}"
        case "CaseClosed":
            return f"outcome={p.get('outcome')}"
        case "CallbackRated":
            return f"rating={p.get('rating')}"
        case "DeadlineMissed" | "DeadlineApproaching":
            return f"deadline={p.get('deadline')}"
        case _:
            return "-"


def stream_name(prefix: str) -> str:
    return f"{prefix.upper().replace('.', '_').replace('-', '_')}_PUBLIC"


async def run(args: argparse.Namespace) -> int:
    schemas = Schemas(args.schemas)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    nc = await nats.connect(args.nats_url, name=f"subscriber-{args.durable}")
    try:
        js = nc.jetstream()
        district = args.district or "*"
        sub = await js.pull_subscribe(
            f"{args.prefix}.public.{district}.*.*",
            durable=args.durable,
            stream=stream_name(args.prefix),
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=30,
                max_deliver=-1,
            ),
        )

        async def hand_back(batch: list[Any]) -> None:
            # Not acknowledged, so not lost, and handed back at once: the next run starts with
            # them instead of waiting out ack_wait.
            for m in batch:
                await m.nak()
            await nc.flush()

        async def refuse(batch: list[Any], refused: Any) -> int:
            await hand_back(batch[batch.index(refused):])
            return INVALID

        wait = min(1.0, args.idle_exit / 2) if args.idle_exit else 1.0
        last_event, empty_fetches = loop.time(), 0
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(args.batch, timeout=wait)
            except asyncio.TimeoutError:  # nothing new
                empty_fetches += 1
                # Two empty fetches at least: a message that reached this client just after a
                # fetch gave up is handed out by the next one.
                if (args.idle_exit and empty_fetches >= 2
                        and loop.time() - last_event >= args.idle_exit):
                    break
                continue
            last_event, empty_fetches = loop.time(), 0
            for i, msg in enumerate(msgs):
                if stopping.is_set():  # SIGTERM/Ctrl-C: stop between events, never inside one
                    await hand_back(msgs[i:])
                    break
                seq = msg.metadata.sequence.stream
                try:
                    event = json.loads(msg.data)
                    version = int(event["schema_version"])
                    event_type = str(event["event_type"])
                except (ValueError, KeyError, TypeError) as exc:
                    print(f"event at {seq} is not a Gridloop event: {exc}", file=sys.stderr)
                    return await refuse(msgs, msg)
                validator = schemas.validator(event_type, version)
                if validator is None:
                    print(f"event at {seq}: no schema for {event_type} v{version} in "
                          f"{args.schemas}: update the schemas, then run again", file=sys.stderr)
                    return await refuse(msgs, msg)
                errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
                if errors:
                    where = "/".join(str(p) for p in errors[0].absolute_path) or "(event)"
                    print(f"event at {seq} ({event_type} {event.get('event_id')}) is invalid "
                          f"at {where}: {errors[0].message}", file=sys.stderr)
                    return await refuse(msgs, msg)
                print(f"{seq} {event['district']} {event['case_id']} {event_type} v{version} "
                      f"{event['occurred_at']} {summary(event)}", flush=True)
                # After handling, and confirmed by the server: a restart never re-prints it.
                await msg.ack_sync()
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print Gridloop's public events, validated.")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="gridloop", help="Gridloop's subject prefix")
    parser.add_argument("--durable", required=True, help="this subscriber's consumer name")
    parser.add_argument("--district", help="only this district's events")
    parser.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS,
                        help="folder of the public JSON Schemas")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                        help="exit after this long without new events (0: run until stopped)")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
