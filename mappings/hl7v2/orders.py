"""ORM^O01 and OML^O21 → a ServiceRequest per order (ORC + OBR), with its ask-at-order-entry Observations.

Normative source: the HL7 v2-to-FHIR IG message maps ORM_O01 and OML_O21 and segment maps
ORC[ServiceRequest], OBR[ServiceRequest], NTE[ServiceRequest]; datatype map TQ[ServiceRequest];
concept maps OrderStatus (0038), OrderControlCode[ServiceRequest.status] (0119), ExtendedPriorityCodes
(0485) in `orders_datatypes.py`. Choices made here and tested:

- Identity (DESIGN.md #4): ServiceRequest from (sender ODS, placer order number ORC-2, else OBR-2);
  an order known only by its filler number ORC-3/OBR-3 gets (sender ODS, "filler", number).
- status: ORC-5 order status when valued, else ORC-1 order control (IG); a control code the IG
  leaves unmapped gives `default_status` ("unknown" for ORM/OML; an ORU derives it from OBR-25).
  Note the IG maps ORC-1 CA ("cancel request") to active: a cancel is revoked once ORC-5 says CA.
- authoredOn: ORC-9 only for a new order (ORC-1 NW), as the IG says: for other control codes ORC-9 is
  the time of that transaction, not of the order.
- requester: ORC-12, else OBR-16 (IG "IF ORC-12 NOT VALUED"); priority: ORC-7.6, else OBR-27.6, else OBR-5.
- OBX under an order → an Observation in ServiceRequest.supportingInfo (IG ORM_O01 / OML_O21).

`order_groups` (the ORC/OBR/NTE/OBX grouping) and `service_request` are shared with the ORU map.
Pure: `(Message, SenderConfig) → MappingResult` or `MappingError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    FieldMap,
    apply_field_maps,
    comp,
    cwe_codeable_concept,
    in_sender_time_zone,
    practitioner_from_xcn,
    reference,
    v2_to_fhir_datetime,
)
from mappings.hl7v2.orders_datatypes import (
    ORDER_CONTROL_STATUS,
    ORDER_STATUS,
    PRIORITY,
    Collected,
    encounter_reference,
    finish,
    first_valued,
    mapping_result,
    nte_annotation,
    order_identifier,
    single_patient,
)
from mappings.ids import resource_id
from mappings.result import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    ErrorLocation,
    MappingError,
    MappingResult,
)

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

STATUS_REASON_EXTENSION = "http://hl7.org/fhir/StructureDefinition/request-statusReason"


# --------------------------------------------------------------------------------------------------
# Grouping: ORC, OBR, NTE, OBX in message order


@dataclass
class OrderGroup:
    """One order: its ORC and OBR (either may be absent), the NTEs on the order, and then its OBX segments
    with the NTEs that follow each of them (`details`, in message order)."""

    orc: Segment | None
    obr: Segment | None = None
    notes: list[Segment] = field(default_factory=list)
    details: list[Segment] = field(default_factory=list)

    @property
    def first(self) -> Segment:
        return self.orc or self.obr  # type: ignore[return-value]  # a group starts with one of them


def order_groups(message: Message, collected: Collected, *, orphan_obx_error: bool) -> list[OrderGroup]:
    """The orders of a message: an ORC starts one, an OBR joins the ORC before it (or starts one of its own);
    NTE and OBX belong to the latest order. OBX before any OBR is a 100 error when `orphan_obx_error`
    (ORU), else skipped and reported unmapped; NTE before any order (e.g. after PID) is reported too."""
    groups: list[OrderGroup] = []
    for segment in message.segments:
        name = segment.name
        if name == "ORC":
            groups.append(OrderGroup(segment))
        elif name == "OBR":
            if groups and groups[-1].obr is None and not groups[-1].details:
                groups[-1].obr = segment
            else:
                groups.append(OrderGroup(None, segment))
        elif name == "OBX":
            if groups and (groups[-1].obr is not None or not orphan_obx_error):
                groups[-1].details.append(segment)
            elif orphan_obx_error:
                raise MappingError(SEGMENT_SEQUENCE_ERROR, f"OBX {segment.occurrence} is not preceded by an OBR",
                                   ErrorLocation("OBX", segment.occurrence))
            else:
                collected.skipped.append(segment)
        elif name == "NTE":
            if not groups:
                collected.skipped.append(segment)
            elif groups[-1].details:
                groups[-1].details.append(segment)
            else:
                groups[-1].notes.append(segment)
    return groups


# --------------------------------------------------------------------------------------------------
# ORC + OBR → ServiceRequest


def service_request_id(order: OrderGroup, sender: SenderConfig) -> str:
    """(sender ODS, placer number ORC-2 else OBR-2); else (sender ODS, "filler", ORC-3 else OBR-3); else 101."""
    orc, obr = order.orc, order.obr
    placer = first_valued(orc.field(2) if orc else None, obr.field(2) if obr else None)
    if placer is not None:
        return resource_id("ServiceRequest", sender.ods_code, comp(placer, 1))
    filler = first_valued(orc.field(3) if orc else None, obr.field(3) if obr else None)
    if filler is not None:
        return resource_id("ServiceRequest", sender.ods_code, "filler", comp(filler, 1))
    where = order.first
    raise MappingError(REQUIRED_FIELD_MISSING, f"{where.name} {where.occurrence}: no placer (ORC-2/OBR-2) or filler "
                       "(ORC-3/OBR-3) order number to identify the order", ErrorLocation(where.name, where.occurrence, 2))


def order_status(orc: Segment | None, default_status: str) -> str:
    """ORC-5 (IG OrderStatus), else ORC-1 (IG OrderControlCode[ServiceRequest.status]), else `default_status`."""
    if orc is None:
        return default_status
    return (ORDER_STATUS.get(comp(orc.field(5), 1).upper())
            or ORDER_CONTROL_STATUS.get(comp(orc.field(1), 1).upper()) or default_status)


def intent(obr: Segment | None) -> str:
    """OBR-11 specimen action code G (generated) → reflex-order; otherwise order (IG OBR-11; its "#add-on#"
    for A has no R4 code)."""
    return "reflex-order" if obr is not None and comp(obr.field(11), 1).upper() == "G" else "order"


def priority(order: OrderGroup) -> str | None:
    """TQ-6 of ORC-7, else of OBR-27, else OBR-5 (table 0485 → request-priority, IG ExtendedPriorityCodes)."""
    orc, obr = order.orc, order.obr
    for code in (comp(orc.field(7), 6) if orc else "", comp(obr.field(27), 6) if obr else "",
                 comp(obr.field(5), 1) if obr else ""):
        if code:
            return PRIORITY.get(code.upper())
    return None


def occurrence(order: OrderGroup) -> JSON:
    """OBR-6 requested date/time → occurrenceDateTime; else TQ-4/TQ-5 of ORC-7 (or OBR-27) →
    occurrenceTiming.repeat.boundsPeriod (IG OBR[ServiceRequest], TQ[ServiceRequest])."""
    obr = order.obr
    requested = v2_to_fhir_datetime(comp(obr.field(6), 1)) if obr else None
    if requested:
        return {"occurrenceDateTime": requested}
    for tq in (order.orc.field(7) if order.orc else None, obr.field(27) if obr else None):
        bounds = {k: v for k, v in (("start", v2_to_fhir_datetime(comp(tq, 4))),
                                    ("end", v2_to_fhir_datetime(comp(tq, 5)))) if v}
        if bounds:
            return {"occurrenceTiming": {"repeat": {"boundsPeriod": bounds}}}
    return {}


def order_identifiers(order: OrderGroup, sender: SenderConfig) -> JSON:
    """identifier: ORC-2/OBR-2 placer (PLAC), ORC-3/OBR-3 filler (FILL); requisition: ORC-4 placer group (PGN)."""
    system = sender.system_for("order")
    orc, obr = order.orc, order.obr
    placer = first_valued(orc.field(2) if orc else None, obr.field(2) if obr else None)
    filler = first_valued(orc.field(3) if orc else None, obr.field(3) if obr else None)
    return {
        "identifier": [i for i in (order_identifier(placer, system, "PLAC"),
                                   order_identifier(filler, system, "FILL")) if i],
        "requisition": order_identifier(orc.field(4), system, "PGN") if orc else None,
    }


def status_reason(f: FieldLike) -> JSON | None:
    """ORC-16 order control code reason → the request-statusReason extension (IG ORC-16)."""
    concept = cwe_codeable_concept(f)
    return {"url": STATUS_REASON_EXTENSION, "valueCodeableConcept": concept} if concept else None


ORC_MAP: tuple[FieldMap, ...] = (FieldMap(16, "extension", status_reason, repeats=True),)
OBR_MAP: tuple[FieldMap, ...] = (
    FieldMap(4, "code", cwe_codeable_concept),
    FieldMap(31, "reasonCode", cwe_codeable_concept, repeats=True),
)
ORDER_FIELDS_READ: dict[str, frozenset[int]] = {
    "ORC": frozenset({1, 2, 3, 4, 5, 7, 9, 12}) | frozenset(m.field for m in ORC_MAP),
    "OBR": frozenset({1, 2, 3, 5, 6, 11, 16, 27}) | frozenset(m.field for m in OBR_MAP),
    "NTE": frozenset({1, 3}),
}


def requester(order: OrderGroup, sender: SenderConfig) -> tuple[JSON | None, JSON | None]:
    """ORC-12 ordering provider, else OBR-16 (IG) → (Practitioner, Reference)."""
    for f in (order.orc.field(12) if order.orc else None, order.obr.field(16) if order.obr else None):
        practitioner, ref = practitioner_from_xcn(f, sender) if f is not None else (None, None)
        if ref is not None:
            return practitioner, ref
    return None, None


def service_request(order: OrderGroup, patient_id: str, encounter: JSON | None, sender: SenderConfig,
                    collected: Collected, *, default_status: str, supporting: list[JSON] | None = None) -> JSON:
    """One order → ServiceRequest, added to `collected` after its requester Practitioner.

    A second order of the same message with the same placer number (one ORC, several OBRs) is mapped
    into the first one's ServiceRequest (its Observations join supportingInfo), with a warning: the id
    rule gives them one identity, and the first order carries the ORC.
    """
    orc, obr = order.orc, order.obr
    sr_id = service_request_id(order, sender)
    existing = collected.find("ServiceRequest", sr_id)
    if existing is not None:
        existing.setdefault("supportingInfo", []).extend(reference("Observation", o["id"]) for o in supporting or [])
        where = order.first
        collected.warnings.append(f"{where.name} {where.occurrence}: same order number as an earlier order of this "
                                  "message; mapped into that ServiceRequest (its OBR-4 is not kept)")
        return existing
    practitioner, requester_ref = requester(order, sender)
    authored = v2_to_fhir_datetime(comp(orc.field(9), 1)) if orc and comp(orc.field(1), 1).upper() == "NW" else None
    body: JSON = {
        "resourceType": "ServiceRequest",
        **order_identifiers(order, sender),
        "status": order_status(orc, default_status),
        "intent": intent(obr),
        "priority": priority(order),
        "subject": reference("Patient", patient_id),
        "encounter": encounter,
        **occurrence(order),
        "authoredOn": authored,
        "requester": requester_ref,
        "supportingInfo": [reference("Observation", o["id"]) for o in supporting or []],
        "note": [n for n in (nte_annotation(s) for s in order.notes) if n],
    }
    apply_field_maps(orc, ORC_MAP, body)
    apply_field_maps(obr, OBR_MAP, body)
    resource = finish(body, sr_id, sender)
    collected.add(practitioner, resource)
    return resource


# --------------------------------------------------------------------------------------------------
# The messages


def map_orders(message: Message, sender: SenderConfig) -> MappingResult:
    """ORM^O01 / OML^O21 → Patient, then per order its Observations (OBX) and ServiceRequest."""
    # results.py builds the ORU's ServiceRequest with this module, so its Observation map is imported here.
    from mappings.hl7v2.results import (
        RESULT_FIELDS_READ,
        ObservationContext,
        group_observations,
        observations,
    )

    patient = single_patient(message, sender)
    encounter = encounter_reference(message, sender)
    collected = Collected()
    orders = order_groups(message, collected, orphan_obx_error=False)
    if not orders:
        raise MappingError(REQUIRED_FIELD_MISSING, f"{message.message_code}^{message.trigger} has no ORC segment",
                           ErrorLocation("ORC", 1))
    context = ObservationContext(patient.patient_id, encounter)
    for order in orders:
        sr_id = service_request_id(order, sender)
        supporting = observations(group_observations(order.details), sr_id, context, sender, collected)
        service_request(order, patient.patient_id, encounter, sender, collected, default_status="unknown",
                        supporting=supporting)
    read = {**ORDER_FIELDS_READ, "OBX": RESULT_FIELDS_READ["OBX"]}
    return mapping_result(message, patient, collected, read)


ORDER_MAPS: dict[str, Callable[[Message, SenderConfig], MappingResult]] = {
    "ORM^O01": in_sender_time_zone(map_orders),
    "OML^O21": in_sender_time_zone(map_orders),
}

__all__ = ["ORDER_FIELDS_READ", "ORDER_MAPS", "OrderGroup", "map_orders", "order_groups", "service_request",
           "service_request_id"]
