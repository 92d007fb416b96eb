"""SMART configuration, CapabilityStatement security and the served JWK Set."""

from __future__ import annotations

import json
from pathlib import Path

from fhir.resources.R4B.capabilitystatement import CapabilityStatementRestSecurity
from joserfc.jwk import RSAKey

from engine.auth.discovery import (
    OAUTH_URIS_EXTENSION,
    capability_security,
    public_jwks,
    smart_configuration,
)
from engine.auth.keys import ensure_dev_key
from engine.auth.scopes import parse_scopes

from . import make_settings

TOKEN = "https://idp.example/oauth2/access_token"
AUTHORIZE = "https://idp.example/oauth2/authorize"


def test_development_configuration(tmp_path: Path) -> None:
    config = smart_configuration(make_settings(tmp_path))
    assert config["issuer"] == "sharedcare-dev"
    assert config["jwks_uri"] == "http://127.0.0.1:8080/.well-known/jwks.json"
    assert "token_endpoint" not in config and "authorization_endpoint" not in config
    assert config["grant_types_supported"] == []
    assert config["capabilities"] == ["permission-v2", "permission-v1", "permission-user", "permission-patient"]
    assert config["code_challenge_methods_supported"] == ["S256"]


def test_every_advertised_resource_scope_parses(tmp_path: Path) -> None:
    config = smart_configuration(make_settings(tmp_path, auth_authorize_endpoint=AUTHORIZE))
    scopes, rejected = parse_scopes(config["scopes_supported"])
    assert rejected == () and len(scopes) == 6


def test_external_issuer_configuration(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        auth_issuer="https://idp.example",
        auth_jwks_url="https://idp.example/jwks",
        auth_token_endpoint=TOKEN,
        auth_authorize_endpoint=AUTHORIZE,
    )
    config = smart_configuration(settings)
    assert config["jwks_uri"] == "https://idp.example/jwks"
    assert (config["token_endpoint"], config["authorization_endpoint"]) == (TOKEN, AUTHORIZE)
    assert config["grant_types_supported"] == ["authorization_code", "client_credentials"]
    assert {"context-standalone-patient", "client-confidential-asymmetric"} <= set(config["capabilities"])
    assert "launch/patient" in config["scopes_supported"]
    assert json.loads(json.dumps(config)) == config


def test_jwks_uri_for_a_base_url_without_fhir(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, base_url="https://records.example.nhs.uk/api")
    assert smart_configuration(settings)["jwks_uri"] == "https://records.example.nhs.uk/api/.well-known/jwks.json"


def test_capability_security_is_valid_fhir(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_token_endpoint=TOKEN, auth_authorize_endpoint=AUTHORIZE)
    security = capability_security(settings)
    CapabilityStatementRestSecurity.model_validate(security)
    [oauth] = security["extension"]
    assert oauth["url"] == OAUTH_URIS_EXTENSION
    assert oauth["extension"] == [{"url": "token", "valueUri": TOKEN}, {"url": "authorize", "valueUri": AUTHORIZE}]
    coding = security["service"][0]["coding"][0]
    assert (coding["system"], coding["code"]) == (
        "http://terminology.hl7.org/CodeSystem/restful-security-service", "SMART-on-FHIR")


def test_capability_security_without_endpoints_has_no_empty_extension(tmp_path: Path) -> None:
    security = capability_security(make_settings(tmp_path))
    CapabilityStatementRestSecurity.model_validate(security)
    assert "extension" not in security
    assert security["description"]


def test_public_jwks_of_the_dev_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    document = public_jwks(settings)
    assert document == ensure_dev_key(settings.dev_key_dir).public_jwks
    assert "d" not in document["keys"][0]


def test_public_jwks_from_a_file_strips_private_parts(tmp_path: Path) -> None:
    key = RSAKey.generate_key(2048, auto_kid=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.as_dict(private=True), {"kty": "oct", "k": "c2VjcmV0"}]}))
    document = public_jwks(make_settings(tmp_path, auth_jwks_file=path))
    assert [k["kid"] for k in document["keys"]] == [key.kid]
    assert "d" not in document["keys"][0]


def test_no_public_jwks_for_an_external_url(tmp_path: Path) -> None:
    assert public_jwks(make_settings(tmp_path, auth_jwks_url="https://idp.example/jwks")) is None
