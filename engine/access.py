"""The access gate: the one module through which every read and write of clinical data passes.

Every FHIR interaction asks the gate first (`authorise`) and every resource that leaves the store
passes `release` before it reaches a response. Today the gate applies:

- the NHS RBAC role the token carries (it must have one);
- the user's SMART v2 scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html),
  combined exactly: a resource is allowed when ANY scope granting the interaction on its type
  allows it, and a scope allows it when it matches the scope's `?query` AND, for a `patient/`
  scope, lies in the launch patient's compartment.

- the NHS RBAC role table, legitimate relationships, the patient's Consents, sensitive labels
  and break-glass (`consent/`, pure; its inputs are read by `engine.access_data`).

Scope restrictions and the relationship and label rules become SQL over `resources` (the same
search grammar clients use), so searches filter in the database and a page's `total` never counts
what the user may not see; the resources of patients holding a Consent are then decided row by
row by `consent.decide`, the final word on everything that leaves the store.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.decide import decide, decide_patient
from consent.labels import apply_labels
from consent.model import AccessRequest, Requester, ResourceFacts, patient_of
from consent.model import Decision as ConsentDecision
from consent.policy import Policy, RoleGrant, check_break_glass_reason, load_policy
from consent.vocabulary import BREAK_GLASS, OWNER_TAG_SYSTEM, TREATMENT, owner_tag
from engine import outcomes
from engine.access_data import (
    OrganisationKeys,
    PatientContext,
    PolicySql,
    Viewer,
    contexts_from_rows,
    contexts_query,
    grant_break_glass,
    load_contexts,
    patients_of,
)
from engine.audit.events import MINOR_FAILURE, SERIOUS_FAILURE, AuditRecord, break_glass_alert, record_for
from engine.audit.log import AuditWriter, append, record_now
from engine.auth import Principal, granting_scopes
from engine.config import access_policy_path
from engine.db import repository
from engine.db.database import Database
from engine.db.direct import execute_together
from engine.db.repository import HistoryPage, Stored
from engine.db.schema import resources
from engine.outcomes import FhirError
from engine.search.normalise import naive_utc
from engine.search.params import SearchError, SearchRequest, parse_search
from engine.search.query import (
    SearchPage,
    count_only,
    counts_only,
    criteria_clause,
    finish_page,
    included_resources,
    match_flags,
    plan_page,
    search,
)

# SMART v2 interaction letters.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"
_RBAC_ROLE = re.compile(r"^R\d{4}$")
_INTERACTION_NAMES = {CREATE: "create", READ: "read", UPDATE: "update", DELETE: "delete", SEARCH: "search"}
# `_summary=count` decides at most this many matches of patients holding a Consent one by one.
_MAX_JUDGED_FOR_COUNT = 5000


T = TypeVar("T")


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
    if not _RBAC_ROLE.match(who.role or "") and not who.own_patient:
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
    """Authorises interactions and releases stored resources to one principal.

    `now` is read once per call from `clock` (UTC), so one request sees one moment.
    """

    def __init__(self, db: Database, policy: Policy | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.policy = policy or load_policy(access_policy_path())
        self.clock = clock
        self.org_keys = OrganisationKeys()
        self.sql = PolicySql(self.policy)
        # Group commit for reads (set by the application); without it each record commits on its own.
        self.audit_writer: AuditWriter | None = None

    # -- decisions ------------------------------------------------------------------------------

    def authorise(self, who: Principal, interaction: str, res_type: str) -> None:
        """Role, scopes and the role table: may `who` do `interaction` on any `res_type` at all?"""
        decision = decide_interaction(who, interaction, res_type)
        if decision.permitted and not who.is_system and not role_permits(
                self.policy, who, _INTERACTION_NAMES[interaction], res_type):
            decision = Decision(False, "role", f"The role {who.role} may not {_INTERACTION_NAMES[interaction]} "
                                               f"{res_type} resources")
        if not decision.permitted:
            raise outcomes.forbidden(decision.code, decision.reason)

    async def viewer(self, conn: AsyncConnection, who: Principal) -> Viewer:
        grant = role_grant(self.policy, who)
        return Viewer(who.user_id, who.org, await self.org_keys.keys(conn, who.org), who.own_patient,
                      needs_relationship=grant is None or grant.needs_relationship)

    async def permitted_pks(
        self, conn: AsyncConnection, who: Principal, interaction: str, rows: Iterable[StoredRow]
    ) -> set[int]:
        """The pks among `rows` that `who` may see or change under `interaction` (one query per type)."""
        now = self.clock()
        by_type: dict[str, list[StoredRow]] = defaultdict(list)
        for row in rows:
            by_type[row.res_type].append(row)
        viewer = None if who.is_system else await self.viewer(conn, who)
        params = self.sql.params(viewer, naive_utc(now)) if viewer else {}
        allowed: set[int] = set()
        to_judge: list[tuple[StoredRow, str]] = []
        for res_type, typed in by_type.items():
            if not self._role_allows(who, interaction, res_type):
                continue
            by_pk = {row.pk: row for row in typed}
            scope = scope_clause(who, interaction, res_type)
            if viewer is None:
                if scope is None:
                    allowed.update(by_pk)
                else:
                    query = select(resources.c.pk).where(resources.c.pk.in_(list(by_pk)), scope)
                    allowed.update((await conn.execute(query)).scalars())
                continue
            query = self.sql.permitted(viewer) if scope is None else self.sql.permitted(viewer).where(scope)
            for pk, patient_id, holds_consent in await conn.execute(query, {**params, "acc_pks": list(by_pk)}):
                allowed.add(pk)
                if holds_consent and patient_id:
                    to_judge.append((by_pk[pk], patient_id))
        if to_judge and viewer is not None:
            allowed -= await self._judge(conn, who, viewer, interaction, to_judge, now)
        return allowed

    async def release(
        self, conn: AsyncConnection, who: Principal, rows: Sequence[StoredRow], interaction: str = READ
    ) -> list[StoredRow]:
        """`rows` that may leave the store for `who`, in their order."""
        if not rows:
            return []
        allowed = await self.permitted_pks(conn, who, interaction, rows)
        return [row for row in rows if row.pk in allowed]

    def prepare(self, who: Principal, resource: dict[str, Any]) -> dict[str, Any]:
        """A resource about to be written by `who`: the policy's sensitivity labels added and, for a
        person writing, their organisation tagged as the data's owner (meta.tag, consent.vocabulary)."""
        document = apply_labels(resource, self.policy)
        if who.is_system or not who.org or document.get("resourceType") in self.policy.directory_types:
            return document
        meta = dict(document.get("meta") or {})
        tags = [t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == OWNER_TAG_SYSTEM)]
        meta["tag"] = [*tags, owner_tag(who.org)]
        return {**document, "meta": meta}

    async def check_change(self, conn: AsyncConnection, who: Principal, interaction: str, stored: Stored) -> None:
        """After a write inside its transaction: the written resource must lie within what `who` may see.

        Raising here rolls the write back, so a patient-scoped app cannot write into another
        patient's record, nor a clinician into the record of a patient they have no relationship with.
        """
        if stored.pk not in await self.permitted_pks(conn, who, interaction, [stored]):
            raise await self._refusal(conn, who, stored, "written")
        await self.audit_change(conn, who, _INTERACTION_NAMES[interaction], stored)

    # -- reads ------------------------------------------------------------------------------------

    async def _read(self, who: Principal, res_type: str, res_id: str) -> Stored:
        self.authorise(who, READ, res_type)
        await self._maybe_break_glass_for(who, res_type, res_id)
        async with self.db.direct() as conn:
            if who.is_system or scope_clause(who, READ, res_type) is not None:
                stored = await repository.read(conn, res_type, res_id)
                return await self._released_or_missing(conn, who, stored, res_type, res_id)
            # The common case in one round trip: the row with the SQL rules' verdict on it.
            viewer = await self.viewer(conn, who)
            values = {**self.sql.params(viewer, naive_utc(self.clock())), "res_type": res_type, "res_id": res_id}
            row = (await conn.execute(self.sql.read(viewer), values)).first()
            if row is None:
                raise outcomes.not_found(res_type, res_id)
            *columns, patient_id, visible_to_sql, holds_consent = row
            stored = replace(repository.stored_row(columns), patient_id=patient_id)
            if visible_to_sql and not holds_consent and not stored.deleted:
                return stored
            return await self._released_or_missing(conn, who, stored, res_type, res_id)

    async def _vread(self, who: Principal, res_type: str, res_id: str, version_id: int) -> Stored:
        self.authorise(who, READ, res_type)
        await self._maybe_break_glass_for(who, res_type, res_id)
        async with self.db.direct() as conn:
            current = await repository.read(conn, res_type, res_id)
            stored = await repository.read_version(conn, res_type, res_id, version_id) if current else None
            if current is None or stored is None:
                raise outcomes.not_found(res_type, f"{res_id}/_history/{version_id}")
            if not current.deleted:
                await self._check_release(conn, who, current)
                if not stored.deleted and stored.pk not in await self.permitted_pks(conn, who, READ, [stored]):
                    raise outcomes.not_found(res_type, f"{res_id}/_history/{version_id}")
        if stored.deleted:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        return stored

    async def search(self, who: Principal, request: SearchRequest, conn: AsyncConnection | None = None) -> SearchPage:
        """A search, audited (a search inside a write, `conn` given, is audited with that write)."""
        if conn is not None:
            return await self._search_for(who, request, conn)
        query = urlencode(request.items)
        page = await self._audited(who, "search", self._search_for(who, request, None), query=query,
                                   target=request.resource_type)
        rows = [*page.rows, *page.included]
        await self.audit([record_for(who, recorded=self.clock(), subtype="search", query=query,
                                     patient_ids=tuple(r.patient_id for r in rows if r.patient_id),
                                     entities=tuple(f"{r.res_type}/{r.res_id}" for r in rows))])
        return page

    async def _search_for(self, who: Principal, request: SearchRequest,
                          conn: AsyncConnection | None) -> SearchPage:
        """A search restricted in SQL to what `who` may see; included resources filtered the same way.

        A search about one patient (`patient=`, `subject=Patient/…`, `Patient?_id=`) with no
        relationship and no break-glass is refused outright (403) rather than answered empty.
        """
        self.authorise(who, SEARCH, request.resource_type)
        pinned = pinned_patient(request)
        if pinned and who.break_glass_reason:
            await self.break_glass(who, pinned)
        if conn is not None:
            return await self._search(conn, who, request, pinned)
        async with self.db.direct() as own:
            return await self._search(own, who, request, pinned)

    async def _search(self, conn: AsyncConnection, who: Principal, request: SearchRequest,
                      pinned: str | None) -> SearchPage:
        if who.is_system:
            return await search(conn, request, restriction=scope_clause(who, SEARCH, request.resource_type))
        now = self.clock()
        viewer = await self.viewer(conn, who)
        wanted = self._chains_limited(who, viewer, request)
        # Included resources are found from the released matches only, level by level (below).
        request = replace(wanted, includes=(), revincludes=())
        scope = scope_clause(who, SEARCH, request.resource_type)
        rules = self.sql.visible_pinned(viewer) if pinned else self.sql.visible(viewer)
        restriction = rules if scope is None else and_(scope, rules)
        params = self.sql.params(viewer, naive_utc(now))
        if pinned:
            params["acc_pinned"] = pinned
            page, consents_possible, label_hidden = await self._pinned_search(
                conn, who, viewer, request, pinned, now, restriction, params)
        else:
            consents_possible = request.cursor is not None  # a later page cannot tell; judge its rows
            label_hidden = False
            if request.cursor is None:
                hidden = self.sql.label_hidden(viewer)
                checks = [hidden if scope is None else and_(scope, hidden),
                          and_(restriction, self.sql.holds_consent)]
                label_hidden, consents_possible = await match_flags(conn, request, checks, params)
            if consents_possible:
                # Python may withhold rows SQL counted: a total would reveal how many.
                request = replace(request, total="none")
            page = await search(conn, request, restriction=restriction, restriction_values=params)
        if consents_possible and counts_only(request):
            total, withheld_any = await self._count_released(conn, who, request, restriction, params, now)
            return replace(page, total=total, withheld=withheld_any or label_hidden)
        withheld = await self._withheld_by_consent(conn, who, READ, page.rows, now) if consents_possible else set()
        if withheld:
            page = replace(page, rows=[r for r in page.rows if r.pk not in withheld])
        page = replace(page, withheld=bool(withheld) or label_hidden)
        if page.rows and (wanted.includes or wanted.revincludes):
            included, left_out = await included_resources(conn, wanted, page.rows,
                                                          release=lambda rows: self.release(conn, who, rows))
            page = replace(page, included=included, withheld=page.withheld or left_out)
        return page

    async def _count_released(self, conn: AsyncConnection, who: Principal, request: SearchRequest,
                              restriction: ColumnElement[bool], params: dict[str, Any], now: datetime,
                              ) -> tuple[int | None, bool]:
        """`_summary=count` where Consents may withhold matches: the rows SQL decides alone are counted in
        SQL, those of patients holding a Consent are decided one by one, as a search's would be. (None,
        True) when there are too many of those to decide: a count that cannot be exact is not given."""
        plain = await search(conn, request, restriction=and_(restriction, ~self.sql.holds_consent),
                             restriction_values=params)
        judged = await search(conn, replace(request, summary=None, count=_MAX_JUDGED_FOR_COUNT + 1, total="none"),
                              restriction=and_(restriction, self.sql.holds_consent), restriction_values=params)
        if len(judged.rows) > _MAX_JUDGED_FOR_COUNT or plain.total is None:
            return None, True
        withheld = await self._withheld_by_consent(conn, who, READ, judged.rows, now)
        return plain.total + len(judged.rows) - len(withheld), bool(withheld)

    def _chains_limited(self, who: Principal, viewer: Viewer, request: SearchRequest) -> SearchRequest:
        """`request` with each chained parameter limited to resources `who` may see: its target type must be
        one they may search (else 403), and only rows the SQL rules release to them are matched — never those
        of a patient holding a Consent, which only a row-by-row decision could release."""
        if not any(c.chain is not None for c in request.criteria):
            return request
        criteria = []
        for condition in request.criteria:
            chain = condition.chain
            if chain is not None:
                self.authorise(who, SEARCH, chain.target_type)
                scope = scope_clause(who, SEARCH, chain.target_type)
                targets = (self.sql.chain_targets(viewer) if scope is None
                           else self.sql.chain_clause(viewer.needs_relationship, scope))
                condition = replace(condition, chain=replace(chain, targets=targets))
            criteria.append(condition)
        return replace(request, criteria=tuple(criteria))

    async def _history(
        self, who: Principal, res_type: str | None, res_id: str | None, *, since: datetime | None,
        at: datetime | None, count: int, after: tuple[datetime, int, int] | None,
    ) -> tuple[HistoryPage, int | None]:
        """Instance, type or system history (https://hl7.org/fhir/R4/http.html#history)."""
        for checked in [res_type] if res_type else _all_types():
            if res_type or self._role_allows(who, READ, checked):
                self.authorise(who, READ, checked)
        async with self.db.direct() as conn:
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
            if not who.is_system:
                # Past versions are judged on their own content (a label added later still hides them).
                allowed -= await self._withheld_by_consent(conn, who, READ, page.versions, self.clock(),
                                                           every_row=True)
        visible_versions = [v for v in page.versions if v.pk in allowed]
        if len(visible_versions) != len(page.versions):
            total = None  # a restricted principal is not told how many versions it cannot see
        return HistoryPage(visible_versions, page.next_cursor), total

    async def _everything(
        self, who: Principal, patient_id: str, *, types: Sequence[str] | None, since: datetime | None,
        count: int, after_pk: int | None, snapshot_pk: int | None,
    ) -> tuple[list[Stored], int | None, int, bool]:
        """`Patient/[id]/$everything` (https://hl7.org/fhir/R4/patient-operation-everything.html): the page,
        the next pk, the snapshot, and whether the page left out something the policy withholds."""
        self.authorise(who, READ, "Patient")
        for res_type in types or ():
            self.authorise(who, READ, res_type)
        if who.break_glass_reason:
            await self.break_glass(who, patient_id)
        async with self.db.direct() as conn:
            patient = await repository.read(conn, "Patient", patient_id)
            await self._released_or_missing(conn, who, patient, "Patient", patient_id)
            snapshot = snapshot_pk if snapshot_pk is not None else await repository.max_pk(conn)
            page, next_pk = await repository.compartment_page(
                conn, patient_id, types=types, since=since, count=count, after_pk=after_pk, snapshot_pk=snapshot
            )
            readable = [row for row in page if self._role_allows(who, READ, row.res_type)]
            released = await self.release(conn, who, readable)
        return released, next_pk, snapshot, len(released) < len(page)

    # -- audit (IHE BALP; engine/audit) ---------------------------------------------------------------

    async def read(self, who: Principal, res_type: str, res_id: str) -> Stored:
        stored = await self._audited(who, "read", self._read(who, res_type, res_id), target=f"{res_type}/{res_id}")
        await self._audit_rows(who, "read", [stored])
        return stored

    async def vread(self, who: Principal, res_type: str, res_id: str, version_id: int) -> Stored:
        stored = await self._audited(who, "vread", self._vread(who, res_type, res_id, version_id),
                                     target=f"{res_type}/{res_id}/_history/{version_id}")
        await self._audit_rows(who, "vread", [stored], versioned=True)
        return stored

    async def history(
        self, who: Principal, res_type: str | None, res_id: str | None, *, since: datetime | None,
        at: datetime | None, count: int, after: tuple[datetime, int, int] | None,
    ) -> tuple[HistoryPage, int | None]:
        target = "/".join(p for p in (res_type, res_id) if p) or None
        page, total = await self._audited(
            who, "history", self._history(who, res_type, res_id, since=since, at=at, count=count, after=after),
            target=target)
        await self._audit_rows(who, "history", [v for v in page.versions if not v.deleted], versioned=True)
        return page, total

    async def everything(
        self, who: Principal, patient_id: str, *, types: Sequence[str] | None, since: datetime | None,
        count: int, after_pk: int | None, snapshot_pk: int | None,
    ) -> tuple[list[Stored], int | None, int, bool]:
        result = await self._audited(
            who, "operation", self._everything(who, patient_id, types=types, since=since, count=count,
                                               after_pk=after_pk, snapshot_pk=snapshot_pk),
            target=f"Patient/{patient_id}", operation="$everything")
        await self._audit_rows(who, "operation", result[0], operation="$everything", patients=(patient_id,))
        return result

    async def audit(self, records: Sequence[AuditRecord]) -> None:
        """Commit `records` before the caller answers (group commit when the application runs one)."""
        await record_now(self.db, records, self.audit_writer)

    async def audit_change(self, conn: AsyncConnection, who: Principal, subtype: str, stored: Stored) -> None:
        """Audit a write in its own transaction: the record commits with the data, or neither does."""
        patient = _patient_of(stored)
        await append(conn, [record_for(who, recorded=self.clock(), subtype=subtype,
                                       patient_ids=(patient,) if patient else (),
                                       entities=(f"{stored.res_type}/{stored.res_id}/_history/{stored.version_id}",))])

    async def audit_refusal(self, who: Principal, subtype: str, target: str | None, error: FhirError,
                            *, query: str | None = None, operation: str | None = None) -> None:
        """Audit an interaction that was refused or failed (BALP outcome 4 minor failure, 8 serious)."""
        code = _error_code(error)
        denied = code if error.status in {401, 403} else None
        patients = tuple(p for p in (error.patient_id,) if p)
        if target and target.startswith("Patient/") and "/" not in target.removeprefix("Patient/"):
            patients = (*patients, target.removeprefix("Patient/"))
        await self.audit([record_for(
            who, recorded=self.clock(), subtype=subtype, outcome=MINOR_FAILURE if error.status < 500 else SERIOUS_FAILURE,
            entities=(target,) if target and "/" in target else (), query=query, operation=operation,
            patient_ids=patients, denied_reason=denied, failure=None if denied else f"{error.status} {code}")])

    async def _audited(self, who: Principal, subtype: str, work: Awaitable[T], *, target: str | None,
                       query: str | None = None, operation: str | None = None) -> T:
        try:
            return await work
        except FhirError as error:
            await self.audit_refusal(who, subtype, target, error, query=query, operation=operation)
            raise

    async def _audit_rows(self, who: Principal, subtype: str, rows: Sequence[Stored], *, versioned: bool = False,
                          operation: str | None = None, patients: tuple[str, ...] = ()) -> None:
        found = [p for p in (_patient_of(r) for r in rows) if p]
        refs = tuple(f"{r.res_type}/{r.res_id}" + (f"/_history/{r.version_id}" if versioned else "") for r in rows)
        await self.audit([record_for(who, recorded=self.clock(), subtype=subtype, operation=operation,
                                     patient_ids=(*patients, *found), entities=refs)])

    # -- break-glass ----------------------------------------------------------------------------

    async def break_glass(self, who: Principal, patient_id: str) -> None:
        """Open (or keep) a break-glass grant for `who` on `patient_id` (UK-REFERENCE §4).

        The reason must be non-trivial; each new grant is its own committed write, so the override
        is on record before any data it unlocks is read.
        """
        if who.is_system or not who.break_glass_reason:
            return
        problem = check_break_glass_reason(who.break_glass_reason, self.policy)
        if problem:
            raise outcomes.bad_request(problem, ("X-Break-Glass-Reason",), "break-glass-reason")
        now = self.clock()
        async with self.db.write() as conn:
            active = await self._grant_active(conn, who.user_id, patient_id, now)
            if not active:
                await grant_break_glass(conn, user_id=who.user_id, patient_id=patient_id, org=who.org,
                                        role=who.role, reason=who.break_glass_reason, now=now,
                                        time_box=self.policy.break_glass.time_box)
                access = record_for(who, recorded=now, subtype="read", patient_ids=(patient_id,),
                                    entities=(f"Patient/{patient_id}",))
                await append(conn, [break_glass_alert(access)])

    async def _grant_active(self, conn: AsyncConnection, user_id: str, patient_id: str, now: datetime) -> bool:
        contexts = await load_contexts(conn, [patient_id], user_id=user_id, orgs=frozenset(), now=naive_utc(now))
        return contexts[patient_id].break_glass

    async def _maybe_break_glass_for(self, who: Principal, res_type: str, res_id: str) -> None:
        if who.is_system or not who.break_glass_reason:
            return
        async with self.db.direct() as conn:
            stored = await repository.read(conn, res_type, res_id)
            patients = await patients_of(conn, [stored.pk]) if stored else {}
        patient_id = patients.get(stored.pk, (None, False))[0] if stored else None
        if patient_id:
            await self.break_glass(who, patient_id)

    # -- helpers ------------------------------------------------------------------------------------

    def _role_allows(self, who: Principal, interaction: str, res_type: str) -> bool:
        if not decide_interaction(who, interaction, res_type).permitted:
            return False
        return who.is_system or role_permits(self.policy, who, _INTERACTION_NAMES[interaction], res_type)

    def requester(self, who: Principal, orgs: frozenset[str], *, break_glass: bool) -> Requester:
        return Requester(user_id=who.user_id, role=who.role, orgs=orgs,
                         purpose=BREAK_GLASS if break_glass else (who.purpose_of_use or TREATMENT),
                         break_glass=break_glass, patient=who.own_patient)

    async def _withheld_by_consent(
        self, conn: AsyncConnection, who: Principal, interaction: str, rows: Sequence[StoredRow], now: datetime,
        *, every_row: bool = False,
    ) -> set[int]:
        """The pks among `rows` that `consent.decide` withholds or denies.

        Only rows of patients holding a Consent need it (SQL decided the rest), unless `every_row`.
        """
        if not rows:
            return set()
        patients = await patients_of(conn, sorted({row.pk for row in rows}))
        judged = [(row, patients[row.pk][0]) for row in rows if patients.get(row.pk, (None, False))[0]
                  and (every_row or patients[row.pk][1])]
        if not judged:
            return set()
        return await self._judge(conn, who, await self.viewer(conn, who), interaction, judged, now)

    async def _judge(self, conn: AsyncConnection, who: Principal, viewer: Viewer, interaction: str,
                     rows: Sequence[tuple[StoredRow, str]], now: datetime) -> set[int]:
        """The pks of `rows` (each with its patient) that `consent.decide` does not permit."""
        contexts = await load_contexts(conn, {patient for _, patient in rows}, user_id=who.user_id,
                                       orgs=viewer.orgs, now=naive_utc(now))
        return {row.pk for row, patient in rows
                if self._decide(who, viewer.orgs, interaction, row, patient, contexts[patient], now).effect
                != "permit"}

    def _decide(self, who: Principal, orgs: frozenset[str], interaction: str, row: StoredRow,
                patient_id: str | None, context: PatientContext, now: datetime) -> ConsentDecision:
        content = getattr(row, "content", None)
        document = orjson.loads(content) if content else {"resourceType": row.res_type, "id": row.res_id}
        facts = ResourceFacts.from_document(document, patient_id=patient_id)
        request = AccessRequest(self.requester(who, orgs, break_glass=context.break_glass),
                                _INTERACTION_NAMES[interaction])
        return decide(request, facts, context.consents, context.relationships, now, self.policy)

    async def _pinned_search(
        self, conn: AsyncConnection, who: Principal, viewer: Viewer, request: SearchRequest, pinned: str,
        now: datetime, restriction: ColumnElement[bool], params: dict[str, Any],
    ) -> tuple[SearchPage, bool, bool]:
        """A search about one patient: the page, whether Consents may withhold rows, whether labelled data
        of the type is hidden. The patient's context and the page are one statement (one snapshot); with no
        relationship and no break-glass (or an objection) the search is refused and the page discarded."""
        plan = plan_page(request, restriction=restriction, restriction_values=params)
        context_query = contexts_query([pinned], user_id=who.user_id, orgs=viewer.orgs, now=naive_utc(now),
                                       hidden_for=(self.sql, who.org or "", request.resource_type))
        statements = [context_query] if plan.statement is None else [context_query, (plan.statement, plan.values)]
        context_rows, *page_rows = await execute_together(conn, statements)
        context = contexts_from_rows([pinned], context_rows)[pinned]
        self._check_patient(who, viewer, request.resource_type, pinned, context, now)
        consents_possible = bool(context.consents)
        # The patient's record holds labelled data of this type the viewer may not see.
        label_hidden = (not consents_possible and pinned != who.own_patient
                        and request.resource_type in context.hidden_types)
        if consents_possible:
            # Python may withhold rows SQL counted: a total would reveal how many.
            plan = replace(plan, req=replace(plan.req, total="none"))
        page = await (count_only(conn, plan) if plan.statement is None else finish_page(conn, plan, page_rows[0]))
        return page, consents_possible, label_hidden

    def _check_patient(self, who: Principal, viewer: Viewer, res_type: str, patient_id: str,
                       context: PatientContext, now: datetime) -> None:
        """Refuse a request about one patient when there is no relationship and no break-glass."""
        request = AccessRequest(self.requester(who, viewer.orgs, break_glass=context.break_glass),
                                _INTERACTION_NAMES[READ])
        decision = decide_patient(request, res_type, patient_id, context.consents, context.relationships, now,
                                  self.policy)
        if decision.effect == "deny":
            raise replace(_deny(decision), patient_id=patient_id)

    async def _refusal(self, conn: AsyncConnection, who: Principal, stored: Stored, verb: str) -> FhirError:
        """Why `stored` may not be read (or written) by `who`: the rule that decided, as 403 or 404.

        Outside the token's scopes a resource does not exist for a reader (404). A missing
        relationship is a 403 naming break-glass; withheld data answers as the policy says.
        """
        writing = verb == "written"
        scope = scope_clause(who, READ, stored.res_type)
        if scope is not None and (await conn.execute(
                select(resources.c.pk).where(resources.c.pk == stored.pk, scope))).first() is None:
            if writing:
                return outcomes.forbidden("outside-scope",
                                          f"The token's scopes do not allow this {stored.res_type} to be written")
            return outcomes.not_found(stored.res_type, stored.res_id)
        now = self.clock()
        patient_id = (await patients_of(conn, [stored.pk])).get(stored.pk, (None, False))[0]
        viewer = await self.viewer(conn, who)
        context = PatientContext()
        if patient_id:
            context = (await load_contexts(conn, [patient_id], user_id=who.user_id, orgs=viewer.orgs,
                                           now=naive_utc(now)))[patient_id]
        decision = self._decide(who, viewer.orgs, CREATE if writing else READ, stored, patient_id, context, now)
        if decision.effect == "deny" or (writing and decision.effect == "withhold"):
            return replace(_deny(decision), patient_id=patient_id)
        if decision.effect == "withhold" and self.policy.withheld_read_status == 403:
            return replace(outcomes.forbidden("withheld", "This resource is withheld by the patient's sharing "
                                                          "preferences or its sensitivity"), patient_id=patient_id)
        return replace(outcomes.not_found(stored.res_type, stored.res_id), patient_id=patient_id)

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
            raise await self._refusal(conn, who, stored, "read")


