"""Printing for operators: results on stdout, progress and problems on stderr.

Lines are printed without wrapping (`soft_wrap`), so a digest or a case id is never split across
lines when the terminal is narrow or output goes to a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def line(text: str = "", *, style: str | None = None) -> None:
    out.print(text, soft_wrap=True, style=style, markup=False)


def problem(text: str) -> None:
    err.print(text, soft_wrap=True, style="bold red", markup=False)


def as_json(data: Any) -> None:
    # Plain write: Rich would re-highlight and wrap it.
    out.file.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def json_line(data: Any) -> None:
    out.file.write(json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")
    out.file.flush()


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """A Rich progress bar on stderr; yields `advance(n)`. Invisible when stderr is not a tty."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance


def parse_time(text: str) -> datetime:
    """ISO 8601; `Z` or an offset as given, a time without one is UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else "—"
