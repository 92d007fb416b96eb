"""Configuration from the environment, read once at the edge and passed inwards.

Every setting is an environment variable so that the same image runs as a developer's
embedded server, in CI and behind a load balancer (DESIGN.md, "Contracts").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    source = os.environ if environ is None else environ
    value = source.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    mllp_port: int = 2575
    base_url: str = "http://127.0.0.1:8080/fhir"
    # Authentication: either the development key under `home`, or an external issuer's JWKS.
    auth_issuer: str = "sharedcare-dev"
    auth_audience: str = "sharedcare"
    auth_jwks_url: str | None = None
    auth_jwks_file: Path | None = None
    auth_algorithms: tuple[str, ...] = ("RS256", "ES256")
    auth_token_endpoint: str | None = None
    auth_authorize_endpoint: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    default_page_size: int = 50
    max_page_size: int = 1000
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dev_key_dir(self) -> Path:
        return self.home / "keys"


def default_sqlite_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / 'sharedcare.db'}"


def configured_base_url(environ: dict[str, str] | None = None) -> str:
    """`Settings.base_url` alone (SHAREDCARE_BASE_URL, else from the HTTP host and port), without the rest
    of `load_settings` — which resolves paths and parses the database URL (~240 µs): for hot paths such as
    the discharge documents ingest issues."""
    port = int(_env("SHAREDCARE_HTTP_PORT", "8080", environ) or 8080)
    host = _env("SHAREDCARE_HTTP_HOST", "127.0.0.1", environ) or "127.0.0.1"
    return (_env("SHAREDCARE_BASE_URL", f"http://{host}:{port}/fhir", environ) or "").rstrip("/")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read `SHAREDCARE_*` variables; defaults give an embedded SQLite server on 127.0.0.1:8080."""
    home = Path(_env("SHAREDCARE_HOME", "var", environ) or "var").resolve()
    port = int(_env("SHAREDCARE_HTTP_PORT", "8080", environ) or 8080)
    host = _env("SHAREDCARE_HTTP_HOST", "127.0.0.1", environ) or "127.0.0.1"
    jwks_file = _env("SHAREDCARE_AUTH_JWKS_FILE", None, environ)
    algorithms = _env("SHAREDCARE_AUTH_ALGORITHMS", "RS256,ES256", environ) or "RS256,ES256"
    return Settings(
        home=home,
        database_url=normalise_database_url(
            _env("SHAREDCARE_DATABASE_URL", None, environ) or default_sqlite_url(home)
        ),
        http_host=host,
        http_port=port,
        mllp_port=int(_env("SHAREDCARE_MLLP_PORT", "2575", environ) or 2575),
        base_url=configured_base_url(environ),
        auth_issuer=_env("SHAREDCARE_AUTH_ISSUER", "sharedcare-dev", environ) or "sharedcare-dev",
        auth_audience=_env("SHAREDCARE_AUTH_AUDIENCE", "sharedcare", environ) or "sharedcare",
        auth_jwks_url=_env("SHAREDCARE_AUTH_JWKS_URL", None, environ),
        auth_jwks_file=Path(jwks_file) if jwks_file else None,
        auth_algorithms=tuple(a.strip() for a in algorithms.split(",") if a.strip()),
        auth_token_endpoint=_env("SHAREDCARE_AUTH_TOKEN_ENDPOINT", None, environ),
        auth_authorize_endpoint=_env("SHAREDCARE_AUTH_AUTHORIZE_ENDPOINT", None, environ),
        max_body_bytes=int(_env("SHAREDCARE_MAX_BODY_BYTES", str(10 * 1024 * 1024), environ) or 0),
    )


def normalise_database_url(url: str) -> str:
    """Accept the plain URLs people paste and pick the async drivers the engine runs on."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


def sync_database_url(url: str) -> str:
    """The synchronous twin of an engine URL, for alembic."""
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def access_policy_path(environ: dict[str, str] | None = None) -> str | None:
    """`SHAREDCARE_POLICY_FILE`: the consent and access policy (default: the packaged consent/policy.json)."""
    return _env("SHAREDCARE_POLICY_FILE", None, environ) or None
