"""The keys behind Gridloop's bearer tokens: which public keys a service trusts, and the local
key folder a developer signs with.

Tokens are signed with an asymmetric key (Ed25519 → EdDSA, or RSA → RS256), so a service holds
public keys only and cannot mint a token itself. Every token names its key (`kid`), and a service
trusts several keys at once, so an issuer rotates by publishing the new key beside the old one,
switching to it, and dropping the old key once its tokens have expired.

Where trusted keys come from:
- `GRIDLOOP_JWT_PUBLIC_KEYS`: a JSON object, kid → public key PEM;
- `GRIDLOOP_JWT_KEYS_FILE`: a file holding such an object, re-read when an unknown kid shows up
  and at least every minute, so a key added to it is trusted, and a key removed from it is no
  longer trusted, without a restart;
- in development (`GRIDLOOP_AUTH=dev`) also the public keys in the local key folder
  (`GRIDLOOP_KEY_DIR`, default `.run/keys`), where `gridloop up` creates the dev key and
  `gridloop token` finds the private key to sign with.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ENV_PUBLIC_KEYS = "GRIDLOOP_JWT_PUBLIC_KEYS"
ENV_KEYS_FILE = "GRIDLOOP_JWT_KEYS_FILE"
ENV_KEY_DIR = "GRIDLOOP_KEY_DIR"
ENV_ISSUER = "GRIDLOOP_JWT_ISSUER"
ENV_AUDIENCE = "GRIDLOOP_JWT_AUDIENCE"
DEFAULT_KEY_DIR = Path(".run") / "keys"
DEFAULT_ISSUER = "gridloop"
DEFAULT_AUDIENCE = "gridloop"
KID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_RSA_BITS = 2048
# An unknown kid re-reads the key sources at most this often, so a flood of made-up kids
# cannot turn into a flood of file reads; and they are re-read this often in any case, so a
# key taken out of them stops being trusted.
RELOAD_INTERVAL = 10.0
REFRESH_INTERVAL = 60.0

PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class KeySetupError(ValueError):
    """A key or key source that cannot be used; the message names which and why."""


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    """The one algorithm a key is used with: a token cannot pick another (no alg confusion)."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeySetupError(
                f"RSA keys must have at least {MIN_RSA_BITS} bits, not {key.key_size}")
        return "RS256"
    raise KeySetupError(f"{type(key).__name__} keys are not accepted: use Ed25519 or RSA")


@dataclass(frozen=True)
class TrustedKey:
    kid: str
    public_key: PublicKey
    algorithm: str


def trusted_key(kid: str, pem: str) -> TrustedKey:
    if not KID_PATTERN.match(kid):
        raise KeySetupError(f"kid {kid!r}: use 1-64 letters, digits, '.', '_' or '-'")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise KeySetupError(f"kid {kid!r}: not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise KeySetupError(f"kid {kid!r}: {type(key).__name__} keys are not accepted")
    return TrustedKey(kid, key, algorithm_of(key))


def parse_key_map(text: str, source: str) -> dict[str, TrustedKey]:
    try:
        raw = json.loads(text)
    except ValueError:
        raise KeySetupError(f"{source}: not JSON (want an object kid → PEM)") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise KeySetupError(f"{source}: want a JSON object kid → PEM string")
    return {kid: trusted_key(kid, pem) for kid, pem in raw.items()}


def public_pem(key: PrivateKey | PublicKey) -> str:
    private = isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey)
    public = key.public_key() if private else key  # type: ignore[union-attr]
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class KeyRing:
    """The public keys a service trusts, by kid: `fixed` ones, and those its `sources` give,
    re-read when a token names a kid not yet known (rate-limited) and every minute."""

    fixed: dict[str, TrustedKey] = field(default_factory=dict)
    sources: tuple[Callable[[], dict[str, TrustedKey]], ...] = ()
    keys: dict[str, TrustedKey] = field(init=False, default_factory=dict)
    _loaded_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.reload()

    def reload(self) -> None:
        found = dict(self.fixed)
        for source in self.sources:
            found.update(source())
        self.keys = found
        self._loaded_at = time.monotonic()

    def get(self, kid: str) -> TrustedKey | None:
        age = time.monotonic() - self._loaded_at
        if self.sources and (age >= REFRESH_INTERVAL
                             or (kid not in self.keys and age >= RELOAD_INTERVAL)):
            try:
                self.reload()
            except KeySetupError:
                pass  # keep the keys we had; the start-up load already proved the setup
        return self.keys.get(kid)

    def __len__(self) -> int:
        return len(self.keys)


