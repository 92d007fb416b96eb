"""ADT message maps: `ADT_MAPS["ADT^A01"](message, sender) → MappingResult`.

Normative source: HL7 v2-to-FHIR IG message maps ADT_A01, ADT_A02, ADT_A05, ADT_A09 and ADT_A11
(segment → resource), with the NHS ITK HL7 v2 ADT practice of UK-REFERENCE.md §3: status by
trigger, A28/A31 as demographic-only updates, and A34/A40 merges (which the IG does not map: their
semantics are this project's, see `Merge` in mappings/result.py).

Each event is one row of `ADT_EVENTS`: what the message is about ("visit", "patient" or "merge").

| kind    | triggers                                   | resources                                         |
| ------- | ------------------------------------------ | ------------------------------------------------- |
| visit   | A01 A02 A03 A04 A05 A08 A11 A12 A13        | Patient (+GP, RelatedPerson), Encounter (+Org, Practitioners, Locations), AllergyIntolerance, Condition |
| patient | A28 A31                                    | Patient (+GP, RelatedPerson), AllergyIntolerance, Condition  |
| merge   | A34 A40                                    | the survivor Patient, and Action("merge", Merge(survivor, old)) |

A04 and A08 carry a visit only when PV1 identifies one (PV1-19 or PV1-44, `encounter.has_visit`); an
A01 whose PV1 has neither is identified by its MSH-10 (`encounter.identified_by_message`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from mappings.hl7v2.clinical import CLINICAL_FIELDS_READ, map_clinical
from mappings.hl7v2.coverage import HEADER_FIELDS_READ, MRG_FIELDS_READ, combine, unmapped_fields
from mappings.hl7v2.datatypes import JSON, comp, in_sender_time_zone, parse_v2_datetime
from mappings.hl7v2.encounter import ENCOUNTER_FIELDS_READ, map_encounter
from mappings.hl7v2.patient import (
    PATIENT_FIELDS_READ,
    PatientIdentifiers,
    PatientMapping,
    classify_identifiers,
    map_patient,
    map_pid,
    subject_key,
)
from mappings.result import (
    REQUIRED_FIELD_MISSING,
    Action,
    ErrorLocation,
    MappingError,
    MappingResult,
    Merge,
)

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

AdtKind = Literal["visit", "patient", "merge"]
MessageMap = Callable[["Message", "SenderConfig"], MappingResult]


@dataclass(frozen=True)
class AdtEvent:
    """One ADT trigger: what it is about (`kind`) and, for the record, its name in HL7 v2.5 ch. 3."""

    trigger: str
    kind: AdtKind
    title: str


ADT_EVENTS: tuple[AdtEvent, ...] = (
    AdtEvent("A01", "visit", "admit/visit notification"),
    AdtEvent("A02", "visit", "transfer a patient"),
    AdtEvent("A03", "visit", "discharge/end visit"),
    AdtEvent("A04", "visit", "register a patient"),
    AdtEvent("A05", "visit", "pre-admit a patient"),
    AdtEvent("A08", "visit", "update patient information"),
    AdtEvent("A11", "visit", "cancel admit/visit notification"),
    AdtEvent("A12", "visit", "cancel transfer"),
    AdtEvent("A13", "visit", "cancel discharge/end visit"),
    AdtEvent("A28", "patient", "add person information"),
    AdtEvent("A31", "patient", "update person information"),
    AdtEvent("A34", "merge", "merge patient information - patient ID only"),
    AdtEvent("A40", "merge", "merge patient - patient identifier list"),
)

# Fields read per segment, by kind (coverage report). A28/A31 deliberately ignore PV1: it is reported.
_COMMON_READ = combine(HEADER_FIELDS_READ, PATIENT_FIELDS_READ, CLINICAL_FIELDS_READ)
FIELDS_READ: dict[AdtKind, dict[str, frozenset[int]]] = {
    "visit": combine(_COMMON_READ, ENCOUNTER_FIELDS_READ),
    "patient": _COMMON_READ,
    "merge": combine(HEADER_FIELDS_READ, PATIENT_FIELDS_READ, {"MRG": MRG_FIELDS_READ}),
}


# --------------------------------------------------------------------------------------------------
# Shared pieces


def event_time(message: Message) -> datetime | None:
    """EVN-2 recorded date/time, else MSH-7, as an aware UTC datetime (None if neither parses)."""
    evn = message.first("EVN")
    recorded = parse_v2_datetime(comp(evn.field(2), 1)) if evn is not None else None
    return recorded or parse_v2_datetime(message.timestamp)


def local_patient_id(patient: PatientMapping, sender: SenderConfig) -> str:
    """The sender's own number for the patient (its MRN), else any local number, else the NHS number:
    the patient part of an Encounter id when PV1-19 is empty (`encounter.encounter_id`)."""
    own = sender.system_for("mrn")
    local = [i for i in patient.key.local if i.system == own] or list(patient.key.local)
    return local[0].value if local else (patient.key.nhs_number or patient.patient_id)


def dedupe(resources: list[JSON]) -> list[JSON]:
    """One resource per (type, id), at its first position, keeping the last version (a repeated AL1)."""
    latest = {(r["resourceType"], r["id"]): r for r in resources}
    order = dict.fromkeys((r["resourceType"], r["id"]) for r in resources)
    return [latest[key] for key in order]


def _result(message: Message, kind: AdtKind, resources: list[JSON], patient: PatientMapping,
            warnings: list[str], actions: list[Action] | None = None) -> MappingResult:
    return MappingResult(
        message_type=f"ADT^{message.trigger}",
        resources=dedupe(resources),
        patient_id=patient.patient_id,
        patient_key=patient.key,
        event_time=event_time(message),
        actions=actions or [],
        patient_elements_not_sent=patient.not_sent,
        unmapped=unmapped_fields(message, FIELDS_READ[kind]),
        warnings=[*patient.warnings, *warnings],
    )


# --------------------------------------------------------------------------------------------------
# The three kinds


def map_visit_event(message: Message, sender: SenderConfig) -> MappingResult:
    """A01 A02 A03 A04 A05 A08 A11 A12 A13: Patient, Encounter (when PV1 identifies a visit), AL1, DG1."""
    patient = map_patient(message, sender)
    encounter = map_encounter(message.first("PV1"), message.first("PV2"), message.trigger, patient.patient_id,
                              local_patient_id(patient, sender), message.control_id, sender)
    clinical = map_clinical(message.all("AL1"), message.all("DG1"), patient.patient_id,
                            subject_key(patient.key, sender), encounter.encounter_id if encounter else None, sender)
    resources = [*patient.resources]
    if encounter is not None:
        if clinical.diagnoses:
            encounter.encounter["diagnosis"] = clinical.diagnoses
        resources += encounter.resources
    resources += clinical.resources
    warnings = [*(encounter.warnings if encounter else ()), *clinical.warnings]
    return _result(message, "visit", resources, patient, warnings)


def map_patient_event(message: Message, sender: SenderConfig) -> MappingResult:
    """A28 A31: demographics only (UK ITK ADT_A05 structure); PV1, if any, is not used."""
    patient = map_patient(message, sender)
    clinical = map_clinical(message.all("AL1"), message.all("DG1"), patient.patient_id,
                            subject_key(patient.key, sender), None, sender)
    return _result(message, "patient", [*patient.resources, *clinical.resources], patient, clinical.warnings)


def merge_pairs(message: Message) -> list[tuple[Segment, Segment | None, Segment | None]]:
    """The (PID, PD1, MRG) of each patient group of an ADT_A39/ADT_A30 message, in order."""
    pairs: list[tuple[Segment, Segment | None, Segment | None]] = []
    for segment in message.segments:
        if segment.name == "PID":
            pairs.append((segment, None, None))
        elif pairs and segment.name in {"PD1", "MRG"}:
            pid, pd1, mrg = pairs[-1]
            pairs[-1] = (pid, segment, mrg) if segment.name == "PD1" else (pid, pd1, segment)
    return pairs


def prior_identifiers(mrg: Segment | None, sender: SenderConfig) -> PatientIdentifiers:
    """MRG-1 prior patient identifier list (and the deprecated MRG-4 prior patient ID): the old record's key,
    NHS number included (same recognition and check digit as PID-3). `MappingError` 101 when empty."""
    if mrg is None:
        raise MappingError(REQUIRED_FIELD_MISSING, "MRG segment is missing: nothing to merge", ErrorLocation("MRG"))
    reps = [(n, i, cx) for n in (1, 4) for i, cx in enumerate(mrg.repetitions(n), 1)]
    old = classify_identifiers(reps, sender, "MRG", sequence=mrg.occurrence)
    if not old.nhs_number and not old.local:
        raise MappingError(REQUIRED_FIELD_MISSING, "MRG-1 has no prior patient identifier",
                           ErrorLocation("MRG", mrg.occurrence, 1))
    return old


def map_merge_event(message: Message, sender: SenderConfig) -> MappingResult:
    """A34 A40: for each PID/MRG group, the survivor Patient and Action("merge", Merge(survivor, old)).

    The subject (`patient_id`) is the first group's survivor. The IG has no merge map; the engine
    re-points the old record's resources and marks it replaced-by (UK-REFERENCE test case 1).
    """
    pairs = merge_pairs(message)
    if not pairs:
        raise MappingError(REQUIRED_FIELD_MISSING, "PID segment is missing", ErrorLocation("PID", 1))
    resources: list[JSON] = []
    actions: list[Action] = []
    mappings: list[PatientMapping] = []
    for pid, pd1, mrg in pairs:
        survivor = map_pid(pid, pd1, [], sender)
        old = prior_identifiers(mrg, sender)
        mappings.append(survivor)
        resources += survivor.resources
        actions.append(Action("merge", Merge(survivor=survivor.key, old=old.key)))
    return _result(message, "merge", resources, mappings[0], [w for m in mappings[1:] for w in m.warnings],
                   actions)


_KIND_MAPS: dict[AdtKind, MessageMap] = {
    "visit": in_sender_time_zone(map_visit_event),
    "patient": in_sender_time_zone(map_patient_event),
    "merge": in_sender_time_zone(map_merge_event),
}

ADT_MAPS: dict[str, MessageMap] = {f"ADT^{e.trigger}": _KIND_MAPS[e.kind] for e in ADT_EVENTS}

__all__ = [
    "ADT_EVENTS",
    "ADT_MAPS",
    "FIELDS_READ",
    "AdtEvent",
    "event_time",
    "map_merge_event",
    "map_patient_event",
    "map_visit_event",
    "merge_pairs",
]
