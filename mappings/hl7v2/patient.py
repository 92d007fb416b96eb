"""PID + PD1 + NK1 → Patient (and its GP Organization / Practitioner, and RelatedPerson).

Normative source: HL7 v2-to-FHIR IG segment maps PID[Patient], PD1[Patient], NK1[Patient],
NK1[RelatedPerson] and the message map ADT_A01 (NK1 → RelatedPerson unless NK1-3 is an
employer/organisation role). UK practice (UK-REFERENCE.md §1, §3; NHS ITK HL7 v2 ADT spec) wins
where they differ, as commented: NHS number recognition and check, PID-32 NSTS verification status,
PID-22 ethnic category, PD1-3/PD1-4 registered GP practice and GP, PID-8 NHS gender codes.

Pure: `(segments, SenderConfig) → PatientMapping` or `MappingError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING

from adapters.senders import LOCAL_ID_BASE
from mappings.hl7v2 import codes
from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    FieldMap,
    apply_field_maps,
    code_concept,
    comp,
    cwe_codeable_concept,
    finish_resource,
    hd_uri,
    identifier_type,
    mapped_concept,
    ods_reference,
    reference,
    sub,
    table_code,
    v2_to_fhir_date,
    v2_to_fhir_datetime,
    xad_address,
    xcn_practitioner,
    xon_ods_code,
    xon_organization,
    xpn_human_name,
    xtn_contact_point,
    yes_no,
)
from mappings.hl7v2.nhs import (
    is_nhs_number_cx,
    mask,
    nhs_number_is_valid,
    normalise_nhs_number,
    verification_code,
)
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    ErrorLocation,
    Identifier,
    MappingError,
    PatientKey,
)

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

BIRTH_TIME_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
# NK1-3 codes that name an organisation role, not a person: Patient.contact only (IG ADT_A01 message map).
NON_PERSON_RELATIONSHIPS = frozenset({"EMR", "E", "F", "I", "S"})


@dataclass(frozen=True)
class PatientIdentifiers:
    """What a CX list (PID-3, MRG-1) says about who the person is."""

    nhs_number: str | None
    nhs_identifier: JSON | None
    local: tuple[JSON, ...]

    @cached_property
    def key(self) -> PatientKey:
        return PatientKey(self.nhs_number, tuple(Identifier(i["system"], i["value"]) for i in self.local))


@dataclass(frozen=True)
class PatientMapping:
    """The subject Patient of a message and the resources that hang off it, in dependency order."""

    patient: JSON
    patient_id: str
    key: PatientKey
    before: tuple[JSON, ...] = ()   # GP Organization / Practitioner, referenced by the Patient
    after: tuple[JSON, ...] = ()    # RelatedPerson resources, referring to the Patient
    warnings: tuple[str, ...] = ()
    # Patient elements whose segment the message does not carry (no PD1, no NK1): it says nothing about them.
    not_sent: frozenset[str] = frozenset()

    @property
    def resources(self) -> list[JSON]:
        return [*self.before, self.patient, *self.after]


# --------------------------------------------------------------------------------------------------
# Identifiers (PID-2/3/4, MRG-1): UK-REFERENCE §3


def classify_identifiers(reps: list[tuple[int, int, FieldLike]], sender: SenderConfig, segment: str,
                         verification: str | None = None, sequence: int = 1) -> PatientIdentifiers:
    """Split CX repetitions into the NHS number and local MRNs.

    `reps` are (field, repetition, CX) of occurrence `sequence` of `segment`. A CX whose CX-4 or CX-5
    is NHS/NH/NHSNMBR/NHSNBR is the NHS number and must pass the modulus 11 check (else `MappingError` 102 at that repetition); every
    other CX with a value is a local MRN. Two different NHS numbers are an error too (UK Core: at
    most one). `verification` (01–08) becomes the UK Core verification status extension.
    """
    nhs: str | None = None
    local: list[JSON] = []
    for field_no, rep, cx in reps:
        value = comp(cx, 1)
        if not value:
            continue
        if not is_nhs_number_cx(cx):
            local.append(mrn_identifier(cx, sender))
            continue
        number = normalise_nhs_number(value)
        if not nhs_number_is_valid(number):
            raise MappingError(DATA_TYPE_ERROR, f"{segment}-{field_no} repetition {rep}: NHS number "
                               f"{mask(number)} fails the modulus 11 check digit",
                               ErrorLocation(segment, sequence, field_no, rep))
        if nhs is not None and nhs != number:
            raise MappingError(DATA_TYPE_ERROR, f"{segment}-{field_no} repetition {rep}: a second, different "
                               f"NHS number {mask(number)}", ErrorLocation(segment, sequence, field_no, rep))
        nhs = number
    return PatientIdentifiers(nhs, nhs_identifier(nhs, verification) if nhs else None, _unique(local))


def _unique(identifiers: list[JSON]) -> tuple[JSON, ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ident in identifiers:
        key = (ident["system"], ident["value"])
        if key not in seen:
            seen.add(key)
            out.append(ident)
    return tuple(out)


def nhs_identifier(nhs: str, verification: str | None) -> JSON:
    """UK Core Patient NHS number identifier, with the verification status extension when known."""
    ident: JSON = {"system": codes.NHS_NUMBER_SYSTEM, "value": nhs}
    if verification:
        ident = {"extension": [{"url": codes.VERIFICATION_STATUS_EXTENSION, "valueCodeableConcept": code_concept(
            codes.VERIFICATION_STATUS_SYSTEM, verification, codes.VERIFICATION_STATUS[verification])}], **ident}
    return ident


def mrn_system(cx: FieldLike, sender: SenderConfig) -> str:
    """The system of a local MRN: the sender's MRN system when CX-4 is its own ODS code or empty; a URI
    assigner as is; else `https://fhir.sharedcare.dev/Id/<CX-4>/mrn` for another organisation's number."""
    assigner = sub(cx, 4, 1) or sub(cx, 4, 2)
    if not assigner or assigner.upper() == sender.ods_code.upper():
        return sender.system_for("mrn")
    return hd_uri(cx, 4) or f"{LOCAL_ID_BASE}/{assigner}/mrn"


