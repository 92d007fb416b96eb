"""ORU^R01 → a DiagnosticReport per OBR, an Observation per OBX (and the ServiceRequest an ORC names).

Normative source: the HL7 v2-to-FHIR IG message map ORU_R01 and segment maps OBR[DiagnosticReport],
ORC[DiagnosticReport], OBX[Observation], OBX[Observation-Component], NTE[Observation]; concept maps
in `orders_datatypes.py`. Choices the IG leaves open, made here and tested:

- Identity (DESIGN.md #4): DiagnosticReport from (sender ODS, filler order number OBR-3, else ORC-3);
  with only a placer number (OBR-2, else ORC-2) from (sender ODS, placer number, OBR-4 code), because
  one placer order may carry several OBRs (seen in ReportStream's samples); Observation from (report id, OBX-3 code, OBX-4
  sub-id), plus OBX-1 only when that code and sub-id occur twice in the report. So a corrected
  result (OBX-11 C, same code) replaces the earlier Observation, and W/D mark it entered-in-error
  (UK-REFERENCE test case 7; D is "delete" in v2, but the engine never deletes: the IG maps it to
  entered-in-error too).
- Consecutive TX/FT OBX segments with the same OBX-3 and OBX-4 are the lines of one text report:
  one Observation whose valueString joins them with line feeds, as OBX-5 repetitions are joined.
- Observation.effective is OBX-14, else the report's OBR-7/OBR-8; Observation.issued is OBR-22;
  Observation.category follows OBR-24 (laboratory or imaging sections of table 0074).
- OBX-2 XAD, XTN, CX and FN (an address, telecom, identifier or family name as the result, e.g. a
  birth hospital's address) have no IG OBX-5 row, and R4 Observation.value[x] allows none of Address,
  ContactPoint, Identifier, HumanName: valueString holding the readable text (`TEXT_RENDERINGS`).
- OBX-5 that does not fit its OBX-2 (e.g. "<5" in an NM, common in UK labs) is kept: a comparator
  where the IG's SN rules allow, else valueString with a warning. An OBX-2 this map has no rule for
  (RP, EI, NA) is a 102 error at OBX-2; an OBX before any OBR is a 100; an OBX without OBX-3 a 101.
- NTE after an OBX → Observation.note; NTE after the OBR → the R5 DiagnosticReport.note extension
  (R4 has no DiagnosticReport.note); NTE after PID is reported as unmapped.
- With an ORC, the order's ServiceRequest is produced too (`orders.service_request`) and referenced
  by DiagnosticReport.basedOn (IG ORU_R01 "ServiceRequest[1]").

Pure: `(Message, SenderConfig) → MappingResult` or `MappingError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    FieldMap,
    apply_field_maps,
    code_concept,
    comp,
    cwe_codeable_concept,
    cx_string,
    dr_period,
    ei_identifier,
    fn_string,
    in_sender_time_zone,
    practitioner_from_xcn,
    reference,
    sender_organization,
    v2_to_fhir_datetime,
    xad_string,
    xtn_string,
)
from mappings.hl7v2.orders import ORDER_FIELDS_READ, OrderGroup, order_groups, service_request
from mappings.hl7v2.orders_datatypes import (
    DATA_ABSENT_BY_STATUS,
    INTERPRETATION,
    OBSERVATION_CATEGORY_SYSTEM,
    OBSERVATION_STATUS,
    REPORT_STATUS,
    SECTION_CATEGORY,
    V2_0074,
    V2_0078,
    V3_INTERPRETATION,
    Collected,
    ed_attachment,
    encounter_reference,
    field_text,
    finish,
    first_valued,
    instant,
    mapping_result,
    ndl_person,
    nm_quantity,
    nr_range,
    nte_annotation,
    order_identifier,
    reference_range,
    single_patient,
    sn_value,
    tm_time,
    units_quantity,
)
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    ErrorLocation,
    MappingError,
    MappingResult,
)

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

DATA_ABSENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# IG OBX-5 ED/RP rows: the R5 Observation.value[x] Attachment, as a cross-version extension. (The IG
# table writes it with https://; FHIR canonical URLs are http://hl7.org/…, as FHIR validators expect.)
VALUE_ATTACHMENT_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.valueAttachment"
REPORT_NOTE_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
JOINED_TEXT_TYPES = frozenset({"TX", "FT"})


# --------------------------------------------------------------------------------------------------
# OBX-5 by OBX-2: the declarative table (IG OBX[Observation] OBX-5 rows)

ValueMap = Callable[[FieldLike, JSON], JSON | None]


def _wrap(element: str, value: Any) -> JSON | None:
    return {element: value} if value not in (None, "", {}, []) else None


def coded_value(f: FieldLike, units: JSON) -> JSON | None:
    """CE/CWE/CNE/CF → valueCodeableConcept (IG CWE[CodeableConcept])."""
    return _wrap("valueCodeableConcept", cwe_codeable_concept(f))


def simple_code_value(f: FieldLike, units: JSON) -> JSON | None:
    """IS/ID → valueCodeableConcept with the code alone (IG IS[CodeableConcept])."""
    code = comp(f, 1)
    return _wrap("valueCodeableConcept", {"coding": [{"code": code}]} if code else None)


def attachment_value(f: FieldLike, units: JSON) -> JSON | None:
    """ED → the R5 valueAttachment extension (IG OBX-5 "ED" rows, ED[Attachment])."""
    found = ed_attachment(f)
    return {"extension": [{"url": VALUE_ATTACHMENT_EXTENSION, "valueAttachment": found}]} if found else None


def text_value(render: Callable[[FieldLike], str | None]) -> ValueMap:
    """An OBX-5 whose FHIR type R4 Observation.value[x] cannot hold → valueString with its rendering."""
    return lambda f, u: _wrap("valueString", render(f))


# OBX-2 types the IG's OBX[Observation] has no OBX-5 row for, and whose FHIR type (Address, ContactPoint,
# Identifier, HumanName) is not one of R4 Observation.value[x]'s: valueString holding the readable text
# (`datatypes.*_string`, built by the IG datatype maps), and no extension, since the IG names none. The
# structured form is not lost for good: OBX-5 stays in the stored raw message. US newborn-screening
# feeds send these (LOINC 62331-4 birth hospital address, 62328-0 provider phone, 62329-8 facility id).
TEXT_RENDERINGS: dict[str, Callable[[FieldLike], str | None]] = {
    "XAD": xad_string,   # XAD[Address] elements on one line
    "XTN": xtn_string,   # XTN[ContactPoint].value
    "CX": cx_string,     # CX[string]: CX.1
    "FN": fn_string,     # FN[HumanName].family: FN.1
}


VALUE_MAPS: dict[str, ValueMap] = {
    "NM": lambda f, u: _wrap("valueQuantity", nm_quantity(comp(f, 1), u)),
    "SN": sn_value,
    "CE": coded_value, "CWE": coded_value, "CNE": coded_value, "CF": coded_value,
    "IS": simple_code_value, "ID": simple_code_value,
    "DT": lambda f, u: _wrap("valueDateTime", v2_to_fhir_datetime(comp(f, 1))),
    "DTM": lambda f, u: _wrap("valueDateTime", v2_to_fhir_datetime(comp(f, 1))),
    "TS": lambda f, u: _wrap("valueDateTime", v2_to_fhir_datetime(comp(f, 1))),
    "TM": lambda f, u: _wrap("valueTime", tm_time(comp(f, 1))),
    "DR": lambda f, u: _wrap("valuePeriod", dr_period(f)),
    "NR": lambda f, u: _wrap("valueRange", nr_range(f, u)),
    "VR": lambda f, u: _wrap("valueString", "-".join(p for p in (comp(f, 1), comp(f, 2)) if p)),
    "ED": attachment_value,
    **dict.fromkeys(TEXT_TYPES, lambda f, u: _wrap("valueString", field_text(f).strip())),
    **{value_type: text_value(render) for value_type, render in TEXT_RENDERINGS.items()},
}


# --------------------------------------------------------------------------------------------------
# Grouping OBX segments into observations


@dataclass
class ObxGroup:
    """One Observation's segments: an OBX, or the consecutive TX/FT lines of one text report; its NTEs."""

    segments: list[Segment]
    notes: list[Segment] = field(default_factory=list)
    # Read from the first segment, which a group never changes, when the group is made:
    # OBX-2 value type, and (OBX-3 code, OBX-4 sub-id), what makes an observation the same one when re-sent.
    value_type: str = field(init=False, repr=False, compare=False)
    key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first = self.segments[0]
        self.value_type = comp(first.field(2), 1).upper()
        self.key = (observation_code_key(first), comp(first.field(4), 1))

    @property
    def first(self) -> Segment:
        return self.segments[0]

    def continues_with(self, other: ObxGroup) -> bool:
        """A TX/FT line (`other`, one OBX) continues this text report when OBX-2, OBX-3 and OBX-4 are the same."""
        return (self.value_type in JOINED_TEXT_TYPES and other.value_type == self.value_type
                and other.key == self.key)


