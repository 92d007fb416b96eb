"""Applying a MappingResult to the store, inside the caller's write transaction.

`prepare` does every read a message needs — identity (engine/ingest/identity.py), the stored
versions of its resources with the event each reflects, and for an A40/A34 merge the old
patient's record — and plans the writes without writing:

- a resource whose stored event (`resource_sources.event_time`) is newer than this message's is
  left alone (a late message never overwrites newer data; the message is still accepted and the
  stale resource is named in the message's warnings); a stale Patient still contributes the
  identifiers it carries;
- a resource whose content would not change gets no new version;
- a merge re-points every resource in the old patient's compartment to the survivor, marks the
  old Patient `active: false` with `link.type = replaced-by`, and gives the survivor the old
  identifiers and a `replaces` link (UK-REFERENCE §3 test 1).

`provenance` builds the Provenance recording what one message did
(https://hl7.org/fhir/R4/provenance.html); `engine.ingest.store.write_changes` then writes the
plan. Our own mapping output is trusted, not re-validated (DESIGN.md principle 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, bindparam, cast, null, or_, select, text, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.vocabulary import owner_tag
from engine.auth import system_principal
from engine.db.direct import fetch_all_on_driver, json_parameter
from engine.db.ingest_schema import resource_sources
from engine.db.repository import format_instant
from engine.db.schema import idx_reference, idx_token, resources
from engine.ingest import identity
from engine.nhs_number import NHS_NUMBER_SYSTEM
from engine.search.extract import patient_compartment
from engine.search.registry import SUPPORTED_TYPES
from mappings.ids import resource_id
from mappings.result import (
    APPLICATION_INTERNAL_ERROR,
    UNKNOWN_KEY_IDENTIFIER,
    ErrorLocation,
    MappingError,
    MappingResult,
    Merge,
    PatientKey,
    Supersede,
)

INGEST = system_principal("sharedcare-ingest", "sharedcare HL7 v2 ingest")
"""The system principal ingest writes as."""

MESSAGE_ID_SYSTEM = "https://fhir.sharedcare.dev/Id/hl7-message"
SYSTEM_PRINCIPAL_SYSTEM = "https://fhir.sharedcare.dev/Id/system-principal"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ODS_ORGANIZATION = "https://fhir.nhs.uk/Id/ods-organization-code"
# Records of what happened stay with the record they describe when a patient is merged.
_NOT_MOVED_BY_MERGE = frozenset({"Patient", "Provenance", "AuditEvent"})
_SERVER_META = ("versionId", "lastUpdated")


@dataclass(slots=True)
class Current:
    """A stored resource as the plan needs it: its row, content and the event it reflects."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None
    event_time: datetime | None


@dataclass(slots=True)
class Change:
    """One resource to write: `document` without server meta; `current` None for a create."""

    document: dict[str, Any]
    current: Current | None
    track_source: bool = True  # record this message's event time as the resource's

    @property
    def key(self) -> tuple[str, str]:
        return self.document["resourceType"], self.document["id"]

    @property
    def version_id(self) -> int:
        return 1 if self.current is None else self.current.version_id + 1

    @property
    def versioned_reference(self) -> str:
        res_type, res_id = self.key
        return f"{res_type}/{res_id}/_history/{self.version_id}"


@dataclass
class Plan:
    """What applying one message will write, and what it leaves alone."""

    changes: list[Change] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Stored, unchanged compartment resources whose recorded event this message's newer one replaces.
    refreshed_sources: list[int] = field(default_factory=list)
    patient_id: str | None = None
    merged: list[tuple[str, str]] = field(default_factory=list)  # (old id, survivor id)
    warnings: list[str] = field(default_factory=list)
    currents: dict[tuple[str, str], Current] = field(default_factory=dict)


# -- reads ----------------------------------------------------------------------------------------------

_CURRENT_COLUMNS = (
    resources.c.pk, resources.c.res_type, resources.c.res_id, resources.c.version_id,
    resources.c.last_updated, resources.c.deleted, cast(resources.c.content, Text).label("content"),
    resource_sources.c.event_time,
)
_CURRENT_FROM = resources.outerjoin(resource_sources, resource_sources.c.res_pk == resources.c.pk)


