"""An inpatient discharge (ADT^A03) raises its transfers of care, inside the message's own transaction.

`after_ingest` is called by the ingest pipeline (engine/ingest/pipeline.py, `_apply_in`) after the
message's resources are written and before the transaction commits, so a discharge's document,
Tasks and notifications commit — or roll back — with the message that caused them, and the ACK
leaves only after all of them are stored (DESIGN.md principle 1).

For an A03 that finished an inpatient Encounter: read the patient's record (GP practice,
care-home residency, referrals), decide the receivers (engine/transfers/receivers.py), issue the
inpatient discharge document (engine.documents), and create one Task per receiver with its
notifications in the outbox. A re-sent or replayed A03 finds its Tasks (deterministic ids) and
leaves them — and their status — as they are.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from engine.documents.definitions import definitions
from engine.documents.gather import ReadScope, StoreReader, named_parties
from engine.documents.keys import reference_id_for
from engine.documents.service import issue_discharge_changes, issue_discharge_document
from engine.ingest.apply import Change, Current
from engine.ingest.store import write_changes
from engine.transfers import receivers as rx
from engine.transfers import store
from engine.transfers.config import TransfersConfig, process_config
from engine.transfers.tasks import DocumentRefs, build_task, task_id

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message
    from adapters.senders import SenderConfig
    from mappings.result import MappingResult

log = logging.getLogger("sharedcare.transfers")
JSON = dict[str, Any]
DocumentIssuer = Callable[..., Awaitable[Any]]


async def after_ingest(conn: AsyncConnection, message: Message, sender: SenderConfig, result: MappingResult, *,
                       now: datetime) -> list[str]:
    """The ingest hook, once the message's resources are written: raise the transfers of an A03
    discharge; ids of the Tasks created."""
    encounter_id = discharged_encounter(message, result)
    if encounter_id is None:
        return []
    return await raise_transfers(conn, encounter_id, hospital_of(sender), trigger="A03", now=now)


def discharged_encounter(message: Message, result: MappingResult) -> str | None:
    """The id of the Encounter an A03 finishes, or None for any other message."""
    if message.trigger != "A03":
        return None
    return next((d["id"] for d in result.resources if d.get("resourceType") == "Encounter"), None)


def hospital_of(sender: SenderConfig) -> rx.OrgRef:
    return rx.org_for_ods(sender.ods_code, sender.name or None)


async def transfer_changes(reader: StoreReader, message: Message, sender: SenderConfig, result: MappingResult, *,
                           now: datetime) -> list[Change]:
    """The ingest hook before the write (group commit): what raising an A03's transfers writes — the
    discharge document and the new Tasks — read through `reader`, which sees the batch's pending
    versions. The caller writes them with the batch, then calls `notify` with the Tasks as stored."""
    encounter_id = discharged_encounter(message, result)
    if encounter_id is None:
        return []
    config = process_config()
    return await _transfer_changes(reader, encounter_id, hospital_of(sender), trigger="A03", now=now,
                                   config=config, issuer=None) or []


def document_issuer() -> DocumentIssuer | None:
    """engine.documents' `issue_discharge_document`, or None while that package is not installed."""
    try:
        module = importlib.import_module("engine.documents.service")
    except ModuleNotFoundError as exc:
        if exc.name in {"engine.documents", "engine.documents.service"}:
            return None
        raise
    return getattr(module, "issue_discharge_document", None)


async def raise_transfers(conn: AsyncConnection, encounter_id: str, hospital: rx.OrgRef, *, trigger: str,
                          now: datetime, config: TransfersConfig | None = None,
                          issuer: DocumentIssuer | None = None) -> list[str]:
    """Document, Tasks and notifications for the discharge that finished `encounter_id`.

    Reads are batched through one `StoreReader` that the document shares; the document and the new
    Tasks are written by one statement (engine.ingest.store.write_changes), then their notifications.
    """
    changes = await _transfer_changes(StoreReader(conn), encounter_id, hospital, trigger=trigger, now=now,
                                      config=config or process_config(), issuer=issuer)
    if not changes:
        return []
    written = await write_changes(conn, changes, now)
    return await notify(conn, [w.document for w in written if w.res_type == "Task"], now)


async def notify(conn: AsyncConnection, tasks: list[JSON], now: datetime) -> list[str]:
    """The notifications of new transfer Tasks (as stored, meta stamped) in the outbox; their ids."""
    await store.enqueue_many(conn, tasks, store.TASK_REQUESTED, now)
    for encounter_id, count in Counter(_encounter_of(task) for task in tasks).items():
        log.info("transfers raised", extra={"fields": {"encounter": encounter_id, "tasks": count}})
    return [task["id"] for task in tasks]


def _encounter_of(task: JSON) -> str | None:
    return rx.reference_id(task.get("encounter"), "Encounter")


