"""What the access gate reads from (and writes to) the store to decide: I/O only, no policy.

The rules live in `consent/` (pure). This module fetches their inputs — the requester's
organisation keys, each patient's care relationships, Consents and break-glass grants — and
turns the rules that can be decided without reading a Consent into SQL, so that searches filter
in the database and `Bundle.total` never counts what the requester may not see:

- the patient has a live care relationship with the requester's organisation, or a break-glass
  grant for this user, or is the requester themself;
- a resource carrying a restricting security label is visible only to its owning organisation.

Resources of patients who hold a Consent are passed by SQL on the label rule and decided in
Python by `consent.decide` (objection and provisions), row by row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    false,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Select

from consent.model import ConsentError, PatientConsent, Relationship, parse_consent
from consent.policy import Policy
from consent.vocabulary import (
    CONSENT_SCOPE_SYSTEM,
    ODS_SITE_SYSTEM,
    ODS_SYSTEM,
    OWNER_TAG_SYSTEM,
    PATIENT_PRIVACY,
)
from engine.db import repository
from engine.db.access_schema import break_glass_grants
from engine.db.schema import care_relationships, idx_token, resources
from engine.search.normalise import naive_utc
from engine.search.query import Visibility

log = logging.getLogger("sharedcare.access")
ORG_KEY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class PatientContext:
    """One patient's inputs to `consent.decide` for one requester."""

    consents: tuple[PatientConsent, ...] = ()
    relationships: tuple[Relationship, ...] = ()
    break_glass: bool = False
    # The asked-about resource type, when this patient's record holds resources of it that carry a
    # restricting label the viewer's organisation does not own (`contexts_query(hidden_for=…)`).
    hidden_types: frozenset[str] = frozenset()


class OrganisationKeys:
    """ODS code → the keys care relationships may name it by: the code and "Organization/<id>".

    Organisation resources change rarely; a minute's cache saves a query on every request.
    """

    def __init__(self, ttl_seconds: float = ORG_KEY_SECONDS) -> None:
        self.ttl = ttl_seconds
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def keys(self, conn: AsyncConnection, ods_code: str | None) -> frozenset[str]:
        if not ods_code:
            return frozenset()
        cached = self._cache.get(ods_code)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        ids = (await conn.execute(_ORGANISATION_IDS, {"code": ods_code})).scalars()
        keys = frozenset({ods_code, *(f"Organization/{res_id}" for res_id in ids)})
        self._cache[ods_code] = (time.monotonic(), keys)
        return keys


_ORGANISATION_IDS = (
    select(resources.c.res_id)
    .join(idx_token, idx_token.c.res_pk == resources.c.pk)
    .where(idx_token.c.res_type == "Organization", idx_token.c.param == "identifier",
           idx_token.c.system.in_([ODS_SYSTEM, ODS_SITE_SYSTEM]), idx_token.c.code == bindparam("code"),
           resources.c.deleted.is_(False))
)


