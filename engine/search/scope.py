"""Which index rows are a search parameter's: the SQL side of engine.search.registry.searched_as."""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, or_

from engine.search.registry import searched_as


def param_rows(table: FromClause, resource_type: str, code: str) -> ColumnElement[bool]:
    """The index rows of search parameter `code`: its own, and those of the narrower parameters its rows
    are stored with (`subject` reads the `patient` rows too: engine.search.extract stores them once)."""
    codes = searched_as(resource_type, code)
    return or_(*(table.c.param == c for c in codes)) if len(codes) > 1 else table.c.param == code
