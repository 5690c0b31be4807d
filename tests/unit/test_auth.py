"""Bearer tokens on plain data: what a service accepts, what it refuses and why, key rotation,
the local key folder, and the scope rules every endpoint applies."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from gridloop_events import auth_keys
from gridloop_events.auth import (
    AuthSettings,
    CaseFacts,
    Principal,
    Role,
    TokenRefused,
    Verdict,
    Verifier,
    listing_area,
    may_handle,
    may_note,
    may_see,
    may_supervise,
    sees_unit,
)
from gridloop_events.auth_keys import (
    Issuer,
    KeyFolder,
    KeyRing,
    KeySetupError,
    SigningKey,
    file_source,
    public_pem,
    trusted_key,
)
from gridloop_events.envelope import Actor, ActorKind
from gridloop_events.vocabulary import Tier

KEY = SigningKey.generate("k1")
OTHER = SigningKey.generate("k2")
ISSUER = Issuer(KEY)
VERIFIER = Verifier.trusting(KEY.trusted())
DISTRICT = "370190"
STREET, COMMUNITY, GRID = "370190001", "370190001001", "370190001001001"
OTHER_GRID = "370190002003004"


def refused(token: str, verifier: Verifier = VERIFIER) -> str:
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_a_token_names_who_acts_in_which_role_and_scope() -> None:
    p = VERIFIER.verify(ISSUER.token("grid_worker", [GRID, OTHER_GRID], sub="gw-17"))
    assert (p.subject, p.role, p.scope, p.kid) == ("gw-17", Role.grid_worker,
                                                    (GRID, OTHER_GRID), "k1")
    assert p.actor() == Actor(kind=ActorKind.grid_worker, id="gw-17", role="grid_worker")
    resident = VERIFIER.verify(ISSUER.token("resident", sub="r-9"))
    assert resident.actor().kind is ActorKind.resident and resident.actor().id == "r-9"
    handler = VERIFIER.verify(ISSUER.token("unit_handler", "GT-370190001001001", sub="h-1"))
    assert handler.unit == "GT-370190001001001"
    listed = jwt.encode({"iss": "gridloop", "aud": "gridloop", "sub": "d-1", "role": "dispatcher",
                         "scope": [STREET], "exp": int(time.time()) + 60},
                        KEY.private_key, algorithm="EdDSA", headers={"kid": "k1"})
    assert VERIFIER.verify(listed).scope == (STREET,)


def test_expired_foreign_tampered_and_confused_tokens_are_refused() -> None:
    now = time.time()
    assert "expired" in refused(ISSUER.token("auditor", ttl=60, now=now - 3600))
    assert "not valid yet" in refused(ISSUER.token("auditor", now=now + 3600))
    assert "does not trust" in refused(Issuer(OTHER).token("auditor"))
    assert "audience" in refused(Issuer(KEY, audience="elsewhere").token("auditor"))
    assert "issuer" in refused(Issuer(KEY, issuer="someone").token("auditor"))
    head, body, sig = ISSUER.token("auditor").split(".")
    forged_body = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(ISSUER.token("auditor"), options={"verify_signature": False}),
         "role": "supervisor", "scope": DISTRICT}).encode()).decode()
    assert "signature" in refused(f"{head}.{forged_body}.{sig}")
    # Another key's signature under k1's name, an HMAC under k1's name, and "none".
    assert "signature" in refused(jwt.encode(
        {"iss": "gridloop", "aud": "gridloop", "sub": "x", "role": "auditor",
         "exp": int(now) + 60}, OTHER.private_key, algorithm="EdDSA", headers={"kid": "k1"}))
    hmac = jwt.api_jws.PyJWS(algorithms=["HS256"]).encode(
        b'{"sub":"x","role":"auditor"}', b"k1-public-pem-as-secret-" * 2, algorithm="HS256",
        headers={"kid": "k1"})
    assert "EdDSA only" in refused(hmac)
    unsigned = jwt.api_jws.PyJWS(algorithms=["none"]).encode(
        b'{"sub":"x","role":"auditor"}', None, algorithm="none", headers={"kid": "k1"})
    assert "EdDSA only" in refused(unsigned)
    assert "names no key" in refused(jwt.encode({"sub": "x"}, KEY.private_key, algorithm="EdDSA"))
    assert "not a JWT" in refused("Bearer nonsense")


def test_a_verified_token_is_remembered_only_while_its_key_and_times_hold() -> None:
    ring = KeyRing({"k1": KEY.trusted()})
    verifier = Verifier(ring, leeway=0)
    token = ISSUER.token("auditor", ttl=120)
    assert verifier.verify(token).role is Role.auditor
    assert verifier.verify(token).role is Role.auditor  # from memory
    assert token in verifier._verified
    ring.keys.pop("k1")  # the key is no longer trusted: the remembered token is not either
    assert "does not trust" in refused(token, verifier)
    ring.keys["k1"] = KEY.trusted()
    assert verifier.verify(token).role is Role.auditor
    brief = ISSUER.token("auditor", ttl=1)
    assert verifier.verify(brief).role is Role.auditor
    time.sleep(2.1)  # past its exp: refused though remembered
    assert "expired" in refused(brief, verifier)


def test_claims_must_make_sense_for_the_role() -> None:
    assert "exp" in refused(jwt.encode({"iss": "gridloop", "aud": "gridloop", "sub": "x",
                                        "role": "auditor"}, KEY.private_key, algorithm="EdDSA",
                                       headers={"kid": "k1"}))
    assert "role" in refused(ISSUER.token("mayor"))
    assert "area" in refused(ISSUER.token("grid_worker"))
    assert "area" in refused(ISSUER.token("dispatcher"))
    assert "exactly one unit" in refused(ISSUER.token("unit_handler", ["U-1", "U-2"]))
    assert "resident_id" in refused(ISSUER.token("resident", sub="r-1", resident_id="r-2"))
    assert "not a code" in refused(ISSUER.token("grid_worker", ["370190.>"]))


def test_several_keys_are_trusted_at_once_and_a_keys_file_gains_keys_without_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    both = Verifier.trusting(KEY.trusted(), OTHER.trusted())
    assert both.verify(ISSUER.token("auditor")).kid == "k1"
    assert both.verify(Issuer(OTHER).token("auditor")).kid == "k2"

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"k1": KEY.public_pem()}))
    ring = KeyRing(sources=(file_source(path),))
    verifier = Verifier(ring)
    new = SigningKey.generate("k3")
    path.write_text(json.dumps({"k1": KEY.public_pem(), "k3": new.public_pem()}))
    monkeypatch.setattr(auth_keys, "RELOAD_INTERVAL", 0.0)
    assert verifier.verify(Issuer(new).token("auditor")).kid == "k3"
    assert verifier.verify(ISSUER.token("auditor")).kid == "k1"
    # k1 retired: once the file is read again, its tokens are refused.
    path.write_text(json.dumps({"k3": new.public_pem()}))
    monkeypatch.setattr(auth_keys, "REFRESH_INTERVAL", 0.0)
    assert "does not trust" in refused(ISSUER.token("auditor"), verifier)
    assert verifier.verify(Issuer(new).token("auditor")).kid == "k3"


def test_rsa_keys_sign_rs256_and_weak_or_other_keys_are_refused() -> None:
    strong = SigningKey("r1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert strong.algorithm == "RS256"
    verifier = Verifier.trusting(trusted_key("r1", strong.public_pem()))
    assert verifier.verify(Issuer(strong).token("auditor")).role is Role.auditor
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeySetupError, match="2048"):
        trusted_key("w", public_pem(weak))
    with pytest.raises(KeySetupError, match="PEM"):
        trusted_key("x", "not a key")
    with pytest.raises(KeySetupError, match="kid"):
        trusted_key("a b", KEY.public_pem())


def test_required_mode_needs_configured_keys_and_dev_mode_makes_its_own(tmp_path: Path) -> None:
    with pytest.raises(KeySetupError, match="no trusted public key"):
        AuthSettings.from_env({}).keyring()
    with pytest.raises(KeySetupError, match="GRIDLOOP_AUTH"):
        AuthSettings.from_env({"GRIDLOOP_AUTH": "off"})
    env = {"GRIDLOOP_JWT_PUBLIC_KEYS": json.dumps({"k1": KEY.public_pem()}),
           "GRIDLOOP_JWT_AUDIENCE": "gridloop-intake, gridloop"}
    verifier = Verifier.from_settings(AuthSettings.from_env(env))
    assert verifier.verify(ISSUER.token("auditor")).role is Role.auditor
    assert verifier.verify(Issuer(KEY, audience="gridloop-intake").token("auditor"))

    folder = tmp_path / "keys"
    dev = AuthSettings(mode="dev", key_dir=folder)
    ring = dev.keyring()
    [kid] = KeyFolder(folder).kids()
    assert kid in ring.keys
    assert stat.S_IMODE(os.stat(folder / f"{kid}.key").st_mode) == 0o600
    signing = KeyFolder(folder).signing_key()
    assert Verifier.from_settings(dev).verify(Issuer(signing).token("auditor")).kid == kid


def test_the_key_folder_rotates_to_its_newest_key_and_trusts_all(tmp_path: Path) -> None:
    folder = KeyFolder(tmp_path)
    first = folder.ensure()
    assert folder.ensure().kid == first.kid
    second = folder.create()
    assert folder.signing_key().kid == second.kid
    assert set(folder.public_keys()) == {first.kid, second.kid}
    assert folder.create(first.kid).kid == first.kid  # an existing kid is never overwritten
    assert folder.signing_key(first.kid).public_pem() == first.public_pem()
    with pytest.raises(KeySetupError, match="no key"):
        folder.signing_key("dev-missing")


def test_gridloop_token_prints_a_token_the_dev_keys_verify(tmp_path: Path) -> None:
    from gridloop_cli.main import app

    runner = CliRunner()
    folder = tmp_path / "keys"
    result = runner.invoke(app, ["token", "--role", "dispatcher", "--scope", "370190001,370190002",
                                 "--sub", "d-7", "--ttl", "600", "--key-dir", str(folder)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    p = Verifier(KeyRing(KeyFolder(folder).public_keys())).verify(token)
    assert (p.role, p.subject, p.scope) == (Role.dispatcher, "d-7", ("370190001", "370190002"))
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600
    bad = runner.invoke(app, ["token", "--role", "unit_handler", "--key-dir", str(folder)])
    assert bad.exit_code == 2 and "exactly one unit" in bad.output
    keys = runner.invoke(app, ["token", "--public-keys", "--key-dir", str(folder)])
    assert list(json.loads(keys.stdout)) == KeyFolder(folder).kids()


# --- scope rules ------------------------------------------------------------------------------

RESIDENT = Principal("r-1", Role.resident)
WORKER = Principal("gw-1", Role.grid_worker, (GRID,))
HANDLER = Principal("h-1", Role.unit_handler, ("GT-A",))
COMMUNITY_DISPATCHER = Principal("d-1", Role.dispatcher, (COMMUNITY,))
DISTRICT_SUPERVISOR = Principal("s-1", Role.supervisor, (DISTRICT,))
AUDITOR = Principal("a-1", Role.auditor)
SYSTEM = Principal("city-12345", Role.integration)


def facts(grid: str | None = GRID, unit: str | None = "GT-A", tier: Tier | None = Tier.grid,
          reporter: str = "r-1") -> CaseFacts:
    return CaseFacts("C-1", DISTRICT, grid, unit, tier,
                     Actor(kind=ActorKind.resident, id=reporter))


def test_who_sees_a_case() -> None:
    assert may_see(RESIDENT, facts()) is Verdict.allow
    assert may_see(RESIDENT, facts(reporter="r-2")) is Verdict.hide
    assert may_see(WORKER, facts()) is Verdict.allow
    assert may_see(WORKER, facts(grid=OTHER_GRID)) is Verdict.forbid
    assert may_see(HANDLER, facts()) is Verdict.allow
    assert may_see(HANDLER, facts(unit="DEP-URBAN")) is Verdict.forbid
    assert may_see(COMMUNITY_DISPATCHER, facts()) is Verdict.allow
    assert may_see(COMMUNITY_DISPATCHER, facts(grid=OTHER_GRID)) is Verdict.forbid
    # A case reported with an address only lies in the district, not in any community.
    assert may_see(COMMUNITY_DISPATCHER, facts(grid=None)) is Verdict.forbid
    assert may_see(DISTRICT_SUPERVISOR, facts(grid=None)) is Verdict.allow
    assert may_see(AUDITOR, facts(grid=OTHER_GRID, unit=None)) is Verdict.allow
    assert may_see(SYSTEM, facts()) is Verdict.forbid


def test_who_handles_supervises_and_notes() -> None:
    assert may_handle(HANDLER, facts()) is Verdict.allow
    assert may_handle(HANDLER, facts(unit="GT-B")) is Verdict.forbid
    assert may_handle(WORKER, facts()) is Verdict.allow
    # Escalated past the grid, the case is no longer the grid workers' to handle...
    assert may_handle(WORKER, facts(unit="CC-X", tier=Tier.community)) is Verdict.forbid
    # ...but they may still note what they see on their grid.
    assert may_note(WORKER, facts(unit="CC-X", tier=Tier.community)) is Verdict.allow
    assert may_handle(COMMUNITY_DISPATCHER, facts()) is Verdict.forbid
    assert may_supervise(COMMUNITY_DISPATCHER, facts()) is Verdict.allow
    assert may_supervise(COMMUNITY_DISPATCHER, facts(grid=OTHER_GRID)) is Verdict.forbid
    assert may_supervise(WORKER, facts()) is Verdict.forbid
    assert may_supervise(AUDITOR, facts()) is Verdict.forbid  # auditors only read
    assert may_note(AUDITOR, facts()) is Verdict.forbid


def test_listings_are_narrowed_to_the_callers_area() -> None:
    assert listing_area(COMMUNITY_DISPATCHER, None, DISTRICT) == COMMUNITY
    assert listing_area(COMMUNITY_DISPATCHER, GRID, DISTRICT) == GRID
    assert listing_area(DISTRICT_SUPERVISOR, None, DISTRICT) is None
    assert listing_area(AUDITOR, OTHER_GRID, DISTRICT) == OTHER_GRID
    with pytest.raises(Exception) as outside:
        listing_area(COMMUNITY_DISPATCHER, OTHER_GRID, DISTRICT)
    assert getattr(outside.value, "status_code", None) == 403
    two = Principal("gw-2", Role.grid_worker, (GRID, OTHER_GRID))
    with pytest.raises(Exception) as several:
        listing_area(two, None, DISTRICT)
    assert getattr(several.value, "status_code", None) == 403
    assert sees_unit(HANDLER, "GT-A", ()) and not sees_unit(HANDLER, "GT-B", ())
    assert sees_unit(WORKER, "GT-A", (GRID, OTHER_GRID))
    assert not sees_unit(COMMUNITY_DISPATCHER, "SO-1", (GRID, OTHER_GRID))
    assert sees_unit(COMMUNITY_DISPATCHER, "CC-1", (GRID,))
    assert not sees_unit(RESIDENT, "GT-A", (GRID,))