# -- SQL: the rules decidable without reading a Consent ----------------------------------------------
#
# Built once per policy and shape, with bound parameters for who is looking and when (`PolicySql.params`):
# building and compiling a SQLAlchemy clause costs more than PostgreSQL takes to evaluate it.


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, as the SQL rules need it."""

    user_id: str
    ods_code: str | None
    orgs: frozenset[str]
    own_patient: str | None  # the requester IS this patient (a patient-facing token)
    needs_relationship: bool = True  # False for roles the policy exempts (information governance)


# The rules are correlated EXISTS probes on the row's patient (indexes: resources (patient_id, res_type),
# care_relationships (org, patient_id), break_glass_grants (user_id, patient_id, expires)). An
# `IN (SELECT …)` would be planned as a hashed subplan that reads every relationship of the viewer's
# organisation — thousands of rows for a GP practice — even to read one resource.


def holds_consent(patient: ColumnElement[Any]) -> ColumnElement[bool]:
    """`patient` holds a Consent: their data is decided row by row in Python."""
    consent = resources.alias("consent")
    return exists().where(consent.c.patient_id == patient, consent.c.res_type == "Consent",
                          consent.c.deleted.is_(False))


class PolicySql:
    """The policy's SQL rules over `resources`, as prebuilt clauses and the parameters they take."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.kinds = sorted(policy.relationship_windows)
        patient = resources.c.patient_id
        self.holds_consent = holds_consent(patient)
        self.own = patient == bindparam("acc_own")
        self.restricted = self._restricted_label()
        self.owned = exists().where(idx_token.c.res_pk == resources.c.pk, idx_token.c.param == "_tag",
                                    idx_token.c.system == OWNER_TAG_SYSTEM, idx_token.c.code == bindparam("acc_ods"))
        self.reachable = or_(self._granted(patient), self._related(patient))
        # For a search about one patient (:acc_pinned): the same rule, with that patient's relationship
        # and grant checked once for the statement (an uncorrelated InitPlan) instead of once per row.
        pinned = bindparam("acc_pinned")
        self.reachable_pinned = or_(and_(patient == pinned, or_(self._granted(pinned), self._related(pinned))),
                                    self.reachable)
        self._visible = {True: self._visible_clause(self.reachable), False: self._visible_clause(literal(True))}
        self._visible_pinned = self._visible_clause(self.reachable_pinned)
        self._label_hidden = {needs: self._label_hidden_clause(needs) for needs in (True, False)}
        self._read = {needs: select(*repository.READ_COLUMNS, resources.c.patient_id,
                                    self._visible[needs].label("visible"),
                                    self.holds_consent.label("holds_consent"))
                      .where(resources.c.res_type == bindparam("res_type"), resources.c.res_id == bindparam("res_id"))
                      for needs in (True, False)}
        no_time = cast(null(), DateTime)
        hidden = (select(literal("hidden"), resources.c.patient_id, resources.c.res_type, cast(null(), Text),
                         no_time, no_time, cast(null(), Text))
                  .where(resources.c.patient_id.in_(bindparam("ctx_patients", expanding=True)),
                         resources.c.res_type == bindparam("ctx_type"),
                         resources.c.deleted.is_(False), self.restricted, ~self.owned).distinct())
        self.contexts_with_hidden = union_all(*_CONTEXTS.selects, hidden)
        self._permitted = {needs: select(resources.c.pk, resources.c.patient_id, self.holds_consent)
                           .where(resources.c.pk.in_(bindparam("acc_pks", expanding=True)), self._visible[needs])
                           for needs in (True, False)}
        self._chain_targets = {needs: self.chain_clause(needs) for needs in (True, False)}

    def params(self, viewer: Viewer, now: datetime) -> dict[str, Any]:
        """The bound values for `viewer` at `now` (naive UTC)."""
        values: dict[str, Any] = {"acc_user": viewer.user_id, "acc_ods": viewer.ods_code or "",
                                  "acc_orgs": sorted(viewer.orgs), "acc_own": viewer.own_patient or "",
                                  "acc_now": now}
        values.update((f"acc_since_{i}", now - self.policy.relationship_windows[kind])
                      for i, kind in enumerate(self.kinds))
        return values

    def visible(self, viewer: Viewer) -> ColumnElement[bool]:
        """Resources the viewer may see as far as SQL can tell (Consents aside)."""
        return self._visible[viewer.needs_relationship]

    def visible_pinned(self, viewer: Viewer) -> ColumnElement[bool]:
        """`visible`, cheaper when most rows belong to the patient bound as :acc_pinned."""
        return self._visible_pinned if viewer.needs_relationship else self._visible[False]

    def label_hidden(self, viewer: Viewer) -> ColumnElement[bool]:
        """Rows SQL hides only because of a restricting label: what a search Bundle's marker reports."""
        return self._label_hidden[viewer.needs_relationship]

    def read(self, viewer: Viewer) -> Select:
        """The current version of :res_type/:res_id (repository's columns), its patient, whether the SQL
        rules let the viewer see it, and whether its patient holds a Consent."""
        return self._read[viewer.needs_relationship]

    def permitted(self, viewer: Viewer) -> Select:
        """(pk, patient id, holds a Consent) of the rows among :acc_pks the viewer may see."""
        return self._permitted[viewer.needs_relationship]

    def chain_targets(self, viewer: Viewer) -> Visibility:
        """What a chained search parameter may match for the viewer (engine.search.query.Visibility)."""
        return self._chain_targets[viewer.needs_relationship]

    def chain_clause(self, needs_relationship: bool, scope: ColumnElement[bool] | None = None) -> Visibility:
        """Rows SQL lets the viewer see, but none of a patient who holds a Consent: only Python can judge
        those, row by row, and a chain's test happens inside the statement (fail closed)."""
        clause = and_(self._visible[needs_relationship], ~self.holds_consent)
        return Visibility(clause if scope is None else and_(scope, clause))

    def _restricted_label(self) -> ColumnElement[bool]:
        pairs = [and_(idx_token.c.system == system, idx_token.c.code == code)
                 for system, code in sorted(self.policy.restricting_labels)]
        if not pairs:
            return false()
        # `labelled` first: rows without any security label (nearly all) skip the index lookup.
        return and_(resources.c.labelled, exists().where(idx_token.c.res_pk == resources.c.pk,
                                                         idx_token.c.param == "_security", or_(*pairs)))

    def _related(self, patient: ColumnElement[Any]) -> ColumnElement[bool]:
        """`patient` has a live care relationship with one of :acc_orgs at :acc_now."""
        rel = care_relationships.c
        windows = [and_(rel.param == kind, or_(rel.high.is_(None), rel.high >= bindparam(f"acc_since_{i}")))
                   for i, kind in enumerate(self.kinds)]
        return exists().where(rel.patient_id == patient, rel.org.in_(bindparam("acc_orgs", expanding=True)),
                              or_(rel.low.is_(None), rel.low <= bindparam("acc_now")), or_(*windows))

    @staticmethod
    def _granted(patient: ColumnElement[Any]) -> ColumnElement[bool]:
        """:acc_user holds a live break-glass grant on `patient`."""
        grants = break_glass_grants.c
        return exists().where(grants.user_id == bindparam("acc_user"), grants.patient_id == patient,
                              grants.expires > bindparam("acc_now"))

    def _visible_clause(self, reachable: ColumnElement[bool]) -> ColumnElement[bool]:
        """Rows outside any patient's record, the viewer's own, and the reachable ones whose labels allow."""
        label_ok = or_(~self.restricted, self.owned, self.holds_consent)
        return or_(resources.c.patient_id.is_(None), self.own, and_(reachable, label_ok))

    def _label_hidden_clause(self, needs_relationship: bool) -> ColumnElement[bool]:
        patient = resources.c.patient_id
        reachable = self.reachable if needs_relationship else literal(True)
        return and_(patient.is_not(None), ~self.own, reachable, self.restricted, ~self.owned, ~self.holds_consent)


