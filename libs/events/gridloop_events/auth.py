"""Who is asking, and may they: every service verifies bearer tokens itself.

A district runs Gridloop behind a gateway, but the gateway is not trusted to have checked:
each service verifies the token's signature (a trusted public key named by the token's `kid`),
issuer, audience and expiry, and each endpoint checks the caller's role and scope against the
case it touches. The actor recorded on an event is built from the verified token, never from a
header the caller chose, so nobody can act as someone else.

Claims (besides iss, aud, exp — all required — and iat, nbf, jti):
- `sub`: who — a resident's id, a worker's or handler's staff id, an external system's name;
- `role`: one of `Role`;
- `scope`: space-separated codes (a JSON list is accepted too):
  grid_worker — grid codes; unit_handler — exactly one unit code; dispatcher, supervisor —
  street, community or district codes; resident, auditor, integration — none needed;
- `resident_id` (residents): equals `sub`.

Places nest by code prefix (district 370190 → street 370190001 → community 370190001001 →
grid 370190001001001), so "the case lies in my area" is a prefix test on its grid code (or on its
district code, for a case reported with an address only).
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth_keys import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    DEFAULT_KEY_DIR,
    ENV_AUDIENCE,
    ENV_ISSUER,
    ENV_KEY_DIR,
    ENV_KEYS_FILE,
    ENV_PUBLIC_KEYS,
    KeyFolder,
    KeyRing,
    KeySetupError,
    TrustedKey,
    file_source,
    parse_key_map,
)
from .envelope import Actor, ActorKind, StoredEvent
from .lifecycle import CaseState, fold
from .logging import get_logger
from .vocabulary import Tier

log = get_logger(__name__)

ENV_MODE = "GRIDLOOP_AUTH"
ENV_LEEWAY = "GRIDLOOP_JWT_LEEWAY"
MODES = ("required", "dev")
CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOKEN_BYTES = 8192
# Open to anyone: liveness, readiness, metrics (the gateway keeps /metrics internal) and the
# descriptions of the API and of the events, which hold no case.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect",
                        "/redoc", "/openapi.json", "/asyncapi.json"})


class Role(StrEnum):
    resident = "resident"
    grid_worker = "grid_worker"
    unit_handler = "unit_handler"
    dispatcher = "dispatcher"
    supervisor = "supervisor"
    auditor = "auditor"
    integration = "integration"


AREA_ROLES = frozenset({Role.grid_worker, Role.dispatcher, Role.supervisor})
STAFF = frozenset({Role.grid_worker, Role.unit_handler, Role.dispatcher, Role.supervisor,
                   Role.auditor})
EVERYONE = frozenset(Role)
_ACTOR_KIND = {
    Role.resident: ActorKind.resident,
    Role.grid_worker: ActorKind.grid_worker,
    Role.unit_handler: ActorKind.department,
    Role.dispatcher: ActorKind.operator,
    Role.supervisor: ActorKind.operator,
    Role.auditor: ActorKind.operator,
    Role.integration: ActorKind.system,
}


class TokenRefused(Exception):
    """A token that does not prove who is asking; `reason` is safe to show and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    subject: str
    role: Role
    scope: tuple[str, ...] = ()
    token_id: str | None = None
    kid: str | None = None

    @property
    def unit(self) -> str | None:
        return self.scope[0] if self.role is Role.unit_handler else None

    def actor(self) -> Actor:
        return Actor(kind=_ACTOR_KIND[self.role], id=self.subject, role=self.role.value)

    def covers(self, place: str | None) -> bool:
        """The place (a grid, community, street or district code) lies in the caller's area."""
        if self.role is Role.auditor:
            return True
        if self.role not in AREA_ROLES or not place:
            return False
        return any(place.startswith(area) for area in self.scope)

    def log_fields(self) -> dict[str, str]:
        # A resident's id stays out of the logs; staff ids are what assessments are made of.
        who = "resident" if self.role is Role.resident else self.subject
        return {"actor_role": self.role.value, "actor_id": who}


