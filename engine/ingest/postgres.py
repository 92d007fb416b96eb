"""The ingest's few hot PostgreSQL statements, run on the driver's connection.

Every message runs the same handful of statements (the locks, the read of its resources' stored state,
the one batched write). Through SQLAlchemy each costs ~130 µs more CPU than through psycopg directly
(measured on the project's machine: SQLAlchemy's execution context, parameter processing and result
set-up, whichever of `execute(text(…))` or `exec_driver_sql` is used), so on PostgreSQL they go to the
psycopg connection under the SQLAlchemy connection — the same connection and transaction, committed or
rolled back by `Database.write()` as before. Their texts are fixed, so psycopg prepares each once per
connection. The engine's `before_cursor_execute` / `after_cursor_execute` listeners still see each one
(with no execution context), so statement counting and SQL logging keep working.

Statements are SQLAlchemy `text()` clauses with `:name` parameters (so they compile and render as
before); `engine.db.direct` compiles each once to PostgreSQL's own `$n` form, sent through a raw cursor
(psycopg would otherwise re-parse every statement longer than 4 KB — the batched write is — on each run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import AsyncRawCursor
from psycopg.rows import namedtuple_row
from sqlalchemy import TextClause
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db.direct import POSTGRES_STATEMENTS


async def fetch_all(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Run `statement` in `conn`'s transaction; its rows as named tuples."""
    compiled = POSTGRES_STATEMENTS.get(statement)
    sql, values = compiled.server_sql, compiled.positional(params)
    sync = conn.sync_connection
    listening = sync is not None and bool(sync.dispatch.before_cursor_execute or sync.dispatch.after_cursor_execute)
    raw = (await conn.get_raw_connection()).driver_connection
    async with AsyncRawCursor(raw, row_factory=namedtuple_row) as cursor:
        if listening and sync is not None:
            for listener in sync.dispatch.before_cursor_execute:
                sql, values = listener(sync, cursor, sql, values, None, False)
        await cursor.execute(sql, values, prepare=True)  # type: ignore[arg-type]
        if listening and sync is not None:
            sync.dispatch.after_cursor_execute(sync, cursor, sql, values, None, False)
        return await cursor.fetchall()


async def fetch_one(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> Any:
    """The single row `statement` returns."""
    rows = await fetch_all(conn, statement, params)
    if len(rows) != 1:
        raise RuntimeError(f"expected one row, got {len(rows)}")
    return rows[0]