async def _transfer_changes(reader: StoreReader, encounter_id: str, hospital: rx.OrgRef, *, trigger: str,
                            now: datetime, config: TransfersConfig, issuer: DocumentIssuer | None
                            ) -> list[Change] | None:
    """The document's changes and the new Tasks, or None when `encounter_id` is not an inpatient discharge."""
    encounter = await reader.get("Encounter", encounter_id)
    if encounter is None or not rx.is_inpatient_discharge(trigger, encounter):
        return None
    patient_id = rx.reference_id(encounter.get("subject"), "Patient")
    patient = await reader.get("Patient", patient_id) if patient_id else None
    if patient is None or patient_id is None:
        return None
    receivers = await _receivers(reader, patient, encounter, hospital, config)
    # The stored Tasks (a re-sent discharge has them) and DocumentReference, in one query.
    reference_key = ("DocumentReference", reference_id_for(encounter_id, config.document_type))
    stored = await reader.stored([*(("Task", task_id(encounter_id, r)) for r in receivers), reference_key])
    document, changes = await _issue_document(reader, encounter_id, config, issuer, now,
                                              {reference_key: stored.get(reference_key)})
    tasks = [build_task(encounter_id=encounter_id, patient_id=patient_id, receiver=receiver, requester=hospital,
                        document=document, now=now) for receiver in receivers]
    # A re-sent discharge finds its Tasks: the transfer exists, and may have moved on. Two receivers with one
    # key (an organisation in two roles) share a Task: the first one's.
    new_tasks = [task for task in _first_by_id(tasks) if ("Task", task["id"]) not in stored]
    return [*changes, *(Change(task, None, track_source=False) for task in new_tasks)]


def _first_by_id(documents: list[JSON]) -> list[JSON]:
    first: dict[str, JSON] = {}
    for document in documents:
        first.setdefault(document["id"], document)
    return list(first.values())


async def _receivers(reader: StoreReader, patient: JSON, encounter: JSON, hospital: rx.OrgRef,
                     config: TransfersConfig) -> list[rx.Receiver]:
    # One read of the patient's record for the receivers and the document (gather.gather asks the same).
    within = read_scope(config.document_type, encounter["id"])
    await reader.prefetch_compartment(patient["id"], {"EpisodeOfCare", "ServiceRequest",
                                                      *definition_types(config.document_type)}, within)
    episodes = await reader.compartment(patient["id"], ["EpisodeOfCare"], within)
    referrals = await reader.compartment(patient["id"], ["ServiceRequest"], within)
    destination = rx.reference_id((encounter.get("hospitalization") or {}).get("destination"), "Location")
    org_ids = rx.referenced_organizations(patient, encounter, episodes, referrals)
    # The parties the document names are read in the same query (engine.documents.gather.named_parties).
    await reader.prefetch([*(("Location", d) for d in [destination] if d), *(("Organization", o) for o in org_ids),
                           *named_parties(patient, encounter)])
    locations = {loc["id"]: loc for loc in await reader.read_many("Location", [destination] if destination else [])}
    org_ids |= {i for i in (rx.reference_id(loc.get("managingOrganization"), "Organization")
                            for loc in locations.values()) if i}
    organizations = {org["id"]: org for org in await reader.read_many("Organization", sorted(org_ids))}
    return rx.discharge_receivers(patient=patient, encounter=encounter, episodes=episodes, referrals=referrals,
                                  organizations=organizations, locations=locations, sender_ods=hospital.ods or "",
                                  care_home_codes=config.care_home_codes)


def definition_types(doc_type: str) -> tuple[str, ...]:
    """The resource types the document definition `doc_type` gathers (none for an unknown type)."""
    definition = definitions().get(doc_type)
    return definition.resource_types if definition is not None else ()


def read_scope(doc_type: str, encounter_id: str) -> ReadScope:
    """What of the patient's record the document definition `doc_type` can use (gather.ReadScope). The
    receivers read what they need from it too: the active referrals (ServiceRequest) and every
    EpisodeOfCare — so ServiceRequests are narrowed only to statuses that include `active`, and
    episodes never."""
    definition = definitions().get(doc_type)
    if definition is None:
        return ReadScope(encounter_id)
    scope = ReadScope.of(definition, encounter_id)
    statuses = tuple((t, codes) for t, codes in scope.statuses
                     if t != "EpisodeOfCare" and (t != "ServiceRequest" or "active" in codes))
    return ReadScope(encounter_id, scope.encounter_types - {"EpisodeOfCare", "ServiceRequest"}, statuses)


async def _issue_document(reader: StoreReader, encounter_id: str, config: TransfersConfig,
                          issuer: DocumentIssuer | None, now: datetime,
                          currents: Mapping[tuple[str, str], Current | None]
                          ) -> tuple[DocumentRefs | None, list[Change]]:
    """The discharge document. engine.documents' own issuer is asked for its writes as changes, for the
    caller to write together with the Tasks (`issue_discharge_changes`, sharing `reader`); any other
    issuer (a stand-in) writes its own."""
    issue = issuer or document_issuer()
    if issue is None:
        log.warning("engine.documents is not installed: transfers are raised without a discharge document")
        return None, []
    changes: list[Change] = []
    if issue is issue_discharge_document:
        issued, changes = await issue_discharge_changes(reader.conn, encounter_id, config.document_type, now=now,
                                                        reader=reader, currents=currents)
    else:
        issued = await issue(reader.conn, encounter_id, config.document_type, now=now)
    return DocumentRefs(getattr(issued, "bundle_id", None), getattr(issued, "composition_id", None),
                        getattr(issued, "document_reference_id", None)), changes
