"""Paging that stays correct while the store is written (https://hl7.org/fhir/R4/http.html#paging).

Pages are cut by keyset, not offset: a page continues strictly after (or, going back, before) the
boundary row's sort values and `resources.pk`. The pk is assigned once and never changes, so it
breaks every tie, and rows inserted or deleted between two page requests cannot make the client
see a resource twice or miss one that was already ordered before the boundary. The first page
also records a snapshot bound, the largest pk in the store when the search ran; later pages
only return resources with pk <= snapshot, so resources created after the search began do not
appear and Bundle.total (counted under the same bound) stays consistent.

(The bound assumes pks become visible in allocation order. On PostgreSQL two writers may commit
out of order, so a resource whose transaction was in flight at the first page can still appear on
a later one; it is never duplicated.)

The cursor handed to clients is opaque: URL-safe base64 of a small JSON document holding the
direction, the boundary row's sort values and pk, the snapshot, the total, and a fingerprint of
the query it belongs to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, FromClause, and_, false, func, or_, select

from engine.db.schema import INDEX_TABLES, resources
from engine.search.params import RESULT_PARAMS, SearchError, SearchRequest, SortKey
from engine.search.scope import param_rows

_CURSOR_ALPHABET = re.compile(r"[A-Za-z0-9_-]{1,2048}")
_DATE_KINDS = frozenset({"date", "lastUpdated"})
_NUMBER_KINDS = frozenset({"number", "quantity"})
# The index column a sort by a parameter of each type reads (ascending: MIN, descending: MAX).
_SORT_COLUMN = {"string": "value", "token": "code", "number": "value", "quantity": "value"}


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position between two rows of a result ordered by (sort keys…, pk)."""

    direction: Literal["next", "prev"]
    values: tuple[Any, ...]
    pk: int
    snapshot: int
    total: int | None
    fingerprint: str
    inclusive: bool = False  # the boundary row itself belongs to the page (it may have been deleted)


@dataclass(frozen=True, slots=True)
class SortColumn:
    """One ORDER BY term: an expression over `resources`, its direction and whether it can be NULL."""

    expr: ColumnElement[Any]
    kind: str
    descending: bool
    nullable: bool


def fingerprint(req: SearchRequest) -> str:
    """A short digest of what selects and orders the results, so a cursor is used only with its query."""
    selecting = sorted((n, v) for n, v in req.items if n.partition(":")[0] not in RESULT_PARAMS or n == "_sort")
    digest = hashlib.sha256(orjson.dumps([req.resource_type, selecting]))
    return digest.hexdigest()[:16]


def encode_cursor(cursor: Cursor) -> str:
    payload = {
        "d": cursor.direction[0],
        "k": [v.isoformat() if isinstance(v, datetime) else v for v in cursor.values],
        "p": cursor.pk,
        "s": cursor.snapshot,
        "t": cursor.total,
        "q": cursor.fingerprint,
        "i": int(cursor.inclusive),
    }
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, req: SearchRequest) -> Cursor:
    """The cursor in `token`, checked against `req`; SearchError('_cursor') if it is not one of ours."""
    try:
        if not _CURSOR_ALPHABET.fullmatch(token):
            raise ValueError("not URL-safe base64")
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = _cursor_from(payload, req)
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise SearchError("_cursor", "the paging cursor is invalid or has expired") from exc
    if cursor.fingerprint != fingerprint(req):
        raise SearchError("_cursor", "the paging cursor belongs to a different search")
    return cursor


def _cursor_from(payload: Any, req: SearchRequest) -> Cursor:
    if not isinstance(payload, dict) or payload["d"] not in ("n", "p"):
        raise ValueError("bad cursor")
    raw_values, kinds = payload["k"], sort_kinds(req.sort)
    if not isinstance(raw_values, list) or len(raw_values) != len(kinds):
        raise ValueError("bad sort values")
    numbers = [payload["p"], payload["s"]] + ([] if payload["t"] is None else [payload["t"]])
    if any(type(n) is not int or not 0 <= n < 2**63 for n in numbers) or type(payload["q"]) is not str:
        raise ValueError("bad cursor numbers")
    return Cursor(
        direction="next" if payload["d"] == "n" else "prev",
        values=tuple(_typed(kind, value) for kind, value in zip(kinds, raw_values)),
        pk=payload["p"],
        snapshot=payload["s"],
        total=payload["t"],
        fingerprint=payload["q"],
        inclusive=bool(payload.get("i", 0)),
    )


