"""A small keep-alive HTTP/1.1 client for the load generator.

httpx costs about a millisecond of CPU per request; at several hundred requests a second on a
two-core machine that is CPU taken from the system under test. This client does only what the
benchmark needs (JSON over a pool of keep-alive connections to 127.0.0.1, Content-Length or
chunked answers) for a fraction of that.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any


class HttpError(Exception):
    pass


class Response:
    __slots__ = ("status", "body")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class HttpPool:
    """Keep-alive connections to one host:port, at most `size` at once."""

    def __init__(self, host: str, port: int, size: int = 64, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: deque[_Conn] = deque()
        self._gate = asyncio.Semaphore(size)

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        return _Conn(reader, writer)

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> Response:
        async with self._gate:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                resp = await asyncio.wait_for(self._exchange(conn, method, path, body, headers),
                                              self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                conn.writer.close()
                # A kept-alive connection the server closed meanwhile: one fresh try.
                conn = await self._connect()
                resp = await asyncio.wait_for(self._exchange(conn, method, path, body, headers),
                                              self.timeout)
            except BaseException:
                conn.writer.close()
                raise
            self._idle.append(conn)
            return resp

    async def _exchange(self, conn: _Conn, method: str, path: str, body: Any,
                        headers: dict[str, str] | None) -> Response:
        payload = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(payload)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = await conn.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        chunked = False
        while True:
            line = await conn.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await conn.reader.readline()).strip(), 16)
                if size == 0:
                    await conn.reader.readline()
                    break
                parts.append(await conn.reader.readexactly(size))
                await conn.reader.readline()
            data = b"".join(parts)
        else:
            data = await conn.reader.readexactly(length or 0)
        return Response(status, data)

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.writer.close()