def _current(row: Any) -> Current:
    return Current(row.pk, row.res_type, row.res_id, row.version_id, row.last_updated, row.deleted,
                   orjson.loads(row.content) if row.content else None, row.event_time)


_READ_CURRENT = (
    select(*_CURRENT_COLUMNS).select_from(_CURRENT_FROM)
    .where(tuple_(resources.c.res_type, resources.c.res_id).in_(bindparam("keys", expanding=True)))
)


async def read_current(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Current]:
    """The stored rows of `keys` ((type, id) pairs) with their recorded event times, in one query."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if conn.dialect.name == "postgresql":
        rows = await fetch_all_on_driver(conn, _PG_READ_CURRENT, _pg_keys(wanted))
    else:
        rows = (await conn.execute(_READ_CURRENT, {"keys": wanted})).all()
    return {(row.res_type, row.res_id): _current(row) for row in rows}


# PostgreSQL: the keys and identifiers as JSON arrays of pairs, so that the statement's text is the same for
# every message and psycopg prepares it once per connection (an expanding IN list is a new statement for every
# length), and so that sending them costs next to nothing (engine.db.direct.json_parameter).
_PG_CURRENT = ("SELECT r.pk, r.res_type, r.res_id, r.version_id, r.last_updated, r.deleted,"
               " CAST(r.content AS TEXT) AS content, s.event_time")
_PG_BY_KEYS = (" FROM jsonb_array_elements(CAST(:keys AS jsonb)) AS k(pair)"
               " JOIN resources AS r ON r.res_type = k.pair ->> 0 AND r.res_id = k.pair ->> 1"
               " LEFT JOIN resource_sources AS s ON s.res_pk = r.pk")
_PG_READ_CURRENT = text(_PG_CURRENT + _PG_BY_KEYS)
_PG_READ_STATE = text(
    _PG_CURRENT + ", CAST(NULL AS text) AS system, CAST(NULL AS text) AS code" + _PG_BY_KEYS
    # One index probe per identifier, on (res_type, param, code, system). With `code = ANY(…)` or a plain join
    # the planner may instead read every Patient identifier and filter (seen while a table's statistics are
    # young), at a cost that grows with the number of patients: LATERAL with OFFSET 0 keeps the probe apart.
    + " UNION ALL " + _PG_CURRENT + ", t.system, t.code"
    " FROM jsonb_array_elements(CAST(:identifiers AS jsonb)) AS c(pair)"
    " CROSS JOIN LATERAL (SELECT i.res_pk, i.system, i.code FROM idx_token AS i WHERE i.res_type = 'Patient'"
    " AND i.param = 'identifier' AND i.code = c.pair ->> 1 AND i.system = c.pair ->> 0 OFFSET 0) AS t"
    " JOIN resources AS r ON r.pk = t.res_pk LEFT JOIN resource_sources AS s ON s.res_pk = r.pk WHERE NOT r.deleted"
)


def _pg_keys(keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The (type, id) pairs as one JSON array of pairs (engine.db.direct.json_parameter)."""
    return {"keys": json_parameter(keys)}


_IDENTITY_CANDIDATES = (
    select(*_CURRENT_COLUMNS, idx_token.c.system, idx_token.c.code)
    .select_from(_CURRENT_FROM.join(idx_token, idx_token.c.res_pk == resources.c.pk))
    .where(idx_token.c.res_type == "Patient", idx_token.c.param == "identifier", resources.c.deleted.is_(False),
           idx_token.c.code.in_(bindparam("codes", expanding=True)))
)
_READ_STATE = union_all(
    select(*_CURRENT_COLUMNS, null().label("system"), null().label("code")).select_from(_CURRENT_FROM)
    .where(tuple_(resources.c.res_type, resources.c.res_id).in_(bindparam("keys", expanding=True))),
    _IDENTITY_CANDIDATES,
)