def _typed(kind: str, value: Any) -> Any:
    """A sort value from the cursor JSON back in the type the database returns for `kind`."""
    if value is None and kind not in ("id", "lastUpdated"):
        return None
    if kind in _DATE_KINDS and isinstance(value, str):
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is not None:
            raise ValueError("sort dates are naive UTC")
        return moment
    if kind in _NUMBER_KINDS and type(value) in (int, float):
        return float(value)
    if kind not in _DATE_KINDS and kind not in _NUMBER_KINDS and isinstance(value, str):
        return value
    raise ValueError(f"bad {kind} sort value")


def sort_kinds(sort: tuple[SortKey, ...]) -> list[str]:
    return [key.kind for key in sort]


def sort_columns(resource_type: str, sort: tuple[SortKey, ...], r: FromClause = resources) -> list[SortColumn]:
    """The ORDER BY terms for `_sort` (search.html#sort), before the pk that ends every ordering.

    A parameter may have several values per resource; ascending sorts use the least (for dates,
    the earliest start), descending ones the greatest (the latest end), read by a correlated
    subquery on the index table (`ix_<table>_res_pk`). Resources with no value sort last.
    """
    columns = []
    for key in sort:
        if key.kind == "id":
            columns.append(SortColumn(r.c.res_id, key.kind, key.descending, False))
        elif key.kind == "lastUpdated":
            columns.append(SortColumn(r.c.last_updated, key.kind, key.descending, False))
        else:
            columns.append(SortColumn(_param_sort_value(resource_type, key, r), key.kind, key.descending, True))
    return columns


def _param_sort_value(resource_type: str, key: SortKey, r: FromClause) -> ColumnElement[Any]:
    table = INDEX_TABLES[key.kind]
    if key.kind == "date":
        column = table.c.high if key.descending else table.c.low
    else:
        column = table.c[_SORT_COLUMN[key.kind]]
    aggregate = func.max(column) if key.descending else func.min(column)
    return (
        select(aggregate)
        .where(table.c.res_pk == r.c.pk, table.c.res_type == resource_type, param_rows(table, resource_type, key.param))
        .correlate(r)
        .scalar_subquery()
    )


def order_by(columns: list[SortColumn], labels: list[ColumnElement[Any]], pk: ColumnElement[Any], *,
             reverse: bool) -> list[ColumnElement[Any]]:
    """ORDER BY terms for the page, or for the page before the boundary when `reverse`."""
    terms = []
    for column, label in zip(columns, labels):
        term = label.desc() if column.descending != reverse else label.asc()
        if column.nullable:
            term = term.nulls_first() if reverse else term.nulls_last()
        terms.append(term)
    terms.append(pk.desc() if reverse else pk.asc())
    return terms


def keyset_condition(
    columns: list[SortColumn],
    values: Sequence[Any],
    pk_value: Any,
    pk: ColumnElement[Any],
    *,
    reverse: bool,
    inclusive: bool = False,
) -> ColumnElement[bool]:
    """Rows strictly after the boundary (sort `values`, `pk_value`) in page order; before it when `reverse`.

    The lexicographic expansion (k1 > v1) OR (k1 = v1 AND k2 > v2) OR … OR (all equal AND pk > p),
    with NULL sort values placed after every value (search.html#sort leaves this to the server).
    A None value is a NULL boundary; other values may be literals or bound parameters. `inclusive`
    lets the boundary row itself through (used to link back to a page whose rows were deleted).
    """
    terms: list[ColumnElement[bool]] = []
    equal: list[ColumnElement[bool]] = []
    for column, value in zip(columns, values):
        terms.append(and_(*equal, _beyond(column, value, reverse)))
        equal.append(column.expr.is_(None) if value is None else column.expr == value)
    if reverse:
        last = pk <= pk_value if inclusive else pk < pk_value
    else:
        last = pk >= pk_value if inclusive else pk > pk_value
    terms.append(and_(*equal, last))
    return or_(*terms)


def _beyond(column: SortColumn, value: Any, reverse: bool) -> ColumnElement[bool]:
    """`column` comes after `value` in the page order (NULLs last), or before it when `reverse`."""
    expr = column.expr
    if value is None:
        return expr.is_not(None) if reverse else false()
    descending = column.descending != reverse
    beyond = expr < value if descending else expr > value
    if column.nullable and not reverse:
        return or_(beyond, expr.is_(None))
    return beyond
