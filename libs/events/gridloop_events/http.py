"""HTTP conventions shared by the four services: who is acting, under which correlation id,
and how domain refusals become 4xx answers with a reason."""

from __future__ import annotations

import uuid

from fastapi import HTTPException, Request

from .envelope import Actor, ActorKind


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


def actor_from(request: Request, default_kind: ActorKind = ActorKind.operator) -> Actor:
    """The acting person, as the gateway passes it on (authentication is the gateway's and,
    later, each service's job; here the headers are taken as given)."""
    kind = request.headers.get("x-actor-kind", default_kind.value)
    try:
        actor_kind = ActorKind(kind)
    except ValueError:
        raise HTTPException(
            status_code=400, detail={"reason": f"unknown actor kind {kind!r}", "field": "X-Actor-Kind"}
        ) from None
    actor_id = request.headers.get("x-actor-id", "anonymous")[:128] or "anonymous"
    role = request.headers.get("x-actor-role")
    return Actor(kind=actor_kind, id=actor_id, role=role[:64] if role else None)
