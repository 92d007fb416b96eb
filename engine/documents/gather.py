"""Gather what a document needs from the store: one procedure, two ways to read.

`gather(reader, definition, encounter_id)` reads the encounter, its patient, the patient's resources
of the types the definition queries, and the organisations, clinicians and wards they name. The
reader decides how: `GateReader` discloses to a principal through the access gate (a clinician
asking for a document); `StoreReader` reads the store inside the caller's transaction (the engine
itself storing a discharge document while it ingests an A03 — storing, not disclosing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.access import AccessGate
from engine.auth import Principal
from engine.documents.definitions import DocumentDefinition
from engine.documents.elements import JSON, codes_of, reference_target
from engine.documents.selection import gp_practice_references
from engine.ingest.apply import Current, read_current, read_patient_resources
from engine.outcomes import FhirError
from engine.search.params import SearchRequest, parse_search
from engine.search.query import search
from engine.search.registry import get_param

PAGE = 1000
SDS_USER_ID = "https://fhir.nhs.uk/Id/sds-user-id"
ODS_CODE = "https://fhir.nhs.uk/Id/ods-organization-code"


class RecordReader(Protocol):
    async def read(self, res_type: str, res_id: str) -> JSON:
        """The current resource; FhirError 404/410 (or 403 from the gate) when it cannot be had."""

    async def read_many(self, res_type: str, ids: Sequence[str]) -> list[JSON]:
        """Those of `ids` that exist and may be had (missing, deleted or withheld ones are left out)."""

    async def compartment(self, patient_id: str, types: Sequence[str],
                          within: ReadScope | None = None) -> list[JSON]:
        """The patient's current resources of `types` (never all types: an empty list gives nothing).

        `within` allows the reader to leave out the resources the document cannot use (`ReadScope`); they
        may still be returned: the caller selects by encounter and status itself."""

    async def by_identifier(self, res_type: str, system: str, value: str) -> JSON | None:
        """The first resource of `res_type` with that identifier, or None."""


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What of a patient's record a document can use: of `encounter_types`, only the resources that
    reference the encounter; of each type in `statuses`, only those with one of its statuses."""

    encounter_id: str
    encounter_types: frozenset[str] = frozenset()
    statuses: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def of(cls, definition: DocumentDefinition, encounter_id: str) -> ReadScope:
        return cls(encounter_id, definition.encounter_scoped_types, tuple(sorted(definition.status_scoped_types.items())))

    def covers(self, other: ReadScope | None) -> bool:
        """Whether what this scope reads includes everything `other` allows."""
        if other is None:
            return not self.encounter_types and not self.statuses
        if self.encounter_types and (self.encounter_id != other.encounter_id
                                     or not self.encounter_types <= other.encounter_types):
            return False
        wanted = dict(other.statuses)
        return all(res_type in wanted and wanted[res_type] <= codes for res_type, codes in self.statuses)


