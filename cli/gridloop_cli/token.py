"""`gridloop token`: a bearer token for development and tests, signed with the local dev key.

    gridloop token --role dispatcher --scope 370190
    curl -H "Authorization: Bearer $(gridloop token --role auditor)" http://127.0.0.1:8001/v1/cases

The key lives in the local key folder (`.run/keys`, or $GRIDLOOP_KEY_DIR), which `gridloop up`
creates and services started with GRIDLOOP_AUTH=dev trust. Production tokens come from the
district's identity provider instead; this command never sees its keys.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import typer

from gridloop_events.auth import Role, TokenRefused, Verifier
from gridloop_events.auth_keys import Issuer, KeyFolder, KeySetupError, public_pem

ROLES = ", ".join(r.value for r in Role)


def _codes(values: list[str]) -> list[str]:
    return [code for value in values for code in re.split(r"[\s,]+", value) if code]


def token(
    role: str = typer.Option(None, help=f"One of: {ROLES}."),
    scope: list[str] = typer.Option(
        [], help="Codes the token covers (repeat, or separate by commas): grid codes for a "
        "grid_worker, one unit code for a unit_handler, street/community/district codes for a "
        "dispatcher or supervisor."),
    sub: str = typer.Option(None, help="Who: a resident's id, a staff id, a system's name "
                            "(default dev-<role>)."),
    ttl: int = typer.Option(3600, min=1, max=30 * 86400, help="Seconds until it expires."),
    kid: str = typer.Option(None, help="Sign with this key of the folder (default: newest)."),
    key_dir: Path = typer.Option(None, help="The local key folder (default $GRIDLOOP_KEY_DIR "
                                 "or .run/keys)."),
    new_key: bool = typer.Option(False, "--new-key", help="Create a new signing key first "
                                 "(rotation: services in dev mode trust every key there)."),
    public_keys: bool = typer.Option(False, "--public-keys", help="Print the folder's public "
                                     "keys as GRIDLOOP_JWT_PUBLIC_KEYS JSON instead."),
    header: bool = typer.Option(False, "--header", help="Print 'Authorization: Bearer …'."),
) -> None:
    """Print a signed token (for development and tests)."""
    folder = KeyFolder(key_dir)
    try:
        if new_key:
            created = folder.create()
            print(f"created signing key {created.kid} in {folder.path}", file=sys.stderr)
        if public_keys:
            print(json.dumps({kid: public_pem(key.public_key)
                              for kid, key in folder.public_keys().items()}))
            return
        if role is None:
            if new_key:
                return
            raise typer.BadParameter(f"give --role ({ROLES})")
        key = folder.signing_key(kid) if kid else folder.ensure()
        issuer = Issuer.from_env(key)
        signed = issuer.token(role, _codes(scope), sub=sub, ttl=ttl)
        # Check it as a service would, so a token that would be refused is never printed.
        Verifier.trusting(key.trusted(), issuer=issuer.issuer,
                          audiences=[issuer.audience]).verify(signed)
    except (KeySetupError, TokenRefused) as exc:
        print(f"gridloop token: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"Authorization: Bearer {signed}" if header else signed)


def register(app: typer.Typer) -> None:
    app.command("token")(token)