def role_grant(policy: Policy, who: Principal) -> RoleGrant | None:
    """The policy's role table entry for `who` (the patient profile for a patient using their record)."""
    return policy.patient_grant if who.own_patient else policy.roles.get(who.role)


def role_permits(policy: Policy, who: Principal, interaction: str, res_type: str) -> bool:
    """The role table (consent/policy.json): may `who`'s role do `interaction` on `res_type` at all?
    Directory data (Organization, Practitioner, …) is readable by every role."""
    if interaction in {"read", "search"} and res_type in policy.directory_types:
        return True
    grant = role_grant(policy, who)
    return grant is not None and grant.allows(interaction, res_type, policy.governance_types)  # type: ignore[arg-type]


def pinned_patient(request: SearchRequest) -> str | None:
    """The one patient a search is about, when its parameters name exactly one."""
    for name, value in request.items:
        base = name.split(":", 1)[0]
        if "," in value:
            continue
        if request.resource_type == "Patient" and base == "_id":
            return value
        if base in {"patient", "subject"} and (base == "patient" or value.startswith("Patient/")):
            return value.removeprefix("Patient/") or None
    return None


def _deny(decision: ConsentDecision) -> FhirError:
    hint = ""
    if decision.rule in {"no-relationship", "objection"}:
        hint = " (in an emergency, repeat the request with an X-Break-Glass-Reason header)"
    return outcomes.forbidden(decision.rule, decision.reason + hint)


def _patient_of(row: Stored) -> str | None:
    known = getattr(row, "patient_id", None)
    if known or not row.content:
        return known
    return patient_of(orjson.loads(row.content))


def _error_code(error: FhirError) -> str:
    issue = error.issues[0] if error.issues else None
    return (issue.details_code or issue.code) if issue else "error"


def _all_types() -> list[str]:
    from engine.search.registry import SUPPORTED_TYPES

    return sorted(SUPPORTED_TYPES)
