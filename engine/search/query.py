"""Run a parsed search against the store (https://hl7.org/fhir/R4/search.html).

Each criterion becomes a subquery on one index table, `resources.pk IN (SELECT res_pk FROM idx_x
WHERE res_type = :t AND param = :p AND …)`, which PostgreSQL plans as a semi-join driven by the
composite `ix_idx_x_search_*` index (res_type, param, value…) and SQLite as a one-off ephemeral
index; negations (`:not`, `:missing=true`) are correlated `NOT EXISTS` (an anti-join over
`ix_idx_x_res_pk`). Every subquery is explicitly uncorrelated or correlated, because a chain puts
the same tables at several depths.

Checked with EXPLAIN on PostgreSQL 15 with 120k resources / 360k index rows (see
tests/search/test_query.py::test_postgres_plan_uses_composite_indexes): `Observation?patient=X`
is a nested loop over an Index Scan on ix_idx_reference_search_0 then pk lookups on resources;
`Patient?family=smi` an Index Scan on ix_idx_string_search_0 with a filter on the LIKE (prefix
LIKE needs `text_pattern_ops` or a "C" collation to become an index range under other collations).

A page costs one query for the rows (fetching count + 1 to learn whether there is a next page),
plus one COUNT only when the first page is full, plus one query per include level when asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Text,
    and_,
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

from engine.db.schema import INDEX_TABLES, idx_reference, resources
from engine.search.paging import (
    Cursor,
    SortColumn,
    decode_cursor,
    encode_cursor,
    fingerprint,
    keyset_condition,
    order_by,
    sort_columns,
)
from engine.search.params import (
    Condition,
    DateMatch,
    Include,
    Match,
    NumberMatch,
    ReferenceMatch,
    SearchRequest,
    StringMatch,
    TokenMatch,
    UriMatch,
)


class ResourceRow(NamedTuple):
    """A current resource as stored; `content` is its JSON text, served without parsing."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    content: str


@dataclass(slots=True)
class SearchPage:
    """One page of matches, the included resources, Bundle.total and the paging cursors."""

    rows: list[ResourceRow]
    total: int | None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    included: list[ResourceRow] = field(default_factory=list)


_ROW_COLUMNS = (
    resources.c.pk,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version_id,
    resources.c.last_updated,
    cast(resources.c.content, Text).label("content"),
)
_WIDTH = len(_ROW_COLUMNS)


# -- criteria --------------------------------------------------------------------------------------


def criteria_clause(req: SearchRequest) -> ColumnElement[bool]:
    """WHERE over `resources` for the request's type and criteria (ANDed), excluding deleted resources."""
    return _where(resources, req.resource_type, req.criteria)


def _where(r: FromClause, resource_type: str, criteria: Iterable[Condition]) -> ColumnElement[bool]:
    return and_(
        r.c.res_type == resource_type,
        r.c.deleted == false(),
        *(_condition(r, resource_type, c) for c in criteria),
    )


def _condition(r: FromClause, resource_type: str, c: Condition) -> ColumnElement[bool]:
    if c.kind == "id":
        return r.c.res_id.in_([m.value for m in c.matches])  # type: ignore[union-attr]
    if c.kind == "lastUpdated":
        return or_(*(_date(m, r.c.last_updated, r.c.last_updated, nullable=False) for m in c.matches))  # type: ignore[arg-type]
    table = INDEX_TABLES[c.kind].alias()
    scope = and_(table.c.res_type == resource_type, table.c.param == c.param)
    if c.missing is not None:
        present = exists().where(table.c.res_pk == r.c.pk, scope).correlate(r)
        return not_(present) if c.missing else present
    if c.chain is not None:
        return _chain(r, table, scope, c)
    match = or_(*(_match(table, m) for m in c.matches))
    if c.negate:
        return not_(exists().where(table.c.res_pk == r.c.pk, scope, match).correlate(r))
    return r.c.pk.in_(select(table.c.res_pk).where(scope, match).correlate(None))


def _chain(r: FromClause, ref: FromClause, scope: ColumnElement[bool], c: Condition) -> ColumnElement[bool]:
    """`ref:Type.param=x`: the reference points at a current Type resource that satisfies param=x."""
    assert c.chain is not None
    target = resources.alias()
    targets = (
        select(target.c.res_id)
        .where(_where(target, c.chain.target_type, [c.chain.condition]))
        .correlate(None)
    )
    pointing = select(ref.c.res_pk).where(
        scope, ref.c.target_type == c.chain.target_type, ref.c.target_id.in_(targets)
    )
    return r.c.pk.in_(pointing.correlate(None))