def mrn_identifier(cx: FieldLike, sender: SenderConfig) -> JSON:
    """A local MRN: type v2-0203#MR, the system from `mrn_system`, assigner = the ODS code in CX-4."""
    assigner = sub(cx, 4, 1) or sender.ods_code
    return {"use": "usual", "type": identifier_type("MR"), "system": mrn_system(cx, sender),
            "value": comp(cx, 1), "assigner": ods_reference(assigner)}


def pid_identifiers(pid: Segment, sender: SenderConfig) -> PatientIdentifiers:
    """PID-2, PID-3 and PID-4 (IG identifier[1..3]) with PID-32's verification status."""
    reps = [(n, i, cx) for n in (3, 2, 4) for i, cx in enumerate(pid.repetitions(n), 1)]
    verification = next((c for c in (verification_code(comp(rep, 1)) for rep in pid.repetitions(32)) if c), None)
    return classify_identifiers(reps, sender, "PID", verification, pid.occurrence)


def patient_id_for(ids: PatientIdentifiers, sender: SenderConfig) -> str:
    """Patient id: from the NHS number, else from the sender's own MRN, else the first local number."""
    if ids.nhs_number:
        return resource_id("Patient", "nhs", ids.nhs_number)
    own = sender.system_for("mrn")
    chosen = next((i for i in ids.local if i["system"] == own), ids.local[0])
    return resource_id("Patient", chosen["system"], chosen["value"])


def subject_key(key: PatientKey, sender: SenderConfig) -> str:
    """The sender's own, stable name for its patient: `system|value` of its MRN, else of another local
    number, else `nhs|<NHS number>`.

    Ids of what a sender records about a patient (allergies, diagnoses, contacts) derive from it, not
    from the Patient id: a patient first sent with an MRN only and later with an NHS number too gets a
    different Patient id from the map (the engine then matches the stored one by MRN), but the same
    subject key — so a re-send, a replay and the MRN → NHS number case all yield the same resources.
    """
    own = sender.system_for("mrn")
    local = [i for i in key.local if i.system == own] or list(key.local)
    return f"{local[0].system}|{local[0].value}" if local else f"nhs|{key.nhs_number}"


# --------------------------------------------------------------------------------------------------
# PID demographics: the declarative table plus the few conditional elements as named functions


def gender(f: FieldLike) -> str | None:
    """PID-8 → Patient.gender: IG AdministrativeSex plus NHS 1/2/9/X (UK-REFERENCE §1)."""
    return table_code(comp(f, 1), codes.GENDER)


