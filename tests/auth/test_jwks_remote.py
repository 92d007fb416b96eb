"""A JWKS served over real HTTP (http.server on a loopback port): caching, rotation, outages."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from engine.auth.verify import AuthError, TokenVerifier

from . import FakeClock, make_settings

ISSUER = "https://idp.example/realms/Healthcare"


class JwksServer:
    """Serves `self.document` at /jwks.json; `status` lets a test simulate an outage."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.status = 200
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.document).encode() if outer.status == 200 else b"down"
                self.send_response(outer.status if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def publish(self, *keys: RSAKey) -> None:
        self.document = {"keys": [key.as_dict(private=False) for key in keys]}


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def keys() -> tuple[RSAKey, RSAKey]:
    first = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)
    second = RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)
    return first, second


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(server: JwksServer, tmp_path: Path, clock: FakeClock) -> TokenVerifier:
    settings = make_settings(tmp_path, auth_issuer=ISSUER, auth_jwks_url=server.url)
    return TokenVerifier(settings, clock=clock)


def cis2_token(key: RSAKey, clock: FakeClock, user: str = "555021935107") -> str:
    claims = {
        "iss": ISSUER,
        "aud": "sharedcare",
        "nhsid_useruid": user,
        "name": "Nurse Bea Jones",
        "selected_roleid": "r1",
        "nhsid_nrbac_roles": [{"person_roleid": "r1", "org_code": "RR8", "role_code": "S8000:G8001:R8001"}],
        "scope": "user/*.rs",
        "iat": int(clock()),
        "exp": int(clock()) + 3600,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])


def test_verifies_against_the_fetched_key_set(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                              clock: FakeClock, tmp_path: Path) -> None:
    server.publish(keys[0])
    principal = verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    assert (principal.user_id, principal.role, principal.org) == ("555021935107", "R8001", "RR8")
    verifier.verify(f"Bearer {cis2_token(keys[0], clock, user='other')}")
    assert server.requests == 1  # the key set is cached
    assert not (tmp_path / "keys").exists()  # no development key when an issuer is configured


def test_key_rotation_triggers_a_refetch(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                         clock: FakeClock) -> None:
    server.publish(keys[0])
    verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    server.publish(keys[0], keys[1])  # the issuer rotates in a new key
    clock.advance(31)
    principal = verifier.verify(f"Bearer {cis2_token(keys[1], clock)}")
    assert principal.role == "R8001"
    assert server.requests == 2


def test_unknown_kids_refetch_at_most_every_thirty_seconds(server: JwksServer, verifier: TokenVerifier,
                                                           keys: Any, clock: FakeClock) -> None:
    server.publish(keys[0])
    verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    server.publish(keys[0], keys[1])
    clock.advance(5)
    for user in ("a", "b", "c"):  # a burst of unknown-kid tokens inside the window: no fetch
        with pytest.raises(AuthError) as caught:
            verifier.verify(f"Bearer {cis2_token(keys[1], clock, user=user)}")
        assert caught.value.code == "unknown-key"
    assert server.requests == 1
    clock.advance(30)
    assert verifier.verify(f"Bearer {cis2_token(keys[1], clock)}").user_id == "555021935107"
    assert server.requests == 2


def test_key_set_is_refreshed_after_five_minutes(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                                 clock: FakeClock) -> None:
    server.publish(keys[0])
    verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    clock.advance(299)
    verifier.verify(f"Bearer {cis2_token(keys[0], clock, user='x')}")
    assert server.requests == 1
    server.publish(keys[1])  # key 0 withdrawn
    clock.advance(2)
    with pytest.raises(AuthError) as caught:
        verifier.verify(f"Bearer {cis2_token(keys[0], clock, user='y')}")
    assert caught.value.code == "unknown-key"
    assert server.requests == 2


def test_outage_before_any_keys_is_a_503(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                         clock: FakeClock) -> None:
    server.status = 500
    for _ in range(2):
        with pytest.raises(AuthError) as caught:
            verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
        assert (caught.value.status, caught.value.code) == (503, "key-source-unavailable")
    assert server.requests == 1  # the failed fetch is not retried within 30 s
    server.status = 200
    server.publish(keys[0])
    clock.advance(30)
    assert verifier.verify(f"Bearer {cis2_token(keys[0], clock)}").role == "R8001"


def test_outage_after_keys_are_cached_keeps_serving(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                                    clock: FakeClock) -> None:
    server.publish(keys[0])
    verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    server.status = 503
    clock.advance(600)
    assert verifier.verify(f"Bearer {cis2_token(keys[0], clock, user='later')}").user_id == "later"
    assert server.requests == 2


def test_unreachable_url_is_a_503(tmp_path: Path, clock: FakeClock, keys: Any) -> None:
    server = JwksServer()  # bound but never serving, then closed: connection refused
    url = server.url
    server.httpd.server_close()
    verifier = TokenVerifier(make_settings(tmp_path, auth_issuer=ISSUER, auth_jwks_url=url), clock=clock)
    with pytest.raises(AuthError) as caught:
        verifier.verify(f"Bearer {cis2_token(keys[0], clock)}")
    assert caught.value.status == 503


def test_symmetric_keys_in_the_set_are_never_used(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                                  clock: FakeClock) -> None:
    server.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, keys[0].as_dict(private=False)]}
    assert verifier.verify(f"Bearer {cis2_token(keys[0], clock)}").role == "R8001"
    assert "hmac" not in (verifier.keys._keys or {})


def test_averify_fetches_in_a_thread(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                     clock: FakeClock) -> None:
    server.publish(keys[0])
    header = f"Bearer {cis2_token(keys[0], clock)}"
    first = asyncio.run(verifier.averify(header))
    assert asyncio.run(verifier.averify(header)) is first
    assert server.requests == 1


def test_cache_never_outlives_the_token(server: JwksServer, verifier: TokenVerifier, keys: Any,
                                        clock: FakeClock) -> None:
    server.publish(keys[0])
    header = f"Bearer {cis2_token(keys[0], clock)}"
    verifier.verify(header)
    clock.advance(3600 + 60)
    with pytest.raises(AuthError) as caught:
        verifier.verify(header)
    assert caught.value.code == "token-expired"
