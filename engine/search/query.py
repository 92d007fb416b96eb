"""Run a parsed search against the store (https://hl7.org/fhir/R4/search.html).

Each criterion becomes a subquery on one index table, `resources.pk IN (SELECT res_pk FROM idx_x
WHERE res_type = :t AND param = :p AND …)`, which PostgreSQL plans as a semi-join driven by the
composite `ix_idx_x_search_*` index (res_type, param, value…) and SQLite as a one-off ephemeral
index; negations (`:not`, `:missing=true`) are correlated `NOT EXISTS` (an anti-join over
`ix_idx_x_res_pk`). Tables are not aliased (building aliases costs more than the query takes to run):
every subquery states its correlation explicitly, so SQLAlchemy keeps its own FROM and SQL scoping
resolves each name to the nearest one. Only a chain's target resources get an alias.

Plans, checked with EXPLAIN ANALYZE on PostgreSQL 15 with 105k resources and 1.05M index rows
(bench/search_sql.py; tests/search/test_query.py::test_postgres_plan_uses_composite_indexes
checks the first two on 10k rows):
- `Observation?patient=X`: Index Scan on ix_idx_reference_search_0 (all four columns as the index
  condition) → nested loop of pk_resources lookups; 0.2 ms.
- chains (`subject:Patient.identifier=s|v`): ix_idx_token_search_0 → resources → ix_idx_reference_search_0.
- `Patient?family=smi`: ix_idx_string_search_0 with the LIKE prefix as an index range — with the
  database's C.UTF-8 collation; under a linguistic collation the migration needs a
  `text_pattern_ops` index (or COLLATE "C") on idx_string.value for that.
- `:not`: Nested Loop Anti Join over ix_idx_token_res_pk. Sorting by a parameter is a correlated
  MIN/MAX over ix_idx_<type>_res_pk per matching row, so `_sort=-date` over *every* Observation
  costs O(matches) (0.7 s for 100k); with a selective criterion it is noise.

A page costs one statement for the rows (count + 1 of them, to learn whether there is a next page;
the first page also reads the paging snapshot as a scalar subquery), plus a COUNT only when the
first page is full (later pages take the total from the cursor), plus one statement per include
level when asked. An accurate total over a broad criterion is a full count (60 ms for 17k of 100k
Observations); `_total=none` skips it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Grouping

from engine.db.schema import INDEX_TABLES, idx_reference, resources
from engine.search.paging import (
    Cursor,
    decode_cursor,
    encode_cursor,
    fingerprint,
    keyset_condition,
    order_by,
    sort_columns,
)
from engine.search.params import (
    Chain,
    Condition,
    DateMatch,
    IdMatch,
    Include,
    Match,
    NumberMatch,
    ReferenceMatch,
    SearchRequest,
    SortKey,
    StringMatch,
    TokenMatch,
    UriMatch,
)
from engine.search.scope import param_rows


class ResourceRow(NamedTuple):
    """A current resource as stored; `content` is its JSON text, served without parsing."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    content: str
    patient_id: str | None = None  # the Patient whose compartment it is in (for access and audit)


@dataclass(slots=True)
class SearchPage:
    """One page of matches, the included resources, Bundle.total and the paging cursors."""

    rows: list[ResourceRow]
    total: int | None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    included: list[ResourceRow] = field(default_factory=list)
    # Some matches were withheld by policy (the Bundle says so; it never says how many).
    withheld: bool = False


_ROW_COLUMNS = (
    resources.c.pk,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version_id,
    resources.c.last_updated,
    cast(resources.c.content, Text).label("content"),
    resources.c.patient_id,
)
_WIDTH = len(_ROW_COLUMNS)
# The largest pk in the store as the first page is read: the paging snapshot (engine.search.paging).
_SNAPSHOT = select(func.max(resources.c.pk)).correlate(None).scalar_subquery().label("snapshot")