def observation_code_key(obx: Segment) -> str:
    """The OBX-3 code: CWE.1, else the alternate code CWE.4, else the text (a text-only OBX-3 still names it)."""
    f = obx.field(3)
    return comp(f, 1) or comp(f, 4) or comp(f, 2) or comp(f, 9)


def group_observations(segments: list[Segment]) -> list[ObxGroup]:
    """OBX and NTE segments of one order, in order → observation groups (NTEs attach to the OBX before)."""
    groups: list[ObxGroup] = []
    for segment in segments:
        if segment.name == "NTE":
            if groups:
                groups[-1].notes.append(segment)
            continue
        group = ObxGroup([segment])
        if groups and groups[-1].continues_with(group):
            groups[-1].segments.append(segment)
        else:
            groups.append(group)
    return groups


def observation_ids(report_id: str, groups: list[ObxGroup]) -> list[str]:
    """Observation ids from (report id, OBX-3 code, OBX-4 sub-id), with OBX-1 only where that pair repeats."""
    counts = Counter(g.key for g in groups)
    ids = []
    for index, group in enumerate(groups, 1):
        code, sub_id = group.key
        parts = [report_id, code, sub_id]
        if counts[group.key] > 1:
            parts.append(comp(group.first.field(1), 1) or f"#{index}")
        ids.append(resource_id("Observation", *parts))
    return ids


