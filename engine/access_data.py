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

import orjson
from sqlalchemy import ColumnElement, and_, bindparam, exists, false, insert, literal, null, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Select

from consent.model import ConsentError, PatientConsent, Relationship, parse_consent
from consent.policy import Policy
from consent.vocabulary import ODS_SITE_SYSTEM, ODS_SYSTEM, OWNER_TAG_SYSTEM
from engine.db.access_schema import break_glass_grants
from engine.db.schema import care_relationships, idx_token, resources

log = logging.getLogger("sharedcare.access")
ORG_KEY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class PatientContext:
    """One patient's inputs to `consent.decide` for one requester."""

    consents: tuple[PatientConsent, ...] = ()
    relationships: tuple[Relationship, ...] = ()
    break_glass: bool = False


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


def live_relationship(orgs: Iterable[str], now: datetime, policy: Policy) -> ColumnElement[bool]:
    """Rows of care_relationships that give one of `orgs` a relationship at `now` (the policy's windows)."""
    rel = care_relationships.c
    windows = [and_(rel.param == kind, or_(rel.high.is_(None), rel.high >= now - window))
               for kind, window in sorted(policy.relationship_windows.items())]
    return and_(rel.org.in_(sorted(orgs)), or_(rel.low.is_(None), rel.low <= now), or_(*windows))


def related_patients(orgs: Iterable[str], now: datetime, policy: Policy) -> Select:
    return select(care_relationships.c.patient_id).where(live_relationship(orgs, now, policy))


def granted_patients(user_id: str, now: datetime) -> Select:
    grants = break_glass_grants.c
    return select(grants.patient_id).where(grants.user_id == user_id, grants.expires > now)


def consenting_patients() -> Select:
    """Patients holding any Consent: their data is decided row by row in Python."""
    consent = resources.alias("consent")
    return select(consent.c.patient_id).where(consent.c.res_type == "Consent", consent.c.deleted.is_(False),
                                              consent.c.patient_id.is_not(None))


def restricted_label(policy: Policy) -> ColumnElement[bool]:
    """The resource carries a security label that restricts it to its owning organisation."""
    pairs = [and_(idx_token.c.system == system, idx_token.c.code == code)
             for system, code in sorted(policy.restricting_labels)]
    if not pairs:
        return false()
    return exists().where(idx_token.c.res_pk == resources.c.pk, idx_token.c.param == "_security", or_(*pairs))


def owned_by(ods_code: str | None) -> ColumnElement[bool]:
    if not ods_code:
        return false()
    return exists().where(idx_token.c.res_pk == resources.c.pk, idx_token.c.param == "_tag",
                          idx_token.c.system == OWNER_TAG_SYSTEM, idx_token.c.code == ods_code)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, as the SQL rules need it."""

    user_id: str
    ods_code: str | None
    orgs: frozenset[str]
    own_patient: str | None  # the requester IS this patient (a patient-facing token)
    needs_relationship: bool = True  # False for roles the policy exempts (information governance)


def patient_reachable(viewer: Viewer, now: datetime, policy: Policy) -> ColumnElement[bool]:
    """The row's patient has a live relationship with the viewer's organisation or a break-glass grant."""
    patient = resources.c.patient_id
    if not viewer.needs_relationship:
        return literal(True)
    reachable = [patient.in_(granted_patients(viewer.user_id, now))]
    if viewer.orgs:
        reachable.append(patient.in_(related_patients(viewer.orgs, now, policy)))
    return or_(*reachable)


def visible(viewer: Viewer, now: datetime, policy: Policy) -> ColumnElement[bool]:
    """Resources the viewer may see as far as SQL can tell (Consents aside)."""
    patient = resources.c.patient_id
    own = patient == viewer.own_patient if viewer.own_patient else false()
    label_ok = or_(~restricted_label(policy), owned_by(viewer.ods_code), patient.in_(consenting_patients()))
    return or_(patient.is_(None), own, and_(patient_reachable(viewer, now, policy), label_ok))


def withheld_by_label(viewer: Viewer, now: datetime, policy: Policy) -> ColumnElement[bool]:
    """Rows SQL hides only because of a restricting label: what a search Bundle's marker reports."""
    patient = resources.c.patient_id
    not_own = patient != viewer.own_patient if viewer.own_patient else literal(True)
    return and_(patient.is_not(None), not_own, patient_reachable(viewer, now, policy),
                restricted_label(policy), ~owned_by(viewer.ods_code), ~patient.in_(consenting_patients()))


# -- per-patient inputs to consent.decide -------------------------------------------------------


async def patients_of(conn: AsyncConnection, pks: Sequence[int]) -> dict[int, tuple[str | None, bool]]:
    """pk → (patient id, whether that patient holds a Consent) for stored resources."""
    if not pks:
        return {}
    holds_consent = resources.c.patient_id.in_(consenting_patients())
    rows = await conn.execute(select(resources.c.pk, resources.c.patient_id, holds_consent)
                              .where(resources.c.pk.in_(list(pks))))
    return {pk: (patient, bool(flag) and patient is not None) for pk, patient, flag in rows}


async def load_contexts(
    conn: AsyncConnection, patient_ids: Iterable[str], *, user_id: str, orgs: frozenset[str], now: datetime,
    policy: Policy,
) -> dict[str, PatientContext]:
    """Consents, live relationships and break-glass state of each patient, in one round trip."""
    wanted = sorted(set(patient_ids))
    if not wanted:
        return {}
    rel = care_relationships.c
    grants = break_glass_grants.c
    text_null = null()
    parts = [
        select(literal("rel").label("src"), rel.patient_id, rel.param.label("kind"), rel.org, rel.low, rel.high,
               text_null.label("content"))
        .where(rel.patient_id.in_(wanted), rel.org.in_(sorted(orgs) or [""])),
        select(literal("consent"), resources.c.patient_id, text_null, text_null, text_null, text_null,
               _content_text())
        .where(resources.c.res_type == "Consent", resources.c.deleted.is_(False), resources.c.patient_id.in_(wanted)),
        select(literal("grant"), grants.patient_id, text_null, text_null, text_null, grants.expires, text_null)
        .where(grants.user_id == user_id, grants.patient_id.in_(wanted), grants.expires > now),
    ]
    from sqlalchemy import union_all

    consents: dict[str, list[PatientConsent]] = {p: [] for p in wanted}
    relationships: dict[str, list[Relationship]] = {p: [] for p in wanted}
    glass: set[str] = set()
    for src, patient, kind, org, low, high, content in await conn.execute(union_all(*parts)):
        if src == "rel":
            relationships[patient].append(Relationship(patient, org, kind, _aware(low), _aware(high)))
        elif src == "consent":
            parsed = _consent(content)
            if parsed is not None:
                consents[patient].append(parsed)
        else:
            glass.add(patient)
    return {p: PatientContext(tuple(consents[p]), tuple(relationships[p]), p in glass) for p in wanted}


def _consent(content: str | dict) -> PatientConsent | None:
    """A stored Consent as `consent.decide` reads it; one it cannot apply is logged and left out."""
    document = orjson.loads(content) if isinstance(content, str) else content
    try:
        return parse_consent(document)
    except ConsentError as exc:
        log.warning("consent not applied", extra={"fields": {"consent": document.get("id"), "error": str(exc)}})
        return None


def _content_text() -> ColumnElement[str]:
    from sqlalchemy import Text, cast

    return cast(resources.c.content, Text)


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
        started=_naive(now), expires=_naive(expires)))
    return expires


def _naive(moment: datetime) -> datetime:
    from datetime import UTC

    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
