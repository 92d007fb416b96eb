"""PV1 + PV2 → Encounter, with its Locations (PV1-3/6/11/42), Practitioners (PV1-7/8/9/17) and the
sender's Organization as serviceProvider.

Normative source: HL7 v2-to-FHIR IG segment maps PV1[Encounter] and PV2[Encounter], datatype maps
PL[Location], XCN[Practitioner]. UK practice (UK-REFERENCE.md §1, §3; NHS ITK HL7 v2 ADT spec)
wins where they differ, as commented: status by trigger, PV1-4 admission method and PV1-36
discharge method as UK Core extensions, PV1-14 / PV1-37 with the NHS Data Dictionary code systems.

Identity (DESIGN.md #4, `encounter_id`): (sender ODS, PV1-19 visit number), the UK Encounter identity
(UK-REFERENCE §3); else (sender ODS, the patient's MRN, PV1-44 admit time). An A01 with neither still
records the admission, as the IG's ADT_A01 map creates an Encounter from every PV1: its id comes from
the message itself, (sender ODS, MRN, MSH-10 control id), so a replay or re-send of that A01 gives the
same id. Limitation, reported as a warning: nothing in a later message names that id, so an A02, A03,
A08 or A11 about the same stay cannot be matched to it (an A03 without PV1-19 or PV1-44 is still a 101).

Pure: `(PV1, PV2, trigger, patient, MSH-10, SenderConfig) → EncounterMapping | None` or `MappingError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mappings.hl7v2 import codes
from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    FieldMap,
    apply_field_maps,
    code_concept,
    comp,
    cwe_codeable_concept,
    cx_identifier,
    datetime_of,
    finish_resource,
    identifier_type,
    mapped_concept,
    pl_location,
    pl_parts,
    practitioner_from_xcn,
    reference,
    sender_organization,
    v2_to_fhir_datetime,
)
from mappings.ids import resource_id
from mappings.result import REQUIRED_FIELD_MISSING, ErrorLocation, MappingError

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Segment
    from adapters.senders import SenderConfig

PLANNED_START_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate"
PLANNED_END_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
UCUM = "http://unitsofmeasure.org"

# Triggers whose Encounter must be identifiable: without PV1-19 or PV1-44 they are an error, unless the
# message itself may identify it (below).
VISIT_TRIGGERS = frozenset({"A01", "A02", "A03", "A05", "A11", "A12", "A13"})
# Triggers that start a stay (A01 admit): without PV1-19 or PV1-44 the Encounter is identified by the message's
# MSH-10, so the admission is not lost. Not A05: a pre-admission's Encounter is made current by the A01 that
# follows it, which it could never be matched to; nor A04, whose visit is optional (`has_visit`).
MESSAGE_IDENTIFIED_TRIGGERS = frozenset({"A01"})
UNMATCHABLE_VISIT_WARNING = ("PV1 #1: PV1-19 visit number and PV1-44 admit time are empty; the Encounter is "
                             "identified by this message's MSH-10, so later messages about the stay cannot update it")
# Location roles: PV1 field → Encounter.location.status (IG PV1-3 active/planned, PV1-6 completed,
# PV1-11 active (temporary), PV1-42 reserved).
LOCATION_FIELDS: tuple[tuple[int, str], ...] = ((3, "active"), (6, "completed"), (11, "active"), (42, "reserved"))


@dataclass(frozen=True)
class EncounterMapping:
    """The Encounter and the resources it refers to, in dependency order."""

    encounter: JSON
    encounter_id: str
    before: tuple[JSON, ...]  # Organization, Practitioners, Locations
    warnings: tuple[str, ...] = ()

    @property
    def resources(self) -> list[JSON]:
        return [*self.before, self.encounter]


# --------------------------------------------------------------------------------------------------
# Identity and status


def has_visit(pv1: Segment | None) -> bool:
    """Whether a PV1 identifies a visit: PV1-19 visit number or PV1-44 admit time is valued.

    A04/A08/A28/A31 often carry an empty or placeholder PV1 (`PV1|1|N`): then the message updates
    the Patient only.
    """
    return pv1 is not None and bool(comp(pv1.field(19), 1) or comp(pv1.field(44), 1))


def identified_by_message(pv1: Segment, trigger: str, control_id: str) -> bool:
    """Whether the message, not the PV1, identifies the Encounter: an A01 (`MESSAGE_IDENTIFIED_TRIGGERS`)
    without PV1-19 or PV1-44, and with an MSH-10 message control id (HL7 v2.5 ch. 2 MSH-10, required)."""
    return trigger in MESSAGE_IDENTIFIED_TRIGGERS and not has_visit(pv1) and bool(control_id.strip())


def encounter_id(pv1: Segment, sender: SenderConfig, patient_local_id: str, control_id: str) -> str:
    """Encounter id from (sender ODS, PV1-19 visit number); without one, from (sender, MRN, PV1-44); without
    either, from (sender, MRN, "MSH-10", the message control id): MSH-10 is unique per sender, and the MRN
    keeps a sender's reused control id from joining two patients' stays (see the module docstring)."""
    visit = comp(pv1.field(19), 1)
    if visit:
        return resource_id("Encounter", sender.ods_code, visit)
    admitted = comp(pv1.field(44), 1)
    if admitted:
        return resource_id("Encounter", sender.ods_code, patient_local_id, admitted)
    return resource_id("Encounter", sender.ods_code, patient_local_id, "MSH-10", control_id)


def status_from_times(pv1: Segment) -> str:
    """A08 keeps no fixed status (UK-REFERENCE §3 "A08 unchanged"): finished when PV1-45 discharge time is
    valued, planned for a pre-admit (PV1-2 P), else in-progress (IG PV1-2 PatientClass[EncounterStatus])."""
    if comp(pv1.field(45), 1):
        return "finished"
    return "planned" if comp(pv1.field(2), 1).upper() == "P" else "in-progress"


def encounter_status(trigger: str, pv1: Segment) -> str:
    """Encounter.status by ADT trigger (UK-REFERENCE §3); A08 and others from the PV1 times."""
    return codes.TRIGGER_STATUS.get(trigger) or status_from_times(pv1)


def encounter_class(pv1: Segment) -> JSON:
    """PV1-2 → Encounter.class (IG PatientClass[EncounterClass]); empty or unknown → v2-0004 U (class is 1..1)."""
    system, code, display = codes.ENCOUNTER_CLASS.get(comp(pv1.field(2), 1).upper(), codes.ENCOUNTER_CLASS["U"])
    return {"system": system, "code": code, "display": display}


def period(pv1: Segment, trigger: str) -> JSON:
    """PV1-44 → period.start, PV1-45 → period.end; A13 (cancel discharge) clears the end (UK-REFERENCE §2 test 2)."""
    start = v2_to_fhir_datetime(comp(pv1.field(44), 1))
    end = None if trigger == "A13" else v2_to_fhir_datetime(comp(pv1.field(45), 1))
    return {k: v for k, v in (("start", start), ("end", end)) if v}


# --------------------------------------------------------------------------------------------------
# Coded PV1 fields (UK code systems)


def _uk_extension(url: str, system: str, table: Mapping[str, str], f: FieldLike) -> JSON | None:
    """A UK Core coded extension; a code outside the UK code system is left out (the binding is required)."""
    code = comp(f, 1).upper()
    display = table.get(code)
    if display is None:
        return None
    return {"url": url, "valueCodeableConcept": code_concept(system, code, display)}


def admission_method(f: FieldLike) -> JSON | None:
    """PV1-4 → UK Core AdmissionMethod extension. The IG maps PV1-4 to Encounter.type (AdmissionType);
    in UK (ITK) messages PV1-4 is the NHS admission method, so UK practice wins."""
    return _uk_extension(codes.ADMISSION_METHOD_EXTENSION, codes.ADMISSION_METHOD_SYSTEM, codes.ADMISSION_METHOD, f)


def discharge_method(f: FieldLike) -> JSON | None:
    """PV1-36 → UK Core DischargeMethod extension (UK wins over the IG's dischargeDisposition for PV1-36)."""
    return _uk_extension(codes.DISCHARGE_METHOD_EXTENSION, codes.DISCHARGE_METHOD_SYSTEM, codes.DISCHARGE_METHOD, f)


def _uk_concept(table: Mapping[str, str], system: str, f: FieldLike) -> JSON | None:
    """A CodeableConcept in a UK code system; an unknown code keeps the sender's coding (extensible binding)."""
    return mapped_concept(f, {code: (system, code, display) for code, display in table.items()})


def admit_source(f: FieldLike) -> JSON | None:
    """PV1-14 → hospitalization.admitSource, UK Core SourceOfAdmissionEngland (the IG has no vocabulary)."""
    return _uk_concept(codes.SOURCE_OF_ADMISSION, codes.SOURCE_OF_ADMISSION_SYSTEM, f)


def discharge_destination(f: FieldLike) -> JSON | None:
    """PV1-37 → hospitalization.dischargeDisposition, UK Core DischargeDestinationEngland. The IG maps PV1-37
    (DLD) to hospitalization.destination; UK messages send the NHS discharge destination code there."""
    return _uk_concept(codes.DISCHARGE_DESTINATION, codes.DISCHARGE_DESTINATION_SYSTEM, f)


def visit_identifier(sender: SenderConfig) -> Callable[[FieldLike], JSON | None]:
    """PV1-19 → identifier[1], type v2-0203#VN, in the sender's visit-number system (IG PV1-19)."""
    system = sender.system_for("visit")

    def convert(f: FieldLike) -> JSON | None:
        value = comp(f, 1)
        return {"use": "official", "type": identifier_type("VN"), "system": system, "value": value} if value else None

    return convert


def length_of_stay(f: FieldLike) -> JSON | None:
    """PV2-11 actual length of stay (days) → Encounter.length (IG NM[Quantity-LengthOfStay])."""
    days = comp(f, 1)
    return {"value": int(days), "unit": "days", "system": UCUM, "code": "d"} if days.isdigit() else None


def planned(url: str) -> Callable[[FieldLike], JSON | None]:
    """PV2-8 / PV2-9 expected admit / discharge → the R5 backport planned start / end extension (IG PV2)."""
    def convert(f: FieldLike) -> JSON | None:
        moment = datetime_of(f)
        return {"url": url, "valueDateTime": moment} if moment else None

    return convert


PV1_MAP: tuple[FieldMap, ...] = (
    FieldMap(4, "extension", admission_method, repeats=True),
    FieldMap(36, "extension", discharge_method, repeats=True),
    FieldMap(5, "hospitalization.preAdmissionIdentifier", cx_identifier),
    FieldMap(10, "serviceType", cwe_codeable_concept),
    FieldMap(13, "hospitalization.reAdmission", cwe_codeable_concept),
    FieldMap(14, "hospitalization.admitSource", admit_source),
    FieldMap(15, "hospitalization.specialArrangement", cwe_codeable_concept, repeats=True),
    FieldMap(16, "hospitalization.specialCourtesy", cwe_codeable_concept, repeats=True),
    FieldMap(37, "hospitalization.dischargeDisposition", discharge_destination),
    FieldMap(38, "hospitalization.dietPreference", cwe_codeable_concept, repeats=True),
    FieldMap(50, "identifier", cx_identifier, repeats=True),
)
PV2_MAP: tuple[FieldMap, ...] = (
    FieldMap(3, "reasonCode", cwe_codeable_concept, repeats=True),
    FieldMap(8, "extension", planned(PLANNED_START_EXTENSION), repeats=True),
    FieldMap(9, "extension", planned(PLANNED_END_EXTENSION), repeats=True),
    FieldMap(11, "length", length_of_stay),
    FieldMap(25, "priority", cwe_codeable_concept),
)
# Read by the named functions: set id, class, locations, participants, visit number, times.
PV1_NAMED_FIELDS = frozenset({1, 2, 3, 6, 7, 8, 9, 11, 17, 19, 42, 44, 45})
PV2_NAMED_FIELDS = frozenset({13})


# --------------------------------------------------------------------------------------------------
# Locations and participants


def location_resource(f: FieldLike, sender: SenderConfig) -> JSON | None:
    """A PL → Location, id from (sender ODS, PL components), managed by the sender (IG PL[Location])."""
    parts = pl_parts(f)
    body = pl_location(parts)
    if body is None:
        return None
    body["managingOrganization"] = reference("Organization", resource_id("Organization", sender.ods_code))
    return finish_resource(body, resource_id("Location", sender.ods_code, *parts.key()), sender.security_labels)


def location_status(pv1_field: int, default: str, status: str, patient_class: str) -> str:
    """Encounter.location.status: IG PV1-3 is active (planned for PV1-2 P); a finished Encounter's current
    location is completed."""
    if pv1_field == 3 and patient_class == "P":
        return "planned"
    if pv1_field == 3 and status in {"finished", "cancelled"}:
        return "completed"
    return default


def location_applies(pv1_field: int, trigger: str) -> bool:
    """Whether a PV1 location field is one the patient was at. In A12 (cancel transfer) PV1-6 holds the
    location the transfer went to in error (HL7 v2.5 §3.3.12), so it is not a completed stay."""
    return not (trigger == "A12" and pv1_field == 6)


def locations(pv1: Segment, status: str, trigger: str, sender: SenderConfig) -> tuple[list[JSON], list[JSON]]:
    """PV1-3/6/11/42 → (Location resources, Encounter.location entries). A02's prior location PV1-6 is completed."""
    resources: list[JSON] = []
    entries: list[JSON] = []
    patient_class = comp(pv1.field(2), 1).upper()
    for field_no, default in LOCATION_FIELDS:
        if not pv1.is_present(field_no) or not location_applies(field_no, trigger):
            continue
        location = location_resource(pv1.field(field_no), sender)
        if location is None:
            continue
        if location["id"] not in {r["id"] for r in resources}:
            resources.append(location)
        entries.append({"location": reference("Location", location["id"], location.get("name")),
                        "status": location_status(field_no, default, status, patient_class)})
    return resources, entries


def participants(pv1: Segment, pv2: Segment | None, sender: SenderConfig) -> tuple[list[JSON], list[JSON]]:
    """PV1-7/8/9/17 (and PV2-13 referral source) → (Practitioners, Encounter.participant) with the IG's
    ATND/REF/CON/ADM types."""
    sources = [(pv1, n, n) for n in (7, 8, 9, 17)] + ([(pv2, 13, 8)] if pv2 is not None else [])
    resources: list[JSON] = []
    entries: list[JSON] = []
    for segment, field_no, role in sources:
        system, code, display = codes.PARTICIPANT_TYPES[role]
        for xcn in segment.repetitions(field_no):
            practitioner, ref = practitioner_from_xcn(xcn, sender)
            if ref is None:
                continue
            if practitioner and practitioner["id"] not in {r["id"] for r in resources}:
                resources.append(practitioner)
            entries.append({"type": [code_concept(system, code, display)], "individual": ref})
    return resources, entries


# --------------------------------------------------------------------------------------------------
# The whole Encounter


def map_encounter(pv1: Segment | None, pv2: Segment | None, trigger: str, patient_id: str, patient_local_id: str,
                  control_id: str, sender: SenderConfig) -> EncounterMapping | None:
    """PV1/PV2 → Encounter with its Locations, Practitioners and the sender Organization.

    None when the PV1 identifies no visit (see `has_visit`) and the trigger does not need one;
    `MappingError` 101 at PV1-19 when it does (A01 A02 A03 A05 A11 A12 A13), except an A01 with an
    MSH-10 `control_id`, which the message identifies (`identified_by_message`, with a warning).
    """
    if pv1 is None or not (has_visit(pv1) or identified_by_message(pv1, trigger, control_id)):
        if trigger in VISIT_TRIGGERS:
            raise MappingError(REQUIRED_FIELD_MISSING, f"ADT^{trigger} needs PV1-19 visit number or PV1-44 admit "
                               "date/time to identify the Encounter", ErrorLocation("PV1", 1, 19))
        return None
    body, before = encounter_body(pv1, pv2, trigger, patient_id, sender)
    enc_id = encounter_id(pv1, sender, patient_local_id, control_id)
    warnings = () if has_visit(pv1) else (UNMATCHABLE_VISIT_WARNING,)
    return EncounterMapping(finish_resource(body, enc_id, sender.security_labels), enc_id, before, warnings)


def encounter_body(pv1: Segment, pv2: Segment | None, trigger: str, patient_id: str,
                   sender: SenderConfig) -> tuple[JSON, tuple[JSON, ...]]:
    """The Encounter's content (no id or meta) and the resources it refers to: the PV1[Encounter] and
    PV2[Encounter] maps, whether or not the PV1 identifies a visit."""
    status = encounter_status(trigger, pv1)
    organization = sender_organization(sender)
    location_resources, location_entries = locations(pv1, status, trigger, sender)
    practitioners, participant_entries = participants(pv1, pv2, sender)
    body: JSON = {
        "resourceType": "Encounter",
        "identifier": [i for i in (visit_identifier(sender)(pv1.field(19)),) if i],
        "status": status,
        "class": encounter_class(pv1),
        "subject": reference("Patient", patient_id),
        "participant": participant_entries,
        "period": period(pv1, trigger),
        "location": location_entries,
        "serviceProvider": reference("Organization", organization["id"], organization.get("name")),
    }
    apply_field_maps(pv1, PV1_MAP, body)
    apply_field_maps(pv2, PV2_MAP, body)
    return body, (organization, *practitioners, *location_resources)


ENCOUNTER_FIELDS_READ: dict[str, frozenset[int]] = {
    "PV1": frozenset(m.field for m in PV1_MAP) | PV1_NAMED_FIELDS,
    "PV2": frozenset(m.field for m in PV2_MAP) | PV2_NAMED_FIELDS,
}
