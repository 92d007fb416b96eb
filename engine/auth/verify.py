"""Bearer token verification: ``Authorization`` header in, `Principal` out, or an `AuthError`.

Checks, in this order (RFC 6750 for the header, RFC 7515/7519 and RFC 8725 "JWT Best Current
Practices" for the token):

1. ``Authorization: Bearer <compact JWS>``;
2. the header ``alg`` is one of ``settings.auth_algorithms`` — checked before any key is touched,
   and ``none`` and the HMAC algorithms are refused outright, so a public key can never be used as
   an HMAC secret (algorithm confusion, RFC 8725 §2.1);
3. the signature, with the key the header's ``kid`` names in the configured JWK Set (keys are never
   taken from the token itself: ``jwk``/``jku``/``x5u`` headers are ignored);
4. ``iss``, ``aud``, ``exp`` (required), ``nbf`` and ``iat``, with 60 s leeway for clock skew;
5. the claims map to a `Principal` (`engine.auth.principal`).

Successful verifications are cached by token string until the token expires, so the hot path for a
repeated token is one dict lookup and one clock read.

Key sources (first configured wins): ``auth_jwks_file``; ``auth_jwks_url`` (fetched with httpx,
kept 5 minutes, refetched at most every 30 s when a token names an unknown ``kid``); else the
development key under ``settings.dev_key_dir``.

Threading: `TokenVerifier.verify` is synchronous and thread-safe. With a JWKS URL a cache miss may
block on the network (5 s timeout), so async code should call `TokenVerifier.averify`, which answers
cache hits inline and runs misses in a worker thread (anyio, the same pool Starlette uses).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    InvalidKeyTypeError,
    JoseError,
    KeyParameterError,
)
from joserfc.jwk import JWKRegistry, Key

from engine.auth.keys import ensure_dev_key
from engine.auth.principal import ClaimsError, Principal, claims_to_principal
from engine.config import Settings

log = logging.getLogger(__name__)

REALM = "sharedcare"
LEEWAY_SECONDS = 60
JWKS_MAX_AGE_SECONDS = 300
JWKS_MIN_REFETCH_SECONDS = 30
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
CACHE_MAX_ENTRIES = 10_000
MAX_TOKEN_BYTES = 16 * 1024

# Asymmetric signature algorithms only (RFC 7518 §3.1, RFC 8037). HMAC and "none" can never be enabled.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})

Clock = Callable[[], float]


class AuthError(Exception):
    """An authentication or authorisation failure with a stable `code`.

    `status` is 401 (no usable token), 403 (token fine, scope insufficient) or 503 (the issuer's
    key set could not be fetched and none is cached). `www_authenticate` is the RFC 6750 §3
    challenge to send with 401/403; `fhir_issue_type` the OperationOutcome issue code.
    """

    def __init__(
        self,
        status: int,
        code: str,
        description: str,
        *,
        error: str | None = "invalid_token",
        scope: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.error = error
        self.scope = scope

    @classmethod
    def insufficient_scope(cls, interaction: str, resource_type: str) -> AuthError:
        """The 403 the gate raises when no scope grants `interaction` on `resource_type`."""
        return cls(
            403,
            "insufficient-scope",
            f"no granted scope allows '{interaction}' on {resource_type}",
            error="insufficient_scope",
            scope=f"user/{resource_type}.{interaction}",
        )

    @property
    def www_authenticate(self) -> str:
        """e.g. ``Bearer realm="sharedcare", error="invalid_token", error_description="token expired"``."""
        parts = [f'realm="{REALM}"']
        if self.error:
            parts.append(f'error="{self.error}"')
            parts.append(f'error_description="{_quotable(self.description)}"')
        if self.scope:
            parts.append(f'scope="{_quotable(self.scope)}"')
        return "Bearer " + ", ".join(parts)

    @property
    def fhir_issue_type(self) -> str:
        """OperationOutcome.issue.code (http://hl7.org/fhir/R4/valueset-issue-type.html)."""
        if self.status == 403:
            return "forbidden"
        if self.status == 503:
            return "transient"
        return "expired" if self.code == "token-expired" else "login"


def _quotable(text: str) -> str:
    # RFC 6750 §3: error_description and scope may not contain '"' or '\' or non-printables.
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\' else "'" for ch in text)


def _unauthorised(code: str, description: str) -> AuthError:
    return AuthError(401, code, description)


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization`` header value (RFC 6750 §2.1), or an `AuthError`."""
    if authorization is None or not authorization.strip():
        raise AuthError(401, "missing-token", "no bearer token in the Authorization header", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(401, "missing-token", f"Authorization scheme is {scheme[:20]!r}, not Bearer", error=None)
    token = token.strip()
    if not token or " " in token:
        raise AuthError(401, "malformed-header", "expected 'Authorization: Bearer <token>'", error="invalid_request")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, decoded only to choose algorithm and key; nothing in it is trusted yet."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _unauthorised("malformed-token", "token is too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise _unauthorised("malformed-token", "not a compact JWS (header.payload.signature)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise _unauthorised("malformed-token", "token header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise _unauthorised("malformed-token", "token header is not a JSON object")
    return header


class KeySourceUnavailable(Exception):
    """The JWK Set could not be read (network, HTTP status, or not a JWK Set)."""


class JwksCache:
    """Signature keys by ``kid``, loaded by `fetch` and refreshed on age or on an unknown kid.

    Thread-safe: readers use the current immutable snapshot; fetches are serialised by a lock,
    and at most one fetch attempt happens per `min_refetch` seconds whatever tokens arrive.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        clock: Clock,
        description: str,
        max_age: float = JWKS_MAX_AGE_SECONDS,
        min_refetch: float = JWKS_MIN_REFETCH_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.description = description
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._keys: dict[str, Key] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = threading.Lock()
        self.fetch_count = 0

    def key_for(self, kid: str | None) -> Key:
        """The key for `kid` (or the only key, when the token names none)."""
        now = self._clock()
        if self._keys is None or now - self._fetched_at >= self._max_age:
            self._refresh(now, wait=self._keys is None)
        key = self._lookup(kid)
        if key is None and self._refresh(now, wait=True):
            key = self._lookup(kid)
        if key is None:
            raise _unauthorised("unknown-key", f"no key with kid {kid!r} in the issuer's key set")
        return key

    def _lookup(self, kid: str | None) -> Key | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _refresh(self, now: float, *, wait: bool) -> bool:
        """Fetch again unless one was attempted within `min_refetch`; True if the keys changed."""
        if not self._lock.acquire(blocking=wait):
            return False  # another thread is fetching; use what we have
        try:
            if now - self._attempted_at < self._min_refetch:
                if self._keys is None:
                    raise AuthError(503, "key-source-unavailable", f"{self.description} could not be read",
                                    error=None)
                return False
            self._attempted_at = now
            self.fetch_count += 1
            try:
                keys = _signature_keys(self._fetch())
            except KeySourceUnavailable as exc:
                log.warning("auth: %s: %s", self.description, exc)
                if self._keys is None:
                    raise AuthError(503, "key-source-unavailable", f"{self.description} could not be read",
                                    error=None) from exc
                return False
            changed = keys != self._keys
            self._keys, self._fetched_at = keys, now
            return changed
        finally:
            self._lock.release()


def _signature_keys(document: Mapping[str, Any]) -> dict[str, Key]:
    """Public signature keys of a JWK Set (RFC 7517 §5), by kid; unusable entries are skipped."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise KeySourceUnavailable("not a JWK Set (no 'keys' array)")
    keys: dict[str, Key] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("kty") == "oct" or entry.get("use") == "enc":
            continue  # symmetric keys are never trusted for verification
        try:
            key = JWKRegistry.import_key(dict(entry))
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("auth: skipping unusable JWK %r: %s", entry.get("kid"), exc)
            continue
        key.ensure_kid()
        keys[str(key.kid)] = key
    if not keys:
        raise KeySourceUnavailable("JWK Set holds no usable signature keys")
    return keys


def _fetch_url(client: httpx.Client, url: str) -> Mapping[str, Any]:
    try:
        response = client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise KeySourceUnavailable(f"fetching {url}: {exc}") from exc


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeySourceUnavailable(f"reading {path}: {exc}") from exc


def allowed_algorithms(configured: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Validate ``SHAREDCARE_AUTH_ALGORITHMS``: asymmetric JWS algorithms only, never none/HS*."""
    forbidden = [a for a in configured if a in FORBIDDEN_ALGORITHMS or a.upper().startswith("HS")
                 or a.lower() == "none"]
    if forbidden:
        raise ValueError(f"auth algorithms {forbidden} are not allowed: only asymmetric signatures are accepted")
    unknown = [a for a in configured if a not in SUPPORTED_ALGORITHMS]
    if unknown or not configured:
        raise ValueError(f"auth algorithms {unknown or '(none)'} unsupported; choose from {sorted(SUPPORTED_ALGORITHMS)}")
    return frozenset(configured)


def key_source_for(settings: Settings, *, clock: Clock, http_client: httpx.Client | None = None) -> JwksCache:
    """The key cache for the configured source: JWKS file, else JWKS URL, else the dev key."""
    if settings.auth_jwks_file is not None:
        path = Path(settings.auth_jwks_file)
        return JwksCache(lambda: _read_file(path), clock=clock, description=f"JWKS file {path}")
    if settings.auth_jwks_url:
        url = settings.auth_jwks_url
        client = http_client or httpx.Client(timeout=JWKS_FETCH_TIMEOUT_SECONDS, follow_redirects=False)
        return JwksCache(lambda: _fetch_url(client, url), clock=clock, description=f"JWKS URL {url}")
    key_dir = settings.dev_key_dir
    ensure_dev_key(key_dir)
    log.warning("auth: no external issuer configured; accepting tokens signed by the development key in %s",
                key_dir)
    return JwksCache(lambda: ensure_dev_key(key_dir).public_jwks, clock=clock,
                     description=f"development key in {key_dir}")


class TokenVerifier:
    """Verifies bearer tokens against `settings` and caches the resulting principals.

    `clock` returns epoch seconds (tests pass a fake one); `http_client` lets the server share its
    httpx client for JWKS fetches.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.time,
        http_client: httpx.Client | None = None,
        cache_size: int = CACHE_MAX_ENTRIES,
    ) -> None:
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._algorithms = allowed_algorithms(settings.auth_algorithms)
        self._clock = clock
        self.keys = key_source_for(settings, clock=clock, http_client=http_client)
        self._remote = settings.auth_jwks_file is None and bool(settings.auth_jwks_url)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    @property
    def key_source(self) -> str:
        """Where keys come from, for the startup log line."""
        return self.keys.description

    def verify(self, authorization: str | None) -> Principal:
        """Verify an ``Authorization`` header value; return the `Principal` or raise `AuthError`."""
        token = bearer_token(authorization)
        cached = self._cached(token)
        if cached is not None:
            return cached
        principal = self.verify_token(token)
        self._remember(token, principal)
        return principal

    async def averify(self, authorization: str | None) -> Principal:
        """`verify` for async callers: cache hits inline, misses that may fetch keys in a thread."""
        token = bearer_token(authorization)
        cached = self._cached(token)
        if cached is not None:
            return cached
        if self._remote:
            return await anyio.to_thread.run_sync(self.verify, authorization)
        return self.verify(authorization)

    def verify_token(self, token: str) -> Principal:
        """Full verification of one compact JWS, bypassing the cache."""
        header = _unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg in FORBIDDEN_ALGORITHMS or alg not in self._algorithms:
            raise _unauthorised("unsupported-algorithm", f"alg {alg!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _unauthorised("malformed-token", "kid must be a string")
        key = self.keys.key_for(kid)
        claims = _signed_claims(token, key, alg)
        self._check_claims(claims, self._clock())
        try:
            return claims_to_principal(claims)
        except ClaimsError as exc:
            raise _unauthorised(exc.code, exc.description) from exc

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        """RFC 7519 §4.1 registered claims; ``exp`` is required (RFC 9068 §2.2)."""
        if claims.get("iss") != self._issuer:
            raise _unauthorised("wrong-issuer", "token was not issued by the configured issuer")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if self._audience not in audiences:
            raise _unauthorised("wrong-audience", f"token audience does not include {self._audience!r}")
        expires = _numeric_claim(claims, "exp")
        if expires is None:
            raise _unauthorised("missing-claim", "token has no exp")
        if now >= expires + LEEWAY_SECONDS:
            raise _unauthorised("token-expired", "token has expired")
        for name in ("nbf", "iat"):
            moment = _numeric_claim(claims, name)
            if moment is not None and moment > now + LEEWAY_SECONDS:
                raise _unauthorised("token-not-yet-valid", f"token {name} is in the future")

    def _cached(self, token: str) -> Principal | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        principal, deadline = entry
        if self._clock() < deadline:
            return principal
        with self._cache_lock:
            self._cache.pop(token, None)
        return None

    def _remember(self, token: str, principal: Principal) -> None:
        deadline = principal.expires_at + LEEWAY_SECONDS
        with self._cache_lock:
            if len(self._cache) >= self._cache_size:
                self._evict()
            self._cache[token] = (principal, deadline)

    def _evict(self) -> None:
        """Drop expired entries; if still full, the oldest tenth (insertion order)."""
        now = self._clock()
        for token in [t for t, (_, deadline) in self._cache.items() if deadline <= now]:
            del self._cache[token]
        excess = len(self._cache) - self._cache_size + max(1, self._cache_size // 10)
        for token in list(self._cache)[: max(0, excess)]:
            del self._cache[token]

    @property
    def cached_count(self) -> int:
        """How many verified tokens are cached (for metrics and tests)."""
        return len(self._cache)


def _signed_claims(token: str, key: Key, alg: str) -> dict[str, Any]:
    """Verify the signature with joserfc and return the payload claims."""
    try:
        return jwt.decode(token, key, algorithms=[alg]).claims
    except BadSignatureError as exc:
        raise _unauthorised("bad-signature", "token signature does not verify") from exc
    except (InvalidKeyTypeError, KeyParameterError) as exc:
        raise _unauthorised("key-mismatch", f"key {key.kid!r} cannot verify alg {alg}") from exc
    except JoseError as exc:
        raise _unauthorised("malformed-token", f"token could not be decoded: {exc.description}") from exc


def _numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unauthorised("malformed-token", f"claim {name} must be a number of seconds")
    return float(value)
