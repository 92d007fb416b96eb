"""AL1 → AllergyIntolerance and DG1 → Condition (with Encounter.diagnosis entries).

Normative source: HL7 v2-to-FHIR IG segment maps AL1[AllergyIntolerance] and DG1[Condition] /
DG1[Encounter], concept maps AllergenType, AllergyType, AllergySeverity, DiagnosisType.
UK Core: AllergyIntolerance.code is 1..1, so an AL1 without AL1-3 yields no resource (a warning).

Ids derive from the sender and its own name for the patient (`patient.subject_key`: its MRN), never
from the Patient id, which changes when an MRN-only patient later arrives with an NHS number.

Pure: `(segment, patient id, subject key, encounter id, SenderConfig) → resource | None`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    datetime_of,
    ei_identifier,
    finish_resource,
    practitioner_from_xcn,
    reference,
    table_code,
)
from mappings.ids import resource_id

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Segment
    from adapters.senders import SenderConfig

ALLERGY_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DIAGNOSIS_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/diagnosis-role"


@dataclass
class ClinicalMapping:
    """Resources from AL1/DG1 segments, the Encounter.diagnosis entries, and warnings for skipped segments."""

    resources: list[JSON] = field(default_factory=list)
    diagnoses: list[JSON] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# AL1


def allergy_category(f: FieldLike) -> str | None:
    """AL1-2 → category (IG AllergenType[AllergyIntoleranceCategory])."""
    return table_code(comp(f, 1), codes.ALLERGY_CATEGORY)


def allergy_type(f: FieldLike) -> str | None:
    """AL1-2 → type (IG AllergyType)."""
    return table_code(comp(f, 1), codes.ALLERGY_TYPE)


def criticality(f: FieldLike) -> str | None:
    """AL1-4 → criticality (IG AllergySeverity[AllergyIntolerance.criticality])."""
    return table_code(comp(f, 1), codes.ALLERGY_CRITICALITY)


AL1_MAP: tuple[FieldMap, ...] = (
    FieldMap(2, "category", allergy_category, repeats=True),
    FieldMap(2, "type", allergy_type),
    FieldMap(3, "code", cwe_codeable_concept),
    FieldMap(4, "criticality", criticality),
    FieldMap(6, "onsetDateTime", datetime_of),
)
AL1_NAMED_FIELDS = frozenset({1, 5})  # set id; reactions (AL1-5 with AL1-4 severity)


def reactions(al1: Segment) -> list[JSON]:
    """AL1-5 reactions (ST, repeating) → one reaction with each as a manifestation text, severity from
    AL1-4 (IG AL1-5 and AllergySeverity[reaction.severity]). No AL1-5 → no reaction (manifestation is 1..*)."""
    texts = [comp(rep, 1) for rep in al1.repetitions(5) if comp(rep, 1)]
    if not texts:
        return []
    severity = table_code(comp(al1.field(4), 1), codes.ALLERGY_SEVERITY)
    reaction: JSON = {"manifestation": [{"text": t} for t in texts]}
    if severity:
        reaction["severity"] = severity
    return [reaction]


def allergy_key(al1: Segment) -> str:
    """The allergen's identity within the patient: AL1-3 code (with its system), else its text."""
    code = comp(al1.field(3), 1)
    return f"{comp(al1.field(3), 3)}|{code}" if code else comp(al1.field(3), 2).lower()


def map_allergy(al1: Segment, patient_id: str, subject: str, sender: SenderConfig) -> JSON | None:
    """AL1 → AllergyIntolerance, id from (sender, `subject` key, AL1-3 code); None when AL1-3 is empty (UK Core
    code 1..1). AL1-1 (set id) is not part of it: it is a position in one message, not an identity."""
    key = allergy_key(al1)
    if not key.strip("|"):
        return None
    body: JSON = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": code_concept(ALLERGY_CLINICAL_SYSTEM, "active", "Active"),
        "patient": reference("Patient", patient_id),
    }
    apply_field_maps(al1, AL1_MAP, body)
    body["reaction"] = reactions(al1)
    return finish_resource(body, resource_id("AllergyIntolerance", sender.ods_code, subject, key), sender.security_labels)


# --------------------------------------------------------------------------------------------------
# DG1


def condition_category(dg1: Segment, has_encounter: bool) -> list[JSON]:
    """Condition.category: encounter-diagnosis when there is an Encounter, plus DG1-6 as sent (v2-0052)."""
    categories = [code_concept(codes.CONDITION_CATEGORY_SYSTEM, "encounter-diagnosis", "Encounter Diagnosis")] \
        if has_encounter else []
    kind = comp(dg1.field(6), 1).upper()
    if kind in codes.DIAGNOSIS_TYPE:
        categories.append(code_concept(codes.V2_0052, kind, codes.DIAGNOSIS_TYPE[kind]))
    return categories


