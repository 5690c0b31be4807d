"""The write buffer's grouping: as few round trips as possible, each case's statements in order."""

from __future__ import annotations

import asyncio
from typing import Any

from gridloop_events.write_buffer import WriteBuffer


class Recorder:
    """Records what reaches the connection, in order (the grouping is what is under test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[Any]]] = []

    async def execute(self, sql: str, *args: Any) -> None:
        self.calls.append(("execute", sql, [args]))

    async def executemany(self, sql: str, rows: list[Any]) -> None:
        self.calls.append(("executemany", sql, list(rows)))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.calls.append(("fetchval", sql, [args]))
        return 1


def run(buffer_actions) -> Recorder:  # type: ignore[no-untyped-def]
    conn = Recorder()
    buf = WriteBuffer(conn)  # type: ignore[arg-type]

    async def go() -> None:
        await buffer_actions(buf)
        await buf.flush()

    asyncio.run(go())
    return conn


def test_uniform_events_of_many_cases_become_one_call_per_statement() -> None:
    async def actions(buf: WriteBuffer) -> None:
        for case in ("a", "b", "c"):
            buf.case = case
            await buf.execute("UPSERT", case, 1)
            await buf.execute("DELETE", case)

    conn = run(actions)
    assert [(kind, sql) for kind, sql, _ in conn.calls] == [
        ("executemany", "UPSERT"), ("executemany", "DELETE")]
    assert conn.calls[0][2] == [("a", 1), ("b", 1), ("c", 1)]


def test_a_case_statements_never_overtake_each_other() -> None:
    async def actions(buf: WriteBuffer) -> None:
        buf.case = "a"
        await buf.execute("UPSERT", "a", 1)
        await buf.execute("DELETE", "a")
        await buf.execute("UPSERT", "a", 2)  # after a's DELETE, so a later UPSERT group
        buf.case = "b"
        await buf.execute("UPSERT", "b", 1)  # may join the first group: nothing of b before

    conn = run(actions)
    assert [(sql, rows) for _, sql, rows in conn.calls] == [
        ("UPSERT", [("a", 1), ("b", 1)]),
        ("DELETE", [("a",)]),
        ("UPSERT", [("a", 2)]),
    ]


def test_a_read_sends_every_buffered_write_first() -> None:
    async def actions(buf: WriteBuffer) -> None:
        buf.case = "a"
        await buf.execute("INSERT", "a")
        assert await buf.fetchval("SELECT") == 1
        await buf.executemany("INSERT", [("b",), ("c",)])

    conn = run(actions)
    assert [(kind, sql) for kind, sql, _ in conn.calls] == [
        ("execute", "INSERT"), ("fetchval", "SELECT"), ("executemany", "INSERT")]
    assert conn.calls[2][2] == [("b",), ("c",)]