# --------------------------------------------------------------------------------------------------
# OBX → Observation


@dataclass(frozen=True)
class ObservationContext:
    """What an Observation takes from its message and order: subject, visit, times, category."""

    patient_id: str
    encounter: JSON | None = None
    effective: JSON | None = None      # {"effectiveDateTime": …} or {"effectivePeriod": …}
    issued: str | None = None
    category: JSON | None = None


def observation_status(group: ObxGroup) -> str:
    """OBX-11 → status (IG table 0085 map plus ours, `orders_datatypes.OBSERVATION_STATUS`); empty → unknown."""
    return OBSERVATION_STATUS.get(comp(group.first.field(11), 1).upper(), "unknown")


def interpretation(f: FieldLike) -> JSON | None:
    """OBX-8 → interpretation: v3 ObservationInterpretation (IG InterpretationCodes), else the sender's
    code in v2-0078 (or the CWE's own system when it names one)."""
    code = comp(f, 1)
    if not code:
        return None
    if code.upper() in INTERPRETATION:
        return code_concept(V3_INTERPRETATION, code.upper(), INTERPRETATION[code.upper()])
    concept = cwe_codeable_concept(f) or {}
    codings = concept.get("coding") or [{"code": code}]
    codings[0].setdefault("system", V2_0078)
    return {**concept, "coding": codings}


OBX_MAP: tuple[FieldMap, ...] = (
    FieldMap(8, "interpretation", interpretation, repeats=True),
    FieldMap(17, "method", cwe_codeable_concept),
    FieldMap(20, "bodySite", cwe_codeable_concept),
    FieldMap(21, "identifier", lambda f: ei_identifier(f, type_code="FILL"), repeats=True),
)
# Read by the named functions: set id, value type, code, sub-id, value, units, range, status, time, observer.
OBX_NAMED_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 14, 16})


