"""Authentication and SMART scopes: bearer tokens in, a `Principal` out.

See docs/authentication.md. The pure parts (`scopes`, `principal`) decide; `verify`, `keys` and
`discovery` do the I/O (key files, JWKS fetches).
"""

from engine.auth.discovery import capability_security, public_jwks, smart_configuration
from engine.auth.keys import DevKey, ensure_dev_key, issue_token, parse_ttl
from engine.auth.principal import ClaimsError, Principal, claims_to_principal, system_principal
from engine.auth.scopes import (
    RejectedScope,
    Scope,
    ScopeError,
    granting_scopes,
    parse_scope,
    parse_scopes,
    scope_filters,
    scopes_permit,
)
from engine.auth.verify import AuthError, TokenVerifier, bearer_token

__all__ = [
    "AuthError",
    "ClaimsError",
    "DevKey",
    "Principal",
    "RejectedScope",
    "Scope",
    "ScopeError",
    "TokenVerifier",
    "bearer_token",
    "capability_security",
    "claims_to_principal",
    "ensure_dev_key",
    "granting_scopes",
    "issue_token",
    "parse_scope",
    "parse_scopes",
    "parse_ttl",
    "public_jwks",
    "scope_filters",
    "scopes_permit",
    "smart_configuration",
    "system_principal",
]