def marital_status(f: FieldLike) -> JSON | None:
    """PID-16 → maritalStatus via the IG MaritalStatus map; unknown codes keep the v2-0002 coding."""
    return mapped_concept(f, codes.MARITAL_STATUS, "http://terminology.hl7.org/CodeSystem/v2-0002")


def communication(f: FieldLike) -> JSON | None:
    """PID-15 → communication[].language (IG PrimaryLanguage: a CodeableConcept as sent)."""
    language = cwe_codeable_concept(f)
    return {"language": language} if language else None


PID_MAP: tuple[FieldMap, ...] = (
    FieldMap(5, "name", xpn_human_name, repeats=True),
    FieldMap(9, "name", xpn_human_name, repeats=True),     # IG: alias → name[2]
    FieldMap(8, "gender", gender),
    FieldMap(11, "address", xad_address, repeats=True),
    FieldMap(13, "telecom", partial(xtn_contact_point, default_use="home"), repeats=True),
    FieldMap(14, "telecom", partial(xtn_contact_point, default_use="work"), repeats=True),
    FieldMap(15, "communication", communication, repeats=True),
    FieldMap(16, "maritalStatus", marital_status),
)
# Fields read by the named functions below (identifiers, birth, ethnicity, multiple birth, death).
PID_NAMED_FIELDS = frozenset({1, 2, 3, 4, 7, 22, 24, 25, 29, 30, 32})


def birth(pid: Segment) -> JSON:
    """PID-7 → birthDate, with the birth time extension when PID-7 carries a time (IG: length > 8)."""
    text = comp(pid.field(7), 1)
    day = v2_to_fhir_date(text)
    if not day:
        return {}
    moment = v2_to_fhir_datetime(text) if len(text) > 8 else None
    if moment and "T" in moment:
        return {"birthDate": day, "_birthDate": {"extension": [{"url": BIRTH_TIME_EXTENSION,
                                                                "valueDateTime": moment}]}}
    return {"birthDate": day}


def ethnic_category(pid: Segment) -> tuple[JSON, list[str]]:
    """PID-22 → UK Core EthnicCategory extension (code letter from NHS Data Dictionary ethnic category).

    UK practice wins: the IG leaves PID-22 to a local extension. An unknown code is a warning, not an error.
    """
    code = comp(pid.field(22), 1).upper()
    if not code:
        return {}, []
    if code not in codes.ETHNIC_CATEGORY:
        return {}, [f"PID-22 ethnic category {code!r} is not an NHS ethnic category code; not mapped"]
    concept = code_concept(codes.ETHNIC_CATEGORY_SYSTEM, code, codes.ETHNIC_CATEGORY[code])
    return {"extension": [{"url": codes.ETHNIC_CATEGORY_EXTENSION, "valueCodeableConcept": concept}]}, []


def multiple_birth(pid: Segment) -> JSON:
    """PID-25 birth order → multipleBirthInteger, else PID-24 Y/N → multipleBirthBoolean (IG PID-24/25)."""
    order = comp(pid.field(25), 1)
    if order.isdigit() and 0 < int(order) < 2**31:
        return {"multipleBirthInteger": int(order)}
    flag = yes_no(comp(pid.field(24), 1))
    return {} if flag is None else {"multipleBirthBoolean": flag}


def deceased(pid: Segment) -> JSON:
    """PID-29 → deceasedDateTime; only when PID-29 is not valued, PID-30 Y/N → deceasedBoolean (IG)."""
    moment = v2_to_fhir_datetime(comp(pid.field(29), 1))
    if moment:
        return {"deceasedDateTime": moment}
    flag = yes_no(comp(pid.field(30), 1))
    return {} if flag is None else {"deceasedBoolean": flag}


# --------------------------------------------------------------------------------------------------
# PD1: registered GP practice and GP (UK ITK: PD1-3 `name^^ODS`, PD1-4 GMP code)


def gp_practice(pd1: Segment | None, sender: SenderConfig) -> JSON | None:
    """PD1-3 → the registered GP practice Organization (ODS code from XON-10, else XON-3)."""
    if pd1 is None:
        return None
    xon = pd1.field(3)
    code = xon_ods_code(xon)
    org = xon_organization(xon)
    if not code or org is None:
        return None
    return finish_resource(org, resource_id("Organization", code), sender.security_labels)