def observation_value(group: ObxGroup, warnings: list[str]) -> JSON:
    """OBX-5 of a group → value[x] (or components, or the valueAttachment extension) by OBX-2.

    Text types join every line and repetition with line feeds. Other types: one repetition → value[x];
    several → one component each (IG OBX[Observation-Component]). 102 for an OBX-2 with no rule.
    """
    obx = group.first
    value_type = group.value_type
    reps = [r for s in group.segments for r in s.repetitions(5)]
    if not value_type:
        if not any(field_text(r) for r in reps):
            return {}
        warnings.append(f"OBX {obx.occurrence}: OBX-5 has a value but OBX-2 is empty; read as ST")
        value_type = "ST"
    if value_type not in VALUE_MAPS:
        raise MappingError(DATA_TYPE_ERROR, f"OBX-2 value type {value_type!r} is not supported "
                           f"(supported: {', '.join(sorted(VALUE_MAPS))})", ErrorLocation("OBX", obx.occurrence, 2))
    if value_type in TEXT_TYPES:
        # An empty TX line is a blank line of the report: keep it.
        lines = [field_text(r) for s in group.segments for r in (s.repetitions(5) or [None])]
        text = "\n".join(lines).strip("\n")
        return {"valueString": text} if text.strip() else {}
    units = units_quantity(obx.field(6))
    values = [v for v in (_one_value(value_type, r, units, obx, warnings) for r in reps if not r.is_null) if v]
    if len(values) <= 1:
        return values[0] if values else {}
    code = cwe_codeable_concept(obx.field(3))
    return {"component": [{"code": code, **v} for v in values]}


def _one_value(value_type: str, rep: FieldLike, units: JSON, obx: Segment, warnings: list[str]) -> JSON | None:
    value = VALUE_MAPS[value_type](rep, units)
    if value is not None:
        return value
    text = field_text(rep).strip()
    if not text:
        return None
    if value_type == "ED":
        if not comp(rep, 5):  # ED-5 data empty (type and encoding only): no value, not a bad encoding
            return None
        raise MappingError(DATA_TYPE_ERROR, f"OBX {obx.occurrence}: OBX-5 ED data is not valid in its encoding "
                           "(ED-4)", ErrorLocation("OBX", obx.occurrence, 5))
    warnings.append(f"OBX {obx.occurrence}: OBX-5 {text[:40]!r} is not a valid {value_type}; kept as text")
    return {"valueString": text}


def data_absent_reason(group: ObxGroup, value: JSON) -> JSON | None:
    """No value: X → cannot-be-obtained, N → not-asked (IG OBX-11 rows), otherwise unknown (obs-6)."""
    if value:
        return None
    code = DATA_ABSENT_BY_STATUS.get(comp(group.first.field(11), 1).upper(), "unknown")
    return {"coding": [{"system": DATA_ABSENT_SYSTEM, "code": code}]}


def observation(group: ObxGroup, observation_id: str, context: ObservationContext, sender: SenderConfig,
                warnings: list[str]) -> tuple[JSON, list[JSON]]:
    """One OBX group → (Observation, the Practitioners it refers to). 101 when OBX-3 is empty."""
    obx = group.first
    code = cwe_codeable_concept(obx.field(3))
    if code is None:
        raise MappingError(REQUIRED_FIELD_MISSING, f"OBX {obx.occurrence}: OBX-3 observation identifier is empty",
                           ErrorLocation("OBX", obx.occurrence, 3))
    value = observation_value(group, warnings)
    performers = [practitioner_from_xcn(r, sender) for r in obx.repetitions(16) if not r.is_null]
    units = units_quantity(obx.field(6))
    effective = v2_to_fhir_datetime(comp(obx.field(14), 1))
    body: JSON = {
        "resourceType": "Observation",
        "status": observation_status(group),
        "category": [context.category] if context.category else [],
        "code": code,
        "subject": reference("Patient", context.patient_id),
        "encounter": context.encounter,
        **({"effectiveDateTime": effective} if effective else context.effective or {}),
        "issued": context.issued,
        "performer": [ref for _, ref in performers if ref],
        **value,
        "dataAbsentReason": data_absent_reason(group, value),
        "referenceRange": [r for r in (reference_range(comp(obx.field(7), 1), units),) if r],
        "note": [n for n in (nte_annotation(s) for s in group.notes) if n],
    }
    apply_field_maps(obx, OBX_MAP, body)
    return finish(body, observation_id, sender), [p for p, _ in performers if p]


def observations(groups: list[ObxGroup], parent_id: str, context: ObservationContext, sender: SenderConfig,
                 collected: Collected) -> list[JSON]:
    """Every group → its Observation (added to `collected` after its Practitioners); the Observations returned."""
    out = []
    for group, obs_id in zip(groups, observation_ids(parent_id, groups)):
        resource, practitioners = observation(group, obs_id, context, sender, collected.warnings)
        collected.add(*practitioners, resource)
        out.append(resource)
    return out


