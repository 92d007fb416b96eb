"""The access gate: the one module through which every read and write of clinical data passes.

Every FHIR interaction asks the gate first (`authorise`) and every resource that leaves the
store passes `release` before it reaches a response. Today the gate applies the user's SMART
scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html), the patient
context of `patient/` scopes and the presence of an NHS RBAC role; consent, legitimate
relationship and audit plug in here, so no endpoint needs to change when they do.

Reads return `Stored` rows whose JSON text is served as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import orjson
from sqlalchemy import ColumnElement

from engine import outcomes
from engine.auth import Principal, scopes_permit
from engine.db import repository
from engine.db.database import Database
from engine.db.repository import HistoryPage, Stored
from engine.db.schema import resources
from engine.outcomes import FhirError
from engine.search.extract import patient_compartment
from engine.search.params import SearchRequest
from engine.search.query import SearchPage, search

# SMART v2 interaction letters (https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html).
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"
_RBAC_ROLE = re.compile(r"^R\d{4}$")
_INTERACTION_NAMES = {CREATE: "create", READ: "read", UPDATE: "update", DELETE: "delete", SEARCH: "search"}


@dataclass(frozen=True)
class Decision:
    permitted: bool
    code: str = ""
    reason: str = ""


def decide_interaction(who: Principal, interaction: str, res_type: str) -> Decision:
    """May `who` perform `interaction` on resources of `res_type` at all? (pure)"""
    if not _RBAC_ROLE.match(who.role or ""):
        return Decision(False, "no-role", "The token carries no NHS RBAC role")
    if not scopes_permit(who.scopes, interaction, res_type):
        action = _INTERACTION_NAMES[interaction]
        return Decision(False, "insufficient-scope", f"The token's scopes do not allow {action} on {res_type}")
    return Decision(True)


def patient_context(who: Principal) -> str | None:
    """The only patient a `patient/`-scoped token may reach; None for `user/` and `system/` tokens.

    A token whose resource scopes are all `patient/` scopes is held to its `patient` claim (and
    without one it reaches nobody: an id that matches no resource).
    """
    if who.scopes and all(scope.context == "patient" for scope in who.scopes):
        return who.patient or "\x00no-patient-in-token"
    return None


class AccessGate:
    """Authorises interactions and releases stored resources to one principal."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- decisions ----------------------------------------------------------------------------

    def authorise(self, who: Principal, interaction: str, res_type: str) -> None:
        decision = decide_interaction(who, interaction, res_type)
        if not decision.permitted:
            raise outcomes.forbidden(decision.code, decision.reason)

    def releasable(self, who: Principal, stored: Stored) -> bool:
        """May this stored resource be shown to `who`?"""
        context = patient_context(who)
        if context is None:
            return True
        if stored.res_type == "Patient":
            return stored.res_id == context
        return _patient_of(stored) == context

    def search_restriction(self, who: Principal) -> ColumnElement[bool] | None:
        """An extra WHERE clause a search must carry for `who` (the patient compartment)."""
        context = patient_context(who)
        if context is None:
            return None
        return resources.c.patient_id == context

    def release(self, who: Principal, rows: Iterable[Stored]) -> list[Stored]:
        return [row for row in rows if self.releasable(who, row)]

    # -- reads ----------------------------------------------------------------------------------

    async def read(self, who: Principal, res_type: str, res_id: str) -> Stored:
        self.authorise(who, READ, res_type)
        async with self.db.read() as conn:
            stored = await repository.read(conn, res_type, res_id)
        return self._released_or_missing(who, stored, res_type, res_id)

    async def vread(self, who: Principal, res_type: str, res_id: str, version_id: int) -> Stored:
        self.authorise(who, READ, res_type)
        async with self.db.read() as conn:
            current = await repository.read(conn, res_type, res_id)
            stored = await repository.read_version(conn, res_type, res_id, version_id) if current else None
        if current is None or stored is None:
            raise outcomes.not_found(res_type, f"{res_id}/_history/{version_id}")
        if stored.deleted:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        self._check_release(who, current if current.content else stored)
        return stored

    async def search(self, who: Principal, request: SearchRequest) -> SearchPage:
        self.authorise(who, SEARCH, request.resource_type)
        for included_type in _included_types(request):
            self.authorise(who, SEARCH, included_type)
        async with self.db.read() as conn:
            page = await search(conn, request, restriction=self.search_restriction(who))
        included = [
            row for row in self.release(who, page.included)
            if decide_interaction(who, READ, row.res_type).permitted
        ]
        return replace(page, included=included)

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
                self._check_release(who, current)
            page = await repository.history(
                conn, res_type=res_type, res_id=res_id, since=since, at=at, count=count, after=after
            )
            total = None
            if after is None and page.next_cursor is None:
                total = len(page.versions)
            elif after is None:
                total = await repository.history_total(conn, res_type=res_type, res_id=res_id, since=since)
        visible = [v for v in page.versions if v.deleted or self.releasable(who, v)]
        return HistoryPage(visible, page.next_cursor), total

    async def everything(
        self, who: Principal, patient_id: str, *, types: Sequence[str] | None, since: datetime | None,
        count: int, after_pk: int | None, snapshot_pk: int | None,
    ) -> tuple[Stored, list[Stored], int | None, int]:
        """`Patient/[id]/$everything` (https://hl7.org/fhir/R4/patient-operation-everything.html)."""
        self.authorise(who, READ, "Patient")
        for res_type in types or _all_types():
            if decide_interaction(who, READ, res_type).permitted is False and types:
                raise outcomes.forbidden("insufficient-scope", f"The token's scopes do not allow read on {res_type}")
        async with self.db.read() as conn:
            patient = await repository.read(conn, "Patient", patient_id)
            patient = self._released_or_missing(who, patient, "Patient", patient_id)
            snapshot = snapshot_pk if snapshot_pk is not None else await repository.max_pk(conn)
            page, next_pk = await repository.compartment_page(
                conn, patient_id, types=types, since=since, count=count, after_pk=after_pk, snapshot_pk=snapshot
            )
        readable = [s for s in page if decide_interaction(who, READ, s.res_type).permitted]
        return patient, self.release(who, readable), next_pk, snapshot

    # -- helpers ----------------------------------------------------------------------------------

    def _released_or_missing(self, who: Principal, stored: Stored | None, res_type: str, res_id: str) -> Stored:
        if stored is None:
            raise outcomes.not_found(res_type, res_id)
        if stored.deleted:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        self._check_release(who, stored)
        return stored

    def _check_release(self, who: Principal, stored: Stored) -> None:
        if not self.releasable(who, stored):
            # Outside a patient-scoped token's compartment the resource does not exist for it.
            raise outcomes.not_found(stored.res_type, stored.res_id)


def _patient_of(stored: Stored) -> str | None:
    """The compartment of a stored row, from its JSON (only needed for patient-scoped tokens)."""
    if stored.content is None:
        return None
    return patient_compartment(orjson.loads(stored.content))


def _included_types(request: SearchRequest) -> set[str]:
    types: set[str] = set()
    for include in getattr(request, "revinclude", ()) or ():
        source = getattr(include, "source_type", None)
        if source:
            types.add(source)
    return types


def _all_types() -> list[str]:
    from engine.search.registry import SUPPORTED_TYPES

    return sorted(SUPPORTED_TYPES)


def raise_for(error: FhirError) -> None:
    raise error