def general_practitioner(pd1: Segment | None, sender: SenderConfig) -> JSON | None:
    """PD1-4 → the GP Practitioner. UK: the XCN-1 is the GP's national GMP code unless XCN-9/13 say otherwise."""
    if pd1 is None:
        return None
    xcn = pd1.field(4)
    body = xcn_practitioner(xcn, fallback_system=codes.PRACTITIONER_SYSTEMS["GMP"])
    if body is None or not body.get("identifier"):
        return None
    ident = body["identifier"][0]
    return finish_resource(body, resource_id("Practitioner", ident["system"], ident["value"]),
                           sender.security_labels)


# --------------------------------------------------------------------------------------------------
# NK1: Patient.contact and RelatedPerson (IG NK1[Patient], NK1[RelatedPerson])


def nk1_is_related_person(nk1: Segment) -> bool:
    """IG ADT_A01: an NK1 becomes a RelatedPerson unless NK1-3 is an organisation role (EMR, E, F, I, S)."""
    return comp(nk1.field(3), 1).upper() not in NON_PERSON_RELATIONSHIPS


def relationship(f: FieldLike) -> JSON | None:
    """NK1-3 → relationship via the IG Relationship map (v3-RoleCode / v2-0063 / v2-0131)."""
    return mapped_concept(f, codes.RELATIONSHIP, "http://terminology.hl7.org/CodeSystem/v2-0063")


def contact_role(f: FieldLike) -> JSON | None:
    """NK1-7 → relationship[2] (IG ContactRole: v2-0131 as sent)."""
    return mapped_concept(f, {}, codes.CONTACT_ROLE_SYSTEM)


CONTACT_MAP: tuple[FieldMap, ...] = (
    FieldMap(2, "name", xpn_human_name),
    FieldMap(3, "relationship", relationship, repeats=True),
    FieldMap(7, "relationship", contact_role, repeats=True),
    FieldMap(4, "address", xad_address),
    FieldMap(5, "telecom", xtn_contact_point, repeats=True),
    FieldMap(6, "telecom", partial(xtn_contact_point, default_use="work"), repeats=True),
    FieldMap(40, "telecom", xtn_contact_point, repeats=True),
    FieldMap(41, "telecom", xtn_contact_point, repeats=True),
    FieldMap(15, "gender", gender),
    FieldMap(8, "period.start", lambda f: v2_to_fhir_datetime(comp(f, 1))),
    FieldMap(9, "period.end", lambda f: v2_to_fhir_datetime(comp(f, 1))),
)
RELATED_PERSON_MAP: tuple[FieldMap, ...] = (
    FieldMap(2, "name", xpn_human_name, repeats=True),
    FieldMap(30, "name", xpn_human_name, repeats=True),
    FieldMap(3, "relationship", relationship, repeats=True),
    FieldMap(7, "relationship", contact_role, repeats=True),
    FieldMap(4, "address", xad_address, repeats=True),
    FieldMap(32, "address", xad_address, repeats=True),
    FieldMap(5, "telecom", xtn_contact_point, repeats=True),
    FieldMap(6, "telecom", partial(xtn_contact_point, default_use="work"), repeats=True),
    FieldMap(31, "telecom", xtn_contact_point, repeats=True),
    FieldMap(40, "telecom", xtn_contact_point, repeats=True),
    FieldMap(41, "telecom", xtn_contact_point, repeats=True),
    FieldMap(15, "gender", gender),
    FieldMap(16, "birthDate", lambda f: v2_to_fhir_date(comp(f, 1))),
    FieldMap(8, "period.start", lambda f: v2_to_fhir_datetime(comp(f, 1))),
    FieldMap(9, "period.end", lambda f: v2_to_fhir_datetime(comp(f, 1))),
    FieldMap(20, "communication", communication, repeats=True),
)
NK1_NAMED_FIELDS = frozenset({1})


def patient_contact(nk1: Segment) -> JSON | None:
    """One NK1 → Patient.contact (IG NK1[Patient]); None when it carries nothing contact-like."""
    contact = apply_field_maps(nk1, CONTACT_MAP, {})
    return contact or None


