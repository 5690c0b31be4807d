"""The closed-loop figures from the feedback service's `GET /v1/stats`, as a table."""

from __future__ import annotations

from typing import Any

import httpx
from rich.table import Table

from .connection import Refused, Unreachable

FIGURES = ("satisfaction", "resolution", "on_time_closure", "report_in")


def fetch(url: str, params: dict[str, str], token: str | None = None) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/v1/stats"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(endpoint, params=params, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        raise Unreachable(f"feedback at {endpoint} does not answer: {exc}") from exc
    if response.status_code != 200:
        raise Refused(f"feedback at {endpoint} answered {response.status_code}: "
                          f"{response.text[:300]}")
    return response.json()


def cell(figure: dict[str, Any] | None) -> str:
    """Counts first: a rate is only as good as what it counts, and a 0/0 is no rate at all."""
    if not figure:
        return "—"
    n, d = figure["numerator"], figure["denominator"]
    if not d:
        return f"{n}/{d}  (no rate)"
    return f"{n}/{d}  {100 * n / d:.1f}%"


def table(body: dict[str, Any]) -> Table:
    t = Table(title=f"closed-loop figures by {body.get('group_by', '?')}",
              caption="numerator/denominator  rate")
    t.add_column(body.get("group_by", "group"), no_wrap=True)
    names = [f for f in FIGURES if f in body.get("total", {})] or list(body.get("total", {}))
    for name in names:
        t.add_column(name.replace("_", " "), justify="right", no_wrap=True)
    for group in body.get("groups", []):
        key = group.get("key")
        t.add_row("(none)" if key is None else str(key), *(cell(group.get(n)) for n in names))
    t.add_section()
    t.add_row("total", *(cell(body.get("total", {}).get(n)) for n in names), style="bold")
    return t