class GateReader:
    """Reads as `who`, through the access gate: what the principal may not see never enters a document."""

    def __init__(self, gate: AccessGate, who: Principal) -> None:
        self.gate = gate
        self.who = who

    async def read(self, res_type: str, res_id: str) -> JSON:
        return orjson.loads((await self.gate.read(self.who, res_type, res_id)).content or "{}")

    async def read_many(self, res_type: str, ids: Sequence[str]) -> list[JSON]:
        """One search (`_id=a,b,…`), so one disclosure and one audit event per type, not one per id."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        request = parse_search(res_type, [("_id", ",".join(ids)), ("_count", str(len(ids)))])
        try:
            page = await self.gate.search(self.who, request)
        except FhirError:
            return []  # a principal who may not read Locations still gets a document that names the ward
        return [orjson.loads(row.content) for row in page.rows]

    async def compartment(self, patient_id: str, types: Sequence[str],
                          within: ReadScope | None = None) -> list[JSON]:
        """The types `within` narrows by searches (`patient` with `encounter` and/or `status`), the rest by
        $everything: what the document cannot use is neither read nor audited as disclosed."""
        if not types:
            return []
        searches = _scoped_searches(patient_id, types, within)
        found = await self._everything(patient_id, [t for t in types if t not in searches])
        for res_type, params in searches.items():
            found.extend(await self._search_all(res_type, params))
        return found

    async def _everything(self, patient_id: str, types: Sequence[str]) -> list[JSON]:
        if not types:
            return []
        found: list[JSON] = []
        after, snapshot = None, None
        while True:
            page, after, snapshot, _ = await self.gate.everything(
                self.who, patient_id, types=list(types), since=None, count=PAGE, after_pk=after, snapshot_pk=snapshot
            )
            found.extend(orjson.loads(s.content) for s in page if s.content and s.res_type in types)
            if after is None:
                return found

    async def _search_all(self, res_type: str, params: list[tuple[str, str]]) -> list[JSON]:
        """Every page of one search (each page one disclosure and one audit event)."""
        found: list[JSON] = []
        cursor: str | None = None
        while True:
            page = await self.gate.search(self.who, parse_search(res_type, [
                *params, ("_count", str(PAGE)), ("_total", "none"), *((("_cursor", cursor),) if cursor else ())]))
            found.extend(orjson.loads(row.content) for row in page.rows if row.content)
            cursor = page.next_cursor
            if cursor is None:
                return found

    async def by_identifier(self, res_type: str, system: str, value: str) -> JSON | None:
        try:
            page = await self.gate.search(self.who, _identifier_search(res_type, system, value))
        except FhirError:
            return None  # a principal who may not search Practitioners still gets a document
        return orjson.loads(page.rows[0].content) if page.rows else None


@dataclass(frozen=True, slots=True)
class Pending:
    """A version the reader's transaction is about to write, which reads see as if it were stored."""

    document: JSON  # as it will be stored (meta stamped)
    pk: int | None  # its row's pk when it updates a stored resource, else None (new)
    patient_id: str | None  # the compartment it will belong to


class PendingWrite(Exception):
    """A resource the transaction writes already would be written again: apply the writers one at a time."""


