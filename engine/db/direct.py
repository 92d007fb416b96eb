"""SQLAlchemy Core statements run straight on the driver: the hot read path on PostgreSQL.

SQLAlchemy's async execution costs a few hundred microseconds per statement in Python — cache-key
generation, parameter processing, result wrapping and a greenlet switch each way — which is more
than PostgreSQL takes to answer an indexed read. The store's hot statements are built once
(engine.access_data, engine.search.query, engine.db.repository, engine.audit.log), so here each is
compiled once (`StatementCache`, held as long as the statement object lives) and then executed on an
asyncpg connection (`Database.direct()`, an asyncpg pool; asyncpg's protocol is compiled, and costs a
search about a quarter less server CPU than psycopg's async path measured in the same process):

- bound parameters become PostgreSQL's own `$1, $2, …` (one number per name);
- constants the statement carries itself (a type name, a code system, a number) are written into
  the SQL, so they cost nothing per execution and the planner sees them — except strings holding a
  backslash or NUL, which stay bound whatever the server's `standard_conforming_strings`;
- an expanding `IN` (`column.in_(bindparam(..., expanding=True))`, or a literal list) becomes
  `= ANY($n)` (`NOT IN` becomes `<> ALL($n)`), so one prepared statement serves every list length;
- asyncpg prepares a statement on its first run on a connection and keeps it; the pool's connections
  use generic plans (`open_direct_pool`).

`DirectConnection` offers the slice of `AsyncConnection` that the read path uses — `execute()` and
a result with `all/first/one/one_or_none/scalar/scalar_one/scalars` and iteration — so code written
for SQLAlchemy connections runs unchanged on it. Rows are records (index, slice or attribute access).
Only statements whose bound values need no SQLAlchemy type processing belong here: strings,
numbers, booleans, datetimes, lists of them, and psycopg's `Jsonb` wrapper (sent as JSON text), so
the same statements and values also run through SQLAlchemy on psycopg.

The ingest's statements inside a SQLAlchemy write transaction run on that transaction's psycopg
connection (`fetch_all_on_driver`, below); their SQL comes from the same compiler.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

import asyncpg
import orjson
from psycopg import AsyncRawCursor
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb
from sqlalchemy import CompoundSelect, TextClause, cast, func, literal, null, select, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.types import NullType

_EXPANDING = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_(\w+)\]\)")
_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
_PLACEHOLDER = re.compile(r"%%|%\(([^)]+)\)s")


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """A statement compiled for psycopg: its SQL, the values it carries, caller key → placeholder name,
    and the placeholders the caller must fill."""

    sql: str
    fixed: Mapping[str, Any]
    names: Mapping[str, str]
    required: frozenset[str]
    order: tuple[str, ...] = ()  # the placeholder names numbered $1, $2, … in `server_sql`
    server_sql: str = ""  # PostgreSQL's own placeholders: sent as it is (asyncpg, or a psycopg raw cursor)

    def parameters(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        params = dict(self.fixed)
        for key, value in (values or {}).items():
            name = self.names.get(key)
            if name is not None:
                params[name] = list(value) if isinstance(value, (tuple, set, frozenset)) else value
        if not self.required <= params.keys():
            missing = ", ".join(sorted(self.required - params.keys()))
            raise KeyError(f"no value for bound parameter(s) {missing}")
        return params

    def positional(self, values: Mapping[str, Any] | None) -> list[Any]:
        """The values for `server_sql`'s $1, $2, …"""
        params = self.parameters(values)
        return [params[name] for name in self.order]


def compile_statement(statement: ClauseElement, dialect: Dialect) -> CompiledStatement:
    """`statement` compiled for the server (see the module docstring)."""
    compiled = statement.compile(dialect=dialect)

    def expanding(match: re.Match[str]) -> str:
        return f"<> ALL(%({match.group(2)})s)" if match.group(1) else f"= ANY(%({match.group(2)})s)"

    sql = _POSTCOMPILE.sub(lambda m: f"%({m.group(1)})s", _EXPANDING.sub(expanding, compiled.string))
    fixed: dict[str, Any] = {}
    names: dict[str, str] = {}
    required: set[str] = set()
    inline: dict[str, str] = {}
    for bind, name in compiled.bind_names.items():
        name = compiled.escaped_bind_names.get(name, name)
        anonymous = str(bind.key).startswith("%(")  # an anonymous literal's key is "%(<id> <name>)s"
        if bind.required:
            required.add(name)
        else:
            value = bind.effective_value
            fixed[name] = list(value) if isinstance(value, (tuple, set, frozenset)) else value
            if anonymous and _literal(value) is not None:
                inline[name] = _literal(value)  # type: ignore[assignment]
        if not anonymous:
            names[bind.key] = name
    order, server_sql = _numbered(sql, inline)
    return CompiledStatement(sql, fixed, names, frozenset(required), order, server_sql)


