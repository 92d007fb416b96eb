"""Database engines for the store: async SQLAlchemy on SQLite (aiosqlite) and PostgreSQL (psycopg 3).

SQLite is made to behave like a server for our purposes: WAL journal, a busy timeout, and
write transactions that start with `BEGIN IMMEDIATE` so that a conditional create's search and
insert cannot interleave with another writer's (https://www.sqlite.org/lang_transaction.html).
On PostgreSQL the same guarantees come from advisory and row locks taken by the repository.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.config import normalise_database_url


def _json_serializer(value: object) -> str:
    return orjson.dumps(value).decode()


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI objects
        # Let SQLAlchemy's begin hook, not pysqlite, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass
class Database:
    """The store's connections: `read()` for queries, `write()` for a serialisable write transaction."""

    engine: AsyncEngine
    writer: AsyncEngine
    dialect: str

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self.writer.begin() as conn:
            yield conn

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def dispose(self) -> None:
        await self.engine.dispose()


def open_database(url: str, *, pool_size: int = 5) -> Database:
    """Create the engines for `url` (plain `postgresql://` and `sqlite:///` URLs are accepted)."""
    url = normalise_database_url(url)
    dialect = make_url(url).get_backend_name()
    if dialect == "sqlite":
        engine = create_async_engine(url, json_serializer=_json_serializer, connect_args={"timeout": 30})
        _install_sqlite_hooks(engine)
        writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        return Database(engine=engine, writer=writer, dialect=dialect)
    engine = create_async_engine(
        url,
        json_serializer=_json_serializer,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
    )
    return Database(engine=engine, writer=engine, dialect=dialect)