def _match(t: FromClause, m: Match) -> ColumnElement[bool]:
    if isinstance(m, StringMatch):
        if m.mode == "exact":
            return t.c.exact == m.value
        if m.mode == "contains":
            return t.c.value.contains(m.value, autoescape=True)
        return t.c.value.startswith(m.value, autoescape=True)
    if isinstance(m, TokenMatch):
        return _token(t, m)
    if isinstance(m, DateMatch):
        return _date(m, t.c.low, t.c.high, nullable=True)
    if isinstance(m, NumberMatch):
        return _number(t, m)
    if isinstance(m, ReferenceMatch):
        return _reference(t, m)
    if isinstance(m, UriMatch):
        return t.c.value.startswith(m.value, autoescape=True) if m.below else t.c.value == m.value
    raise TypeError(f"no index match for {m!r}")  # IdMatch is handled on resources.res_id


def _token(t: FromClause, m: TokenMatch) -> ColumnElement[bool]:
    if m.text is not None:
        return func.lower(t.c.display).startswith(m.text, autoescape=True)
    terms = []
    if m.code is not None:
        terms.append(t.c.code == m.code)
    if m.system is not None:
        terms.append(t.c.system == m.system)
    return and_(*terms)


def _date(m: DateMatch, low: Any, high: Any, *, nullable: bool) -> ColumnElement[bool]:
    """The prefix semantics of search.html#prefix on the stored interval [low, high].

    With search range [sl, sh]: eq — [low, high] lies within it; ne — it does not; gt — the
    target reaches past sh; lt — it starts before sl; ge/le — gt/lt or eq; sa — it starts after
    sh; eb — it ends before sl; ap — it overlaps. A NULL end is unbounded on that side.
    """
    sl, sh = m.low, m.high

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
    v = t.c.value
    tests = {
        "eq": and_(v >= m.low, v < m.high),
        "ne": or_(v < m.low, v >= m.high),
        "gt": v > m.value,
        "sa": v > m.value,
        "lt": v < m.value,
        "eb": v < m.value,
        "ge": v >= m.value,
        "le": v <= m.value,
        "ap": and_(v >= m.low, v <= m.high),
    }
    terms = [tests[m.prefix]]
    if m.system is not None:
        terms.append(t.c.system == m.system)
    if m.code is not None:
        terms.append(t.c.code == m.code)
    return and_(*terms)


def _reference(t: FromClause, m: ReferenceMatch) -> ColumnElement[bool]:
    if m.target_id is None:
        return t.c.url == m.url
    by_id = t.c.target_id == m.target_id
    if m.target_type is not None:
        by_id = and_(by_id, t.c.target_type == m.target_type)
    return or_(by_id, t.c.url == m.url) if m.url is not None else by_id


# -- the page ---------------------------------------------------------------------------------------


async def search(conn: AsyncConnection, req: SearchRequest) -> SearchPage:
    """Run `req`: one page of matches in sort order, with total, cursors and `_include`d resources.

    Raises SearchError('_cursor') for a cursor that is not one of ours or belongs to another query.
    """
    cursor = decode_cursor(req.cursor, req) if req.cursor else None
    where = criteria_clause(req)
    if cursor is not None:
        where = and_(where, resources.c.pk <= cursor.snapshot)
    if req.summary == "count" or req.count == 0:
        total = cursor.total if cursor and cursor.total is not None else await _count(conn, where)
        return SearchPage([], total)
    columns = sort_columns(req)
    raw = await _page_rows(conn, req, where, columns, cursor)
    more = len(raw) > req.count
    raw = raw[: req.count]
    reverse = cursor is not None and cursor.direction == "prev"
    if reverse:
        raw.reverse()
    snapshot = cursor.snapshot if cursor else (raw[0][-1] if raw else 0)
    total = await _total(conn, req, where, cursor, len(raw), more, snapshot)
    page = SearchPage([ResourceRow._make(row[:_WIDTH]) for row in raw], total)
    _set_cursors(page, req, raw, cursor, more, snapshot)
    if page.rows and (req.includes or req.revincludes):
        page.included = await _included(conn, req, page.rows)
    return page