def principal_from_claims(claims: Mapping[str, Any], kid: str | None = None) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 128:
        raise TokenRefused("sub must be a string of 1-128 characters")
    try:
        role = Role(claims.get("role"))
    except ValueError:
        raise TokenRefused(f"role must be one of {', '.join(r.value for r in Role)}") from None
    raw = claims.get("scope", "")
    if isinstance(raw, str):
        scope = tuple(raw.split())
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        scope = tuple(raw)
    else:
        raise TokenRefused("scope must be a space-separated string of codes or a list of codes")
    bad = [s for s in scope if not CODE.match(s)]
    if bad:
        raise TokenRefused("scope holds something that is not a code")
    if role in AREA_ROLES and not scope:
        raise TokenRefused(f"a {role.value} token must name its area(s) in scope")
    if role is Role.unit_handler and len(scope) != 1:
        raise TokenRefused("a unit_handler token must name exactly one unit in scope")
    if role is Role.resident:
        resident_id = claims.get("resident_id", sub)
        if resident_id != sub:
            raise TokenRefused("resident_id must equal sub")
    jti = claims.get("jti")
    return Principal(sub, role, scope, jti if isinstance(jti, str) else None, kid)


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthSettings:
    """GRIDLOOP_AUTH=required (the default): trust only the configured public keys.
    GRIDLOOP_AUTH=dev: also trust the local key folder's keys, creating one if there is none,
    so a newcomer's `make run` works; tokens are still required."""

    mode: str = "required"
    issuer: str = DEFAULT_ISSUER
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    leeway: int = 30
    public_keys_json: str | None = None
    keys_file: Path | None = None
    key_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuthSettings:
        env = os.environ if env is None else env
        mode = (env.get(ENV_MODE) or "required").strip().lower()
        if mode not in MODES:
            raise KeySetupError(f"{ENV_MODE}={mode!r}: want one of {', '.join(MODES)}")
        audiences = tuple(a.strip() for a in (env.get(ENV_AUDIENCE) or DEFAULT_AUDIENCE).split(",")
                          if a.strip())
        keys_file = env.get(ENV_KEYS_FILE)
        return cls(
            mode=mode,
            issuer=env.get(ENV_ISSUER) or DEFAULT_ISSUER,
            audiences=audiences,
            leeway=int(env.get(ENV_LEEWAY) or 30),
            public_keys_json=env.get(ENV_PUBLIC_KEYS) or None,
            keys_file=Path(keys_file) if keys_file else None,
            key_dir=Path(env.get(ENV_KEY_DIR) or DEFAULT_KEY_DIR) if mode == "dev" else None,
        )

    def keyring(self) -> KeyRing:
        fixed = parse_key_map(self.public_keys_json, ENV_PUBLIC_KEYS) if self.public_keys_json \
            else {}
        sources: list[Callable[[], dict[str, TrustedKey]]] = []
        if self.keys_file is not None:
            sources.append(file_source(self.keys_file))
        if self.mode == "dev":
            folder = KeyFolder(self.key_dir)
            folder.ensure()
            sources.append(folder.public_keys)
        ring = KeyRing(fixed, tuple(sources))
        if not len(ring):
            raise KeySetupError(
                f"{ENV_MODE}={self.mode} but no trusted public key: set {ENV_PUBLIC_KEYS} "
                f"(JSON kid → PEM) or {ENV_KEYS_FILE}, or {ENV_MODE}=dev on a developer machine")
        return ring


VERIFIED_CACHE_SIZE = 4096


