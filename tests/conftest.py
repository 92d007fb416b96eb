"""Test databases and servers.

`SHAREDCARE_TEST_BACKEND` picks the store: `sqlite` (default) or `postgresql`. Each test session
(each xdist worker) builds a database of its own with the alembic migrations and drops it at the
end. PostgreSQL is `SHAREDCARE_TEST_DATABASE_URL` (default postgresql+psycopg://postgres@127.0.0.1:5432/test);
the suite runs on it whenever that server answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import psycopg
import pytest
from sqlalchemy.engine import make_url

from engine.config import Settings, load_settings
from engine.db.database import Database, open_database

BACKEND = os.environ.get("SHAREDCARE_TEST_BACKEND", "sqlite")
PG_URL = os.environ.get("SHAREDCARE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _pg_conninfo(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_answers(url: str = PG_URL) -> bool:
    try:
        with psycopg.connect(_pg_conninfo(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def create_test_database(tmp_dir: Path) -> tuple[str, object]:
    """A fresh, migrated database URL and a callable that drops it."""
    from engine.db.migrate import upgrade

    if BACKEND == "postgresql":
        if not postgres_answers():
            pytest.skip(f"PostgreSQL does not answer at {PG_URL}")
        name = f"sc_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

        def drop() -> None:
            with psycopg.connect(_pg_conninfo(PG_URL), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        upgrade(url)
        return url, drop
    path = tmp_dir / f"sc_test_{uuid.uuid4().hex[:8]}.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    return url, lambda: [p.unlink(missing_ok=True) for p in tmp_dir.glob(path.name + "*")]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, drop = create_test_database(tmp_path_factory.mktemp("db"))
    yield url
    drop()  # type: ignore[operator]


@pytest.fixture(scope="session")
def sc_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def settings(database_url: str, sc_home: Path) -> Settings:
    base = load_settings({"SHAREDCARE_HOME": str(sc_home)})
    return replace(base, database_url=database_url, base_url="http://testserver/fhir")


def truncate_all(database_url: str) -> None:
    """Empty every table the migrations made (between tests that need a clean store)."""
    if database_url.startswith("postgresql"):
        with psycopg.connect(_pg_conninfo(database_url), autocommit=True) as conn:
            names = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
            conn.execute("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY")
        return
    import sqlite3

    path = database_url.split(":///", 1)[1]
    with sqlite3.connect(path) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('alembic_version', 'sqlite_sequence')")]
        for name in names:
            conn.execute(f'DELETE FROM "{name}"')


@pytest.fixture
def clean_store(database_url: str) -> str:
    truncate_all(database_url)
    return database_url


@pytest.fixture(scope="session")
def dev_key(settings: Settings):
    from engine.auth import ensure_dev_key

    return ensure_dev_key(settings.dev_key_dir)


@pytest.fixture(scope="session")
def make_token(settings: Settings, dev_key):
    """make_token(scope="system/*.cruds", role="R8000", org="RR8", patient=None, user="test-user") → bearer token.

    The default is a backend service (SMART system/ scopes: no relationship rules, still audited);
    pass user/ or patient/ scopes to test what a person may see."""
    from engine.auth import issue_token

    def make(scope: str = "system/*.cruds", *, role: str = "R8000", org: str = "RR8", patient: str | None = None,
             user: str = "test-user", ttl: int = 3600, **extra: object) -> str:
        return issue_token(dev_key, issuer=settings.auth_issuer, audience=settings.auth_audience, user=user,
                           name="Test User", role=role, org=org, scope=scope, patient=patient, ttl_seconds=ttl,
                           extra=extra or None)

    return make


@pytest.fixture
def client(settings: Settings, clean_store: str, make_token) -> Iterator[object]:
    """A TestClient on a clean store, authenticated as a backend service with system/*.cruds."""
    from fastapi.testclient import TestClient

    from engine.api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_token()}"
        yield test_client


# -- a real server on a real socket ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from engine.api.app import create_app

        self.port = free_port()
        self.settings = replace(settings, base_url=f"http://127.0.0.1:{self.port}/fhir")
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(settings: Settings, clean_store: str) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


# -- one event loop and one Database per test session (for tests that call the engine directly) ----------


@pytest.fixture(scope="session")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="session")
def db(database_url: str, runner: asyncio.Runner) -> Iterator[Database]:
    database = open_database(database_url, pool_size=4)
    yield database
    runner.run(database.dispose())


@pytest.fixture
def run(runner: asyncio.Runner):
    """run(coroutine) → its result, on the session's loop."""
    def go(coroutine: Any) -> Any:
        return runner.run(coroutine)

    return go