def verification_status(f: FieldLike) -> JSON | None:
    """DG1-21 segment action code D (delete) → verificationStatus entered-in-error (IG DG1-21)."""
    if comp(f, 1).upper() != "D":
        return None
    return code_concept(CONDITION_VERIFICATION_SYSTEM, "entered-in-error", "Entered in Error")


def diagnosis_code(dg1: Segment) -> JSON | None:
    """DG1-3 (CWE) → code, with DG1-4 description as text when the CWE has none (IG DG1-3, DG1-4)."""
    concept = cwe_codeable_concept(dg1.field(3))
    description = comp(dg1.field(4), 1)
    if concept is None:
        return {"text": description} if description else None
    if description and "text" not in concept:
        concept["text"] = description
    return concept


DG1_MAP: tuple[FieldMap, ...] = (
    FieldMap(5, "onsetDateTime", datetime_of),
    FieldMap(19, "recordedDate", datetime_of),
    FieldMap(20, "identifier", ei_identifier, repeats=True),
    FieldMap(21, "verificationStatus", verification_status),
)
DG1_NAMED_FIELDS = frozenset({1, 3, 4, 6, 15, 16})


def condition_key(dg1: Segment) -> str:
    """The diagnosis's identity within its encounter or patient: DG1-3 code with system, else DG1-4 text."""
    code = comp(dg1.field(3), 1)
    return f"{comp(dg1.field(3), 3)}|{code}" if code else comp(dg1.field(4), 1).lower()


def map_condition(dg1: Segment, patient_id: str, subject: str, encounter_id: str | None,
                  sender: SenderConfig) -> tuple[JSON | None, JSON | None, JSON | None]:
    """DG1 → (Condition, asserter Practitioner, Encounter.diagnosis entry); Condition id from (encounter id —
    itself from the sender's visit number —, else sender and `subject` key; DG1-3 code, else DG1-4 text).
    (None, None, None) when DG1-3 and DG1-4 are empty."""
    code = diagnosis_code(dg1)
    if code is None:
        return None, None, None
    practitioner, asserter = practitioner_from_xcn(dg1.field(16), sender)
    body: JSON = {
        "resourceType": "Condition",
        "category": condition_category(dg1, encounter_id is not None),
        "code": code,
        "subject": reference("Patient", patient_id),
        "encounter": reference("Encounter", encounter_id) if encounter_id else None,
        "asserter": asserter,
    }
    apply_field_maps(dg1, DG1_MAP, body)
    owner = (encounter_id,) if encounter_id else (sender.ods_code, subject)
    condition_id = resource_id("Condition", *owner, condition_key(dg1))
    condition = finish_resource(body, condition_id, sender.security_labels)
    return condition, practitioner, diagnosis_entry(dg1, condition_id) if encounter_id else None


def diagnosis_entry(dg1: Segment, condition_id: str) -> JSON:
    """Encounter.diagnosis for a DG1 (IG DG1[Encounter]): condition, use AD for DG1-6 A, rank DG1-15."""
    entry: JSON = {"condition": reference("Condition", condition_id)}
    if comp(dg1.field(6), 1).upper() == "A":
        entry["use"] = code_concept(DIAGNOSIS_ROLE_SYSTEM, "AD", "Admission diagnosis")
    rank = comp(dg1.field(15), 1)
    if rank.isdigit() and 0 < int(rank) < 2**31:
        entry["rank"] = int(rank)
    return entry


# --------------------------------------------------------------------------------------------------


def map_clinical(al1s: list[Segment], dg1s: list[Segment], patient_id: str, subject: str, encounter_id: str | None,
                 sender: SenderConfig) -> ClinicalMapping:
    """Every AL1 and DG1 of a message → resources (Practitioners first), diagnoses and warnings."""
    out = ClinicalMapping()
    practitioners: list[JSON] = []
    for al1 in al1s:
        allergy = map_allergy(al1, patient_id, subject, sender)
        if allergy is None:
            out.warnings.append(f"AL1 #{al1.occurrence}: AL1-3 allergen is empty; no AllergyIntolerance")
        else:
            out.resources.append(allergy)
    for dg1 in dg1s:
        condition, practitioner, diagnosis = map_condition(dg1, patient_id, subject, encounter_id, sender)
        if condition is None:
            out.warnings.append(f"DG1 #{dg1.occurrence}: DG1-3 and DG1-4 are empty; no Condition")
            continue
        out.resources.append(condition)
        if practitioner:
            practitioners.append(practitioner)
        if diagnosis:
            out.diagnoses.append(diagnosis)
    out.resources[:0] = practitioners
    return out


CLINICAL_FIELDS_READ: dict[str, frozenset[int]] = {
    "AL1": frozenset(m.field for m in AL1_MAP) | AL1_NAMED_FIELDS,
    "DG1": frozenset(m.field for m in DG1_MAP) | DG1_NAMED_FIELDS,
}
