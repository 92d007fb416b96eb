"""What we tell clients about authorisation: ``/.well-known/smart-configuration`` (SMART App Launch
v2.2 §"Conformance", https://hl7.org/fhir/smart-app-launch/conformance.html), the CapabilityStatement
``rest.security`` element (FHIR R4 CapabilityStatement, https://hl7.org/fhir/R4/capabilitystatement.html),
and the public JWK Set served at ``/.well-known/jwks.json``.

We are a resource server: the authorisation server is either the configured identity provider
(NHS CIS2 or another) or, in development, the ``sharedcare token`` command. So we advertise only
what is true of that setup — endpoints and launch capabilities appear only when configured.
"""

from __future__ import annotations

import json
from typing import Any

from joserfc.jwk import JWKRegistry

from engine.auth.keys import ensure_dev_key
from engine.config import Settings

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
RESTFUL_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"

# The SMART v2 resource-scope forms we honour (v1 read/write/* are accepted as well; see scopes.py).
SCOPES_SUPPORTED = (
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "system/*.cruds",
)
# True of our token handling whatever the issuer: both permission syntaxes, user and patient scopes.
BASE_CAPABILITIES = ("permission-v2", "permission-v1", "permission-user", "permission-patient")


def server_root(settings: Settings) -> str:
    """The base URL without its trailing ``/fhir``: where ``/.well-known/jwks.json`` lives."""
    base = settings.base_url.rstrip("/")
    return base.removesuffix("/fhir")


def jwks_uri(settings: Settings) -> str:
    """The issuer's JWKS URL if configured; otherwise the one we serve (from the file or dev key)."""
    return settings.auth_jwks_url or f"{server_root(settings)}/.well-known/jwks.json"


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """The ``/.well-known/smart-configuration`` document for the configured issuer.

    ``authorization_endpoint``/``token_endpoint`` (and the grants and launch capabilities that need
    them) appear only when ``SHAREDCARE_AUTH_AUTHORIZE_ENDPOINT``/``..._TOKEN_ENDPOINT`` are set;
    in development tokens come from ``sharedcare token`` and there is no OAuth endpoint.
    """
    config: dict[str, Any] = {"issuer": settings.auth_issuer, "jwks_uri": jwks_uri(settings)}
    grants: list[str] = []
    capabilities = list(BASE_CAPABILITIES)
    scopes = list(SCOPES_SUPPORTED)
    if settings.auth_authorize_endpoint:
        config["authorization_endpoint"] = settings.auth_authorize_endpoint
        config["response_types_supported"] = ["code"]
        grants.append("authorization_code")
        capabilities += ["launch-standalone", "context-standalone-patient"]
        scopes += ["openid", "fhirUser", "launch/patient"]
    if settings.auth_token_endpoint:
        config["token_endpoint"] = settings.auth_token_endpoint
        config["token_endpoint_auth_methods_supported"] = ["private_key_jwt"]
        grants.append("client_credentials")
        capabilities.append("client-confidential-asymmetric")
    config["grant_types_supported"] = grants
    config["scopes_supported"] = scopes
    config["capabilities"] = capabilities
    config["code_challenge_methods_supported"] = ["S256"]
    return config


def capability_security(settings: Settings) -> dict[str, Any]:
    """The CapabilityStatement ``rest.security`` element (SMART App Launch §"Capability Statement")."""
    security: dict[str, Any] = {}
    uris = [
        {"url": name, "valueUri": uri}
        for name, uri in (("token", settings.auth_token_endpoint), ("authorize", settings.auth_authorize_endpoint))
        if uri
    ]
    if uris:
        security["extension"] = [{"url": OAUTH_URIS_EXTENSION, "extension": uris}]
    security["service"] = [
        {
            "coding": [{"system": RESTFUL_SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 bearer tokens with SMART App Launch v2 scopes",
        }
    ]
    security["description"] = (
        f"Send 'Authorization: Bearer <JWT>' signed by {settings.auth_issuer} (keys at {jwks_uri(settings)}). "
        "Access needs a national RBAC job role, SMART scopes (e.g. user/*.rs) and a legitimate relationship "
        "with the patient; see /.well-known/smart-configuration."
    )
    return security


def public_jwks(settings: Settings) -> dict[str, Any] | None:
    """The JWK Set to serve at ``/.well-known/jwks.json``: public parts of the configured file's keys,
    or the development key's. None when keys live at an external ``auth_jwks_url``.
    """
    if settings.auth_jwks_file is not None:
        document = json.loads(settings.auth_jwks_file.read_text(encoding="utf-8"))
        entries = [e for e in document.get("keys", []) if e.get("kty") != "oct"]  # never publish secrets
        return {"keys": [JWKRegistry.import_key(e).as_dict(private=False) for e in entries]}
    if settings.auth_jwks_url:
        return None
    return ensure_dev_key(settings.dev_key_dir).public_jwks
