"""``sharedcare token``: mint a development access token signed by the key under SHAREDCARE_HOME.

    sharedcare token --user u1 --name "Dr A Smith" --role R8000 --org RR8 --scope 'user/*.cruds'

Only the token goes to stdout (so ``TOKEN=$(sharedcare token …)`` works); errors go to stderr
with exit status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from engine.auth.keys import ensure_dev_key, issue_token, parse_ttl
from engine.auth.principal import ROLE_CODE_RE
from engine.auth.scopes import parse_scopes
from engine.config import Settings, load_settings

EXIT_USAGE = 2
_ODS_CODE_RE = re.compile(r"^[A-Za-z0-9]{3,10}$")


class TokenRequestError(ValueError):
    """A `sharedcare token` argument that would produce a useless or misleading token."""


def add_token_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``token`` on an argparse subparsers object; the handler is ``args.handler(args) -> int``."""
    parser = subparsers.add_parser(
        "token",
        help="mint a development access token",
        description="Mint an access token signed by the development key under $SHAREDCARE_HOME/keys. "
        "Prints only the token.",
    )
    parser.add_argument("--user", required=True, help="user id (becomes the sub claim)")
    parser.add_argument("--name", required=True, help="display name of the user")
    parser.add_argument("--role", help="national RBAC job role code, e.g. R8000 (not for --as-patient)")
    parser.add_argument("--org", help="ODS code of the user's organisation, e.g. RR8 (not for --as-patient)")
    parser.add_argument("--as-patient", dest="as_patient", action="store_true",
                        help="the user is the --patient themself (fhirUser Patient/<id>; no role or org)")
    parser.add_argument(
        "--scope",
        required=True,
        action="append",
        help="SMART scopes, space-separated or repeated, e.g. 'user/*.cruds' or 'patient/*.rs'",
    )
    parser.add_argument("--patient", help="patient id for patient/ scopes (the SMART launch context)")
    parser.add_argument("--ttl", default="1h", help="lifetime: 45s, 30m, 1h, 2d or seconds (default 1h)")
    parser.add_argument("--purpose-of-use", dest="purpose_of_use", help="purpose of use code, e.g. TREAT or BTG")
    parser.set_defaults(handler=run_token)
    return parser


def run_token(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Handle ``sharedcare token``: print the token and return 0, or print an error and return 2."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    settings = load_settings(dict(environ) if environ is not None else None)
    try:
        token = _mint(args, settings)
    except ValueError as exc:  # TokenRequestError, or parse_ttl's
        print(f"sharedcare token: error: {exc}", file=err)
        return EXIT_USAGE
    print(token, file=out)
    return 0


def _mint(args: argparse.Namespace, settings: Settings) -> str:
    scope = " ".join(args.scope)
    _check_request(args, scope, settings)
    extra: dict[str, str] = {"purpose_of_use": args.purpose_of_use} if args.purpose_of_use else {}
    if args.as_patient:
        extra["fhirUser"] = f"Patient/{args.patient}"
    return issue_token(
        ensure_dev_key(settings.dev_key_dir),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        user=args.user,
        name=args.name,
        role=args.role or "",
        org=args.org or "",
        scope=scope,
        patient=args.patient,
        ttl_seconds=parse_ttl(args.ttl),
        extra=extra or None,
    )


def _check_request(args: argparse.Namespace, scope: str, settings: Settings) -> None:
    if settings.auth_jwks_url or settings.auth_jwks_file:
        raise TokenRequestError(
            "this configuration trusts an external issuer (SHAREDCARE_AUTH_JWKS_URL/_FILE is set); "
            "tokens signed by the development key would be rejected"
        )
    if not args.user.strip():
        raise TokenRequestError("--user must not be empty")
    if args.as_patient:
        if not args.patient:
            raise TokenRequestError("--as-patient needs --patient (the patient using the token)")
        if args.role or args.org:
            raise TokenRequestError("--as-patient tokens carry no --role or --org")
    elif not args.role or not ROLE_CODE_RE.match(args.role):
        raise TokenRequestError(f"--role {args.role!r} is not an RBAC job role code (R followed by 4 digits, e.g. R8000)")
    elif not args.org or not _ODS_CODE_RE.match(args.org):
        raise TokenRequestError(f"--org {args.org!r} does not look like an ODS code (e.g. RR8, A81001)")
    scopes, rejected = parse_scopes(scope)
    if rejected:
        reasons = "; ".join(f"{r.text}: {r.reason}" for r in rejected)
        raise TokenRequestError(f"--scope has invalid scopes: {reasons}")
    if not scopes:
        raise TokenRequestError("--scope grants nothing: give at least one resource scope, e.g. 'user/*.rs'")
    if any(s.context == "patient" for s in scopes) and not args.patient:
        raise TokenRequestError("patient/ scopes need --patient (the patient the token is about)")


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``token`` on its own (``python -m engine.auth.cli token …``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="sharedcare")
    add_token_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors itself, with status 2
        return int(exc.code or 0)
    return int(args.handler(args, environ=environ, stdout=stdout, stderr=stderr))


if __name__ == "__main__":
    sys.exit(main())
