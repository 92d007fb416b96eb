"""Transfer-of-care documents over the store: issue, store, fetch and receive.

- `issue_document` — a user asks for a document: data gathered through the access gate as that user,
  built (engine.documents.build), stored in one write transaction.
- `issue_discharge_document` — the engine itself, inside the write transaction of an HL7 A03 it is
  ingesting, reads the store directly (storing, not disclosing) and stores the same way.
- `document_bundle`, `document_for_reference` — a stored document, read through the gate.
- `submit_document` — a document produced elsewhere: validated, checked for mandatory headings
  (UK-REFERENCE test 8), stored.

A document is stored as three resources written together: the document Bundle (immutable, a new id at
each issue), its Composition under the same id (readable on its own; `Composition/[id]/$document`
finds the Bundle by that id), and a DocumentReference whose id is stable per encounter and document
type, so a reissue makes a new version of it pointing at the new Bundle.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.access import CREATE, UPDATE, AccessGate
from engine.auth import Principal
from engine.db import repository
from engine.db.database import Database
from engine.db.repository import Stored, stamp
from engine.documents.build import build_document, document_reference, strictest_labels, with_labels
from engine.documents.definitions import DocumentDefinition, definitions, document_types
from engine.documents.elements import JSON, identifier_value, reference_target
from engine.documents.gather import (
    GateReader,
    RecordReader,
    StoreReader,
    custodian,
    engine_author,
    gather,
    user_author,
)
from engine.documents.keys import DOCUMENT_NAMESPACE, reference_id_for
from engine.documents.receive import document_problem, match_definition, missing_headings, unsafe_narratives
from engine.fhir import writes
from engine.ingest.apply import Change, Current, comparable, read_current
from engine.ingest.store import write_changes
from engine.outcomes import FhirError, OutcomeIssue

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
Prepare = Callable[[JSON], JSON]


@dataclass(frozen=True, slots=True)
class IssuedDocument:
    """What was stored: the Bundle, its Composition and the DocumentReference (at `reference_version`)."""

    bundle_id: str
    composition_id: str
    document_reference_id: str
    reference_version: int = 1
    bundle_json: str = ""
    reference_json: str = ""


def definition_for(doc_type: str) -> DocumentDefinition:
    """The definition named `doc_type`, or 400 naming the allowed types."""
    found = definitions().get(doc_type)
    if found is None:
        allowed = ", ".join(document_types())
        raise outcomes.bad_request(f"Unknown document type {doc_type!r}; allowed types: {allowed}", ("type",),
                                   "unknown-document-type")
    return found


# -- issuing ---------------------------------------------------------------------------------------


async def issue_document(
    db: Database, gate: AccessGate, who: Principal, encounter_id: str, doc_type: str, *, now: datetime,
    base_url: str | None = None, document_id: str | None = None,
) -> IssuedDocument:
    """Issue `doc_type` for an encounter on behalf of `who`; data gathered through the gate as `who`."""
    definition = definition_for(doc_type)
    gate.authorise(who, CREATE, "DocumentReference")
    reader = GateReader(gate, who)
    bundle = await _built(reader, definition, encounter_id, who=who, now=now,
                          base_url=base_url or _configured_base_url(), document_id=document_id)
    async with db.write() as conn:
        issued, stored_reference = await _store(conn, bundle, reference_id_for(encounter_id, doc_type), now,
                                                prepare=lambda resource: gate.prepare(who, resource))
        interaction = CREATE if stored_reference.version_id == 1 else UPDATE
        await gate.check_change(conn, who, interaction, stored_reference)
    return issued


async def issue_discharge_document(
    conn: AsyncConnection, encounter_id: str, doc_type: str, *, now: datetime, base_url: str | None = None,
    document_id: str | None = None, reader: StoreReader | None = None,
) -> IssuedDocument:
    """Issue `doc_type` for an encounter inside the caller's open write transaction (`Database.write()`).

    For the engine's own writers (an A03 discharge being ingested): reads the store directly, with no
    principal, and writes with the caller's connection, so the document commits or rolls back with
    the message. `base_url` defaults to the configured SHAREDCARE_BASE_URL; `reader` may bring reads
    the caller made already (the discharge hook's). The Bundle, Composition and DocumentReference are
    written by one batched statement (engine.ingest.store.write_changes).
    """
    issued, _ = await issue_discharge_changes(conn, encounter_id, doc_type, now=now, base_url=base_url,
                                              document_id=document_id, reader=reader, write=True)
    return issued


async def issue_discharge_changes(
    conn: AsyncConnection, encounter_id: str, doc_type: str, *, now: datetime, base_url: str | None = None,
    document_id: str | None = None, reader: StoreReader | None = None, write: bool = False,
    currents: Mapping[tuple[str, str], Current | None] | None = None,
) -> tuple[IssuedDocument, list[Change]]:
    """`issue_discharge_document`, with the writes returned as changes instead of written unless `write`:
    the caller may write them together with its own (the discharge hook writes the Tasks with them).
    `currents` may hold the stored DocumentReference (`engine.ingest.apply.read_current`), read already
    (None: read, and not stored)."""
    definition = definition_for(doc_type)
    bundle = await _built(reader or StoreReader(conn), definition, encounter_id, who=None, now=now,
                          base_url=base_url or _configured_base_url(), document_id=document_id)
    key = ("DocumentReference", reference_id_for(encounter_id, doc_type))
    if currents is None or key not in currents:
        currents = await read_current(conn, [key])
    changes = document_changes(bundle, key[1], currents.get(key), now)
    if write:
        await write_changes(conn, changes, now)
    return _issued(bundle, key[1], changes, currents.get(key), now), changes


def document_changes(bundle: JSON, reference_id: str, current: Current | None, now: datetime) -> list[Change]:
    """What storing a document writes (module docstring): the Bundle and its Composition (new), and the
    DocumentReference (a new version, unless it would say nothing new: repository.update's rule)."""
    composition = {**bundle["entry"][0]["resource"], "id": bundle["id"]}
    docref = document_reference(bundle, reference_id=reference_id, now=now, composition_id=bundle["id"])
    changes = [Change(bundle, None, track_source=False), Change(composition, None, track_source=False)]
    if current is None or current.deleted or current.content is None or comparable(current.content) != docref:
        changes.append(Change(docref, current, track_source=False))
    return changes


def _issued(bundle: JSON, reference_id: str, changes: list[Change], current: Current | None,
            now: datetime) -> IssuedDocument:
    """The IssuedDocument of `changes`, with the stored forms (meta stamped) of the Bundle and reference."""
    written = {c.key: c for c in changes}
    reference = written.get(("DocumentReference", reference_id))
    if reference is not None:
        version = reference.version_id
        reference_json = _stored_json(reference, now)
    else:
        version = current.version_id if current is not None else 0
        reference_json = orjson.dumps(current.content).decode() if current is not None and current.content else ""
    return IssuedDocument(bundle["id"], bundle["id"], reference_id, version,
                          _stored_json(written[("Bundle", bundle["id"])], now), reference_json)


def _stored_json(change: Change, now: datetime) -> str:
    moment = now if change.current is None else max(now, change.current.last_updated)
    return orjson.dumps(stamp(change.document, change.key[1], change.version_id, moment)).decode()


async def _built(
    reader: RecordReader, definition: DocumentDefinition, encounter_id: str, *, who: Principal | None,
    now: datetime, base_url: str, document_id: str | None,
) -> JSON:
    gathered = await gather(reader, definition, encounter_id)
    author = await user_author(reader, who) if who is not None else engine_author(gathered)
    keeper = await custodian(reader, gathered, who.org if who is not None else None)
    return build_document(definition, patient=gathered.patient, encounter=gathered.encounter,
                          resources=gathered.resources, author=author, custodian=keeper, now=now,
                          document_id=document_id or str(uuid.uuid4()), base_url=base_url)


def _unchanged(resource: JSON) -> JSON:
    return resource


async def _store(
    conn: AsyncConnection, bundle: JSON, reference_id: str, now: datetime, *,
    composition: JSON | None = None, subject: JSON | None = None, prepare: Prepare = _unchanged,
) -> tuple[IssuedDocument, Stored]:
    """Write the Bundle, its Composition (same id) and the DocumentReference (new version) together.

    `prepare` is the gate's for a person writing (security labels, the owning organisation's tag).
    """
    await repository.lock_for(conn, "DocumentReference", reference_id)
    stored_bundle = await repository.create(conn, prepare(bundle), now=now, res_id=bundle["id"])
    own = composition if composition is not None else bundle["entry"][0]["resource"]
    await repository.create(conn, prepare({**own, "id": bundle["id"]}), now=now, res_id=bundle["id"])
    docref = document_reference(bundle, reference_id=reference_id, now=now, composition_id=bundle["id"])
    if subject is not None:
        docref["subject"] = subject
    stored_reference, _ = await repository.update(conn, prepare(docref), now=now, res_id=reference_id)
    issued = IssuedDocument(bundle["id"], bundle["id"], reference_id, stored_reference.version_id,
                            stored_bundle.content or "", stored_reference.content or "")
    return issued, stored_reference


def _configured_base_url() -> str:
    from engine.config import configured_base_url

    return configured_base_url()


# -- reading ---------------------------------------------------------------------------------------


async def document_bundle(gate: AccessGate, who: Principal, composition_id: str) -> Stored:
    """`Composition/[id]/$document`: the stored document Bundle, if `who` may read both (the Composition
    first: it is in the patient's compartment, the Bundle is not)."""
    await gate.read(who, "Composition", composition_id)
    try:
        return await gate.read(who, "Bundle", composition_id)
    except FhirError as error:
        if error.status != 404:
            raise
        raise outcomes.error(404, "not-found", f"Composition/{composition_id} is not part of a stored document",
                             details_code="no-document") from None


async def document_for_reference(gate: AccessGate, who: Principal, reference_id: str) -> Stored:
    """The document Bundle a DocumentReference points at (`content.attachment.url = Bundle/[id]`),
    released like `document_bundle` (the Bundle's Composition decides who may read it)."""
    stored = await gate.read(who, "DocumentReference", reference_id)
    docref = orjson.loads(stored.content or "{}")
    for content in docref.get("content") or ():
        url = str((content.get("attachment") or {}).get("url") or "")
        target = reference_target({"reference": url})
        if target is not None and target[0] == "Bundle":
            return await document_bundle(gate, who, target[1])
    raise outcomes.error(404, "not-found", f"DocumentReference/{reference_id} does not point at a stored "
                         "document Bundle", details_code="no-document")


async def read_bundle(gate: AccessGate, who: Principal, bundle_id: str) -> Stored:
    """`Bundle/[id]`: a stored document, released only with its Composition (the same id).

    A stored Bundle lies in no patient compartment (the store indexes no Bundle), so its Composition —
    which does — answers for it: relationship, consent and scopes apply to the document as to its patient.
    """
    return await document_bundle(gate, who, bundle_id)


# -- receiving ------------------------------------------------------------------------------------


async def submit_document(
    db: Database, gate: AccessGate, who: Principal, body: Any, *, now: datetime
) -> IssuedDocument:
    """Store a document Bundle produced elsewhere, once it is valid R4 and has every mandatory heading."""
    gate.authorise(who, CREATE, "DocumentReference")
    bundle = writes.validated(body, "Bundle")
    composition = checked_document(bundle)
    subject = await _local_subject(gate, who, bundle, composition)
    stored_id = str(uuid.uuid4())
    labels = strictest_labels([bundle, *(e.get("resource") or {} for e in bundle.get("entry") or [])])
    stored = with_labels({**bundle, "id": stored_id}, labels)
    own_copy = with_labels({**composition, "subject": subject} if subject else composition, labels)
    async with db.write() as conn:
        issued, stored_reference = await _store(conn, stored, received_reference_id(bundle, stored_id), now,
                                                composition=own_copy, subject=subject,
                                                prepare=lambda resource: gate.prepare(who, resource))
        interaction = CREATE if stored_reference.version_id == 1 else UPDATE
        await gate.check_change(conn, who, interaction, stored_reference)
    return issued


def checked_document(bundle: JSON) -> JSON:
    """The Composition of a received document, or 422 naming what is wrong (every missing heading)."""
    problem = document_problem(bundle)
    if problem:
        raise outcomes.error(422, "structure", problem, expression=("Bundle",), details_code="not-a-document")
    unsafe = unsafe_narratives(bundle)
    if unsafe:
        raise FhirError(400, [OutcomeIssue(code="value", diagnostics=problem, expression=(where,),
                                           details_code="unsafe-narrative") for where, problem in unsafe])
    composition = bundle["entry"][0]["resource"]
    definition = match_definition(composition, definitions().values())
    if definition is None:
        raise outcomes.error(422, "not-supported", "Composition.type is not a document type this server "
                             f"receives; known types: {_known_types()}", expression=("Composition.type",),
                             details_code="unknown-document-type")
    missing = missing_headings(definition, composition)
    if missing:
        issues = [OutcomeIssue(code="required", details_code="missing-heading",
                               expression=("Bundle.entry[0].resource.section",),
                               diagnostics=f"Mandatory heading '{h.title}' ({h.code['system']}|{h.code['code']}) "
                                           f"is missing from this {definition.title}")
                  for h in missing]
        raise FhirError(422, issues)
    return composition


def received_reference_id(bundle: JSON, stored_id: str) -> str:
    """One DocumentReference per document identifier, so a re-sent document versions it."""
    identifier = bundle.get("identifier") or {}
    if identifier.get("value"):
        return str(uuid.uuid5(DOCUMENT_NAMESPACE, f"{identifier.get('system')}|{identifier['value']}"))
    return stored_id


def _known_types() -> str:
    return ", ".join(sorted({f"{d.type['system']}|{d.type['code']} ({d.type.get('display', d.title)})"
                             for d in definitions().values()}))


async def _local_subject(gate: AccessGate, who: Principal, bundle: JSON, composition: JSON) -> JSON | None:
    """The local Patient the document is about (by NHS number, as far as `who` may see), else by identifier."""
    patient = _subject_entry(bundle, composition.get("subject"))
    if patient is None:
        return None
    nhs_number = identifier_value(patient, NHS_NUMBER)
    if not nhs_number:
        return None
    found = await GateReader(gate, who).by_identifier("Patient", NHS_NUMBER, nhs_number)
    if found is not None and found.get("resourceType") == "Patient":
        return {"reference": f"Patient/{found['id']}"}
    return {"identifier": {"system": NHS_NUMBER, "value": nhs_number}}


def _subject_entry(bundle: JSON, subject: Any) -> JSON | None:
    reference = str((subject or {}).get("reference") or "")
    patients = [e for e in bundle.get("entry") or [] if (e.get("resource") or {}).get("resourceType") == "Patient"]
    for entry in patients:
        resource = entry["resource"]
        if reference and (entry.get("fullUrl") == reference or reference.endswith(f"Patient/{resource.get('id')}")):
            return resource
    return patients[0]["resource"] if len(patients) == 1 else None