def _literal(value: Any) -> str | None:
    """A constant the statement carries (a code, a type name, a number) as SQL text, or None to bind it.

    Written into the server's SQL it costs nothing per execution and the planner sees it.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and "\x00" not in value and "\\" not in value:
        return "'" + value.replace("'", "''") + "'"
    return None


def _numbered(sql: str, inline: dict[str, str]) -> tuple[tuple[str, ...], str]:
    """`sql` with `%(name)s` as $1, $2, … (one number per name, or the constant `inline` holds for it) and
    `%%` as `%`, and the numbered names in order.

    psycopg parses a `%s`-style query on every execution once it is longer than it caches (4 KB), so
    the statements run on its connections (`fetch_all_on_driver`) are sent ready-made through a raw
    cursor; asyncpg takes this form as it is.
    """
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) in inline:
            return inline[match.group(1)]
        return f"${order.setdefault(match.group(1), len(order) + 1)}"

    server_sql = _PLACEHOLDER.sub(number, sql)
    return tuple(order), server_sql


class StatementCache:
    """Compiled forms of the statements a process runs, held as long as the statements live."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._compiled: weakref.WeakKeyDictionary[ClauseElement, CompiledStatement] = weakref.WeakKeyDictionary()

    def get(self, statement: ClauseElement) -> CompiledStatement:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = compile_statement(statement, self.dialect)
        return compiled


# One cache per process: every PostgreSQL engine here uses psycopg, so a statement compiles the same for all.
POSTGRES_STATEMENTS = StatementCache(postgresql.psycopg.dialect())