class Verifier:
    def __init__(self, keys: KeyRing, *, issuer: str = DEFAULT_ISSUER,
                 audiences: Sequence[str] = (DEFAULT_AUDIENCE,), leeway: int = 30) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audiences = list(audiences)
        self.leeway = leeway
        # token -> (principal, the key that verified it, exp, nbf). A client sends the same
        # token with every request; checking its signature once is enough while the same key
        # is still trusted. Times are checked on every use.
        self._verified: OrderedDict[str, tuple[Principal, TrustedKey, float, float | None]] = \
            OrderedDict()

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Verifier:
        return cls(settings.keyring(), issuer=settings.issuer, audiences=settings.audiences,
                   leeway=settings.leeway)

    @classmethod
    def trusting(cls, *keys: TrustedKey, issuer: str = DEFAULT_ISSUER,
                 audiences: Sequence[str] = (DEFAULT_AUDIENCE,)) -> Verifier:
        return cls(KeyRing({k.kid: k for k in keys}), issuer=issuer, audiences=audiences)

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("the token is too long")
        known = self._verified.get(token)
        if known is not None:
            principal, key, exp, nbf = known
            now = time.time()
            if (self.keys.get(key.kid) == key and now <= exp + self.leeway
                    and (nbf is None or now >= nbf - self.leeway)):
                return principal
            del self._verified[token]  # verified again below, for the precise refusal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("not a JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("the token's header names no key (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise TokenRefused("the token is signed with a key this service does not trust")
        if header.get("alg") != key.algorithm:
            raise TokenRefused(f"key {kid} signs with {key.algorithm} only")
        try:
            claims = jwt.decode(
                token, key.public_key, algorithms=[key.algorithm], audience=self.audiences,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("the token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("the token's issuer is not trusted here") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"the token lacks the {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("the token is not valid yet") from None
        except jwt.PyJWTError:
            raise TokenRefused("the token's signature or claims are invalid") from None
        principal = principal_from_claims(claims, kid)
        nbf = claims.get("nbf")
        self._verified[token] = (principal, key, float(claims["exp"]),
                                 float(nbf) if isinstance(nbf, int | float) else None)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal


# --- refusals ----------------------------------------------------------------------------------


class AuthRefused(HTTPException):
    """401, 403 or a 404 that hides a case; `detail` has the services' {reason, field} shape."""


def unauthenticated(reason: str, *, bad_token: bool = True) -> AuthRefused:
    challenge = 'Bearer realm="gridloop"'
    if bad_token:
        challenge += f', error="invalid_token", error_description="{reason}"'
    return AuthRefused(401, {"reason": reason, "field": "Authorization"},
                       headers={"WWW-Authenticate": challenge})


def forbidden(reason: str, field: str | None = None) -> AuthRefused:
    detail = {"reason": reason}
    if field:
        detail["field"] = field
    return AuthRefused(403, detail)


# --- what a case is, for deciding who may touch it ---------------------------------------------


@dataclass(frozen=True)
class CaseFacts:
    case_id: str
    district: str
    grid: str | None
    unit_code: str | None  # the unit the case is with now
    tier: Tier | None
    reporter: Actor | None  # the actor who reported it

    @property
    def place(self) -> str:
        """Where the case lies: its grid, or its district when it has no grid."""
        return self.grid or self.district

    @classmethod
    def from_history(cls, history: Sequence[StoredEvent]) -> CaseFacts | None:
        """From the log, the authority: None when nothing was ever recorded for the case."""
        if not history:
            return None
        first = history[0].envelope
        return cls.from_state(fold(history),
                              first.actor if first.event_type == "CaseReported" else None)

    @classmethod
    def from_state(cls, state: CaseState, reporter: Actor | None = None) -> CaseFacts:
        return cls(state.case_id, state.district, state.grid, state.unit_code, state.tier,
                   reporter)


class Verdict(StrEnum):
    allow = "allow"
    forbid = "forbid"
    hide = "hide"  # answer exactly as for a case that does not exist


def reported_by(p: Principal, facts: CaseFacts) -> bool:
    r = facts.reporter
    return r is not None and r.kind is ActorKind.resident and r.id == p.subject


def may_see(p: Principal, facts: CaseFacts) -> Verdict:
    """Read a case: its reporter, the unit it is with, staff whose area holds it, auditors."""
    if p.role is Role.resident:
        return Verdict.allow if reported_by(p, facts) else Verdict.hide
    if p.role is Role.unit_handler:
        return Verdict.allow if facts.unit_code == p.unit else Verdict.forbid
    return Verdict.allow if p.covers(facts.place) else Verdict.forbid


def may_handle(p: Principal, facts: CaseFacts) -> Verdict:
    """Act as the handling unit (accept, return, extension request, close): a handler of the unit
    the case is with, or a grid worker of its grid while the grid's own team holds it."""
    if p.role is Role.unit_handler and facts.unit_code == p.unit:
        return Verdict.allow
    if p.role is Role.grid_worker and facts.tier is Tier.grid and p.covers(facts.grid):
        return Verdict.allow
    return Verdict.forbid


def may_supervise(p: Principal, facts: CaseFacts) -> Verdict:
    """Dispatch, decide an extension: dispatchers and supervisors of the case's area."""
    if p.role in (Role.dispatcher, Role.supervisor) and p.covers(facts.place):
        return Verdict.allow
    return Verdict.forbid


def may_note(p: Principal, facts: CaseFacts) -> Verdict:
    """Note progress: whoever handles the case, grid workers of its grid, its supervisors."""
    if Verdict.allow in (may_handle(p, facts), may_supervise(p, facts)):
        return Verdict.allow
    return Verdict.allow if p.role is Role.grid_worker and p.covers(facts.grid) else Verdict.forbid


def enforce(verdict: Verdict, not_found: Callable[[], Exception], what: str) -> None:
    if verdict is Verdict.forbid:
        raise forbidden(f"the case lies outside what your token allows you to {what}")
    if verdict is Verdict.hide:
        raise not_found()


def require_self(p: Principal, field: str, value: str | None) -> None:
    """A body field naming who acts (handler_id, supervisor_id, rated_by…) must name the
    caller: the token, not the body, says who someone is."""
    if value is not None and value != p.subject:
        raise forbidden(f"{field} must be the token's subject", field)


def listing_area(p: Principal, requested: str | None, district: str) -> str | None:
    """The place a listing is narrowed to, for area roles; None means the whole district."""
    if p.role is Role.auditor or p.covers(district):
        return requested
    if requested is not None:
        if p.covers(requested):
            return requested
        raise forbidden(f"{requested} lies outside your area")
    if len(p.scope) == 1:
        return p.scope[0]
    raise forbidden("your token covers several areas: name the one to list")


def area_grids(p: Principal, district: str, grids: Iterable[str]) -> tuple[str, ...] | None:
    """The grids a district's list (triage queue, callbacks due) narrows to for the caller,
    out of the district's `grids`; None: no narrowing (auditors, district-wide staff). A case
    without a grid lies in the district only, so only district-wide callers list it."""
    if p.role is Role.auditor or p.covers(district):
        return None
    return tuple(g for g in grids if p.covers(g))


def sees_unit(p: Principal, unit_code: str, grids: Sequence[str]) -> bool:
    """A unit's queue or figures: its handlers, the grid workers of its grids, staff whose
    area holds all of its grids, auditors."""
    if p.role is Role.auditor:
        return True
    if p.role is Role.unit_handler:
        return unit_code == p.unit
    if p.role is Role.grid_worker:
        return any(p.covers(g) for g in grids)
    if p.role in AREA_ROLES:
        return bool(grids) and all(p.covers(g) for g in grids)
    return False


# --- the HTTP side -----------------------------------------------------------------------------

BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="GridloopToken",
    description="A Gridloop token. In development: `gridloop token --role dispatcher "
    "--scope <district code>`.",
)


class Authenticator:
    """Builds each endpoint's guard: `principal = Depends(auth.allow(Role.x, ...))`."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Authenticator:
        settings = AuthSettings.from_env(env)
        if settings.mode == "dev":
            log.warning("auth.dev_keys", key_dir=str(settings.key_dir))
        return cls(Verifier.from_settings(settings))

    def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None:
            raise unauthenticated("a bearer token is required", bad_token=False)
        try:
            return self.verifier.verify(credentials.credentials)
        except TokenRefused as exc:
            raise unauthenticated(exc.reason) from None

    def allow(self, *roles: Role, where: Callable[[Principal], bool] | None = None,
              why: str = "your token's scope does not allow this") -> Callable[..., Any]:
        """A guard admitting `roles`, and of those only callers `where` holds for."""
        allowed = frozenset(roles)

        async def guard(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Depends(BEARER),
                        ) -> Principal:
            principal = self.authenticate(credentials)
            request.state.principal = principal
            if principal.role not in allowed:
                raise forbidden(f"a {principal.role.value} may not do this")
            if where is not None and not where(principal):
                raise forbidden(why)
            return principal

        guard.gridloop_roles = allowed  # type: ignore[attr-defined]
        return guard


def guard_roles(route: Any) -> frozenset[Role] | None:
    """The roles a route's guard admits; None when the route has no guard."""
    dependant = getattr(route, "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        roles = getattr(dependency.call, "gridloop_roles", None)
        if roles is not None:
            return roles
    return None


@dataclass(frozen=True)
class Endpoint:
    path: str
    methods: frozenset[str]
    roles: frozenset[Role] | None  # None: no guard


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every endpoint as the app serves it, routers included (FastAPI includes them lazily)."""
    out = []
    for route in iter_route_contexts(app.routes):
        if route.path is None or not route.methods:
            continue
        out.append(Endpoint(route.path, frozenset(route.methods), guard_roles(route)))
    return out


def require_guards(app: FastAPI, open_paths: Iterable[str] = OPEN_PATHS) -> None:
    """Refuse to build an app with an endpoint nobody decided the rule for."""
    open_ = set(open_paths)
    missing = [f"{sorted(e.methods)} {e.path}" for e in endpoints(app)
               if e.path not in open_ and e.roles is None]
    if missing:
        raise RuntimeError(f"endpoints without an authorisation rule: {', '.join(missing)}")


Render = Callable[[Request, AuthRefused], Awaitable[Response]]


def bind(app: FastAPI, auth: Authenticator, render: Render | None = None) -> None:
    """Make sure every endpoint is guarded, and log and count every refusal in one place.
    `render` answers a refusal (default: the services' JSON `detail`)."""
    require_guards(app)
    app.state.auth = auth
    refused = None
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        from prometheus_client import Counter

        refused = Counter("gridloop_auth_refused", "Requests refused by authentication or "
                          "authorisation", ["status"], registry=runtime.metrics.registry)

    async def on_refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthRefused)
        if refused is not None:
            refused.labels(str(exc.status_code)).inc()
        principal = getattr(request.state, "principal", None)
        route = request.scope.get("route")
        log.info("auth.refused", status=exc.status_code,
                 reason=exc.detail.get("reason") if isinstance(exc.detail, dict) else None,
                 route=getattr(route, "path", "unmatched"),
                 **(principal.log_fields() if principal else {}),
                 correlation_id=request.headers.get("x-correlation-id")
                 or request.headers.get("x-request-id"))
        return await (render or http_exception_handler)(request, exc)

    app.add_exception_handler(AuthRefused, on_refusal)