async def read_state(conn: AsyncConnection, keys: Iterable[tuple[str, str]],
                     identifiers: Sequence[tuple[str, str]]) -> tuple[dict[tuple[str, str], Current], list[Any]]:
    """In one query: the stored rows of `keys`, and the Patients with one of `identifiers` (system, value).

    Returns the current rows by (type, id), and the candidate rows (with `system` and `code`) for
    `identity.match_rows`.
    """
    wanted = sorted(set(keys))
    if conn.dialect.name == "postgresql":
        rows = await fetch_all_on_driver(conn, _PG_READ_STATE, {
            **_pg_keys(wanted), "identifiers": json_parameter(identifiers)})
    else:
        codes = sorted({code for _, code in identifiers})
        rows = (await conn.execute(_READ_STATE, {"keys": wanted, "codes": codes})).all()
    currents = {(r.res_type, r.res_id): _current(r) for r in rows if r.system is None}
    candidates = [r for r in rows if r.system is not None]
    for row in candidates:  # a matched Patient replaces the mapped one: its row is here already
        currents.setdefault((row.res_type, row.res_id), _current(row))
    return currents, candidates


async def read_compartment(conn: AsyncConnection, patient_id: str) -> list[Current]:
    """Every live resource in `patient_id`'s compartment that a merge moves (not Patients nor records)."""
    query = (
        select(*_CURRENT_COLUMNS).select_from(_CURRENT_FROM)
        .where(resources.c.patient_id == patient_id, resources.c.deleted.is_(False),
               resources.c.res_type.not_in(sorted(_NOT_MOVED_BY_MERGE)))
        .order_by(resources.c.pk)
    )
    return [_current(row) for row in (await conn.execute(query)).all()]


async def read_patient_resources(conn: AsyncConnection, patient_id: str, types: Iterable[str],
                                 encounter_scoped: tuple[str, Iterable[str]] | None = None,
                                 statuses: Mapping[str, Iterable[str]] | None = None) -> list[Current]:
    """The live resources of `types` in `patient_id`'s compartment, by pk (oldest first), in one query.

    `encounter_scoped` — (encounter id, types) — narrows those types to the resources that reference
    that Encounter (by any reference the search index holds), read through the index of reference
    targets: a discharge reads its own results, not every result of the patient's lifetime. `statuses`
    narrows each type it names to the resources with one of its statuses (the `status` index rows).
    """
    wanted = sorted(set(types))
    if not wanted:
        return []
    encounter_id, scoped = encounter_scoped if encounter_scoped is not None else ("", ())
    scoped = sorted(set(scoped) & set(wanted))
    pairs = sorted((t, code) for t, codes in (statuses or {}).items() if t in wanted for code in codes)
    if conn.dialect.name == "postgresql":
        rows = await fetch_all_on_driver(conn, _PG_PATIENT_RESOURCES, {
            "patient": patient_id, "types": json_parameter(wanted), "scoped": json_parameter(scoped),
            "encounter": encounter_id, "status_scoped": json_parameter(sorted({t for t, _ in pairs})),
            "statuses": json_parameter(pairs)})
    else:
        query = (select(*_CURRENT_COLUMNS).select_from(_CURRENT_FROM)
                 .where(resources.c.patient_id == patient_id, resources.c.deleted.is_(False),
                        resources.c.res_type.in_(wanted))
                 .order_by(resources.c.pk))
        if scoped:
            query = query.where(or_(resources.c.res_type.not_in(scoped), resources.c.pk.in_(
                select(idx_reference.c.res_pk).where(idx_reference.c.target_type == "Encounter",
                                                     idx_reference.c.target_id == encounter_id))))
        if pairs:
            with_status = select(idx_token.c.res_pk).where(idx_token.c.param == "status", or_(*(
                (idx_token.c.res_type == t) & (idx_token.c.code == code) for t, code in pairs)))
            query = query.where(or_(resources.c.res_type.not_in({t for t, _ in pairs}),
                                    resources.c.pk.in_(with_status)))
        rows = list((await conn.execute(query)).all())
    return [_current(row) for row in rows]


