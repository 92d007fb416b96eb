"""The access gate: the one module through which every read and write of clinical data passes.

Every FHIR interaction asks the gate first (`authorise`) and every resource that leaves the store
passes `release` before it reaches a response. Today the gate applies:

- the NHS RBAC role the token carries (it must have one);
- the user's SMART v2 scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html),
  combined exactly: a resource is allowed when ANY scope granting the interaction on its type
  allows it, and a scope allows it when it matches the scope's `?query` AND, for a `patient/`
  scope, lies in the launch patient's compartment.

Consent, legitimate relationship and audit plug in here, so no endpoint changes when they do.
Scope restrictions become SQL over `resources` (the same search grammar clients use), so
searches filter in the database and a page's `total` never counts what the user may not see.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import ColumnElement, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.auth import Principal, granting_scopes
from engine.db import repository
from engine.db.database import Database
from engine.db.repository import HistoryPage, Stored
from engine.db.schema import resources
from engine.search.params import SearchError, SearchRequest, parse_search
from engine.search.query import SearchPage, criteria_clause, search

# SMART v2 interaction letters.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"
_RBAC_ROLE = re.compile(r"^R\d{4}$")
_INTERACTION_NAMES = {CREATE: "create", READ: "read", UPDATE: "update", DELETE: "delete", SEARCH: "search"}


class StoredRow(Protocol):
    pk: int
    res_type: str
    res_id: str


@dataclass(frozen=True)
class Decision:
    permitted: bool
    code: str = ""
    reason: str = ""


def decide_interaction(who: Principal, interaction: str, res_type: str) -> Decision:
    """May `who` perform `interaction` on some resources of `res_type`? (pure)"""
    if not _RBAC_ROLE.match(who.role or ""):
        return Decision(False, "no-role", "The token carries no NHS RBAC role")
    if not granting_scopes(who.scopes, interaction, res_type):
        action = _INTERACTION_NAMES[interaction]
        return Decision(False, "insufficient-scope", f"The token's scopes do not allow {action} on {res_type}")
    return Decision(True)


def compartment_clause(res_type: str, patient_id: str | None) -> ColumnElement[bool]:
    """Resources of `res_type` in `patient_id`'s compartment (nothing when there is no patient)."""
    if not patient_id:
        return false()
    if res_type == "Patient":
        return resources.c.res_id == patient_id
    return resources.c.patient_id == patient_id


def scope_clause(who: Principal, interaction: str, res_type: str) -> ColumnElement[bool] | None:
    """The SQL restriction `who`'s scopes put on `interaction` over `res_type`; None = unrestricted.

    A scope whose query the server cannot evaluate grants nothing (fail closed).
    """
    alternatives: list[ColumnElement[bool]] = []
    for scope in granting_scopes(who.scopes, interaction, res_type):
        parts: list[ColumnElement[bool]] = []
        if scope.params:
            try:
                parts.append(criteria_clause(parse_search(res_type, list(scope.params))))
            except SearchError:
                continue
        if scope.context == "patient":
            parts.append(compartment_clause(res_type, who.patient))
        if not parts:
            return None
        alternatives.append(and_(*parts))
    return or_(*alternatives) if alternatives else false()


