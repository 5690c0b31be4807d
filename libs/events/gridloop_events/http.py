"""HTTP conventions shared by the four services: who is acting, under which correlation id,
and how domain refusals become 4xx answers with a reason."""

from __future__ import annotations

import uuid

from fastapi import HTTPException, Request



class DomainError(Exception):
    """A command the rules refuse. `status` is the HTTP answer: 409 for a case in the wrong state,
    404 for an unknown case, 422 for a request that cannot be right."""

    def __init__(self, reason: str, status: int = 409, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.field = field


def http_error(exc: DomainError) -> HTTPException:
    detail: dict[str, str] = {"reason": exc.reason}
    if exc.field:
        detail["field"] = exc.field
    return HTTPException(status_code=exc.status, detail=detail)


def correlation_id(request: Request) -> str:
    """The gateway's request id carries through as the correlation id of every event it causes."""
    return (
        request.headers.get("x-correlation-id")
        or request.headers.get("x-request-id")
        or str(uuid.uuid4())
    )
