"""Bearer token verification against the development key and a JWKS file."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from engine.auth.keys import DevKey, ensure_dev_key
from engine.auth.verify import AuthError, TokenVerifier, allowed_algorithms, bearer_token
from engine.config import Settings

from . import EPOCH, FakeClock, make_settings, mint


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    return make_settings(home)


@pytest.fixture(scope="module")
def dev_key(settings: Settings) -> DevKey:
    return ensure_dev_key(settings.dev_key_dir)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(settings: Settings, dev_key: DevKey, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(settings, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def segments(token: str) -> list[str]:
    return token.split(".")


def rejected(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verifier.verify(f"Bearer {token}")
    return caught.value


# --- the good path -------------------------------------------------------------------------------

def test_good_token(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock(), patient="pat-1", scope="patient/*.rs")
    principal = verifier.verify(f"Bearer {token}")
    assert (principal.user_id, principal.role, principal.org, principal.patient) == ("user-1", "R8000", "RR8", "pat-1")
    assert principal.permits("r", "Observation") and not principal.permits("u", "Observation")
    assert principal.expires_at == EPOCH + 3600


def test_scheme_is_case_insensitive(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                    clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock())
    assert verifier.verify(f"bearer   {token}  ").user_id == "user-1"


def test_audience_may_be_a_list(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock(), extra={"aud": ["other", settings.auth_audience]})
    assert verifier.verify(f"Bearer {token}").user_id == "user-1"


def test_leeway_of_sixty_seconds(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                 clock: FakeClock) -> None:
    expired_30s_ago = mint(dev_key, settings, clock() - 90, ttl_seconds=60)
    assert verifier.verify_token(expired_30s_ago).user_id == "user-1"
    issued_30s_ahead = mint(dev_key, settings, clock() + 30)
    assert verifier.verify_token(issued_30s_ahead).user_id == "user-1"


def test_averify(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock())
    first = asyncio.run(verifier.averify(f"Bearer {token}"))
    assert asyncio.run(verifier.averify(f"Bearer {token}")) is first


# --- lifetime and claims -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"now_offset": -3600 - 61}, "token-expired"),
        ({"now_offset": 3600}, "token-not-yet-valid"),
        ({"extra": {"nbf": EPOCH + 600}}, "token-not-yet-valid"),
        ({"extra": {"iat": EPOCH + 600}}, "token-not-yet-valid"),
        ({"issuer": "someone-else"}, "wrong-issuer"),
        ({"extra": {"iss": None}}, "wrong-issuer"),
        ({"audience": "another-service"}, "wrong-audience"),
        ({"extra": {"aud": ["x", "y"]}}, "wrong-audience"),
        ({"extra": {"aud": None}}, "wrong-audience"),
        ({"extra": {"exp": None}}, "missing-claim"),
        ({"extra": {"exp": "soon"}}, "malformed-token"),
        ({"extra": {"nbf": True}}, "malformed-token"),
        ({"role": "nurse"}, "bad-role"),
        ({"extra": {"role": None}}, "missing-role"),
        ({"user": ""}, "missing-user"),
    ],
)
def test_claims_are_checked(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock,
                            overrides: dict[str, Any], code: str) -> None:
    now = clock() + overrides.pop("now_offset", 0)
    error = rejected(verifier, mint(dev_key, settings, now, **overrides))
    assert (error.status, error.code) == (401, code)
    assert error.www_authenticate.startswith('Bearer realm="sharedcare", error="invalid_token", error_description="')


# --- signatures and algorithms -------------------------------------------------------------------

def test_tampered_payload(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    header, payload, signature = segments(mint(dev_key, settings, clock()))
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "R8015"
    assert rejected(verifier, f"{header}.{b64json(claims)}.{signature}").code == "bad-signature"


def test_tampered_signature(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    header, payload, signature = segments(mint(dev_key, settings, clock()))
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]
    assert rejected(verifier, f"{header}.{payload}.{flipped}").code == "bad-signature"
    assert rejected(verifier, f"{header}.{payload}.").code == "bad-signature"


def test_signed_by_another_key_with_our_kid(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                            clock: FakeClock) -> None:
    impostor = dataclasses.replace(dev_key, private_key=RSAKey.generate_key(2048))
    assert rejected(verifier, mint(impostor, settings, clock())).code == "bad-signature"


def test_unknown_kid(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    other = RSAKey.generate_key(2048, auto_kid=True)
    stranger = dataclasses.replace(dev_key, private_key=other, kid=str(other.kid))
    error = rejected(verifier, mint(stranger, settings, clock()))
    assert (error.status, error.code) == (401, "unknown-key")


def test_alg_none_is_refused(verifier: TokenVerifier, dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    _, payload, _ = segments(mint(dev_key, settings, clock()))
    for alg in ("none", "None", "NONE"):
        header = b64json({"alg": alg, "typ": "JWT", "kid": dev_key.kid})
        assert rejected(verifier, f"{header}.{payload}.").code == "unsupported-algorithm"


def test_hs256_with_the_public_key_as_secret_is_refused(verifier: TokenVerifier, dev_key: DevKey,
                                                         settings: Settings, clock: FakeClock) -> None:
    """The classic algorithm-confusion attack (RFC 8725 §2.1): HMAC keyed with the public key PEM."""
    public_pem = dev_key.private_key.as_pem(private=False)
    _, payload, _ = segments(mint(dev_key, settings, clock(), role="R8015"))
    for secret in (public_pem, json.dumps(dev_key.public_jwks["keys"][0]).encode()):
        header = b64json({"alg": "HS256", "typ": "JWT", "kid": dev_key.kid})
        signing_input = f"{header}.{payload}".encode()
        signature = b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
        error = rejected(verifier, f"{header}.{payload}.{signature}")
        assert error.code == "unsupported-algorithm"


def test_algorithm_outside_the_configured_list(dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    only_es256 = TokenVerifier(dataclasses.replace(settings, auth_algorithms=("ES256",)), clock=clock)
    assert rejected(only_es256, mint(dev_key, settings, clock())).code == "unsupported-algorithm"


def test_header_alg_that_does_not_fit_the_key(dev_key: DevKey, settings: Settings, clock: FakeClock) -> None:
    both = TokenVerifier(dataclasses.replace(settings, auth_algorithms=("RS256", "PS256")), clock=clock)
    claims = {"iss": settings.auth_issuer, "aud": settings.auth_audience, "sub": "u", "role": "R8000",
              "exp": EPOCH + 60}
    unpinned = RSAKey.import_key({k: v for k, v in dev_key.private_key.as_dict(private=True).items() if k != "alg"})
    token = jwt.encode({"alg": "PS256", "kid": dev_key.kid}, claims, unpinned, algorithms=["PS256"])
    assert rejected(both, token).code == "key-mismatch"  # the dev JWK is pinned to alg RS256


@pytest.mark.parametrize("algorithms", [("RS256", "HS256"), ("none",), ("HS512",), ("RS256", "XX999"), ()])
def test_unsafe_or_unknown_algorithm_configuration_is_refused(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        allowed_algorithms(algorithms)


# --- the Authorization header --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "code", "challenge"),
    [
        (None, "missing-token", 'Bearer realm="sharedcare"'),
        ("", "missing-token", 'Bearer realm="sharedcare"'),
        ("Basic dXNlcjpwYXNz", "missing-token", 'Bearer realm="sharedcare"'),
        ("Bearer", "malformed-header", None),
        ("Bearer    ", "malformed-header", None),
        ("Bearer a b", "malformed-header", None),
    ],
)
def test_missing_or_malformed_header(verifier: TokenVerifier, header: str | None, code: str,
                                     challenge: str | None) -> None:
    with pytest.raises(AuthError) as caught:
        verifier.verify(header)
    assert (caught.value.status, caught.value.code) == (401, code)
    if challenge:
        assert caught.value.www_authenticate == challenge
    else:
        assert 'error="invalid_request"' in caught.value.www_authenticate


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b", "a.b.c.d.e", "!!!.e30.x", b64(b"[1]") + ".e30.x", b64(b"\xff\xfe") + ".e30.x", "x" * 20000],
)
def test_garbled_tokens(verifier: TokenVerifier, token: str) -> None:
    assert rejected(verifier, token).code == "malformed-token"


def test_payload_that_is_not_json(verifier: TokenVerifier, dev_key: DevKey, clock: FakeClock) -> None:
    from joserfc import jws

    token = jws.serialize_compact({"alg": "RS256", "kid": dev_key.kid}, b"not json", dev_key.private_key)
    assert rejected(verifier, token).code == "malformed-token"


def test_www_authenticate_escapes_quotes() -> None:
    error = AuthError(401, "x", 'say "hi" \\ bye')
    assert error.www_authenticate == (
        'Bearer realm="sharedcare", error="invalid_token", error_description="say \'hi\' \' bye"'
    )


def test_insufficient_scope_error() -> None:
    error = AuthError.insufficient_scope("r", "Observation")
    assert (error.status, error.code, error.fhir_issue_type) == (403, "insufficient-scope", "forbidden")
    assert error.www_authenticate == (
        'Bearer realm="sharedcare", error="insufficient_scope", '
        'error_description="no granted scope allows \'r\' on Observation", scope="user/Observation.r"'
    )


def test_bearer_token_extracts_the_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"


# --- the cache -----------------------------------------------------------------------------------

def test_cache_returns_the_same_principal_until_expiry(verifier: TokenVerifier, dev_key: DevKey,
                                                       settings: Settings, clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock(), ttl_seconds=300)
    first = verifier.verify(f"Bearer {token}")
    assert verifier.verify(f"Bearer {token}") is first
    assert verifier.cached_count == 1
    clock.advance(300 + 59)
    assert verifier.verify(f"Bearer {token}") is first  # inside the leeway
    clock.advance(1)
    error = rejected(verifier, token)
    assert error.code == "token-expired" and error.fhir_issue_type == "expired"
    assert verifier.cached_count == 0


def test_cache_hit_skips_key_lookup(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                    clock: FakeClock) -> None:
    token = mint(dev_key, settings, clock())
    verifier.verify(f"Bearer {token}")
    verifier.keys.key_for = None  # type: ignore[assignment,method-assign]  # would fail if called
    verifier.verify(f"Bearer {token}")


def test_failures_are_not_cached(verifier: TokenVerifier, dev_key: DevKey, settings: Settings,
                                 clock: FakeClock) -> None:
    rejected(verifier, mint(dev_key, settings, clock(), issuer="elsewhere"))
    assert verifier.cached_count == 0


def test_cache_is_bounded(settings: Settings, dev_key: DevKey, clock: FakeClock) -> None:
    small = TokenVerifier(settings, clock=clock, cache_size=5)
    tokens = [mint(dev_key, settings, clock(), user=f"u{i}") for i in range(12)]
    for token in tokens:
        small.verify(f"Bearer {token}")
        assert small.cached_count <= 5
    assert small.verify(f"Bearer {tokens[-1]}").user_id == "u11"


# --- a JWKS file as the key source ---------------------------------------------------------------

def test_jwks_file_source(tmp_path: Path, clock: FakeClock) -> None:
    signing = ECKey.generate_key("P-256", parameters={"alg": "ES256", "use": "sig"}, auto_kid=True)
    jwks_path = tmp_path / "issuer-jwks.json"
    jwks_path.write_text(json.dumps({"keys": [signing.as_dict(private=False)]}))
    settings = make_settings(tmp_path, auth_issuer="https://idp.example", auth_jwks_file=jwks_path)
    verifier = TokenVerifier(settings, clock=clock)
    claims = {"iss": "https://idp.example", "aud": "sharedcare", "sub": "u9", "role": "R8001",
              "exp": EPOCH + 60, "scope": "user/*.rs"}
    token = jwt.encode({"alg": "ES256", "kid": signing.kid}, claims, signing, algorithms=["ES256"])
    assert verifier.verify(f"Bearer {token}").user_id == "u9"
    assert not (tmp_path / "keys").exists()  # no dev key is made when an issuer is configured
    assert verifier.key_source == f"JWKS file {jwks_path}"