class DirectResult:
    """The rows of one statement, consumed the ways SQLAlchemy's `Result` is on the read path."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Any | None:
        if len(self._rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self._rows)}")
        return self.first()

    def scalar(self) -> Any | None:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


class DirectRow(asyncpg.Record):
    """A row of a direct statement: a tuple-like record whose columns are also attributes (`row.pk`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DirectConnection:
    """An asyncpg connection that runs SQLAlchemy Core statements (see the module docstring)."""

    def __init__(self, raw: asyncpg.Connection, statements: StatementCache) -> None:
        self.raw = raw
        self.statements = statements
        self.dialect = statements.dialect

    async def execute(self, statement: ClauseElement, parameters: Mapping[str, Any] | None = None) -> DirectResult:
        """Run `statement`; its rows (none for a statement that returns none)."""
        compiled = self.statements.get(statement)
        values = compiled.positional(parameters)
        if any(type(value) is Jsonb for value in values):
            values = [_json_text(value) if type(value) is Jsonb else value for value in values]
        return DirectResult(await self.raw.fetch(compiled.server_sql, *values))


def json_parameter(value: Any) -> Jsonb:
    """A jsonb parameter, serialised by orjson (datetimes as ISO 8601, read back as `timestamp`; tuples as
    arrays) straight to the UTF-8 bytes psycopg sends. Lists of keys go this way too: psycopg dumps a Python
    list as an array in Python, ~0.8 µs an element, where orjson takes a few nanoseconds."""
    return Jsonb(value, dumps=orjson.dumps)


def _json_text(value: Jsonb) -> str:
    """psycopg's JSONB wrapper (what SQLAlchemy's psycopg connections take) as the text asyncpg sends (its own
    `dumps` may give bytes, as `json_parameter`'s does: asyncpg takes only text for jsonb)."""
    text = (value.dumps or orjson.dumps)(value.obj)
    return text.decode() if isinstance(text, bytes) else text  # type: ignore[no-any-return]


async def _unchanged(connection: asyncpg.Connection) -> None:
    """A pool connection goes back as it is: direct statements run in autocommit and set nothing, so
    asyncpg's reset (a round trip on every release) has nothing to undo."""


# asyncpg prepares each statement on its first run on a connection and keeps it (statement cache). The
# plans are generic, because re-planning a custom plan for every run costs PostgreSQL more than running the
# index-driven statements of the hot paths (0.5–0.9 ms against 0.1–0.3 ms).
_CONNECTION_SETTINGS: dict[str, Any] = {
    "statement_cache_size": 1024, "record_class": DirectRow,
    "server_settings": {"plan_cache_mode": "force_generic_plan"},
}


async def open_direct_pool(url: str, size: int) -> asyncpg.Pool:
    """The pool behind `Database.direct()` on PostgreSQL (`url`: a plain `postgresql://` URL)."""
    return await asyncpg.create_pool(url, min_size=1, max_size=size, reset=_unchanged, **_CONNECTION_SETTINGS)


async def connect_direct(url: str) -> asyncpg.Connection:
    """One connection set up as the pool's are (for tools and tests that hold their own)."""
    return await asyncpg.connect(url, **_CONNECTION_SETTINGS)


async def execute_together(conn: Any, statements: Sequence[tuple[ClauseElement, Mapping[str, Any] | None]]
                           ) -> list[list[Any]]:
    """`statements` (independent SELECTs) in one round trip; each one's rows as a list of tuples.

    They run as one statement (`combined`), so they also read one snapshot, and one statement costs the
    server and the driver less than several. Statements whose values would collide under one name run
    one after the other.
    """
    values = _merged_values(statements)
    if len(statements) < 2 or values is None:
        return [(await conn.execute(statement, parameters)).all() for statement, parameters in statements]
    together = combined(tuple(statement for statement, _ in statements))
    return together.split((await conn.execute(together.statement, values)).all())


@dataclass(frozen=True, slots=True)
class Combined:
    """Several SELECTs as one `UNION ALL`: each row says which statement it belongs to (`branch`) and
    where it came in that statement's order (`ordinal`), then carries every statement's columns, NULL
    but for its own.

    `ordinal` is `row_number() OVER ()` over the statement as a subquery, which PostgreSQL and SQLite
    number in the order the subquery yields its rows — for an `ORDER BY … LIMIT` statement (a search
    page), that order; `split` restores it whatever order the `UNION ALL` returns the rows in."""

    statement: CompoundSelect
    columns: tuple[slice, ...]  # where each statement's own columns sit in a row

    def split(self, rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
        """The rows of each statement, in its own order, as tuples of its own columns."""
        out: list[list[Any]] = [[] for _ in self.columns]
        for row in sorted(rows, key=itemgetter(0, 1)):
            out[row[0]].append(tuple(row[self.columns[row[0]]]))
        return out


@lru_cache(maxsize=256)
def combined(statements: tuple[ClauseElement, ...]) -> Combined:
    """`statements` as one statement (built once per tuple of statements, so it compiles once)."""
    subqueries = [statement.subquery(f"s{i}") for i, statement in enumerate(statements)]  # type: ignore[attr-defined]
    columns, start = [], 2
    for sub in subqueries:
        columns.append(slice(start, start + len(sub.c)))
        start += len(sub.c)
    branches = []
    for i, own in enumerate(subqueries):
        cells: list[Any] = []
        for j, sub in enumerate(subqueries):
            cells += [(column if j == i else _typed_null(column)).label(f"s{j}_{k}") for k, column in enumerate(sub.c)]
        branches.append(select(literal(i).label("branch"), func.row_number().over().label("ordinal"), *cells)
                        .select_from(own))
    return Combined(union_all(*branches), tuple(columns))


def _typed_null(column: Any) -> Any:
    return null() if isinstance(column.type, NullType) else cast(null(), column.type)


def _merged_values(statements: Sequence[tuple[ClauseElement, Mapping[str, Any] | None]]) -> dict[str, Any] | None:
    """All the statements' values under one set of names; None when two give one name different values."""
    merged: dict[str, Any] = {}
    for _, parameters in statements:
        for name, value in (parameters or {}).items():
            if name in merged and merged[name] != value:
                return None
            merged[name] = value
    return merged


# -- inside a SQLAlchemy write transaction -----------------------------------------------------------------
#
# The ingest's few hot statements (its locks, the read of a message's resources' stored state, the one
# batched write) and the transfers' delivery configuration run inside `Database.write()` transactions.
# Through SQLAlchemy each costs ~130 µs more CPU than through psycopg, so on PostgreSQL they go to the
# psycopg connection under the SQLAlchemy one — the same connection and transaction, committed or rolled
# back by `Database.write()`. The engine's `before_cursor_execute` / `after_cursor_execute` listeners still
# see each one (with no execution context), so statement counting and SQL logging keep working.


async def fetch_all_on_driver(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Run `statement` in `conn`'s transaction; its rows as named tuples.

    One statement at a time: psycopg's async pipeline mode, tried for the ingest's locks and read, cost
    more CPU a batch than the round trip it saved (measured in-process), and the bench's rate did not move.
    """
    compiled = POSTGRES_STATEMENTS.get(statement)
    sql, values = compiled.server_sql, compiled.positional(params)
    sync = conn.sync_connection
    listening = sync is not None and bool(sync.dispatch.before_cursor_execute or sync.dispatch.after_cursor_execute)
    raw = await _driver_connection(conn)
    async with AsyncRawCursor(raw, row_factory=namedtuple_row) as cursor:
        if listening and sync is not None:
            for listener in sync.dispatch.before_cursor_execute:
                sql, values = listener(sync, cursor, sql, values, None, False)
        await cursor.execute(sql, values, prepare=True)  # type: ignore[arg-type]
        if listening and sync is not None:
            sync.dispatch.after_cursor_execute(sync, cursor, sql, values, None, False)
        return await cursor.fetchall()


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The psycopg connection under `conn`. Read synchronously while `conn` holds a live connection (as it does
    inside its transaction): `get_raw_connection()` costs a greenlet round trip (~20 µs) for the reconnection
    that only an invalidated connection needs."""
    sync = conn.sync_connection
    if sync is not None and not sync.closed and not sync.invalidated:
        return sync.connection.driver_connection
    return (await conn.get_raw_connection()).driver_connection


async def fetch_one_on_driver(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> Any:
    """The single row `statement` returns."""
    rows = await fetch_all_on_driver(conn, statement, params)
    if len(rows) != 1:
        raise RuntimeError(f"expected one row, got {len(rows)}")
    return rows[0]