# -- statements, built once per query shape ----------------------------------------------------------
#
# Building a SQLAlchemy statement costs more than PostgreSQL takes to run an indexed search, so the
# page statement is built once per *shape* of request and reused. `_skeleton` replaces every value
# in the criteria by a `Slot` naming a bound parameter (c0m1low, …), leaving what decides the SQL
# (parameters, kinds, prefixes, modifiers, which parts of a token or reference are given); the
# skeleton is hashable and keys the statement cache, and the values travel as execute() parameters.


@dataclass(frozen=True, slots=True)
class Slot:
    """A bound parameter standing in for one value in a criteria skeleton."""

    name: str


def _b(slot: Any) -> Any:
    return bindparam(slot.name)


_LIKE_ESCAPE = "/"


def _like_pattern(value: str, *, contains: bool = False) -> str:
    escaped = value.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%" if contains else f"{escaped}%"


def _skeleton(criteria: Sequence[Condition], values: dict[str, Any], prefix: str = "c") -> tuple[Condition, ...]:
    """`criteria` with each value replaced by a Slot; the values go into `values` under the slots' names."""
    out = []
    for i, c in enumerate(criteria):
        name = f"{prefix}{i}"
        matches = tuple(_slot_match(m, f"{name}m{j}", values) for j, m in enumerate(c.matches))
        chain = None
        if c.chain is not None:
            (inner,) = _skeleton([c.chain.condition], values, f"{name}x")
            chain = Chain(c.chain.target_type, inner, c.chain.targets)
        out.append(Condition(c.param, c.kind, matches, c.negate, c.missing, chain))
    return tuple(out)


def _slot_match(m: Match, name: str, values: dict[str, Any]) -> Match:
    def slot(field_name: str, value: Any) -> Slot | None:
        if value is None:
            return None
        values[name + field_name] = value
        return Slot(name + field_name)

    if isinstance(m, StringMatch):
        value = m.value if m.mode == "exact" else _like_pattern(m.value, contains=m.mode == "contains")
        return StringMatch(m.mode, slot("v", value))  # type: ignore[arg-type]
    if isinstance(m, TokenMatch):
        text = None if m.text is None else _like_pattern(m.text)
        return TokenMatch(slot("s", m.system), slot("c", m.code), slot("t", text))  # type: ignore[arg-type]
    if isinstance(m, DateMatch):
        return DateMatch(m.prefix, slot("l", m.low), slot("h", m.high))  # type: ignore[arg-type]
    if isinstance(m, NumberMatch):
        return NumberMatch(
            m.prefix, slot("v", m.value), slot("l", m.low), slot("h", m.high),  # type: ignore[arg-type]
            slot("s", m.system), slot("c", m.code),  # type: ignore[arg-type]
        )
    if isinstance(m, ReferenceMatch):
        return ReferenceMatch(slot("t", m.target_type), slot("i", m.target_id), slot("u", m.url))  # type: ignore[arg-type]
    if isinstance(m, UriMatch):
        return UriMatch(slot("v", _like_pattern(m.value) if m.below else m.value), m.below)  # type: ignore[arg-type]
    return IdMatch(slot("v", m.value))  # type: ignore[arg-type]


# -- criteria ----------------------------------------------------------------------------------------


def criteria_clause(req: SearchRequest) -> ColumnElement[bool]:
    """WHERE over `resources` for the request's type and criteria (ANDed), excluding deleted resources."""
    values: dict[str, Any] = {}
    skeleton = _skeleton(req.criteria, values)
    return _where(resources, req.resource_type, skeleton).params(values)


def _where(r: FromClause, resource_type: str, criteria: Iterable[Condition]) -> ColumnElement[bool]:
    return and_(
        r.c.res_type == resource_type,
        r.c.deleted == false(),
        *(_condition(r, resource_type, c) for c in criteria),
    )