# --------------------------------------------------------------------------------------------------
# OBR (+ ORC) → DiagnosticReport


def report_id(order: OrderGroup, sender: SenderConfig) -> str:
    """DiagnosticReport id from (sender ODS, filler order number OBR-3, else ORC-3); without a filler number,
    from (sender ODS, placer number OBR-2 else ORC-2, OBR-4 code), since one placer order can carry several
    OBR requests. 101 at OBR-3 when the report has no order number at all."""
    obr, orc = order.obr, order.orc
    filler = first_valued(obr.field(3), orc.field(3) if orc else None)
    if filler is not None:
        return resource_id("DiagnosticReport", sender.ods_code, comp(filler, 1))
    placer = first_valued(obr.field(2), orc.field(2) if orc else None)
    if placer is None:
        raise MappingError(REQUIRED_FIELD_MISSING, f"OBR {obr.occurrence}: no filler (OBR-3) or placer (OBR-2) "
                           "order number to identify the report", ErrorLocation("OBR", obr.occurrence, 3))
    code = comp(obr.field(4), 1) or comp(obr.field(4), 4) or comp(obr.field(4), 2)
    return resource_id("DiagnosticReport", sender.ods_code, comp(placer, 1), code)


def report_effective(obr: Segment) -> JSON:
    """OBR-7 → effectiveDateTime, or effectivePeriod start/end with OBR-8 (IG OBR[DiagnosticReport])."""
    start, end = v2_to_fhir_datetime(comp(obr.field(7), 1)), v2_to_fhir_datetime(comp(obr.field(8), 1))
    if end:
        return {"effectivePeriod": {k: v for k, v in (("start", start), ("end", end)) if v}}
    return {"effectiveDateTime": start} if start else {}


def report_status(obr: Segment, warnings: list[str]) -> str:
    """OBR-25 (table 0123) → status (IG ResultStatus[Non-Queries] plus ours); empty → unknown."""
    code = comp(obr.field(25), 1).upper()
    if code and code not in REPORT_STATUS:
        warnings.append(f"OBR {obr.occurrence}: OBR-25 result status {code!r} is not in table 0123; status unknown")
    return REPORT_STATUS.get(code, "unknown")


def section(obr: Segment) -> tuple[JSON | None, JSON | None]:
    """OBR-24 → (DiagnosticReport.category in v2-0074, Observation.category laboratory/imaging or None)."""
    code = comp(obr.field(24), 1).upper()
    if not code:
        return None, None
    hit = SECTION_CATEGORY.get(code)
    return code_concept(V2_0074, code), code_concept(OBSERVATION_CATEGORY_SYSTEM, *hit) if hit else None


def report_identifiers(order: OrderGroup, sender: SenderConfig) -> list[JSON]:
    """ORC-2/OBR-2 placer (PLAC) and ORC-3/OBR-3 filler (FILL) numbers in the sender's order system."""
    system = sender.system_for("order")
    orc = order.orc
    placer = first_valued(orc.field(2) if orc else None, order.obr.field(2))
    filler = first_valued(orc.field(3) if orc else None, order.obr.field(3))
    return [i for i in (order_identifier(placer, system, "PLAC"), order_identifier(filler, system, "FILL")) if i]


def results_interpreters(obr: Segment, sender: SenderConfig) -> list[tuple[JSON | None, JSON | None]]:
    """OBR-32 principal result interpreter (NDL) → Practitioner (IG resultsInterpreter)."""
    return [practitioner_from_xcn(ndl_person(r), sender) for r in obr.repetitions(32) if not r.is_null]


def report_notes(order: OrderGroup) -> list[JSON]:
    """NTEs after the OBR → the R5 DiagnosticReport.note extension (one Annotation each)."""
    return [{"url": REPORT_NOTE_EXTENSION, "valueAnnotation": n} for n in (nte_annotation(s) for s in order.notes) if n]