def related_person(nk1: Segment, patient_id: str, subject: str, sender: SenderConfig) -> JSON | None:
    """One NK1 → RelatedPerson (IG NK1[RelatedPerson]), id from (sender, `subject_key`, NK1-1 set id, NK1-2
    name); it refers to `Patient/<patient_id>`."""
    body = apply_field_maps(nk1, RELATED_PERSON_MAP, {})
    if not body.get("name") and not body.get("telecom"):
        return None
    name = body.get("name", [{}])[0]
    name_key = " ".join([name.get("family", ""), *name.get("given", [])])
    set_id = comp(nk1.field(1), 1) or str(nk1.occurrence)
    rp_id = resource_id("RelatedPerson", sender.ods_code, subject, set_id, name_key)
    resource = {"resourceType": "RelatedPerson", "patient": reference("Patient", patient_id), **body}
    return finish_resource(resource, rp_id, sender.security_labels)


# --------------------------------------------------------------------------------------------------
# The whole Patient


def patient_demographics(pid: Segment) -> tuple[JSON, list[str]]:
    """PID → every Patient element but the identifiers: the PID_MAP table plus the named functions
    (ethnic category, birth, death, multiple birth); with warnings for values left out."""
    ethnic, warnings = ethnic_category(pid)
    body = apply_field_maps(pid, PID_MAP, dict(ethnic))
    for element in (birth(pid), deceased(pid), multiple_birth(pid)):
        body.update(element)
    return body, warnings


def map_patient(message: Message, sender: SenderConfig) -> PatientMapping:
    """PID (+ PD1, NK1) of `message` → the subject Patient. `MappingError` 101 when PID or any usable
    identifier is missing, 102 for a bad NHS number."""
    pid = message.first("PID")
    if pid is None:
        raise MappingError(REQUIRED_FIELD_MISSING, "PID segment is missing", ErrorLocation("PID", 1))
    return map_pid(pid, message.first("PD1"), message.all("NK1"), sender)


def map_pid(pid: Segment, pd1: Segment | None, nk1s: list[Segment], sender: SenderConfig) -> PatientMapping:
    """The Patient from one PID with its PD1 and NK1 segments (see `map_patient`)."""
    ids = pid_identifiers(pid, sender)
    if not ids.nhs_number and not ids.local:
        raise MappingError(REQUIRED_FIELD_MISSING, "PID-3 has no usable patient identifier (no NHS number, no MRN)",
                           ErrorLocation("PID", pid.occurrence, 3))
    patient_id = patient_id_for(ids, sender)
    demographics, warnings = patient_demographics(pid)
    body: JSON = {"resourceType": "Patient", "identifier": [i for i in (ids.nhs_identifier, *ids.local) if i],
                  **demographics}
    practice, gp = gp_practice(pd1, sender), general_practitioner(pd1, sender)
    body["generalPractitioner"] = [reference(r["resourceType"], r["id"]) for r in (practice, gp) if r]
    body["contact"] = [c for c in (patient_contact(n) for n in nk1s) if c]
    subject = subject_key(ids.key, sender)
    related = [r for r in (related_person(n, patient_id, subject, sender) for n in nk1s if nk1_is_related_person(n))
               if r]
    patient = finish_resource(body, patient_id, sender.security_labels)
    return PatientMapping(patient, patient_id, ids.key, tuple(r for r in (practice, gp) if r), tuple(related),
                          tuple(warnings), elements_not_sent(pd1, nk1s))


def elements_not_sent(pd1: Segment | None, nk1s: list[Segment]) -> frozenset[str]:
    """The Patient elements a message carries no segment for: PD1 (the registered GP) and NK1 (contacts).

    In HL7 v2 a segment that is not sent says nothing — an ORU^R01 has no PD1, yet the patient is still
    registered with a GP — so the stored values of these elements are kept (`MappingResult.patient_elements_not_sent`).
    """
    return frozenset(element for element, absent in (("generalPractitioner", pd1 is None), ("contact", not nk1s))
                     if absent)


# The fields each segment's maps read (coverage report).
PATIENT_FIELDS_READ: dict[str, frozenset[int]] = {
    "PID": frozenset(m.field for m in PID_MAP) | PID_NAMED_FIELDS,
    "PD1": frozenset({3, 4}),
    "NK1": frozenset(m.field for m in (*CONTACT_MAP, *RELATED_PERSON_MAP)) | NK1_NAMED_FIELDS,
}

__all__ = [
    "PATIENT_FIELDS_READ", "PatientIdentifiers", "PatientMapping", "classify_identifiers", "elements_not_sent",
    "map_patient", "map_pid",
    "mrn_identifier", "nhs_identifier", "patient_demographics", "patient_id_for", "related_person",
    "subject_key",
]