class StoreReader:
    """Reads the store directly inside an open transaction (the engine's own writers).

    Reads are batched and remembered for the life of the reader (one transaction): `read_many` is
    one query whatever the number of ids, `prefetch_compartment` reads several types of a patient's
    compartment in one query for later `compartment` calls, and a resource read once is not read
    again — so the discharge hook and the document it issues share their reads. The reads are
    engine.ingest.apply's (on PostgreSQL, prepared statements on the driver connection).

    `known` are rows read already in the transaction; `pending` are versions it will write before it
    commits (group commit raises a batch's transfers before its one write): reads see them in place of
    what is stored, exactly as they would after the write.
    """

    def __init__(self, conn: AsyncConnection, *, known: Mapping[tuple[str, str], Current] | None = None,
                 pending: Iterable[Pending] = ()) -> None:
        self.conn = conn
        self._rows: dict[tuple[str, str], Current | None] = dict(known or {})
        self._pending = {(p.document["resourceType"], p.document["id"]): p for p in pending}
        # Per patient, the compartment reads made: (types, scope, resources).
        self._compartments: dict[str, list[tuple[frozenset[str], ReadScope | None, list[JSON]]]] = {}

    async def read(self, res_type: str, res_id: str) -> JSON:
        if (pending := self._pending.get((res_type, res_id))) is not None:
            return pending.document
        await self.prefetch([(res_type, res_id)])
        stored = self._rows[(res_type, res_id)]
        if stored is None:
            raise outcomes.not_found(res_type, res_id)
        if stored.deleted or stored.content is None:
            raise outcomes.gone(res_type, res_id, stored.version_id)
        return stored.content

    async def get(self, res_type: str, res_id: str) -> JSON | None:
        """The current resource, or None (never stored, or deleted)."""
        if (pending := self._pending.get((res_type, res_id))) is not None:
            return pending.document
        await self.prefetch([(res_type, res_id)])
        stored = self._rows[(res_type, res_id)]
        return stored.content if stored is not None and not stored.deleted else None

    async def read_many(self, res_type: str, ids: Sequence[str]) -> list[JSON]:
        keys = [(res_type, res_id) for res_id in dict.fromkeys(ids)]
        await self.prefetch(keys)
        found = [self._pending[key].document if key in self._pending else self._content(key) for key in keys]
        return [document for document in found if document is not None]

    def _content(self, key: tuple[str, str]) -> JSON | None:
        stored = self._rows.get(key)
        return stored.content if stored is not None and not stored.deleted else None

    async def prefetch(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read the (type, id) pairs not read yet (nor pending), in one query."""
        missing = {key for key in keys if key not in self._rows and key not in self._pending}
        if missing:
            found = await read_current(self.conn, missing)
            self._rows.update((key, found.get(key)) for key in missing)

    async def stored(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        """The stored rows of those `keys` that are stored, to update them (engine.ingest.apply.Change).

        Raises `PendingWrite` for a key the transaction writes already: a second writer of the same
        resource must wait for the first one's commit.
        """
        wanted = list(dict.fromkeys(keys))
        clash = [key for key in wanted if key in self._pending]
        if clash:
            raise PendingWrite(clash)
        await self.prefetch(wanted)
        return {key: row for key in wanted if (row := self._rows.get(key)) is not None}

    async def prefetch_compartment(self, patient_id: str, types: Iterable[str],
                                   within: ReadScope | None = None) -> None:
        """Read the patient's live resources of `types` (by pk) in one query, for `compartment` — only
        those `within` allows; the pending versions take their stored ones' places, and new ones follow in
        the order given."""
        wanted = frozenset(types)
        if wanted:
            if within is None:
                rows = await read_patient_resources(self.conn, patient_id, wanted)
            else:
                rows = await read_patient_resources(self.conn, patient_id, wanted,
                                                    (within.encounter_id, within.encounter_types),
                                                    dict(within.statuses))
            by_pk = {row.pk: row.content for row in rows
                     if row.content is not None and (row.res_type, row.res_id) not in self._pending}
            created: list[JSON] = []
            for pending in self._pending.values():
                if pending.patient_id != patient_id or pending.document["resourceType"] not in wanted:
                    continue
                if pending.pk is None:
                    created.append(pending.document)
                else:
                    by_pk[pending.pk] = pending.document
            self._compartments.setdefault(patient_id, []).append(
                (wanted, within, [by_pk[pk] for pk in sorted(by_pk)] + created))

    async def compartment(self, patient_id: str, types: Sequence[str],
                          within: ReadScope | None = None) -> list[JSON]:
        if not types:
            return []
        wanted = set(types)
        fetched = self._fetched(patient_id, wanted, within)
        if fetched is None:
            await self.prefetch_compartment(patient_id, types, within)
            fetched = self._compartments[patient_id][-1][2]
        return [resource for resource in fetched if resource.get("resourceType") in wanted]

    def _fetched(self, patient_id: str, types: set[str], within: ReadScope | None) -> list[JSON] | None:
        """A compartment read made already that holds everything asked for (it may hold more)."""
        for read_types, scope, found in self._compartments.get(patient_id, ()):
            if types <= read_types and (scope is None or scope.covers(within)):
                return found
        return None

    async def by_identifier(self, res_type: str, system: str, value: str) -> JSON | None:
        page = await search(self.conn, _identifier_search(res_type, system, value))
        return orjson.loads(page.rows[0].content) if page.rows else None


def _scoped_searches(patient_id: str, types: Sequence[str],
                     within: ReadScope | None) -> dict[str, list[tuple[str, str]]]:
    """The search parameters for each of `types` that `within` narrows (one with no `patient` search
    parameter is left to $everything)."""
    if within is None:
        return {}
    statuses = dict(within.statuses)
    searches: dict[str, list[tuple[str, str]]] = {}
    for res_type in types:
        if get_param(res_type, "patient") is None:
            continue
        params = [("patient", patient_id)]
        if res_type in within.encounter_types:
            params.append(("encounter", f"Encounter/{within.encounter_id}"))
        if res_type in statuses:
            params.append(("status", ",".join(sorted(statuses[res_type]))))
        if len(params) > 1:
            searches[res_type] = params
    return searches


def _identifier_search(res_type: str, system: str, value: str) -> SearchRequest:
    escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
    return parse_search(res_type, [("identifier", f"{system}|{escaped}"), ("_count", "1")])


@dataclass(frozen=True, slots=True)
class Gathered:
    """Everything a document is built from; `resources` holds the patient's data and what it names."""

    patient: JSON
    encounter: JSON
    resources: list[JSON]

    def find(self, reference: object) -> JSON | None:
        target = reference_target(reference)
        if target is None:
            return None
        return next((r for r in self.resources if (r.get("resourceType"), r.get("id")) == target), None)


async def gather(reader: RecordReader, definition: DocumentDefinition, encounter_id: str) -> Gathered:
    """The encounter, its patient, the patient's resources the definition queries, and whom they name."""
    encounter = await reader.read("Encounter", encounter_id)
    target = reference_target(encounter.get("subject"))
    if target is None or target[0] != "Patient":
        raise outcomes.error(422, "business-rule", f"Encounter/{encounter_id} names no Patient: no document can "
                             "be made for it", details_code="encounter-without-patient")
    patient = await reader.read("Patient", target[1])
    resources = await reader.compartment(target[1], definition.resource_types,
                                         ReadScope.of(definition, encounter_id))
    wanted: dict[str, list[str]] = {}
    for res_type, res_id in named_parties(patient, encounter):
        wanted.setdefault(res_type, []).append(res_id)
    for res_type, ids in wanted.items():
        resources.extend(await reader.read_many(res_type, ids))
    return Gathered(patient, encounter, resources)


def named_parties(patient: JSON, encounter: JSON) -> list[tuple[str, str]]:
    """(type, id) of the GP practice, provider, clinicians and wards the patient and encounter name, once each."""
    references = [*gp_practice_references(patient), encounter.get("serviceProvider")]
    references += [p.get("individual") for p in encounter.get("participant") or () if isinstance(p, dict)]
    references += [loc.get("location") for loc in encounter.get("location") or () if isinstance(loc, dict)]
    found: list[tuple[str, str]] = []
    for reference in references:
        target = reference_target(reference)
        if target is not None and target[0] in {"Organization", "Practitioner", "Location"} and target not in found:
            found.append(target)
    return found


# -- who wrote it and who keeps it ------------------------------------------------------------------


async def user_author(reader: RecordReader, who: Principal) -> JSON:
    """The requesting user's Practitioner (matched by SDS user id), else a Reference naming them."""
    found = await reader.by_identifier("Practitioner", SDS_USER_ID, who.user_id)
    if found is not None:
        return found
    return {"identifier": {"system": SDS_USER_ID, "value": who.user_id}, "display": who.name or who.user_id}


def engine_author(gathered: Gathered) -> JSON:
    """For an engine-issued document: the encounter's attending clinician, else its provider."""
    participants = gathered.encounter.get("participant") or []
    attending = [p for p in participants if "ATND" in codes_of(p.get("type"))] + list(participants)
    for participant in attending:
        found = gathered.find(participant.get("individual"))
        if found is not None:
            return found
    provider = gathered.find(gathered.encounter.get("serviceProvider"))
    if provider is not None:
        return provider
    return {"display": "sharedcare (generated from the shared care record)"}


async def custodian(reader: RecordReader, gathered: Gathered, org_code: str | None) -> JSON | None:
    """The organisation that keeps the document: the encounter's provider, else the user's organisation."""
    provider = gathered.find(gathered.encounter.get("serviceProvider"))
    if provider is not None:
        return provider
    if org_code:
        found = await reader.by_identifier("Organization", ODS_CODE, org_code)
        return found or {"identifier": {"system": ODS_CODE, "value": org_code}}
    return None
