"""SQLAlchemy Core statements run straight on psycopg: the hot read path on PostgreSQL.

SQLAlchemy's async execution costs a few hundred microseconds per statement in Python — cache-key
generation, parameter processing, result wrapping and a greenlet switch each way — which is more
than PostgreSQL takes to answer an indexed read. The store's hot statements are built once
(engine.access_data, engine.search.query, engine.db.repository, engine.audit.log), so here each is
compiled once (`StatementCache`, held as long as the statement object lives) and then executed on a
raw psycopg connection (`Database.direct()`, a psycopg_pool pool):

- bound parameters become PostgreSQL's own `$1, $2, …` (one number per name), sent through a raw
  cursor: psycopg would otherwise re-parse every `%s` query longer than it caches (4 KB) on each run;
- constants the statement carries itself (a type name, a code system, a number) are written into
  the SQL, so they cost nothing per execution and the planner sees them — except strings holding a
  backslash or NUL, which stay bound whatever the server's `standard_conforming_strings`;
- an expanding `IN` (`column.in_(bindparam(..., expanding=True))`, or a literal list) becomes
  `= ANY($n)` (`NOT IN` becomes `<> ALL($n)`), so one prepared statement serves every list length;
- psycopg prepares a statement on the server after it has run twice on a connection; the pool's
  connections use generic plans (engine.db.database).

`DirectConnection` offers the slice of `AsyncConnection` that the read path uses — `execute()` and
a result with `all/first/one/one_or_none/scalar/scalar_one/scalars` and iteration — so code written
for SQLAlchemy connections runs unchanged on it. Rows are named tuples (index or attribute access).
Only statements whose bound values need no SQLAlchemy type processing belong here: strings,
numbers, booleans, datetimes, lists of them, and psycopg's own wrappers (`Jsonb`).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from psycopg import AsyncConnection as PsycopgConnection
from psycopg import AsyncRawCursor
from psycopg.pq import ExecStatus
from psycopg.rows import namedtuple_row, tuple_row
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
    server_sql: str = ""  # PostgreSQL's own placeholders: psycopg sends it as it is (a raw cursor)

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

    psycopg parses a `%s`-style query on every execution once it is longer than it caches (4 KB) —
    the policy's statements are — so the hot statements are sent ready-made through a raw cursor.
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


class DirectConnection:
    """A psycopg connection that runs SQLAlchemy Core statements (see the module docstring)."""

    def __init__(self, raw: PsycopgConnection[Any], statements: StatementCache) -> None:
        self.raw = raw
        self.statements = statements
        self.dialect = statements.dialect

    async def execute(self, statement: ClauseElement, parameters: Mapping[str, Any] | None = None, *,
                      plain: bool = False) -> DirectResult:
        """Run `statement`; its rows as named tuples (`plain`: as tuples, which cost less to make)."""
        compiled = self.statements.get(statement)
        cursor = AsyncRawCursor(self.raw, row_factory=tuple_row if plain else namedtuple_row)
        await cursor.execute(compiled.server_sql, compiled.positional(parameters))
        return DirectResult(await _rows(cursor))

    async def execute_together(
        self, statements: Sequence[tuple[ClauseElement, Mapping[str, Any] | None]]
    ) -> list[DirectResult]:
        """Several independent statements in one round trip (psycopg's pipeline mode); their results."""
        cursors = []
        async with self.raw.pipeline():
            for statement, parameters in statements:
                compiled = self.statements.get(statement)
                cursor = AsyncRawCursor(self.raw, row_factory=namedtuple_row)
                await cursor.execute(compiled.server_sql, compiled.positional(parameters))
                cursors.append(cursor)
        return [DirectResult(await _rows(cursor)) for cursor in cursors]


async def _rows(cursor: AsyncRawCursor[Any]) -> list[Any]:
    """The cursor's rows; none for a statement that returns no rows (psycopg's `description` would tell
    too, but builds a Column object for every column to do it)."""
    result = cursor.pgresult
    return await cursor.fetchall() if result is not None and result.status == ExecStatus.TUPLES_OK else []


async def execute_together(conn: Any, statements: Sequence[tuple[ClauseElement, Mapping[str, Any] | None]]
                           ) -> list[list[Any]]:
    """`statements` (independent SELECTs) in one round trip; each one's rows as a list of tuples.

    They run as one statement (`combined`), so they also read one snapshot, and on PostgreSQL one
    statement costs the server and the driver less than a pipeline of several. Statements whose
    values would collide under one name run one after the other (pipelined on a DirectConnection).
    """
    values = _merged_values(statements)
    if len(statements) < 2 or values is None:
        if isinstance(conn, DirectConnection):
            return [result.all() for result in await conn.execute_together(statements)]
        return [(await conn.execute(statement, parameters)).all() for statement, parameters in statements]
    together = combined(tuple(statement for statement, _ in statements))
    if isinstance(conn, DirectConnection):
        return together.split((await conn.execute(together.statement, values, plain=True)).all())
    return together.split((await conn.execute(together.statement, values)).all())


@dataclass(frozen=True, slots=True)
class Combined:
    """Several SELECTs as one `UNION ALL`: each row says which statement it belongs to (`branch`) and
    where it came in that statement's order (`ordinal`), then carries every statement's columns, NULL
    but for its own."""

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


async def fetch_one_on_driver(conn: AsyncConnection, statement: TextClause, params: Mapping[str, Any]) -> Any:
    """The single row `statement` returns."""
    rows = await fetch_all_on_driver(conn, statement, params)
    if len(rows) != 1:
        raise RuntimeError(f"expected one row, got {len(rows)}")
    return rows[0]
