"""The development signing key: created once under ``$SHAREDCARE_HOME/keys``, used by
``sharedcare token`` to mint tokens and by the verifier when no external issuer is configured.

Files: ``dev-signing-key.json`` (private RSA JWK, mode 0600) and ``jwks.json`` (public JWK Set,
RFC 7517 §5). The ``kid`` is the RFC 7638 JWK thumbprint, so the same key always has the same id.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

PRIVATE_KEY_FILE = "dev-signing-key.json"
JWKS_FILE = "jwks.json"
DEV_ALGORITHM = "RS256"
RSA_BITS = 2048

_TTL_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class DevKey:
    """The loaded development key pair."""

    private_key: RSAKey
    kid: str
    public_jwks: dict[str, Any]
    key_dir: Path

    @property
    def public_keys(self) -> KeySet:
        return KeySet.import_key_set(self.public_jwks)  # type: ignore[arg-type]


def ensure_dev_key(key_dir: Path) -> DevKey:
    """Load the development key from `key_dir`, creating it on first use.

    Idempotent and safe when several processes race: a new key is written to a private temp file
    and published with a no-clobber hard link, so exactly one key wins and every racer loads it.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / PRIVATE_KEY_FILE
    if not path.exists():
        _publish_new_key(path)
    _tighten_mode(path)
    private_key = RSAKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    public = {"keys": [_public_jwk(private_key)]}
    _write_if_changed(key_dir / JWKS_FILE, public)
    return DevKey(private_key=private_key, kid=str(private_key.kid), public_jwks=public, key_dir=key_dir)


def _publish_new_key(path: Path) -> None:
    key = RSAKey.generate_key(RSA_BITS, parameters={"alg": DEV_ALGORITHM, "use": "sig"}, auto_kid=False)
    key.ensure_kid()  # RFC 7638 thumbprint
    data = json.dumps(key.as_dict(private=True), indent=2).encode("utf-8")
    temp = _write_private_temp(path.parent, data)
    try:
        os.link(temp, path)  # fails with FileExistsError if another process got there first
    except FileExistsError:
        pass
    except OSError:
        # Filesystems without hard links: an exclusive create is still no-clobber.
        _write_exclusive(path, data)
    finally:
        os.unlink(temp)


def _write_private_temp(directory: Path, data: bytes) -> str:
    fd, temp = tempfile.mkstemp(prefix=".dev-key-", dir=directory)  # mkstemp creates mode 0600
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def _write_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _tighten_mode(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def _public_jwk(private_key: RSAKey) -> dict[str, Any]:
    public = dict(private_key.as_dict(private=False))
    public.setdefault("alg", DEV_ALGORITHM)
    public.setdefault("use", "sig")
    return public


def _write_if_changed(path: Path, document: Mapping[str, Any]) -> None:
    """Write public JSON atomically (temp file + os.replace); racers write identical bytes."""
    data = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == data:
        return
    fd, temp = tempfile.mkstemp(prefix=".jwks-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def issue_token(
    dev_key: DevKey,
    *,
    issuer: str,
    audience: str,
    user: str,
    name: str,
    role: str,
    org: str,
    scope: str,
    patient: str | None = None,
    ttl_seconds: int,
    now: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign a development access token (RS256, header ``kid``) with our claim vocabulary.

    `extra` claims are merged last, so tests can craft edge cases (they may override anything).
    """
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = int(time.time()) if now is None else int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "name": name,
        "role": role,
        "org": org,
        "scope": scope,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_seconds),
        "jti": str(uuid.uuid4()),
    }
    if patient:
        claims["patient"] = patient
    claims.update(extra or {})
    header = {"alg": DEV_ALGORITHM, "kid": dev_key.kid}
    return jwt.encode(header, claims, dev_key.private_key, algorithms=[DEV_ALGORITHM])


def parse_ttl(text: str) -> int:
    """Seconds in a lifetime such as ``45s``, ``30m``, ``1h``, ``2d`` or a bare ``3600``.

    >>> parse_ttl("1h")
    3600
    """
    match = _TTL_RE.match(str(text))
    if match is None:
        raise ValueError(f"invalid lifetime {text!r}: use a number of seconds or e.g. 45s, 30m, 1h, 2d")
    seconds = int(match[1]) * _TTL_UNITS[match[2].lower()]
    if seconds <= 0:
        raise ValueError(f"invalid lifetime {text!r}: must be longer than zero")
    return seconds