def _condition(r: FromClause, resource_type: str, c: Condition) -> ColumnElement[bool]:
    if c.kind == "id":
        return r.c.res_id.in_([_b(m.value) for m in c.matches])  # type: ignore[union-attr]
    if c.kind == "lastUpdated":
        return _any_of([_date(m, r.c.last_updated, r.c.last_updated, nullable=False) for m in c.matches])  # type: ignore[arg-type]
    table = INDEX_TABLES[c.kind]
    scope = and_(table.c.res_type == resource_type, param_rows(table, resource_type, c.param))
    if c.missing is not None:
        present = exists().where(table.c.res_pk == r.c.pk, scope).correlate(r)
        return not_(present) if c.missing else present
    if c.chain is not None:
        return _chain(r, table, scope, c)
    match = _any_of([_match(table, m) for m in c.matches])
    if c.negate:
        return not_(exists().where(table.c.res_pk == r.c.pk, scope, match).correlate(r))
    return r.c.pk.in_(select(table.c.res_pk).where(scope, match).correlate(None))


class Visibility:
    """A WHERE over `resources` that limits which resources a chained parameter may match (the access
    gate's rules for the user). Compared by identity, so that statements built with it are cached per rule."""

    __slots__ = ("clause",)

    def __init__(self, clause: ColumnElement[bool]) -> None:
        self.clause = clause


def _chain(r: FromClause, ref: FromClause, scope: ColumnElement[bool], c: Condition) -> ColumnElement[bool]:
    """`ref:Type.param=x`: the reference points at a current Type resource that satisfies param=x (and,
    with `chain.targets`, that the user may see: the rules are written over `resources`, which the
    uncorrelated subquery then names afresh)."""
    assert c.chain is not None
    visibility = c.chain.targets if isinstance(c.chain.targets, Visibility) else None
    target = resources if visibility is not None else resources.alias()
    targets = (
        select(target.c.res_id)
        .where(_where(target, c.chain.target_type, [c.chain.condition]),
               *([visibility.clause] if visibility is not None else []))
        .correlate(None)
    )
    pointing = select(ref.c.res_pk).where(
        scope, ref.c.target_type == c.chain.target_type, ref.c.target_id.in_(targets)
    )
    return r.c.pk.in_(pointing.correlate(None))


# Up to this many alternatives are ORed flat; longer lists are split in parenthesised halves.
_FLAT_OR = 16


