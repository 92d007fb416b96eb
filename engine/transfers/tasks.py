"""A transfer of care as a FHIR R4 Task, and the receiving organisation's state machine over it.

https://hl7.org/fhir/R4/task.html: `status` requested → received → accepted | rejected
(https://hl7.org/fhir/R4/task.html#statemachine), `intent` order, `focus` the discharge document's
DocumentReference, `for` the Patient, `encounter`, `requester` the discharging hospital, `owner` the
receiving organisation, `businessStatus` what the transfer waits for. Ids are uuid5 over
(encounter, receiver), so a re-sent or replayed discharge finds its Task instead of duplicating it.

Pure: no I/O and no clock (`now` is passed in).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent.vocabulary import owner_tag
from engine.db.repository import format_instant
from engine.transfers.receivers import ROLE_DISPLAY, OrgRef, Receiver
from mappings.ids import resource_id

JSON = dict[str, Any]
TRANSFER_IDENTIFIER = "https://fhir.sharedcare.dev/Id/transfer-of-care"
DISCHARGE_IDENTIFIER = "https://fhir.sharedcare.dev/Id/discharge"
BUSINESS_STATUS = "https://fhir.sharedcare.dev/CodeSystem/transfer-business-status"
RECEIVER_ROLE = "https://fhir.sharedcare.dev/CodeSystem/transfer-receiver-role"
TASK_INPUT = "https://fhir.sharedcare.dev/CodeSystem/transfer-input"
SNOMED = "http://snomed.info/sct"
TRANSFER_OF_CARE = {"coding": [{"system": SNOMED, "code": "308292007", "display": "Transfer of care"}],
                    "text": "Transfer of care"}

# Task.status → businessStatus (what the transfer is waiting for).
BUSINESS = {
    "requested": ("awaiting-receipt", "Awaiting receipt by the receiving organisation"),
    "received": ("awaiting-decision", "Received; awaiting acceptance"),
    "accepted": ("accepted", "Accepted: care transferred"),
    "rejected": ("rejected", "Rejected by the receiving organisation"),
}
UNIDENTIFIED = ("receiver-not-identified", "Receiving organisation not identified; the discharging team must assign it")
OPEN_STATUSES = ("requested", "received")

RECEIVE, ACCEPT, REJECT = "receive", "accept", "reject"
ACTIONS = (RECEIVE, ACCEPT, REJECT)
_TRANSITIONS: dict[tuple[str, str], str] = {
    ("requested", RECEIVE): "received",
    ("requested", ACCEPT): "accepted",
    ("requested", REJECT): "rejected",
    ("received", ACCEPT): "accepted",
    ("received", REJECT): "rejected",
}
_TARGET = {RECEIVE: "received", ACCEPT: "accepted", REJECT: "rejected"}


@dataclass(frozen=True, slots=True)
class DocumentRefs:
    """The discharge document a transfer carries (engine.documents' IssuedDocument)."""

    bundle_id: str | None
    composition_id: str | None
    document_reference_id: str | None


class TransitionError(Exception):
    """A state change the Task does not allow: 409 (wrong state) or 422 (missing reason)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def task_id(encounter_id: str, receiver: Receiver) -> str:
    """uuid5 over (encounter, receiver): the same discharge to the same organisation is one Task."""
    return resource_id("Task", "transfer-of-care", encounter_id, receiver.key)


def business_status(status: str, *, identified: bool = True) -> JSON:
    code, text = BUSINESS[status] if identified or status not in OPEN_STATUSES else UNIDENTIFIED
    return {"coding": [{"system": BUSINESS_STATUS, "code": code, "display": text}], "text": text}


def _reference(res_type: str, res_id: str) -> JSON:
    return {"reference": f"{res_type}/{res_id}"}


def _inputs(document: DocumentRefs | None) -> list[JSON]:
    if document is None:
        return []
    pairs = (("Composition", document.composition_id, "discharge-composition"),
             ("Bundle", document.bundle_id, "discharge-document-bundle"))
    return [{"type": {"coding": [{"system": TASK_INPUT, "code": code}]}, "valueReference": _reference(t, i)}
            for t, i, code in pairs if i]


def build_task(*, encounter_id: str, patient_id: str, receiver: Receiver, requester: OrgRef,
               document: DocumentRefs | None, now: datetime) -> JSON:
    """The Task for one receiver of one discharge (the store stamps versionId and lastUpdated).

    `focus` is the discharge document's DocumentReference (the Encounter when no document could
    be issued); `input` names its Composition and document Bundle. The discharging hospital is the
    Task's data owner (`consent.vocabulary.owner_tag`), as it is of the discharge itself.
    """
    instant = format_instant(now)
    focus = (_reference("DocumentReference", document.document_reference_id)
             if document is not None and document.document_reference_id else _reference("Encounter", encounter_id))
    task: JSON = {
        "resourceType": "Task",
        "id": task_id(encounter_id, receiver),
        **({"meta": {"tag": [owner_tag(requester.ods)]}} if requester.ods else {}),
        "identifier": [{"system": TRANSFER_IDENTIFIER, "value": f"{encounter_id}|{receiver.key}"}],
        "groupIdentifier": {"system": DISCHARGE_IDENTIFIER, "value": encounter_id},
        "status": "requested",
        "businessStatus": business_status("requested", identified=receiver.org is not None),
        "intent": "order",
        "priority": "routine",
        "code": copy.deepcopy(TRANSFER_OF_CARE),
        "description": f"Transfer of care on discharge to the {ROLE_DISPLAY[receiver.role].lower()}",
        "focus": focus,
        "for": _reference("Patient", patient_id),
        "encounter": _reference("Encounter", encounter_id),
        "authoredOn": instant,
        "lastModified": instant,
        "requester": requester.reference(),
        "performerType": [{"coding": [{"system": RECEIVER_ROLE, "code": receiver.role,
                                       "display": ROLE_DISPLAY[receiver.role]}]}],
    }
    if receiver.org is not None:
        task["owner"] = receiver.org.reference()
    inputs = _inputs(document)
    if inputs:
        task["input"] = inputs
    return task


def owner_ods(task: JSON) -> str | None:
    """The ODS code of the Task's owner (Task.owner.identifier), if any."""
    identifier = (task.get("owner") or {}).get("identifier") or {}
    return identifier.get("value")