def diagnostic_report(order: OrderGroup, patient_id: str, sender: SenderConfig, collected: Collected,
                      encounter: JSON | None) -> JSON:
    """One ORDER_OBSERVATION group → its ServiceRequest (with an ORC), Observations and DiagnosticReport."""
    obr = order.obr
    code = cwe_codeable_concept(obr.field(4))
    if code is None:
        raise MappingError(REQUIRED_FIELD_MISSING, f"OBR {obr.occurrence}: OBR-4 universal service identifier is "
                           "empty", ErrorLocation("OBR", obr.occurrence, 4))
    dr_id = report_id(order, sender)
    status = report_status(obr, collected.warnings)
    dr_category, obs_category = section(obr)
    issued = instant(v2_to_fhir_datetime(comp(obr.field(22), 1)))
    effective = report_effective(obr)
    based_on = None
    if order.orc is not None:
        order_status = "completed" if status in {"final", "corrected", "amended"} else "active"
        based_on = service_request(order, patient_id, encounter, sender, collected, default_status=order_status)
    context = ObservationContext(patient_id, encounter, effective or None, issued, obs_category)
    results = observations(group_observations(order.details), dr_id, context, sender, collected)
    interpreters = results_interpreters(obr, sender)
    organization = sender_organization(sender)
    collected.add(organization, *(p for p, _ in interpreters))
    body: JSON = {
        "resourceType": "DiagnosticReport",
        "extension": report_notes(order),
        "identifier": report_identifiers(order, sender),
        "basedOn": [reference("ServiceRequest", based_on["id"])] if based_on else [],
        "status": status,
        "category": [dr_category] if dr_category else [],
        "code": code,
        "subject": reference("Patient", patient_id),
        "encounter": encounter,
        **effective,
        "issued": issued,
        "performer": [reference("Organization", organization["id"], organization.get("name"))],
        "resultsInterpreter": [ref for _, ref in interpreters if ref],
        "result": [reference("Observation", r["id"]) for r in results],
    }
    if comp(obr.field(22), 1) and not issued:
        collected.warnings.append(f"OBR {obr.occurrence}: OBR-22 has no time of day; DiagnosticReport.issued "
                                  "(an instant) left out")
    report = finish(body, dr_id, sender)
    collected.add(report)
    return report


OBR_FIELDS_READ = frozenset({1, 2, 3, 4, 7, 8, 22, 24, 25, 32})
RESULT_FIELDS_READ: dict[str, frozenset[int]] = {
    "ORC": frozenset({2, 3}),
    "OBR": OBR_FIELDS_READ,
    "OBX": frozenset(m.field for m in OBX_MAP) | OBX_NAMED_FIELDS,
    "NTE": frozenset({1, 3}),
}


# --------------------------------------------------------------------------------------------------
# The message


def map_oru(message: Message, sender: SenderConfig) -> MappingResult:
    """ORU^R01 → Patient, then per OBR: ServiceRequest (with an ORC), Observations, DiagnosticReport."""
    patient = single_patient(message, sender)
    encounter = encounter_reference(message, sender)
    collected = Collected()
    orders = order_groups(message, collected, orphan_obx_error=True)
    if not orders:
        raise MappingError(REQUIRED_FIELD_MISSING, "ORU^R01 has no OBR segment", ErrorLocation("OBR", 1))
    with_orc = False
    seen: set[str] = set()
    for order in orders:
        if order.obr is None:
            raise MappingError(SEGMENT_SEQUENCE_ERROR, f"ORC {order.orc.occurrence if order.orc else 1} is not "
                               "followed by an OBR", ErrorLocation("ORC", order.orc.occurrence if order.orc else 1))
        with_orc = with_orc or order.orc is not None
        report = diagnostic_report(order, patient.patient_id, sender, collected, encounter)
        if report["id"] in seen:
            collected.warnings.append(f"OBR {order.obr.occurrence}: same order number and "
                                      "code as an earlier OBR of this message; it replaces that report")
        seen.add(report["id"])
    read = dict(RESULT_FIELDS_READ)
    if with_orc:
        read = {k: read.get(k, frozenset()) | ORDER_FIELDS_READ.get(k, frozenset())
                for k in {*read, *ORDER_FIELDS_READ}}
    return mapping_result(message, patient, collected, read)


RESULT_MAPS: dict[str, Callable[[Message, SenderConfig], MappingResult]] = {"ORU^R01": in_sender_time_zone(map_oru)}

__all__ = [
    "JOINED_TEXT_TYPES", "OBX_MAP", "RESULT_FIELDS_READ", "RESULT_MAPS", "TEXT_RENDERINGS", "TEXT_TYPES", "VALUE_MAPS",
    "ObservationContext", "ObxGroup", "diagnostic_report", "group_observations", "map_oru", "observation",
    "observation_ids", "observation_value", "observations",
]