def _any_of(terms: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    """`terms` ORed as a balanced tree of parenthesised halves.

    SQLite parses a flat `a OR b OR …` into a chain as deep as the list is long and refuses expressions
    deeper than 1000 (SQLITE_MAX_EXPR_DEPTH; the subqueries around the list deepen it further), so a few
    hundred values failed. Both databases flatten the tree again when they plan. (`or_` would flatten
    nested `or_`s, parentheses and all, hence the plain OR operator between the groups.)
    """
    if len(terms) <= _FLAT_OR:
        return or_(*terms)
    middle = len(terms) // 2
    left, right = Grouping(_any_of(terms[:middle])), Grouping(_any_of(terms[middle:]))
    return left.bool_op("OR")(right)


def _match(t: FromClause, m: Match) -> ColumnElement[bool]:
    if isinstance(m, StringMatch):
        if m.mode == "exact":
            return t.c.exact == _b(m.value)
        return t.c.value.like(_b(m.value), escape=_LIKE_ESCAPE)
    if isinstance(m, TokenMatch):
        return _token(t, m)
    if isinstance(m, DateMatch):
        return _date(m, t.c.low, t.c.high, nullable=True)
    if isinstance(m, NumberMatch):
        return _number(t, m)
    if isinstance(m, ReferenceMatch):
        return _reference(t, m)
    if isinstance(m, UriMatch):
        return t.c.value.like(_b(m.value), escape=_LIKE_ESCAPE) if m.below else t.c.value == _b(m.value)
    raise TypeError(f"no index match for {m!r}")  # IdMatch is handled on resources.res_id


def _token(t: FromClause, m: TokenMatch) -> ColumnElement[bool]:
    if m.text is not None:
        return func.lower(t.c.display).like(_b(m.text), escape=_LIKE_ESCAPE)
    terms = []
    if m.code is not None:
        terms.append(t.c.code == _b(m.code))
    if m.system is not None:
        terms.append(t.c.system == _b(m.system))
    return and_(*terms)


def _date(m: DateMatch, low: Any, high: Any, *, nullable: bool) -> ColumnElement[bool]:
    """The prefix semantics of search.html#prefix on the stored interval [low, high].

    With search range [sl, sh]: eq — [low, high] lies within it; ne — it does not; gt — the
    target reaches past sh; lt — it starts before sl; ge/le — gt/lt or eq; sa — it starts after
    sh; eb — it ends before sl; ap — it overlaps. A NULL end is unbounded on that side.
    """
    sl, sh = _b(m.low), _b(m.high)

    def known(column: Any, test: ColumnElement[bool]) -> ColumnElement[bool]:
        return and_(column.is_not(None), test) if nullable else test

    def open_or(column: Any, test: ColumnElement[bool]) -> ColumnElement[bool]:
        return or_(column.is_(None), test) if nullable else test

    within = and_(known(low, low >= sl), known(high, high <= sh))
    if m.prefix == "eq":
        return within
    if m.prefix == "ne":
        return not_(within)
    if m.prefix == "gt":
        return open_or(high, high > sh)
    if m.prefix == "lt":
        return open_or(low, low < sl)
    if m.prefix == "ge":
        return or_(open_or(high, high > sh), within)
    if m.prefix == "le":
        return or_(open_or(low, low < sl), within)
    if m.prefix == "sa":
        return known(low, low > sh)
    if m.prefix == "eb":
        return known(high, high < sl)
    return and_(open_or(low, low <= sh), open_or(high, high >= sl))  # ap


def _number(t: FromClause, m: NumberMatch) -> ColumnElement[bool]:
    """search.html#number: eq/ne use the implicit precision range [low, high); ap ±10%."""
    v, value, low, high = t.c.value, _b(m.value), _b(m.low), _b(m.high)
    if m.prefix == "eq":
        test = and_(v >= low, v < high)
    elif m.prefix == "ne":
        test = or_(v < low, v >= high)
    elif m.prefix in ("gt", "sa"):
        test = v > value
    elif m.prefix in ("lt", "eb"):
        test = v < value
    elif m.prefix == "ge":
        test = v >= value
    elif m.prefix == "le":
        test = v <= value
    else:  # ap
        test = and_(v >= low, v <= high)
    terms = [test]
    if m.system is not None:
        terms.append(t.c.system == _b(m.system))
    if m.code is not None:
        terms.append(t.c.code == _b(m.code))
    return and_(*terms)


def _reference(t: FromClause, m: ReferenceMatch) -> ColumnElement[bool]:
    if m.target_id is None:
        return t.c.url == _b(m.url)
    by_id = t.c.target_id == _b(m.target_id)
    if m.target_type is not None:
        by_id = and_(by_id, t.c.target_type == _b(m.target_type))
    return or_(by_id, t.c.url == _b(m.url)) if m.url is not None else by_id


# -- the page ---------------------------------------------------------------------------------------


async def search(
    conn: AsyncConnection, req: SearchRequest, *, restriction: ColumnElement[bool] | None = None,
    restriction_values: dict[str, Any] | None = None,
) -> SearchPage:
    """Run `req`: one page of matches in sort order, with total, cursors and `_include`d resources.

    `restriction` is an extra WHERE over `resources` from the access gate (what the user may see);
    it applies to the rows and the total alike, so a total never counts what is withheld. Included
    resources are not restricted here: the gate releases them.

    Raises SearchError('_cursor') for a cursor that is not one of ours or belongs to another query.
    """
    plan = plan_page(req, restriction=restriction, restriction_values=restriction_values)
    if plan.statement is None:
        return await count_only(conn, plan)
    return await finish_page(conn, plan, (await conn.execute(plan.statement, plan.values)).all())


@dataclass(slots=True)
class PagePlan:
    """A search made ready to run: the page statement and its values (None for a count-only search).

    `search` runs it; a caller that wants the page statement to travel with statements of its own
    (one round trip) runs `statement` itself and hands the rows to `finish_page`.
    """

    req: SearchRequest
    statement: Select[Any] | None
    values: dict[str, Any]
    skeleton: tuple[Condition, ...]
    cursor: Cursor | None
    restriction: ColumnElement[bool] | None


def counts_only(req: SearchRequest) -> bool:
    """`_summary=count` or `_count=0`: the total alone, no rows."""
    return req.summary == "count" or req.count == 0


def plan_page(req: SearchRequest, *, restriction: ColumnElement[bool] | None = None,
              restriction_values: dict[str, Any] | None = None) -> PagePlan:
    cursor = decode_cursor(req.cursor, req) if req.cursor else None
    values: dict[str, Any] = dict(restriction_values or {})
    skeleton = _skeleton(req.criteria, values)
    if cursor is not None:
        values["snapshot"] = cursor.snapshot
    if counts_only(req):
        return PagePlan(req, None, values, skeleton, cursor, restriction)
    shape = None
    if cursor is not None:
        shape = (cursor.direction, tuple(v is None for v in cursor.values), cursor.inclusive)
        values.update((f"k{i}", v) for i, v in enumerate(cursor.values) if v is not None)
        values["boundary"] = cursor.pk
    values["limit"] = req.count + 1
    stmt = _restricted(_page_statement(req.resource_type, skeleton, req.sort, shape), restriction)
    return PagePlan(req, stmt, values, skeleton, cursor, restriction)


async def count_only(conn: AsyncConnection, plan: PagePlan) -> SearchPage:
    """`_summary=count` or `_count=0`: the total alone."""
    if plan.cursor is not None and plan.cursor.total is not None:
        return SearchPage([], plan.cursor.total)
    stmt = _restricted(_count_statement(plan.req.resource_type, plan.skeleton, plan.cursor is not None),
                       plan.restriction)
    return SearchPage([], (await conn.execute(stmt, plan.values)).scalar_one())


async def finish_page(conn: AsyncConnection, plan: PagePlan, raw: list[Any]) -> SearchPage:
    """The page from the rows of `plan.statement`: total, cursors and included resources."""
    req, cursor, values = plan.req, plan.cursor, dict(plan.values)
    raw = list(raw)
    more = len(raw) > req.count
    raw = raw[: req.count]
    if cursor is not None and cursor.direction == "prev":
        raw.reverse()
    snapshot = cursor.snapshot if cursor is not None else (raw[0][-1] if raw else 0)
    values["snapshot"] = snapshot
    total = await _total(conn, req, plan.skeleton, values, cursor, len(raw), more, plan.restriction)
    page = SearchPage([ResourceRow._make(row[:_WIDTH]) for row in raw], total)
    _set_cursors(page, req, raw, cursor, more, snapshot)
    if page.rows and (req.includes or req.revincludes):
        page.included = await _included(conn, req, page.rows)
    return page


@lru_cache(maxsize=1024)
def _page_statement(
    resource_type: str,
    skeleton: tuple[Condition, ...],
    sort: tuple[SortKey, ...],
    cursor_shape: tuple[str, tuple[bool, ...], bool] | None,
) -> Select[Any]:
    """The page query for one request shape; its parameters are the skeleton's slots plus `limit`, and
    on later pages `snapshot`, `boundary` (the boundary pk) and `k0…` (its non-NULL sort values)."""
    where = _where(resources, resource_type, skeleton)
    columns = sort_columns(resource_type, sort)
    labels = [column.expr.label(f"sort_{i}") for i, column in enumerate(columns)]
    extra: list[Any] = list(labels)
    reverse = False
    if cursor_shape is None:
        extra.append(_SNAPSHOT)  # evaluated once (an InitPlan), in the same snapshot as the rows
    else:
        direction, nulls, inclusive = cursor_shape
        reverse = direction == "prev"
        boundary = [None if null else bindparam(f"k{i}") for i, null in enumerate(nulls)]
        where = and_(
            where,
            resources.c.pk <= bindparam("snapshot"),
            keyset_condition(columns, boundary, bindparam("boundary"), resources.c.pk, reverse=reverse,
                             inclusive=inclusive),
        )
    return (
        select(*_ROW_COLUMNS, *extra)
        .where(where)
        .order_by(*order_by(columns, labels, resources.c.pk, reverse=reverse))
        .limit(bindparam("limit", type_=Integer))
    )


@lru_cache(maxsize=256)
def _count_statement(resource_type: str, skeleton: tuple[Condition, ...], bounded: bool) -> Select[Any]:
    where = _where(resources, resource_type, skeleton)
    if bounded:
        where = and_(where, resources.c.pk <= bindparam("snapshot"))
    return select(func.count()).select_from(resources).where(where)


async def _total(
    conn: AsyncConnection,
    req: SearchRequest,
    skeleton: tuple[Condition, ...],
    values: dict[str, Any],
    cursor: Cursor | None,
    rows: int,
    more: bool,
    restriction: ColumnElement[bool] | None = None,
) -> int | None:
    """Bundle.total: the page's length when the first page holds every match, else a COUNT under the
    snapshot bound; later pages reuse the total the cursor carries."""
    if req.total == "none":
        return None
    if cursor is not None and cursor.total is not None:
        return cursor.total
    if cursor is None and not more:
        return rows
    stmt = _restricted(_count_statement(req.resource_type, skeleton, True), restriction)
    return (await conn.execute(stmt, values)).scalar_one()


async def match_flags(
    conn: AsyncConnection, req: SearchRequest, clauses: Sequence[ColumnElement[bool]],
    values: dict[str, Any] | None = None,
) -> list[bool]:
    """For each of `clauses`: does any resource matching `req`'s criteria satisfy it? (one statement;
    `values` binds the clauses' parameters)"""
    if not clauses:
        return []
    values = dict(values or {})
    stmt = _flags_statement(req.resource_type, _skeleton(req.criteria, values), tuple(clauses))
    row = (await conn.execute(stmt, values)).one()
    return [bool(flag) for flag in row]


@lru_cache(maxsize=256)
def _flags_statement(resource_type: str, skeleton: tuple[Condition, ...],
                     clauses: tuple[ColumnElement[bool], ...]) -> Select[Any]:
    where = _where(resources, resource_type, skeleton)
    return select(*(exists().where(where, clause).label(f"f{i}") for i, clause in enumerate(clauses)))


@lru_cache(maxsize=1024)
def _restricted(stmt: Select[Any], restriction: ColumnElement[bool] | None) -> Select[Any]:
    """`stmt` with the gate's restriction; cached, as both are built once per shape (the gate's
    policy clauses take their values as bound parameters)."""
    return stmt if restriction is None else stmt.where(restriction)


def _set_cursors(
    page: SearchPage,
    req: SearchRequest,
    raw: list[Sequence[Any]],
    cursor: Cursor | None,
    more: bool,
    snapshot: int,
) -> None:
    """Next/previous cursors around this page (the boundary rows are its first and last)."""
    kinds = len(req.sort)
    digest = fingerprint(req) if (more or cursor) else ""

    def at(row: Sequence[Any], direction: str) -> str:
        values = tuple(row[_WIDTH : _WIDTH + kinds])
        return encode_cursor(Cursor(direction, values, row[0], snapshot, page.total, digest))  # type: ignore[arg-type]

    def around(old: Cursor, direction: str) -> str:
        # An empty page: point back at the old boundary, including it.
        return encode_cursor(Cursor(direction, old.values, old.pk, snapshot, page.total, digest, True))  # type: ignore[arg-type]

    forward = cursor is None or cursor.direction == "next"
    has_next = more if forward else True
    has_prev = (cursor is not None) if forward else more
    if has_next:
        page.next_cursor = at(raw[-1], "next") if raw else around(cursor, "next")  # type: ignore[arg-type]
    if has_prev:
        page.prev_cursor = at(raw[0], "prev") if raw else around(cursor, "prev")  # type: ignore[arg-type]


# -- _include / _revinclude ------------------------------------------------------------------------

Release = Callable[[list[ResourceRow]], Awaitable[list[ResourceRow]]]


async def _included(conn: AsyncConnection, req: SearchRequest, rows: list[ResourceRow]) -> list[ResourceRow]:
    return (await included_resources(conn, req, rows))[0]


async def included_resources(conn: AsyncConnection, req: SearchRequest, rows: list[ResourceRow], *,
                             release: Release | None = None) -> tuple[list[ResourceRow], bool]:
    """Resources named by `_include`/`_revinclude` (search.html#include), `:iterate` one level further.

    De-duplicated, without the page's own matches, without deleted resources, ordered by pk. With
    `release` (the access gate's), each level keeps only what it releases and `:iterate` goes on from
    those alone, so nothing is found through a resource the user may not see; the flag says whether
    anything was left out.
    """
    left_out = False

    async def released(level: list[ResourceRow]) -> list[ResourceRow]:
        nonlocal left_out
        if release is None or not level:
            return level
        kept = await release(level)
        left_out = left_out or len(kept) < len(level)
        return kept

    seen = {row.pk for row in rows}
    found = await released(await _include_level(conn, req.includes, req.revincludes, rows, seen))
    iterate = [i for i in req.includes if i.iterate], [i for i in req.revincludes if i.iterate]
    if found and (iterate[0] or iterate[1]):
        found += await released(await _include_level(conn, iterate[0], iterate[1], found, seen))
    return sorted(found, key=lambda row: row.pk), left_out


async def _include_level(
    conn: AsyncConnection,
    includes: Sequence[Include],
    revincludes: Sequence[Include],
    sources: list[ResourceRow],
    seen: set[int],
) -> list[ResourceRow]:
    by_type: dict[str, list[ResourceRow]] = {}
    for row in sources:
        by_type.setdefault(row.res_type, []).append(row)
    types = tuple(sorted(by_type))
    stmt = _include_statement(tuple(includes), tuple(revincludes), types)
    if stmt is None:
        return []
    params: dict[str, Any] = {}
    for i, res_type in enumerate(types):
        params[f"pks{i}"] = [row.pk for row in by_type[res_type]]
        params[f"ids{i}"] = [row.res_id for row in by_type[res_type]]
    found = []
    for row in (await conn.execute(stmt, params)).all():
        if row[0] not in seen:
            seen.add(row[0])
            found.append(ResourceRow._make(row))
    return found


@lru_cache(maxsize=256)
def _include_statement(
    includes: tuple[Include, ...], revincludes: tuple[Include, ...], types: tuple[str, ...]
) -> Select[Any] | None:
    """Current resources that the sources (of `types`; parameters pks<i>/ids<i>) include, by pk."""
    selects = [s for inc in includes for s in _forward(inc, types)]
    selects += [s for inc in revincludes for s in _reverse(inc, types)]
    if not selects:
        return None
    wanted = selects[0] if len(selects) == 1 else union(*selects)
    return (
        select(*_ROW_COLUMNS)
        .where(resources.c.pk.in_(wanted), resources.c.deleted == false())
        .order_by(resources.c.pk)
    )


def _forward(inc: Include, types: tuple[str, ...]) -> list[Select[Any]]:
    """pks of the resources that the `inc.source_type` sources point at through `inc.param`."""
    if inc.source_type not in types:
        return []
    ref, target = idx_reference, resources
    joined = ref.join(target, and_(target.c.res_type == ref.c.target_type, target.c.res_id == ref.c.target_id))
    stmt = select(target.c.pk).select_from(joined).where(
        ref.c.res_pk.in_(bindparam(f"pks{types.index(inc.source_type)}", expanding=True)),
        ref.c.res_type == inc.source_type,
        param_rows(ref, inc.source_type, inc.param) if inc.param else true(),
        ref.c.target_type == inc.target_type if inc.target_type else true(),
    )
    return [stmt.correlate(None)]


def _reverse(inc: Include, types: tuple[str, ...]) -> list[Select[Any]]:
    """pks of `inc.source_type` resources whose `inc.param` points at one of the sources."""
    selects = []
    for i, res_type in enumerate(types):
        if inc.target_type and inc.target_type != res_type:
            continue
        ref = idx_reference
        stmt = select(ref.c.res_pk).where(
            ref.c.res_type == inc.source_type,
            param_rows(ref, inc.source_type, inc.param) if inc.param else true(),
            ref.c.target_type == res_type,
            ref.c.target_id.in_(bindparam(f"ids{i}", expanding=True)),
        )
        selects.append(stmt.correlate(None))
    return selects