def file_source(path: Path) -> Callable[[], dict[str, TrustedKey]]:
    def read() -> dict[str, TrustedKey]:
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeySetupError(f"{ENV_KEYS_FILE} {path}: {exc.strerror}") from None
        return parse_key_map(text, str(path))

    return read


# --- the local key folder (development and tests) ----------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: PrivateKey

    @property
    def algorithm(self) -> str:
        return algorithm_of(self.private_key)

    def trusted(self) -> TrustedKey:
        public = self.private_key.public_key()
        return TrustedKey(self.kid, public, algorithm_of(public))

    def public_pem(self) -> str:
        return public_pem(self.private_key)

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, ed25519.Ed25519PrivateKey.generate())


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write `path` only if it does not exist yet (atomically: a link of a finished temp file),
    so services starting together never see half a key or overwrite each other's."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)


class KeyFolder:
    """`<kid>.key` (private, mode 0600) and `<kid>.pub` (public) per key; the newest kid signs.
    Kids are `dev-<UTC timestamp>`, so their names sort by age."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path or os.environ.get(ENV_KEY_DIR) or DEFAULT_KEY_DIR)

    def kids(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name[: -len(".key")] for p in self.path.glob("*.key"))

    def create(self, kid: str | None = None) -> SigningKey:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        kid = kid or "dev-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        if not KID_PATTERN.match(kid):
            raise KeySetupError(f"kid {kid!r}: use 1-64 letters, digits, '.', '_' or '-'")
        key = SigningKey.generate(kid)
        if not _write_new(self.path / f"{kid}.key", _private_pem(key.private_key), 0o600):
            return self.signing_key(kid)
        _write_new(self.path / f"{kid}.pub", key.public_pem().encode(), 0o644)
        return key

    def ensure(self) -> SigningKey:
        """The current signing key, created on first use."""
        return self.signing_key() if self.kids() else self.create()

    def signing_key(self, kid: str | None = None) -> SigningKey:
        kids = self.kids()
        if not kids:
            raise KeySetupError(f"no signing key in {self.path}: start `gridloop up` once, "
                            "or run `gridloop token --new-key`")
        kid = kid or kids[-1]
        if kid not in kids:
            raise KeySetupError(f"no key {kid!r} in {self.path} (have {', '.join(kids)})")
        pem = (self.path / f"{kid}.key").read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
            raise KeySetupError(f"{kid}.key holds a {type(key).__name__}; use Ed25519 or RSA")
        return SigningKey(kid, key)

    def public_keys(self) -> dict[str, TrustedKey]:
        """The folder's public keys only: a service never needs to read a private one."""
        if not self.path.is_dir():
            return {}
        out: dict[str, TrustedKey] = {}
        for pub in sorted(self.path.glob("*.pub")):
            out[pub.name[: -len(".pub")]] = trusted_key(pub.name[: -len(".pub")], pub.read_text())
        return out


# --- issuing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    """Signs tokens: `gridloop token`, the simulator and the tests. Production tokens come from
    the district's identity provider, which signs with a key the services are told to trust."""

    key: SigningKey
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE

    @classmethod
    def from_env(cls, key: SigningKey, env: Mapping[str, str] | None = None) -> Issuer:
        env = os.environ if env is None else env
        audience = (env.get(ENV_AUDIENCE) or DEFAULT_AUDIENCE).split(",")[0].strip()
        return cls(key, env.get(ENV_ISSUER) or DEFAULT_ISSUER, audience)

    def token(self, role: str, scope: str | list[str] | tuple[str, ...] = (), *,
              sub: str | None = None, ttl: int = 3600, resident_id: str | None = None,
              now: float | None = None, extra: Mapping[str, Any] | None = None) -> str:
        issued = int(now if now is not None else time.time())
        codes = scope.split() if isinstance(scope, str) else list(scope)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub or f"dev-{role}",
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "jti": os.urandom(12).hex(),
            "role": role,
            "scope": " ".join(codes),
        }
        if role == "resident":
            claims["resident_id"] = resident_id or claims["sub"]
        claims.update(extra or {})
        return jwt.encode(claims, self.key.private_key, algorithm=self.key.algorithm,
                          headers={"kid": self.key.kid})

    def headers(self, role: str, scope: str | list[str] | tuple[str, ...] = (),
                **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, scope, **kw)}"}

    def trusted_keys_json(self) -> str:
        """What a service given this issuer's tokens sets as GRIDLOOP_JWT_PUBLIC_KEYS."""
        return json.dumps({self.key.kid: self.key.public_pem()})