# The lists go as JSON (engine.db.direct.json_parameter, as the ingest's keys do), each read into an array once.
_PG_PATIENT_RESOURCES = text(
    _PG_CURRENT + " FROM resources AS r LEFT JOIN resource_sources AS s ON s.res_pk = r.pk WHERE r.patient_id = :patient"
    " AND NOT r.deleted AND r.res_type = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(:types AS jsonb))))"
    " AND (r.res_type <> ALL(ARRAY(SELECT jsonb_array_elements_text(CAST(:scoped AS jsonb))))"
    " OR r.pk IN (SELECT i.res_pk FROM idx_reference AS i WHERE i.target_type = 'Encounter'"
    " AND i.target_id = CAST(:encounter AS text)))"
    " AND (r.res_type <> ALL(ARRAY(SELECT jsonb_array_elements_text(CAST(:status_scoped AS jsonb))))"
    " OR EXISTS (SELECT 1 FROM idx_token AS t JOIN jsonb_array_elements(CAST(:statuses AS jsonb)) AS w(pair)"
    " ON w.pair ->> 0 = t.res_type AND w.pair ->> 1 = t.code WHERE t.res_pk = r.pk AND t.param = 'status'))"
    " ORDER BY r.pk"
)


# -- planning ---------------------------------------------------------------------------------------------


def comparable(document: Mapping[str, Any]) -> dict[str, Any]:
    """`document` without the server-set `meta.versionId` / `meta.lastUpdated` (an empty meta dropped)."""
    plain = dict(document)
    meta = plain.get("meta")
    if isinstance(meta, dict) and any(k in meta for k in _SERVER_META):
        rest = {k: v for k, v in meta.items() if k not in _SERVER_META}
        if rest:
            plain["meta"] = rest
        else:
            del plain["meta"]
    return plain


def is_stale(current: Current | None, event_time: datetime | None) -> bool:
    """True when the stored resource reflects a later event than `event_time`."""
    return (current is not None and event_time is not None and current.event_time is not None
            and current.event_time > event_time)


def plan_resources(resources_: Sequence[dict[str, Any]], currents: Mapping[tuple[str, str], Current],
                   event_time: datetime | None, merge_types: frozenset[str], plan: Plan,
                   patient_not_sent: frozenset[str] = frozenset()) -> None:
    """Add to `plan` what writing `resources_` (one message's, in order) takes. A stored Patient keeps the
    elements in `patient_not_sent` (`MappingResult.patient_elements_not_sent`)."""
    for document in _unique(resources_):
        key = (document["resourceType"], document["id"])
        current = currents.get(key)
        stored = current.content if current is not None and not current.deleted else None
        stale = is_stale(current, event_time)
        if stale:
            plan.stale.append(f"{key[0]}/{key[1]}")
            if stored is None or key[0] not in merge_types:
                continue
            # A late message still tells us an identifier (or merge link) of this person.
            late = {**comparable(stored), "identifier": document.get("identifier") or []}
            if document.get("link"):
                late["link"] = document["link"]
            document = identity.merge_stored(stored, late)
        elif stored is not None and key[0] in merge_types:
            document = identity.merge_stored(stored, document,
                                             patient_not_sent if key[0] == "Patient" else frozenset())
        if stored is not None and comparable(stored) == comparable(document):
            plan.unchanged.append(f"{key[0]}/{key[1]}")
            if (not stale and event_time is not None and current is not None
                    and current.event_time != event_time and patient_compartment(document) is not None):
                plan.refreshed_sources.append(current.pk)
            continue
        plan.changes.append(Change(document, current, track_source=not stale))


