"""MDM^T02 / T04 / T08 → DocumentReference from TXA + OBX.

Normative source: the HL7 v2-to-FHIR IG message map MDM_T02 and segment maps TXA[DocumentReference]
and OBX[DocumentReference]; datatype ED[Attachment]. Choices made here and tested:

- Identity (DESIGN.md #4): DocumentReference from (sender ODS, TXA-12 unique document number), which
  is also its masterIdentifier (sender's document system). A T04 status change re-sends the same
  number: same id, new version. A T08 edit that carries a new TXA-12 with the original in TXA-13
  (parent document number) is a new DocumentReference that `relatesTo` replaces the original; with
  the same TXA-12 it is the same id, versioned. docStatus is amended after a T08 edit. The original
  is then marked `status: superseded` by the engine (`Action("supersede", Supersede(...))`: the map
  does not have the stored original to rewrite).
- content: consecutive TX/FT/ST OBX lines → one text/plain (UTF-8) attachment, lines joined by line
  feeds (the IG says "text/hl7v2" for FT and "application/text" for TX; the parser has already
  decoded escapes and formatting, so the text is plain text); each ED OBX → its own attachment
  (ED-2/ED-3 application/pdf, ED-4 Base64, ED-5 data). Attachments carry size and SHA-1 hash.
- TXA-17 completion status (table 0271) → docStatus: the IG gives no vocabulary for it (its
  CompletionStatus map is table 0322, for immunisations), so: AU/LA authenticated → final, the
  in-progress states DI/DO/IN/IP/PA → preliminary.
- TXA-19 availability (table 0273) → status: AV (or empty) current, OB obsolete → superseded,
  CA cancelled → entered-in-error, UN unavailable → current; CA/OB/UN keep the v2 code in the
  alternate-codes extension (IG).
- TXA-18 confidentiality (table 0272) → securityLabel (IG), and R/V also raise the v3-Confidentiality
  label in meta.security so the access gate sees a restricted document.
- author: TXA-9 originator and TXA-5 primary activity provider; authenticator: TXA-10, else TXA-22.
- context: TXA-4 activity time → period.start; PV1-19 → encounter; TXA-14 / ORC-2 placer order
  number → related ServiceRequest (same id rule as `orders.py`).

Pure: `(Message, SenderConfig) → MappingResult` or `MappingError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    FieldMap,
    apply_field_maps,
    comp,
    ei_identifier,
    in_sender_time_zone,
    mapped_concept,
    practitioner_from_xcn,
    reference,
    sender_organization,
    v2_to_fhir_datetime,
)
from mappings.hl7v2.orders_datatypes import (
    CONFIDENTIALITY,
    Collected,
    confidentiality_labels,
    ed_attachment,
    encounter_reference,
    field_text,
    finish,
    instant,
    mapping_result,
    single_patient,
    text_attachment,
)
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    Action,
    ErrorLocation,
    MappingError,
    MappingResult,
    Supersede,
)

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

V2_0270 = "http://terminology.hl7.org/CodeSystem/v2-0270"
V2_0272 = "http://terminology.hl7.org/CodeSystem/v2-0272"
V2_0273 = "http://terminology.hl7.org/CodeSystem/v2-0273"
ALTERNATE_CODES_EXTENSION = "http://hl7.org/fhir/StructureDefinition/alternate-codes"
TEXT_TYPES = frozenset({"TX", "FT", "ST"})

# TXA-17 (table 0271) → docStatus (ours: the IG names no vocabulary for TXA-17).
DOC_STATUS = {"AU": "final", "LA": "final", "DI": "preliminary", "DO": "preliminary", "IN": "preliminary",
              "IP": "preliminary", "PA": "preliminary"}
# TXA-19 (table 0273) → DocumentReference.status (IG TXA-19 rows; ours for the CA/OB/UN status itself).
AVAILABILITY_STATUS = {"AV": "current", "OB": "superseded", "CA": "entered-in-error", "UN": "current"}
# T08 is an edit: a final document after it is amended; T06 (not mapped here) would append.
RELATION_BY_TRIGGER = {"T08": "replaces", "T10": "replaces"}


# --------------------------------------------------------------------------------------------------
# TXA


def document_system(sender: SenderConfig) -> str:
    return sender.system_for("document")


def document_id(txa: Segment, sender: SenderConfig) -> str:
    """(sender ODS, TXA-12.1); 101 when TXA-12 is empty."""
    number = comp(txa.field(12), 1)
    if not number:
        raise MappingError(REQUIRED_FIELD_MISSING, "TXA-12 unique document number is empty",
                           ErrorLocation("TXA", txa.occurrence, 12))
    return resource_id("DocumentReference", sender.ods_code, number)


def status(txa: Segment) -> tuple[str, JSON | None]:
    """TXA-19 → (status, the `_status` alternate-codes extension for CA/OB/UN) (IG TXA-19)."""
    code = comp(txa.field(19), 1).upper()
    value = AVAILABILITY_STATUS.get(code, "current")
    if code in {"CA", "OB", "UN"}:
        concept = {"coding": [{"system": V2_0273, "code": code}]}
        return value, {"extension": [{"url": ALTERNATE_CODES_EXTENSION, "valueCodeableConcept": concept}]}
    return value, None


def doc_status(txa: Segment, trigger: str) -> str | None:
    """TXA-17 → docStatus (table 0271, ours); a final document after a T08 edit is amended."""
    value = DOC_STATUS.get(comp(txa.field(17), 1).upper())
    return "amended" if value == "final" and trigger == "T08" else value


def document_type(f: FieldLike) -> JSON | None:
    """TXA-2 document type → type (IG CWE[CodeableConcept]); an uncoded system is HL7 table 0270."""
    return mapped_concept(f, {}, V2_0270)


def security_label(f: FieldLike) -> JSON | None:
    """TXA-18 → securityLabel in v2-0272 (IG DocumentConfidentialityStatus)."""
    code = comp(f, 1).upper()
    return {"coding": [{"system": V2_0272, "code": code}]} if code in CONFIDENTIALITY else None


def people(txa: Segment, fields: tuple[int, ...], sender: SenderConfig,
           collected: Collected) -> list[JSON]:
    """XCN repetitions of `fields` → references (Practitioners added to `collected`), first mention kept."""
    refs: list[JSON] = []
    for n in fields:
        for rep in txa.repetitions(n):
            if rep.is_null:
                continue
            practitioner, ref = practitioner_from_xcn(rep, sender)
            collected.add(practitioner)
            if ref is not None and ref not in refs:
                refs.append(ref)
    return refs


def relates_to(txa: Segment, trigger: str, sender: SenderConfig) -> list[JSON]:
    """TXA-13 parent document number, when it differs from TXA-12 → relatesTo (replaces for T08, else appends)."""
    parent, own = comp(txa.field(13), 1), comp(txa.field(12), 1)
    if not parent or parent == own:
        return []
    target = reference("DocumentReference", resource_id("DocumentReference", sender.ods_code, parent))
    return [{"code": RELATION_BY_TRIGGER.get(trigger, "appends"), "target": target}]


def related_order(message: Message, txa: Segment, sender: SenderConfig) -> list[JSON]:
    """TXA-14 placer order number, else ORC-2 → context.related ServiceRequest (id rule of `orders.py`)."""
    orc = message.first("ORC")
    placer = comp(txa.field(14), 1) or (comp(orc.field(2), 1) if orc is not None else "")
    if not placer:
        return []
    return [reference("ServiceRequest", resource_id("ServiceRequest", sender.ods_code, placer))]


TXA_MAP: tuple[FieldMap, ...] = (
    FieldMap(2, "type", document_type),
    FieldMap(16, "identifier", lambda f: {"value": comp(f, 1)} if comp(f, 1) else None, repeats=True),
    FieldMap(18, "securityLabel", security_label, repeats=True),
    FieldMap(25, "description", lambda f: field_text(f) or None),
)
# Read by the named functions: set id, content presentation, times, people, numbers, statuses.
TXA_NAMED_FIELDS = frozenset({1, 3, 4, 5, 6, 9, 10, 12, 13, 14, 17, 19, 22})


# --------------------------------------------------------------------------------------------------
# OBX → content


def content(obxs: list[Segment], title: str | None, creation: str | None) -> list[JSON]:
    """The document's OBX segments → content[]: each run of text lines one text/plain attachment, each ED
    one attachment (IG OBX[DocumentReference]). 102 for another OBX-2 or an ED that does not decode."""
    out: list[JSON] = []
    lines: list[str] = []
    for obx in obxs:
        value_type = comp(obx.field(2), 1).upper() or "TX"
        if value_type in TEXT_TYPES:
            lines += [field_text(r) for r in obx.repetitions(5)] or [""]
            continue
        out += _text_content(lines, title, creation)
        lines = []
        if value_type != "ED":
            raise MappingError(DATA_TYPE_ERROR, f"OBX {obx.occurrence}: OBX-2 {value_type!r} cannot be document "
                               "content (TX, FT, ST or ED)", ErrorLocation("OBX", obx.occurrence, 2))
        for rep in obx.repetitions(5):
            found = ed_attachment(rep, comp(obx.field(3), 2) or title)
            if found is None:
                raise MappingError(DATA_TYPE_ERROR, f"OBX {obx.occurrence}: OBX-5 ED has no data valid in its "
                                   "encoding (ED-4/ED-5)", ErrorLocation("OBX", obx.occurrence, 5))
            out.append({"attachment": {**found, **({"creation": creation} if creation else {})}})
    return out + _text_content(lines, title, creation)


def _text_content(lines: list[str], title: str | None, creation: str | None) -> list[JSON]:
    found = text_attachment(lines, title, creation)
    return [{"attachment": found}] if found else []


# --------------------------------------------------------------------------------------------------
# The message


def map_document(message: Message, sender: SenderConfig) -> MappingResult:
    """MDM^T02/T04/T08 → Patient, the authors (Practitioners), the sender Organization, the DocumentReference."""
    patient = single_patient(message, sender)
    txa = message.first("TXA")
    if txa is None:
        raise MappingError(REQUIRED_FIELD_MISSING, "TXA segment is missing", ErrorLocation("TXA", 1))
    trigger = message.trigger.upper()
    collected = Collected()
    doc_id = document_id(txa, sender)
    created = v2_to_fhir_datetime(comp(txa.field(6), 1))
    title = comp(txa.field(25), 1) or comp(txa.field(2), 2) or None
    attachments = content(message.all("OBX"), title, created)
    if not attachments:
        raise MappingError(REQUIRED_FIELD_MISSING, f"MDM^{trigger} carries no document content in OBX-5",
                           ErrorLocation("OBX", 1, 5))
    value, status_extension = status(txa)
    authors = people(txa, (9, 5), sender, collected)
    authenticators = people(txa, (10,), sender, collected) or people(txa, (22,), sender, collected)
    organization = sender_organization(sender)
    activity = v2_to_fhir_datetime(comp(txa.field(4), 1))
    encounter = encounter_reference(message, sender)
    body: JSON = {
        "resourceType": "DocumentReference",
        "masterIdentifier": ei_identifier(txa.field(12), document_system(sender)),
        "status": value,
        "_status": status_extension,
        "docStatus": doc_status(txa, trigger),
        "subject": reference("Patient", patient.patient_id),
        "date": instant(created),
        "author": authors,
        "authenticator": authenticators[0] if authenticators else None,
        "custodian": reference("Organization", organization["id"], organization.get("name")),
        "relatesTo": relates_to(txa, trigger, sender),
        "content": attachments,
        "context": {"encounter": [encounter] if encounter else [],
                    "period": {"start": activity} if activity else None,
                    "related": related_order(message, txa, sender)},
    }
    apply_field_maps(txa, TXA_MAP, body)
    if created and not instant(created):
        collected.warnings.append("TXA-6 has no time of day; DocumentReference.date (an instant) left out")
    labels = confidentiality_labels(comp(txa.field(18), 1), sender.security_labels)
    collected.add(organization, finish(body, doc_id, sender, labels))
    read = {"TXA": frozenset(m.field for m in TXA_MAP) | TXA_NAMED_FIELDS,
            "OBX": frozenset({1, 2, 3, 5}), "ORC": frozenset({2})}
    result = mapping_result(message, patient, collected, read)
    result.actions += superseded(body["relatesTo"], doc_id)
    return result


def superseded(relations: list[JSON], doc_id: str) -> list[Action]:
    """A `replaces` relation (T08 with a new TXA-12) → the engine marks the original superseded
    (https://hl7.org/fhir/R4/documentreference.html: status superseded, "replaced by another")."""
    return [Action("supersede", Supersede("DocumentReference", r["target"]["reference"].split("/", 1)[1],
                                          f"DocumentReference/{doc_id}"))
            for r in relations if r["code"] == "replaces"]


DOCUMENT_MAPS: dict[str, Callable[[Message, SenderConfig], MappingResult]] = {
    "MDM^T02": in_sender_time_zone(map_document),
    "MDM^T04": in_sender_time_zone(map_document),
    "MDM^T08": in_sender_time_zone(map_document),
}

__all__ = ["DOCUMENT_MAPS", "DOC_STATUS", "TXA_MAP", "content", "map_document"]
