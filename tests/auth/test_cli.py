"""`sharedcare token`: prints only a token that the verifier accepts; clear errors otherwise."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.auth.cli import add_token_parser, main
from engine.auth.verify import TokenVerifier
from engine.config import load_settings

BASE_ARGS = ["token", "--user", "u1", "--name", "Dr Ada Smith", "--role", "R8000", "--org", "RR8"]


def run(argv: list[str], home: Path, **env: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, environ={"SHAREDCARE_HOME": str(home), **env}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_prints_only_a_token_that_verifies(tmp_path: Path) -> None:
    status, out, err = run([*BASE_ARGS, "--scope", "user/*.cruds", "--purpose-of-use", "TREAT"], tmp_path)
    assert (status, err) == (0, "")
    assert out.endswith("\n") and out.count("\n") == 1 and out.count(".") == 2
    principal = TokenVerifier(load_settings({"SHAREDCARE_HOME": str(tmp_path)})).verify(f"Bearer {out.strip()}")
    assert (principal.user_id, principal.name, principal.role, principal.org) == ("u1", "Dr Ada Smith", "R8000", "RR8")
    assert principal.purpose_of_use == "TREAT"
    assert principal.permits("d", "Patient")


def test_patient_scope_and_ttl(tmp_path: Path) -> None:
    status, out, _ = run([*BASE_ARGS, "--scope", "patient/*.rs", "--scope", "openid", "--patient", "pat-1",
                          "--ttl", "30m"], tmp_path)
    assert status == 0
    principal = TokenVerifier(load_settings({"SHAREDCARE_HOME": str(tmp_path)})).verify(f"Bearer {out.strip()}")
    assert principal.patient == "pat-1" and principal.permits("s", "Observation")
    assert principal.expires_at - int(principal.claims["iat"]) == 1800


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--role", "Doctor"], "RBAC job role code"),
        (["--role", "R800"], "RBAC job role code"),
        (["--scope", "openid"], "grants nothing"),
        (["--scope", "user/*.sr"], "invalid scopes"),
        (["--scope", "user/*.rs nonsense"], "invalid scopes"),
        (["--scope", "patient/*.rs"], "--patient"),
        (["--scope", "user/*.rs", "--ttl", "1w"], "invalid lifetime"),
        (["--scope", "user/*.rs", "--org", "R R8"], "ODS code"),
    ],
)
def test_bad_requests_exit_2_with_a_message(tmp_path: Path, extra: list[str], message: str) -> None:
    argv = [*BASE_ARGS, *extra]
    if "--scope" not in argv:
        argv += ["--scope", "user/*.rs"]
    status, out, err = run(argv, tmp_path)
    assert (status, out) == (2, "")
    assert message in err and err.startswith("sharedcare token: error:")


def test_refuses_when_an_external_issuer_is_configured(tmp_path: Path) -> None:
    status, out, err = run([*BASE_ARGS, "--scope", "user/*.rs"], tmp_path,
                           SHAREDCARE_AUTH_JWKS_URL="https://idp.example/jwks")
    assert (status, out) == (2, "")
    assert "external issuer" in err


def test_missing_required_option_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["token", "--user", "u1"], tmp_path)
    assert (status, out) == (2, "")
    assert "required" in capsys.readouterr().err


def test_registers_on_a_subparsers_object() -> None:
    parser = argparse.ArgumentParser(prog="sharedcare")
    add_token_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([*BASE_ARGS, "--scope", "user/*.rs", "--scope", "user/Patient.c"])
    assert args.command == "token" and args.scope == ["user/*.rs", "user/Patient.c"] and args.ttl == "1h"
    assert callable(args.handler)


def test_as_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "SHAREDCARE_HOME": str(tmp_path)}
    for name in [n for n in env if n.startswith("SHAREDCARE_AUTH_")]:
        del env[name]
    result = subprocess.run(
        [sys.executable, "-m", "engine.auth.cli", *BASE_ARGS, "--scope", "user/*.rs"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    settings = load_settings({"SHAREDCARE_HOME": str(tmp_path)})
    assert TokenVerifier(settings).verify(f"Bearer {token}").user_id == "u1"
