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
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db import repository
from engine.transfers import receivers as rx
from engine.transfers import store
from engine.transfers.config import TransfersConfig, process_config
from engine.transfers.tasks import DocumentRefs, build_task

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message
    from adapters.senders import SenderConfig
    from mappings.result import MappingResult

log = logging.getLogger("sharedcare.transfers")
JSON = dict[str, Any]
DocumentIssuer = Callable[..., Awaitable[Any]]


async def after_ingest(conn: AsyncConnection, message: Message, sender: SenderConfig, result: MappingResult, *,
                       now: datetime) -> list[str]:
    """The ingest hook: raise the transfers of an A03 discharge; ids of the Tasks created."""
    if message.trigger != "A03":
        return []
    encounter_id = next((d["id"] for d in result.resources if d.get("resourceType") == "Encounter"), None)
    if encounter_id is None:
        return []
    return await raise_transfers(conn, encounter_id, rx.org_for_ods(sender.ods_code, sender.name or None),
                                 trigger="A03", now=now)


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
    """Document, Tasks and notifications for the discharge that finished `encounter_id`."""
    config = config or process_config()
    encounter = await store.read_resource(conn, "Encounter", encounter_id)
    if encounter is None or not rx.is_inpatient_discharge(trigger, encounter):
        return []
    patient_id = rx.reference_id(encounter.get("subject"), "Patient")
    patient = await store.read_resource(conn, "Patient", patient_id) if patient_id else None
    if patient is None or patient_id is None:
        return []
    receivers = await _receivers(conn, patient, encounter, hospital, config)
    document = await _issue_document(conn, encounter_id, config, issuer, now)
    created = []
    for receiver in receivers:
        task = build_task(encounter_id=encounter_id, patient_id=patient_id, receiver=receiver, requester=hospital,
                          document=document, now=now)
        if await repository.read(conn, "Task", task["id"]) is not None:
            continue  # a re-sent discharge: the transfer exists, and may have moved on
        stored = await repository.create(conn, task, now=now, res_id=task["id"])
        await store.enqueue(conn, orjson.loads(stored.content or "{}"), store.TASK_REQUESTED, now)
        created.append(task["id"])
    if created:
        log.info("transfers raised", extra={"fields": {"encounter": encounter_id, "tasks": len(created)}})
    return created


async def _receivers(conn: AsyncConnection, patient: JSON, encounter: JSON, hospital: rx.OrgRef,
                     config: TransfersConfig) -> list[rx.Receiver]:
    episodes = await store.compartment_of(conn, patient["id"], "EpisodeOfCare")
    referrals = await store.compartment_of(conn, patient["id"], "ServiceRequest")
    destination = rx.reference_id((encounter.get("hospitalization") or {}).get("destination"), "Location")
    locations = await store.read_resources(conn, "Location", [destination] if destination else [])
    org_ids = rx.referenced_organizations(patient, encounter, episodes, referrals)
    org_ids |= {i for i in (rx.reference_id(loc.get("managingOrganization"), "Organization")
                            for loc in locations.values()) if i}
    organizations = await store.read_resources(conn, "Organization", org_ids)
    return rx.discharge_receivers(patient=patient, encounter=encounter, episodes=episodes, referrals=referrals,
                                  organizations=organizations, locations=locations, sender_ods=hospital.ods or "",
                                  care_home_codes=config.care_home_codes)


async def _issue_document(conn: AsyncConnection, encounter_id: str, config: TransfersConfig,
                          issuer: DocumentIssuer | None, now: datetime) -> DocumentRefs | None:
    issue = issuer or document_issuer()
    if issue is None:
        log.warning("engine.documents is not installed: transfers are raised without a discharge document")
        return None
    issued = await issue(conn, encounter_id, config.document_type, now=now)
    return DocumentRefs(getattr(issued, "bundle_id", None), getattr(issued, "composition_id", None),
                        getattr(issued, "document_reference_id", None))

