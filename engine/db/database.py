"""Database engines for the store: async SQLAlchemy on SQLite (aiosqlite) and PostgreSQL (psycopg 3),
and on PostgreSQL an asyncpg pool for the hot paths' prebuilt statements (engine.db.direct).

SQLite is made to behave like a server for our purposes: WAL journal, a busy timeout, and
write transactions that start with `BEGIN IMMEDIATE` so that a conditional create's search and
insert cannot interleave with another writer's (https://www.sqlite.org/lang_transaction.html).
On PostgreSQL the same guarantees come from advisory and row locks taken by the repository.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from engine.config import normalise_database_url
from engine.db.direct import POSTGRES_STATEMENTS, DirectConnection, open_direct_pool


def _json_serializer(value: object) -> str:
    return orjson.dumps(value).decode()


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's begin hook, not pysqlite, decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@dataclass
class Database:
    """The store's connections: `read()` for queries, `write()` for a serialisable write transaction."""

    engine: AsyncEngine
    writer: AsyncEngine
    dialect: str
    reader: AsyncEngine | None = None
    pool_size: int = 10
    # PostgreSQL: asyncpg connections for `direct()`, opened on first use (engine.db.direct).
    _direct_pool: Any = field(default=None, init=False, repr=False)
    _direct_lock: asyncio.Lock | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.reader is None:
            self.reader = self.engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads. On PostgreSQL it runs in autocommit, so a one-statement read costs
        one round trip instead of three (BEGIN, SELECT, ROLLBACK)."""
        async with self.reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def direct(self, *, transaction: bool = False) -> AsyncIterator[AsyncConnection | DirectConnection]:
        """A connection for the hot paths' prebuilt statements (engine.db.direct).

        PostgreSQL: an asyncpg connection that runs them without SQLAlchemy's execution layer, in
        autocommit, or inside one transaction with `transaction=True`. SQLite: the same as `read()`
        (or `write()`), since its execution cost is dominated by SQLite itself.
        """
        if not self.is_postgres:
            async with (self.write() if transaction else self.read()) as conn:
                yield conn
            return
        pool = self._direct_pool or await self._open_direct_pool()
        async with pool.acquire() as raw:
            conn = DirectConnection(raw, POSTGRES_STATEMENTS)
            if transaction:
                async with raw.transaction():
                    yield conn
            else:
                yield conn

    async def _open_direct_pool(self) -> Any:
        if self._direct_lock is None:
            self._direct_lock = asyncio.Lock()
        async with self._direct_lock:
            if self._direct_pool is None:
                url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._direct_pool = await open_direct_pool(url, self.pool_size)
        return self._direct_pool

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def dispose(self) -> None:
        if self._direct_pool is not None:
            await self._direct_pool.close()
            self._direct_pool = None
        await self.engine.dispose()


def _pool_size(default: int) -> int:
    value = os.environ.get("SHAREDCARE_DB_POOL_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def open_database(url: str, *, pool_size: int | None = None) -> Database:
    """Create the engines for `url` (plain `postgresql://` and `sqlite:///` URLs are accepted)."""
    url = normalise_database_url(url)
    dialect = make_url(url).get_backend_name()
    if dialect == "sqlite":
        engine = create_async_engine(url, json_serializer=_json_serializer, connect_args={"timeout": 30})
        _install_sqlite_hooks(engine)
        writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        return Database(engine=engine, writer=writer, dialect=dialect)
    # A steady pool and little overflow: overflow connections are closed when returned, and that
    # churn costs more than waiting briefly for a pooled one (SHAREDCARE_DB_POOL_SIZE, default 10).
    size = pool_size or _pool_size(10)
    engine = create_async_engine(
        url,
        json_serializer=_json_serializer,
        pool_size=size,
        max_overflow=max(2, size // 4),
        pool_pre_ping=False,
    )
    reader = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Database(engine=engine, writer=engine, dialect=dialect, reader=reader, pool_size=size)
