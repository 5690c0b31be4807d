"""Sealing residents' contacts (AES-256-GCM per case) and wrapping data keys (master keys):
round trips, refusals, the determinism retries need, and master key rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from gridloop_events.catalogue import CaseReported, ReporterContact, SealedContact
from gridloop_events.codec import decode, encode
from gridloop_events.crypto import (
    ENV_KEY_ID,
    ENV_KEYS,
    CryptoError,
    DataKey,
    MasterKeyError,
    MasterKeys,
    dev_master_key_env,
    open_contact,
    seal_contact,
    unb64url,
)
from gridloop_events.testing import TEST_DATA_KEY, reported

NAME, PHONE, ID_NUMBER, NOTE = "王小明", "13912345678", "370105199001011234", "晚上七点后打电话"
CONTACT = ReporterContact(name=NAME, phone=PHONE, id_number=ID_NUMBER, contact_note=NOTE)
CASE = "case-1"


def key(case_id: str = CASE) -> DataKey:
    return DataKey(case_id, TEST_DATA_KEY)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_sealed_contact_opens_to_the_same_contact_and_shows_nothing_in_clear() -> None:
    sealed = seal_contact(key(), CASE, CONTACT)
    assert open_contact(key(), CASE, sealed) == CONTACT
    assert sealed.alg == "A256GCM" and sealed.key_id == CASE
    assert len(unb64url(sealed.nonce)) == 12
    text = sealed.model_dump_json()
    for secret in (NAME, PHONE, ID_NUMBER, NOTE, "13912", json.dumps(NAME)[1:-1]):
        assert secret not in text
    partial = ReporterContact(phone=PHONE)
    assert open_contact(key(), CASE, seal_contact(key(), CASE, partial)) == partial


def test_the_wrong_key_the_wrong_case_or_a_changed_byte_do_not_open() -> None:
    sealed = seal_contact(key(), CASE, CONTACT)
    with pytest.raises(CryptoError):
        open_contact(DataKey(CASE, os.urandom(32)), CASE, sealed)
    # Copied into another case (even one using the same key bytes) it does not open either.
    moved = sealed.model_copy(update={"key_id": "case-2"})
    with pytest.raises(CryptoError):
        open_contact(DataKey("case-2", TEST_DATA_KEY), "case-2", moved)
    raw = bytearray(unb64url(sealed.ciphertext))
    raw[3] ^= 1
    flipped = sealed.model_copy(update={
        "ciphertext": base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()})
    with pytest.raises(CryptoError):
        open_contact(key(), CASE, flipped)
    with pytest.raises(CryptoError):
        open_contact(DataKey("other", TEST_DATA_KEY), CASE, sealed)


def test_sealing_is_deterministic_per_key_so_a_retry_builds_the_same_bytes() -> None:
    one = seal_contact(key(), CASE, CONTACT)
    assert seal_contact(key(), CASE, CONTACT) == one
    other_contact = seal_contact(key(), CASE, CONTACT.model_copy(update={"phone": "13912345679"}))
    assert other_contact.nonce != one.nonce  # no nonce is ever reused for another plaintext
    other_key = seal_contact(DataKey(CASE, os.urandom(32)), CASE, CONTACT)
    assert other_key.ciphertext != one.ciphertext and other_key.nonce != one.nonce
    # The builders seal as intake does: the same report encodes to the same bytes every time.
    assert encode(reported("c1", reporter=CONTACT)) != b""
    a = reported("c1", reporter=CONTACT).payload
    b = reported("c1", reporter=CONTACT).payload
    assert a == b and isinstance(a, CaseReported) and isinstance(a.reporter, SealedContact)


def test_an_event_cannot_carry_a_contact_in_clear() -> None:
    sealed_event = reported("c1", reporter=CONTACT)
    assert NAME.encode() not in encode(sealed_event) and PHONE.encode() not in encode(sealed_event)
    assert decode(encode(sealed_event)) == sealed_event
    fields = sealed_event.payload.model_dump(exclude={"reporter"})
    with pytest.raises(ValidationError):
        CaseReported(**fields, reporter=CONTACT.model_dump())
    body = json.loads(encode(sealed_event))
    body["payload"]["reporter"] = {"name": NAME, "phone": PHONE}
    with pytest.raises(ValueError, match="reporter"):
        decode(json.dumps(body).encode())


def test_master_keys_wrap_and_unwrap_a_data_key_bound_to_its_case() -> None:
    masters = MasterKeys.parse(json.dumps({"m1": b64(os.urandom(32))}))
    assert masters.current_id == "m1"
    data = DataKey.new(CASE)
    wrapped = masters.wrap(CASE, data)
    assert wrapped.master_key_id == "m1" and data.secret not in wrapped.blob
    assert masters.unwrap(CASE, CASE, wrapped) == data
    with pytest.raises(CryptoError):
        masters.unwrap("case-2", CASE, wrapped)  # a row copied onto another case
    other = MasterKeys.parse(json.dumps({"m1": b64(os.urandom(32))}))
    with pytest.raises(CryptoError):
        other.unwrap(CASE, CASE, wrapped)
    assert "secret" not in repr(data) and repr(data.secret) not in repr(data)
    assert b64(masters.keys["m1"]) not in repr(masters)


def test_rotation_keeps_old_wrapped_keys_opening_under_a_new_current_key() -> None:
    k1, k2 = b64(os.urandom(32)), b64(os.urandom(32))
    before = MasterKeys.from_env({ENV_KEYS: json.dumps({"2025-01": k1}), ENV_KEY_ID: "2025-01"})
    data = DataKey.new(CASE)
    old = before.wrap(CASE, data)
    sealed = seal_contact(data, CASE, CONTACT)

    after = MasterKeys.from_env({ENV_KEYS: json.dumps({"2025-01": k1, "2026-01": k2}),
                                 ENV_KEY_ID: "2026-01"})
    reopened = after.unwrap(CASE, CASE, old)
    assert open_contact(reopened, CASE, sealed) == CONTACT
    new = after.wrap(CASE, reopened)
    assert new.master_key_id == "2026-01"
    # The same data key, so a retried report still seals to the same bytes after rotation.
    assert seal_contact(reopened, CASE, CONTACT) == sealed

    retired = MasterKeys.from_env({ENV_KEYS: json.dumps({"2026-01": k2})})
    assert retired.unwrap(CASE, CASE, new) == data
    with pytest.raises(MasterKeyError, match="2025-01"):
        retired.unwrap(CASE, CASE, old)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "not set"),
    ({ENV_KEYS: "not json"}, "not JSON"),
    ({ENV_KEYS: json.dumps(["x"])}, "JSON object"),
    ({ENV_KEYS: json.dumps({"m1": "!!!"})}, "not base64"),
    ({ENV_KEYS: json.dumps({"m1": b64(os.urandom(16))})}, "32 bytes"),
    ({ENV_KEYS: json.dumps({"m1": b64(os.urandom(32)), "m2": b64(os.urandom(32))})}, ENV_KEY_ID),
    ({ENV_KEYS: json.dumps({"m1": b64(os.urandom(32))}), ENV_KEY_ID: "m9"}, "m9"),
    ({ENV_KEYS: json.dumps({"bad id": b64(os.urandom(32))})}, "bad id"),
])
def test_a_wrong_master_key_configuration_is_refused_without_showing_keys(
        env: dict[str, str], message: str) -> None:
    with pytest.raises(MasterKeyError, match=message) as err:
        MasterKeys.from_env(env)
    configured = env.get(ENV_KEYS, "")
    keys = json.loads(configured) if configured.startswith("{") else {}
    for value in keys.values():
        assert value not in str(err.value)


def test_make_run_gets_one_dev_master_key_kept_across_starts(tmp_path: Path) -> None:
    first = dev_master_key_env(tmp_path / ".run", environ={})
    masters = MasterKeys.from_env(first)
    assert masters.current_id == first[ENV_KEY_ID]
    path = tmp_path / ".run" / "master-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dev_master_key_env(tmp_path / ".run", environ={}) == first
    configured = {ENV_KEYS: json.dumps({"prod": b64(os.urandom(32))})}
    assert dev_master_key_env(tmp_path / ".run", environ=configured) == {}
