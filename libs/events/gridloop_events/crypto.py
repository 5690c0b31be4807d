"""Envelope encryption of residents' personal data: what lets it be erased from an immutable log.

Each case has its own random 256-bit *data key*. The reporter's contact is sealed with it
(AES-256-GCM) before the event is built, so the stream only ever holds ciphertext. The data key is
kept by intake, *wrapped* (AES-256-GCM again) by a *master key* from configuration. Destroying a
case's wrapped data key makes its contact unreadable wherever the event was copied, replays
included, without rewriting a single stored byte (crypto-shredding).

Sealing is deterministic for a given key, case and contact: the nonce is an HMAC of the
plaintext under a key derived from the data key (a synthetic IV, as in SIV modes). A retried
report therefore produces the byte-identical event, which is what idempotency needs; the price is
that equal contacts sealed with the same case key give equal ciphertext, which reveals nothing
across cases. Distinct plaintexts get distinct nonces, so GCM's nonce-reuse failure cannot occur.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .catalogue import ReporterContact, SealedContact
from .codec import canonical_json

ALG = "A256GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
ENV_KEYS = "GRIDLOOP_MASTER_KEYS"  # JSON object: master key id -> base64 of 32 bytes
ENV_KEY_ID = "GRIDLOOP_MASTER_KEY_ID"  # the id new data keys are wrapped with
DEV_KEYS_FILE = "master-keys.json"
KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CryptoError(Exception):
    """Sealed data that does not open with the key given: wrong key, wrong case, or altered."""


class MasterKeyError(ValueError):
    """The master key configuration is missing or wrong. Never carries key material."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("not base64url") from exc


# --- data keys and sealing -------------------------------------------------------------------