# -- per-patient inputs to consent.decide -------------------------------------------------------


_PATIENTS_OF = select(resources.c.pk, resources.c.patient_id, holds_consent(resources.c.patient_id)
                      ).where(resources.c.pk.in_(bindparam("pks", expanding=True)))


async def patients_of(conn: AsyncConnection, pks: Sequence[int]) -> dict[int, tuple[str | None, bool]]:
    """pk → (patient id, whether that patient holds a Consent) for stored resources."""
    if not pks:
        return {}
    rows = await conn.execute(_PATIENTS_OF, {"pks": list(pks)})
    return {pk: (patient, bool(flag) and patient is not None) for pk, patient, flag in rows}


def _contexts_statement() -> Any:
    """Relationships, Consents and live break-glass grants of :ctx_patients, one row each (built once)."""
    rel, grants = care_relationships.c, break_glass_grants.c
    patients = bindparam("ctx_patients", expanding=True)
    text_null = null()
    return union_all(
        select(literal("rel").label("src"), rel.patient_id, rel.param.label("kind"), rel.org, rel.low, rel.high,
               text_null.label("content"))
        .where(rel.patient_id.in_(patients), rel.org.in_(bindparam("ctx_orgs", expanding=True))),
        select(literal("consent"), resources.c.patient_id, text_null, text_null, text_null, text_null,
               cast(resources.c.content, Text))
        .where(resources.c.res_type == "Consent", resources.c.deleted.is_(False), resources.c.patient_id.in_(patients)),
        select(literal("grant"), grants.patient_id, text_null, text_null, text_null, grants.expires, text_null)
        .where(grants.user_id == bindparam("ctx_user"), grants.patient_id.in_(patients),
               grants.expires > bindparam("ctx_now")),
    )


_CONTEXTS = _contexts_statement()