async def _page_rows(
    conn: AsyncConnection,
    req: SearchRequest,
    where: ColumnElement[bool],
    columns: list[SortColumn],
    cursor: Cursor | None,
) -> list[Sequence[Any]]:
    labels = [column.expr.label(f"sort_{i}") for i, column in enumerate(columns)]
    extra: list[Any] = list(labels)
    if cursor is None:
        newest = resources.alias()
        extra.append(select(func.max(newest.c.pk)).correlate(None).scalar_subquery().label("snapshot"))
    else:
        where = and_(where, keyset_condition(columns, cursor, resources.c.pk))
    reverse = cursor is not None and cursor.direction == "prev"
    stmt: Select[Any] = (
        select(*_ROW_COLUMNS, *extra)
        .where(where)
        .order_by(*order_by(columns, labels, resources.c.pk, reverse=reverse))
        .limit(req.count + 1)
    )
    return list((await conn.execute(stmt)).all())


async def _count(conn: AsyncConnection, where: ColumnElement[bool]) -> int:
    return (await conn.execute(select(func.count()).select_from(resources).where(where))).scalar_one()


async def _total(
    conn: AsyncConnection,
    req: SearchRequest,
    where: ColumnElement[bool],
    cursor: Cursor | None,
    rows: int,
    more: bool,
    snapshot: int,
) -> int | None:
    """Bundle.total: carried by the cursor after the first page; counted only when the first page is full."""
    if req.total == "none":
        return None
    if cursor is not None and cursor.total is not None:
        return cursor.total
    if cursor is None and not more:
        return rows
    return await _count(conn, and_(where, resources.c.pk <= snapshot))


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


async def _included(conn: AsyncConnection, req: SearchRequest, rows: list[ResourceRow]) -> list[ResourceRow]:
    """Resources named by `_include`/`_revinclude` (search.html#include), `:iterate` one level further.

    De-duplicated, without the page's own matches, without deleted resources, ordered by pk.
    """
    seen = {row.pk for row in rows}
    found = await _include_level(conn, req.includes, req.revincludes, rows, seen)
    iterate = [i for i in req.includes if i.iterate], [i for i in req.revincludes if i.iterate]
    if found and (iterate[0] or iterate[1]):
        found += await _include_level(conn, iterate[0], iterate[1], found, seen)
    return sorted(found, key=lambda row: row.pk)


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
    selects = [s for inc in includes for s in _forward(inc, by_type)]
    selects += [s for inc in revincludes for s in _reverse(inc, by_type)]
    if not selects:
        return []
    wanted = selects[0] if len(selects) == 1 else union(*selects)
    stmt = select(*_ROW_COLUMNS).where(resources.c.pk.in_(wanted), resources.c.deleted == false())
    found = []
    for row in (await conn.execute(stmt.order_by(resources.c.pk))).all():
        if row[0] not in seen:
            seen.add(row[0])
            found.append(ResourceRow._make(row))
    return found


def _forward(inc: Include, by_type: dict[str, list[ResourceRow]]) -> list[Select[Any]]:
    """pks of the resources that `inc.source_type` rows among the sources point at."""
    sources = by_type.get(inc.source_type)
    if not sources:
        return []
    ref, target = idx_reference.alias(), resources.alias()
    joined = ref.join(target, and_(target.c.res_type == ref.c.target_type, target.c.res_id == ref.c.target_id))
    stmt = select(target.c.pk).select_from(joined).where(
        ref.c.res_pk.in_([row.pk for row in sources]),
        ref.c.res_type == inc.source_type,
        ref.c.param == inc.param if inc.param else true(),
        ref.c.target_type == inc.target_type if inc.target_type else true(),
    )
    return [stmt.correlate(None)]


def _reverse(inc: Include, by_type: dict[str, list[ResourceRow]]) -> list[Select[Any]]:
    """pks of `inc.source_type` resources whose `inc.param` points at one of the sources."""
    selects = []
    for res_type, rows in by_type.items():
        if inc.target_type and inc.target_type != res_type:
            continue
        ref = idx_reference.alias()
        stmt = select(ref.c.res_pk).where(
            ref.c.res_type == inc.source_type,
            ref.c.param == inc.param if inc.param else true(),
            ref.c.target_type == res_type,
            ref.c.target_id.in_([row.res_id for row in rows]),
        )
        selects.append(stmt.correlate(None))
    return selects