@dataclass(frozen=True)
class DataKey:
    """One case's data key in clear: only ever in intake's memory, for one operation."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise CryptoError(f"a data key is {KEY_BYTES} bytes")

    @classmethod
    def new(cls, key_id: str) -> DataKey:
        return cls(key_id, os.urandom(KEY_BYTES))


def _subkeys(secret: bytes) -> tuple[bytes, bytes]:
    """(encryption key, nonce key): one data key never serves two purposes directly."""
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=None,
               info=b"gridloop sealed contact v1").derive(secret)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def _contact_aad(case_id: str, key_id: str) -> bytes:
    # Binds the ciphertext to its case and field: a sealed contact copied into another case or
    # another field does not open.
    return f"gridloop|CaseReported.reporter|{case_id}|{key_id}|{ALG}".encode()


def seal_contact(key: DataKey, case_id: str, contact: ReporterContact) -> SealedContact:
    plaintext = canonical_json(contact.model_dump(mode="json", exclude_none=True))
    aad = _contact_aad(case_id, key.key_id)
    enc_key, nonce_key = _subkeys(key.secret)
    nonce = hmac.new(nonce_key, aad + b"\x00" + plaintext, hashlib.sha256).digest()[:NONCE_BYTES]
    ciphertext = AESGCM(enc_key).encrypt(nonce, plaintext, aad)
    return SealedContact(alg=ALG, key_id=key.key_id, nonce=b64url(nonce),
                         ciphertext=b64url(ciphertext))


def open_contact(key: DataKey, case_id: str, sealed: SealedContact) -> ReporterContact:
    if sealed.key_id != key.key_id:
        raise CryptoError(f"sealed with key {sealed.key_id}, not {key.key_id}")
    enc_key, _ = _subkeys(key.secret)
    try:
        plaintext = AESGCM(enc_key).decrypt(
            unb64url(sealed.nonce), unb64url(sealed.ciphertext), _contact_aad(case_id, key.key_id)
        )
    except InvalidTag:
        raise CryptoError(f"the contact of case {case_id} does not open with this key") from None
    return ReporterContact.model_validate(json.loads(plaintext))


# --- master keys: wrapping data keys ---------------------------------------------------------


@dataclass(frozen=True)
class WrappedKey:
    master_key_id: str
    blob: bytes  # nonce (12) + encrypted data key (32) + tag (16)


def _wrap_aad(case_id: str, master_key_id: str) -> bytes:
    # Binds a wrapped key to its case: a row copied onto another case does not unwrap.
    return f"gridloop|case-key|{case_id}|{master_key_id}".encode()


@dataclass(frozen=True)
class MasterKeys:
    """Every master key still needed to unwrap stored data keys, and the one that wraps new ones.

    Rotation: add a new key, make it current; data keys wrapped by older ones keep unwrapping as
    long as those stay configured (rewrap them, then retire the old key).
    """

    keys: Mapping[str, bytes] = field(repr=False)
    current_id: str

    def __post_init__(self) -> None:
        if not self.keys:
            raise MasterKeyError("no master key configured")
        for kid, key in self.keys.items():
            if not KID.match(kid):
                raise MasterKeyError(f"master key id {kid!r}: use [A-Za-z0-9_.-], 1-64 chars")
            if len(key) != KEY_BYTES:
                raise MasterKeyError(f"master key {kid!r} must be {KEY_BYTES} bytes (AES-256)")
        if self.current_id not in self.keys:
            raise MasterKeyError(f"the current master key id {self.current_id!r} is not among "
                                 f"the configured ids {sorted(self.keys)}")

    @classmethod
    def parse(cls, keys_json: str, current_id: str | None = None) -> MasterKeys:
        try:
            raw = json.loads(keys_json)
        except json.JSONDecodeError:
            raise MasterKeyError(f"{ENV_KEYS} is not JSON: want {{\"id\": \"base64 key\"}}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise MasterKeyError(f"{ENV_KEYS} must be a JSON object of id -> base64 key")
        keys: dict[str, bytes] = {}
        for kid, text in raw.items():
            try:
                keys[kid] = base64.b64decode(text.replace("-", "+").replace("_", "/")
                                             + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise MasterKeyError(f"master key {kid!r} is not base64") from None
        if current_id is None:
            if len(keys) != 1:
                raise MasterKeyError(f"{ENV_KEY_ID} must name the current key among several")
            current_id = next(iter(keys))
        return cls(keys, current_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MasterKeys:
        env = os.environ if environ is None else environ
        keys_json = env.get(ENV_KEYS)
        if not keys_json:
            raise MasterKeyError(f"{ENV_KEYS} is not set: residents' personal data cannot be "
                                 f"sealed without a master key")
        return cls.parse(keys_json, env.get(ENV_KEY_ID) or None)

    def wrap(self, case_id: str, key: DataKey) -> WrappedKey:
        nonce = os.urandom(NONCE_BYTES)
        blob = AESGCM(self.keys[self.current_id]).encrypt(
            nonce, key.secret, _wrap_aad(case_id, self.current_id))
        return WrappedKey(self.current_id, nonce + blob)

    def unwrap(self, case_id: str, key_id: str, wrapped: WrappedKey) -> DataKey:
        master = self.keys.get(wrapped.master_key_id)
        if master is None:
            raise MasterKeyError(f"master key {wrapped.master_key_id!r} is not configured "
                                 f"(keys wrapped by a retired master key must be rewrapped first)")
        nonce, body = wrapped.blob[:NONCE_BYTES], wrapped.blob[NONCE_BYTES:]
        try:
            secret = AESGCM(master).decrypt(nonce, body, _wrap_aad(case_id, wrapped.master_key_id))
        except InvalidTag:
            raise CryptoError(f"the data key of case {case_id} does not unwrap") from None
        return DataKey(key_id, secret)


def generate_master_key() -> str:
    """A new master key, base64, for GRIDLOOP_MASTER_KEYS."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def dev_master_key_env(data_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """For `gridloop up`: a master key kept in `data_dir` (created on first start, mode 0600),
    as the environment intake reads. Empty when the environment already configures one.

    Losing the file loses every contact recorded with it, which on a developer's machine is the
    same as `make clean`.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_KEYS):
        return {}
    path = Path(data_dir) / DEV_KEYS_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"current": "dev-1", "keys": {"dev-1": generate_master_key()}}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out)
    doc = json.loads(path.read_text())
    MasterKeys.parse(json.dumps(doc["keys"]), doc["current"])  # refuse a damaged file now
    return {ENV_KEYS: json.dumps(doc["keys"]), ENV_KEY_ID: doc["current"]}


__all__ = [
    "ALG",
    "CryptoError",
    "DataKey",
    "ENV_KEYS",
    "ENV_KEY_ID",
    "MasterKeyError",
    "MasterKeys",
    "WrappedKey",
    "dev_master_key_env",
    "generate_master_key",
    "open_contact",
    "seal_contact",
]