def _unique(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One document per (type, id): a later one replaces an earlier one in the earlier one's place."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for document in documents:
        by_key[(document["resourceType"], document["id"])] = document
    return list(by_key.values())


def check_documents(documents: Iterable[Mapping[str, Any]]) -> None:
    """Our maps' output must be storable: a supported type and an id (a map bug otherwise: 207)."""
    for document in documents:
        res_type, res_id = document.get("resourceType"), document.get("id")
        if res_type not in SUPPORTED_TYPES or not isinstance(res_id, str) or not res_id:
            raise MappingError(APPLICATION_INTERNAL_ERROR,
                               f"The mapping produced a resource the store cannot hold ({res_type}/{res_id})")


def state_keys(result: MappingResult, extra_keys: Iterable[tuple[str, str]] = ()
               ) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """What `prepare` reads first for `result` (its documents checked): the (type, id) of its resources,
    of `extra_keys` and of the originals it supersedes; and the identifiers (system, value) that find its
    Patient."""
    merges = [a.detail for a in result.actions if a.kind == "merge" and isinstance(a.detail, Merge)]
    survivor_key = result.patient_key or (merges[0].survivor if merges else None)
    supersedes = [a.detail for a in result.actions if a.kind == "supersede" and isinstance(a.detail, Supersede)]
    wanted = ({(d["resourceType"], d["id"]) for d in result.resources} | set(extra_keys)
              | {(s.resource_type, s.resource_id) for s in supersedes})
    identifiers = sorted(set(identity.key_identifiers(survivor_key))) if result.patient_id else []
    return wanted, identifiers


def state_view(currents: Mapping[tuple[str, str], Current], candidates: Sequence[Any],
               wanted: Iterable[tuple[str, str]], identifiers: Iterable[tuple[str, str]]
               ) -> tuple[dict[tuple[str, str], Current], list[Any]]:
    """The part of a `read_state` made for several messages that one message's `wanted` keys and
    `identifiers` would have read on their own."""
    pairs = set(identifiers)
    mine = [row for row in candidates if (row.system, row.code) in pairs]
    view = {key: currents[key] for key in wanted if key in currents}
    for row in mine:
        key = (row.res_type, row.res_id)
        if key not in view and key in currents:
            view[key] = currents[key]
    return view, mine


async def prepare(conn: AsyncConnection, result: MappingResult, *, event_time: datetime | None,
                  extra_keys: Iterable[tuple[str, str]] = (),
                  state: tuple[dict[tuple[str, str], Current], list[Any]] | None = None) -> Plan:
    """Identity, reads and the write plan for `result` (raises MappingError for an identity conflict).

    `event_time` is the message's, as naive UTC (the store's form). `extra_keys` are read too (e.g.
    the message's Provenance when it is replayed); they end up in `plan.currents`. The common case
    takes one query: the stored versions of the message's resources together with the Patients its
    identifiers find — or none, when `state` (`read_state`'s answer for `state_keys(result)`, read in
    this transaction by the caller: group commit) is given.
    """
    documents = [dict(d) for d in result.resources]
    check_documents(documents)
    plan = Plan(patient_id=result.patient_id)
    merges = [a.detail for a in result.actions if a.kind == "merge" and isinstance(a.detail, Merge)]
    survivor_key = result.patient_key or (merges[0].survivor if merges else None)
    supersedes = [a.detail for a in result.actions if a.kind == "supersede" and isinstance(a.detail, Supersede)]
    wanted, identifiers = state_keys(result, extra_keys)
    currents, candidates = state if state is not None else await read_state(conn, wanted, identifiers)
    if identifiers and survivor_key is not None:
        match = await identity.match_rows(conn, survivor_key, candidates)
        if match is not None:
            identity.check_same_person(match, survivor_key)
            documents = _repoint(documents, result.patient_id, match.resolved.res_id)
            plan.patient_id = match.resolved.res_id
    moved: list[Change] = []
    for merge in merges:
        survivor_id = plan.patient_id
        if merge.survivor != survivor_key:  # a later patient group of a multi-group A40
            survivor_id, documents = await _resolve_patient(conn, merge.survivor, documents)
        documents, merge_changes = await _plan_merge(conn, merge, survivor_id, plan, documents)
        moved.extend(merge_changes)
    keys = {(d["resourceType"], d["id"]) for d in documents} | set(extra_keys)
    missing = {key for key in keys - wanted if key not in currents}  # e.g. a merge's survivor
    if missing:
        currents.update(await read_current(conn, missing))
    plan.currents = currents
    plan_resources(documents, plan.currents, event_time, result.merge_identifiers, plan,
                   result.patient_elements_not_sent)
    planned = {c.key for c in plan.changes}
    plan.changes.extend(c for c in moved if c.key not in planned)
    for supersede in supersedes:
        plan_supersede(supersede, plan)
    return plan


def plan_supersede(supersede: Supersede, plan: Plan) -> None:
    """The stored original of an MDM^T08 replacement gets `status: superseded` (a new version).

    A replacement is final, so this applies whatever event the original last reflected; an original
    that is not stored (or deleted, or already superseded or entered in error) is left alone, with a
    warning when it is missing. Its recorded event time stays its own (`track_source=False`).
    """
    key = (supersede.resource_type, supersede.resource_id)
    if key in {c.key for c in plan.changes}:
        return  # the message itself writes that resource
    current = plan.currents.get(key)
    if current is None or current.deleted or current.content is None:
        plan.warnings.append(f"supersede: {key[0]}/{key[1]}, replaced by {supersede.by}, is not stored")
        return
    if current.content.get("status") in {"superseded", "entered-in-error"}:
        return
    plan.changes.append(Change({**comparable(current.content), "status": "superseded"}, current,
                               track_source=False))


def _repoint(documents: list[dict[str, Any]], mapped_id: str, stored_id: str) -> list[dict[str, Any]]:
    """The message's resources with its mapped Patient id replaced by the stored Patient's."""
    if mapped_id == stored_id:
        return documents
    old, new = f"Patient/{mapped_id}", f"Patient/{stored_id}"
    repointed = []
    for document in documents:
        document = identity.rewrite_references(document, old, new)
        if document["resourceType"] == "Patient" and document.get("id") == mapped_id:
            document = {**document, "id": stored_id}
        repointed.append(document)
    return repointed


async def _resolve_patient(conn: AsyncConnection, key: PatientKey,
                           documents: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The stored id of a Patient document other than the subject, matched by `key` (its documents re-pointed)."""
    pairs = set(identity.key_identifiers(key))
    document = next((d for d in documents if d["resourceType"] == "Patient" and any(
        (i.get("system"), i.get("value")) in pairs for i in d.get("identifier") or ())), None)
    mapped_id = document["id"] if document is not None else None
    match = await identity.find_patient(conn, key)
    if match is None:
        return mapped_id, documents
    identity.check_same_person(match, key)
    if mapped_id is not None:
        documents = _repoint(documents, mapped_id, match.resolved.res_id)
    return match.resolved.res_id, documents


async def _plan_merge(conn: AsyncConnection, merge: Merge, survivor_id: str | None, plan: Plan,
                      documents: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Change]]:
    """A34/A40: the survivor document amended, and the old record's resources moved to it."""
    if not survivor_id:
        raise MappingError(UNKNOWN_KEY_IDENTIFIER, "The merge names no surviving patient", ErrorLocation("PID", 1, 3))
    survivor_doc = next((d for d in documents if d["resourceType"] == "Patient" and d["id"] == survivor_id), None)
    if survivor_doc is None:
        stored = await identity.read_patient(conn, survivor_id)
        if stored is None:
            raise MappingError(UNKNOWN_KEY_IDENTIFIER, "The surviving patient of the merge is not known",
                               ErrorLocation("PID", 1, 3))
        survivor_doc = comparable(stored.content)
        documents = [*documents, survivor_doc]
    old_match = await identity.find_patient(conn, merge.old)
    old = old_match.resolved if old_match is not None else None
    old_identifiers = list(old.content.get("identifier") or ()) if old else _key_identifiers(merge.old)
    amended = {**survivor_doc, "identifier": identity.adopt_identifiers(
        list(survivor_doc.get("identifier") or ()), old_identifiers)}
    changes: list[Change] = []
    if old is None:
        plan.warnings.append("merge: the patient named in MRG is not stored; the survivor takes its identifiers")
    elif old.res_id != survivor_id:
        amended["link"] = _with_link(amended.get("link"), old.res_id, "replaces")
        changes = await _moved_record(conn, old, survivor_id)
        plan.merged.append((old.res_id, survivor_id))
    documents = [amended if d is survivor_doc else d for d in documents]
    return documents, changes


async def _moved_record(conn: AsyncConnection, old: identity.StoredPatient, survivor_id: str) -> list[Change]:
    """The old record re-pointed to the survivor, and the old Patient replaced-by the survivor."""
    old_ref, new_ref = f"Patient/{old.res_id}", f"Patient/{survivor_id}"
    changes = []
    for current in await read_compartment(conn, old.res_id):
        if current.content is not None:
            moved = identity.rewrite_references(comparable(current.content), old_ref, new_ref)
            changes.append(Change(moved, current, track_source=False))
    retired = comparable(old.content)
    retired["active"] = False
    retired["link"] = _with_link(retired.get("link"), survivor_id, "replaced-by")
    old_current = Current(old.pk, "Patient", old.res_id, old.version_id, old.last_updated, False,
                          old.content, None)
    changes.append(Change(retired, old_current, track_source=False))
    return changes


def _with_link(links: Any, other_id: str, link_type: str) -> list[dict[str, Any]]:
    """Patient.link with (other, type) present once (https://hl7.org/fhir/R4/patient.html#links)."""
    links = list(links or ())
    reference = f"Patient/{other_id}"
    if not any((l.get("other") or {}).get("reference") == reference and l.get("type") == link_type for l in links):
        links.append({"other": {"reference": reference}, "type": link_type})
    return links


def _key_identifiers(key: PatientKey) -> list[dict[str, Any]]:
    found = [{"system": NHS_NUMBER_SYSTEM, "value": key.nhs_number}] if key.nhs_number else []
    return found + [{"system": i.system, "value": i.value} for i in key.local]


# -- provenance -----------------------------------------------------------------------------------------


def provenance_id(message_id: int) -> str:
    """The Provenance of stored message `message_id`: the same id however often it is replayed."""
    return resource_id("Provenance", "hl7-message", str(message_id))


def provenance(plan: Plan, *, message_id: int, sender_ods: str, sender_name: str, message_type: str,
               control_id: str, now: datetime, sender_reference: str | None = None) -> dict[str, Any] | None:
    """The Provenance of one message: every resource it created or changed, at the version it wrote.

    `activity` is v3-DataOperation CREATE when it only created resources, else UPDATE; a merge
    adds iso-21089-lifecycle `merge`. The agent is the sending Organization (by ODS code) as
    author, with sharedcare-ingest as assembler; the entity is the stored message. Like the
    resources it targets, it is tagged with the sender as data owner (`consent.vocabulary.owner_tag`).
    None when the message changed nothing (a Provenance needs a target).
    """
    targets = [c for c in plan.changes if c.key[0] != "Provenance"]
    if not targets:
        return None
    created_only = all(c.current is None for c in targets)
    operation = "CREATE" if created_only else "UPDATE"
    codings = [{"system": DATA_OPERATION, "code": operation, "display": operation.lower()}]
    if plan.merged:
        codings.append({"system": LIFECYCLE, "code": "merge", "display": "Merge Record Lifecycle Event"})
    sender: dict[str, Any] = {"identifier": {"system": ODS_ORGANIZATION, "value": sender_ods}}
    if sender_reference:
        sender["reference"] = sender_reference
    if sender_name:
        sender["display"] = sender_name
    return {
        "resourceType": "Provenance",
        "id": provenance_id(message_id),
        "meta": {"tag": [owner_tag(sender_ods)]},
        "target": [{"reference": c.versioned_reference} for c in targets],
        "recorded": format_instant(now),
        "activity": {"coding": codings},
        "agent": [
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]}, "who": sender},
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "assembler"}]},
             "who": {"identifier": {"system": SYSTEM_PRINCIPAL_SYSTEM, "value": INGEST.user_id},
                     "display": INGEST.name}},
        ],
        "entity": [{
            "role": "source",
            "what": {"identifier": {"system": MESSAGE_ID_SYSTEM, "value": str(message_id)},
                     "display": f"HL7 v2 {message_type} {control_id}".strip()},
        }],
    }


def sender_reference(result: MappingResult, sender_ods: str) -> str | None:
    """`Organization/<id>` of the sender if the message yielded its Organization (by ODS code)."""
    for document in result.resources:
        if document.get("resourceType") != "Organization":
            continue
        for identifier in document.get("identifier") or ():
            if identifier.get("system") == ODS_ORGANIZATION and identifier.get("value") == sender_ods:
                return f"Organization/{document['id']}"
    return None
