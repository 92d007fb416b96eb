"""The development key: created once, private, shared safely between racing processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from engine.auth.keys import JWKS_FILE, PRIVATE_KEY_FILE, ensure_dev_key, issue_token, parse_ttl

from . import EPOCH


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_private_key_and_public_jwks(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path / "keys")
    private_path = tmp_path / "keys" / PRIVATE_KEY_FILE
    assert mode(private_path) == 0o600
    private = json.loads(private_path.read_text())
    assert private["kty"] == "RSA" and "d" in private
    assert private["kid"] == key.kid == RSAKey.import_key(private).thumbprint()  # RFC 7638
    public = json.loads((tmp_path / "keys" / JWKS_FILE).read_text())
    assert public == key.public_jwks
    [jwk] = public["keys"]
    assert jwk["kid"] == key.kid and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()
    assert RSAKey.import_key(private).as_dict(private=False)["n"] == jwk["n"]


def test_is_idempotent(tmp_path: Path) -> None:
    first = ensure_dev_key(tmp_path)
    before = (tmp_path / PRIVATE_KEY_FILE).read_bytes()
    second = ensure_dev_key(tmp_path)
    assert second.kid == first.kid
    assert (tmp_path / PRIVATE_KEY_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_tightens_a_loosened_mode(tmp_path: Path) -> None:
    ensure_dev_key(tmp_path)
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o644)
    ensure_dev_key(tmp_path)
    assert mode(tmp_path / PRIVATE_KEY_FILE) == 0o600


def test_rewrites_a_missing_jwks(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    (tmp_path / JWKS_FILE).unlink()
    ensure_dev_key(tmp_path)
    assert json.loads((tmp_path / JWKS_FILE).read_text()) == key.public_jwks


def test_racing_threads_agree_on_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        kids = set(pool.map(lambda _: ensure_dev_key(tmp_path).kid, range(8)))
    assert len(kids) == 1
    assert kids == {json.loads((tmp_path / PRIVATE_KEY_FILE).read_text())["kid"]}


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    code = "import sys; from pathlib import Path; from engine.auth.keys import ensure_dev_key; " \
           "print(ensure_dev_key(Path(sys.argv[1])).kid)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    kids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(kids) == 1 and "" not in kids


def test_issue_token_claims_and_header(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    token = issue_token(
        key, issuer="iss", audience="aud", user="u1", name="N", role="R8001", org="RR8",
        scope="user/*.rs", patient="p1", ttl_seconds=600, now=EPOCH, extra={"purpose_of_use": "TREAT"},
    )
    decoded = jwt.decode(token, key.public_keys, algorithms=["RS256"])
    assert decoded.header["kid"] == key.kid and decoded.header["alg"] == "RS256"
    claims = decoded.claims
    assert claims["iss"] == "iss" and claims["aud"] == "aud" and claims["sub"] == "u1"
    assert (claims["role"], claims["org"], claims["scope"], claims["patient"]) == ("R8001", "RR8", "user/*.rs", "p1")
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (EPOCH, EPOCH, EPOCH + 600)
    assert claims["purpose_of_use"] == "TREAT"
    assert claims["jti"]


def test_issue_token_rejects_nonpositive_ttl(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    with pytest.raises(ValueError):
        issue_token(key, issuer="i", audience="a", user="u", name="n", role="R8000", org="RR8",
                    scope="user/*.rs", ttl_seconds=0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600), ("30m", 1800), ("45s", 45), ("2d", 172800), ("3600", 3600), (" 10M ", 600)],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "1.5h", "-1h", "0", "0s", "1 hour", "1h30m"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid lifetime"):
        parse_ttl(text)