class AccessGate:
    """Authorises interactions and releases stored resources to one principal."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- decisions ------------------------------------------------------------------------------

    def authorise(self, who: Principal, interaction: str, res_type: str) -> None:
        decision = decide_interaction(who, interaction, res_type)
        if not decision.permitted:
            raise outcomes.forbidden(decision.code, decision.reason)

    async def permitted_pks(
        self, conn: AsyncConnection, who: Principal, interaction: str, rows: Iterable[StoredRow]
    ) -> set[int]:
        """The pks among `rows` that `who` may see or change under `interaction` (one query per type)."""
        by_type: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_type[row.res_type].append(row.pk)
        allowed: set[int] = set()
        for res_type, pks in by_type.items():
            if not decide_interaction(who, interaction, res_type).permitted:
                continue
            clause = scope_clause(who, interaction, res_type)
            if clause is None:
                allowed.update(pks)
                continue
            query = select(resources.c.pk).where(resources.c.pk.in_(pks), clause)
            allowed.update((await conn.execute(query)).scalars())
        return allowed

    async def release(
        self, conn: AsyncConnection, who: Principal, rows: Sequence[StoredRow], interaction: str = READ
    ) -> list[StoredRow]:
        """`rows` that may leave the store for `who`, in their order."""
        if not rows:
            return []
        allowed = await self.permitted_pks(conn, who, interaction, rows)
        return [row for row in rows if row.pk in allowed]

    async def check_change(self, conn: AsyncConnection, who: Principal, interaction: str, stored: Stored) -> None:
        """After a write inside its transaction: the written resource must lie within `who`'s scopes.

        Raising here rolls the write back, so a patient-scoped app cannot write into another
        patient's record, nor a `?category=` scope outside its category.
        """
        if stored.pk not in await self.permitted_pks(conn, who, interaction, [stored]):
            raise outcomes.forbidden("outside-scope",
                                     f"The token's scopes do not allow this {stored.res_type} to be written")

    # -- reads ------------------------------------------------------------------------------------

    async def read(self, who: Principal, res_type: str, res_id: str) -> Stored:
        self.authorise(who, READ, res_type)
        async with self.db.read() as conn:
            stored = await repository.read(conn, res_type, res_id)
            return await self._released_or_missing(conn, who, stored, res_type, res_id)

    async def vread(self, who: Principal, res_type: str, res_id: str, version_id: int) -> Stored:
        self.authorise(who, READ, res_type)
        async with self.db.read() as conn:
            current = await repository.read(conn, res_type, res_id)
            stored = await repository.read_version(conn, res_type, res_id, version_id) if current else None
            if current is None or stored is None:
                raise outcomes.not_found(res_type, f"{res_id}/_history/{version_id}")
            if not current.deleted:
                await self._check_release(conn, who, current)
        if stored.deleted:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        return stored

    async def search(self, who: Principal, request: SearchRequest, conn: AsyncConnection | None = None) -> SearchPage:
        """A search restricted in SQL to what `who` may see; included resources filtered the same way."""
        self.authorise(who, SEARCH, request.resource_type)
        restriction = scope_clause(who, SEARCH, request.resource_type)
        if conn is not None:
            return await self._search(conn, who, request, restriction)
        async with self.db.read() as own:
            return await self._search(own, who, request, restriction)

    async def _search(
        self, conn: AsyncConnection, who: Principal, request: SearchRequest, restriction: ColumnElement[bool] | None
    ) -> SearchPage:
        page = await search(conn, request, restriction=restriction)
        if page.included:
            page = replace(page, included=await self.release(conn, who, page.included))
        return page

    async def history(
        self, who: Principal, res_type: str | None, res_id: str | None, *, since: datetime | None,
        at: datetime | None, count: int, after: tuple[datetime, int, int] | None,
    ) -> tuple[HistoryPage, int | None]:
        """Instance, type or system history (https://hl7.org/fhir/R4/http.html#history)."""
        for checked in [res_type] if res_type else _all_types():
            self.authorise(who, READ, checked)
        async with self.db.read() as conn:
            if res_type and res_id:
                current = await repository.read(conn, res_type, res_id)
                if current is None:
                    raise outcomes.not_found(res_type, res_id)
                await self._check_release(conn, who, current, allow_deleted=True)
            page = await repository.history(
                conn, res_type=res_type, res_id=res_id, since=since, at=at, count=count, after=after
            )
            total = None
            if after is None and page.next_cursor is None:
                total = len(page.versions)
            elif after is None:
                total = await repository.history_total(conn, res_type=res_type, res_id=res_id, since=since, at=at)
            allowed = await self.permitted_pks(conn, who, READ, page.versions)
        visible = [v for v in page.versions if v.pk in allowed]
        if len(visible) != len(page.versions):
            total = None  # a restricted principal is not told how many versions it cannot see
        return HistoryPage(visible, page.next_cursor), total

    async def everything(
        self, who: Principal, patient_id: str, *, types: Sequence[str] | None, since: datetime | None,
        count: int, after_pk: int | None, snapshot_pk: int | None,
    ) -> tuple[list[Stored], int | None, int]:
        """`Patient/[id]/$everything` (https://hl7.org/fhir/R4/patient-operation-everything.html)."""
        self.authorise(who, READ, "Patient")
        for res_type in types or ():
            self.authorise(who, READ, res_type)
        async with self.db.read() as conn:
            patient = await repository.read(conn, "Patient", patient_id)
            await self._released_or_missing(conn, who, patient, "Patient", patient_id)
            snapshot = snapshot_pk if snapshot_pk is not None else await repository.max_pk(conn)
            page, next_pk = await repository.compartment_page(
                conn, patient_id, types=types, since=since, count=count, after_pk=after_pk, snapshot_pk=snapshot
            )
            released = await self.release(conn, who, page)
        return released, next_pk, snapshot

    # -- helpers ------------------------------------------------------------------------------------

    async def _released_or_missing(
        self, conn: AsyncConnection, who: Principal, stored: Stored | None, res_type: str, res_id: str
    ) -> Stored:
        if stored is None:
            raise outcomes.not_found(res_type, res_id)
        if stored.deleted:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        await self._check_release(conn, who, stored)
        return stored

    async def _check_release(
        self, conn: AsyncConnection, who: Principal, stored: Stored, *, allow_deleted: bool = False
    ) -> None:
        if allow_deleted and stored.deleted:
            return
        if stored.pk not in await self.permitted_pks(conn, who, READ, [stored]):
            # Outside the token's scopes the resource does not exist for it.
            raise outcomes.not_found(stored.res_type, stored.res_id)


def _all_types() -> list[str]:
    from engine.search.registry import SUPPORTED_TYPES

    return sorted(SUPPORTED_TYPES)