def requester_ods(task: JSON) -> str | None:
    identifier = (task.get("requester") or {}).get("identifier") or {}
    return identifier.get("value")


def next_status(current: str, action: str) -> str | None:
    """The status `action` moves a Task in `current` to; None when it already is there (a repeat).

    Raises TransitionError 409 for a transition the state machine does not have.
    """
    target = _TARGET.get(action)
    if target is None:
        raise TransitionError(400, "unknown-action", f"Unknown transfer action {action!r}")
    if current == target:
        return None
    if (current, action) not in _TRANSITIONS:
        raise TransitionError(409, "invalid-transition", f"A transfer that is {current} cannot be {target}")
    return target


def transition(task: JSON, action: str, *, reason: str | None, actor: str, now: datetime) -> JSON | None:
    """The Task after the owner's `action` (receive, accept, reject), or None when nothing changes.

    A rejection needs a reason (422 without one); it goes in `statusReason`. Who acted and when is
    kept as a note. Repeating the action that put the Task in its state changes nothing.
    """
    if action == REJECT and not (reason or "").strip():
        raise TransitionError(422, "reason-required", "A rejected transfer needs a reason")
    target = next_status(str(task.get("status")), action)
    if target is None:
        return None
    instant = format_instant(now)
    updated = copy.deepcopy(task)
    meta = {k: v for k, v in (updated.pop("meta", None) or {}).items() if k not in {"versionId", "lastUpdated"}}
    if meta:
        updated = {"resourceType": updated["resourceType"], "id": updated.get("id"), "meta": meta, **updated}
    updated["status"] = target
    updated["businessStatus"] = business_status(target)
    updated["lastModified"] = instant
    if target == "accepted":
        updated["executionPeriod"] = {**(updated.get("executionPeriod") or {}), "start": instant}
    if reason and reason.strip():
        updated["statusReason"] = {"text": reason.strip()}
    note = f"{target.capitalize()} by {actor}" + (f": {reason.strip()}" if reason and reason.strip() else "")
    updated["note"] = [*(updated.get("note") or ()), {"time": instant, "text": note}]
    return updated


def waiting_seconds(task: JSON, now: datetime) -> int:
    """How long the transfer has waited since it was raised (Task.authoredOn), in whole seconds."""
    authored = task.get("authoredOn")
    if not isinstance(authored, str):
        return 0
    moment = datetime.fromisoformat(authored)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return max(0, int((now - moment).total_seconds()))