async def load_contexts(
    conn: AsyncConnection, patient_ids: Iterable[str], *, user_id: str, orgs: frozenset[str], now: datetime,
) -> dict[str, PatientContext]:
    """Consents, live relationships and break-glass state of each patient, in one round trip.

    Relationships are returned whatever their period: `consent.decide` applies the policy's windows.
    """
    query = contexts_query(patient_ids, user_id=user_id, orgs=orgs, now=now)
    if query is None:
        return {}
    return contexts_from_rows(patient_ids, await conn.execute(*query))


def contexts_query(
    patient_ids: Iterable[str], *, user_id: str, orgs: frozenset[str], now: datetime,
    hidden_for: tuple[PolicySql, str, str] | None = None,
) -> tuple[Any, dict[str, Any]] | None:
    """The statement and values `load_contexts` runs (None when there are no patients), for a caller
    that sends it together with other statements; `contexts_from_rows` reads its rows.

    With `hidden_for` (the policy's SQL, the viewer's ODS code and a resource type) also whether each
    record holds resources of that type carrying a restricting label that organisation does not own
    (`hidden_types`).
    """
    wanted = sorted(set(patient_ids))
    if not wanted:
        return None
    values = {"ctx_patients": wanted, "ctx_orgs": sorted(orgs) or [""], "ctx_user": user_id, "ctx_now": now}
    statement = _CONTEXTS
    if hidden_for is not None:
        statement = hidden_for[0].contexts_with_hidden
        values["acc_ods"] = hidden_for[1] or ""
        values["ctx_type"] = hidden_for[2]
    return statement, values


def contexts_from_rows(patient_ids: Iterable[str], rows: Iterable[Sequence[Any]]) -> dict[str, PatientContext]:
    wanted = sorted(set(patient_ids))
    consents: dict[str, list[PatientConsent]] = {p: [] for p in wanted}
    relationships: dict[str, list[Relationship]] = {p: [] for p in wanted}
    hidden: dict[str, set[str]] = {p: set() for p in wanted}
    glass: set[str] = set()
    for src, patient, kind, org, low, high, content in rows:
        if src == "hidden":
            hidden[patient].add(kind)
        elif src == "rel":
            relationships[patient].append(Relationship(patient, org, kind, _aware(low), _aware(high)))
        elif src == "consent":
            parsed = _consent(content, patient)
            if parsed is not None:
                consents[patient].append(parsed)
        else:
            glass.add(patient)
    return {p: PatientContext(tuple(consents[p]), tuple(relationships[p]), p in glass, frozenset(hidden[p]))
            for p in wanted}


def _consent(content: str | dict, patient_id: str) -> PatientConsent | None:
    """A stored Consent as `consent.decide` reads it.

    One that claims to be a privacy consent but cannot be applied as written fails closed: it is read
    as an objection (nothing shared outside the organisation holding the data) and logged, so that a
    patient's restriction is never dropped for a mistake in how it was recorded.
    """
    document = orjson.loads(content) if isinstance(content, str) else content
    try:
        return parse_consent(document)
    except ConsentError as exc:
        log.warning("consent not applicable as written; read as an objection",
                    extra={"fields": {"consent": document.get("id"), "error": str(exc)}})
        return parse_consent({**_OBJECTION, "id": document.get("id") or "unreadable",
                              "patient": {"reference": f"Patient/{patient_id}"}})


# The shape of an objection (consent.decide): an active patient-privacy Consent denying everything.
_OBJECTION: dict[str, Any] = {
    "resourceType": "Consent", "status": "active",
    "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": PATIENT_PRIVACY}]},
    "provision": {"type": "deny"},
}


def _aware(moment: datetime | None) -> datetime | None:
    from datetime import UTC

    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


async def grant_break_glass(
    conn: AsyncConnection, *, user_id: str, patient_id: str, org: str | None, role: str, reason: str,
    now: datetime, time_box: timedelta,
) -> datetime:
    """Record a break-glass grant (in the caller's write transaction); returns when it expires."""
    expires = now + time_box
    await conn.execute(insert(break_glass_grants).values(
        user_id=user_id, patient_id=patient_id, org=org, role=role, reason=reason,
        started=naive_utc(now), expires=naive_utc(expires)))
    return expires


