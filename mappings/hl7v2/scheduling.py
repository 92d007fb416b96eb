"""SIU^S12–S15 → Appointment from SCH + AIS/AIG/AIL/AIP + PID.

Normative source: the HL7 v2-to-FHIR IG message map SIU_S12 and segment maps SCH[Appointment],
AIS[Appointment], AIG[Appointment], AIL[Appointment], AIP[Appointment], PID[Appointment],
NTE[Appointment-Comment]; datatype TQ[Appointment]; concept map FillerStatusCodes[Appointment].
Choices made here and tested:

- Identity (DESIGN.md #4): Appointment from (sender ODS, SCH-1 placer appointment id), else
  (sender ODS, SCH-2 filler appointment id); both are identifiers (PLAC / FILL).
- status by trigger: S12 new booking and S14 modification take SCH-25 filler status (IG) and are
  booked without one; S13 reschedule is booked (with the new time); S15 cancellation is cancelled,
  with SCH-6 event reason as cancelationReason.
- start: SCH-11 TQ-4, else AIS-4, else AIL-6 / AIP-6 / AIG-8; end: TQ-5, else start + duration;
  duration (minutesDuration): SCH-9 in SCH-10 units, else AIS-7 in AIS-8 units, else TQ-3.
- participants: the patient (PID[Appointment]); each AIP-3 Practitioner with AIP-4 as type and
  AIP-12 filler status → participant status; each AIL-3 Location (same Location ids as the Encounter
  map); each AIG-3 general resource as a display/identifier actor with AIG-4 as type.
- SCH-7 → reasonCode and SCH-8 → appointmentType whatever coding system they use (the IG's rows are
  conditioned on HL7 tables 0276/0277, which UK PAS systems rarely send). NTEs → comment (R4 has
  Appointment.comment; the IG's note extension is for R5 Annotation).

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
    cwe_codeable_concept,
    in_sender_time_zone,
    practitioner_from_xcn,
    reference,
    v2_to_fhir_datetime,
)
from mappings.hl7v2.encounter import location_resource
from mappings.hl7v2.orders_datatypes import (
    APPOINTMENT_STATUS,
    Collected,
    add_minutes,
    duration_minutes,
    finish,
    instant,
    mapping_result,
    nte_annotation,
    order_identifier,
    single_patient,
)
from mappings.ids import resource_id
from mappings.result import REQUIRED_FIELD_MISSING, ErrorLocation, MappingError, MappingResult

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

# Trigger → status, or None: "SCH-25, else booked" (HL7 v2.5 ch. 10.3 trigger events).
TRIGGER_STATUS: dict[str, str | None] = {"S12": None, "S13": "booked", "S14": None, "S15": "cancelled"}
# AIP-12 / AIL-12 / AIG-14 filler status (table 0278) → participant status.
PARTICIPANT_STATUS = {"BOOKED": "accepted", "CANCELLED": "declined", "DELETED": "declined",
                      "PENDING": "tentative", "WAITLIST": "needs-action"}


# --------------------------------------------------------------------------------------------------
# SCH


def appointment_id(sch: Segment, sender: SenderConfig) -> str:
    """(sender ODS, SCH-1.1), else (sender ODS, SCH-2.1); 101 at SCH-2 when neither is valued."""
    number = comp(sch.field(1), 1) or comp(sch.field(2), 1)
    if not number:
        raise MappingError(REQUIRED_FIELD_MISSING, "SCH-1 placer and SCH-2 filler appointment ids are both empty",
                           ErrorLocation("SCH", sch.occurrence, 2))
    return resource_id("Appointment", sender.ods_code, number)


def appointment_status(sch: Segment, trigger: str) -> str:
    """By trigger (S13 booked, S15 cancelled); S12/S14 from SCH-25 (IG FillerStatusCodes), else booked."""
    fixed = TRIGGER_STATUS.get(trigger)
    if fixed:
        return fixed
    return APPOINTMENT_STATUS.get(comp(sch.field(25), 1).upper(), "booked")


def schedule_times(message: Message, sch: Segment) -> tuple[str | None, str | None, int | None]:
    """(start, end, minutes) from SCH-11 TQ-4/TQ-5/TQ-3, SCH-9/10, AIS-4/7/8 and the resources' start times.

    start and end are as sent (a date-only start stays a date); `appointment_times` decides what fits
    Appointment.start/end, which are instants.
    """
    ais = message.first("AIS")
    tq = sch.field(11)
    start = v2_to_fhir_datetime(comp(tq, 4))
    for segment, n in ((ais, 4), (message.first("AIL"), 6), (message.first("AIP"), 6), (message.first("AIG"), 8)):
        if start or segment is None:
            continue
        start = v2_to_fhir_datetime(comp(segment.field(n), 1))
    minutes = (duration_minutes(comp(sch.field(9), 1), comp(sch.field(10), 1))
               or (duration_minutes(comp(ais.field(7), 1), comp(ais.field(8), 1)) if ais is not None else None)
               or duration_minutes(comp(tq, 3)))
    end = instant(v2_to_fhir_datetime(comp(tq, 5))) or (add_minutes(start, minutes) if start and minutes else None)
    return start, end, minutes


def appointment_times(start: str | None, end: str | None, warnings: list[str]) -> JSON:
    """start/end when both are instants (app-2: both or neither); otherwise the start as requestedPeriod."""
    if instant(start) and end:
        return {"start": start, "end": end}
    if start:
        warnings.append("no usable end time or duration (SCH-11 TQ-5, SCH-9, AIS-7), or a start without a time: "
                        "the start is kept as requestedPeriod (an Appointment has start and end, or neither)")
        return {"requestedPeriod": [{"start": start}]}
    return {}


SCH_MAP: tuple[FieldMap, ...] = (
    FieldMap(7, "reasonCode", cwe_codeable_concept, repeats=True),
    FieldMap(8, "appointmentType", cwe_codeable_concept),
)
SCH_NAMED_FIELDS = frozenset({1, 2, 6, 9, 10, 11, 25})


# --------------------------------------------------------------------------------------------------
# Resources: AIS, AIP, AIL, AIG


def participant_status(f: FieldLike | None) -> str:
    return PARTICIPANT_STATUS.get(comp(f, 1).upper(), "accepted")


def participant_period(segment: Segment, start_field: int, units: tuple[int, int]) -> JSON | None:
    """A resource's own start (AIP-6, AIL-6, AIG-8) and duration (AIP-9/10 …) → participant.period (IG)."""
    start = v2_to_fhir_datetime(comp(segment.field(start_field), 1))
    if not start:
        return None
    minutes = duration_minutes(comp(segment.field(units[0]), 1), comp(segment.field(units[1]), 1))
    end = add_minutes(start, minutes) if minutes else None
    return {"start": start, **({"end": end} if end else {})}


def personnel(aip: Segment, sender: SenderConfig, collected: Collected) -> JSON | None:
    """AIP-3 → a Practitioner participant, AIP-4 its type, AIP-12 its status (IG AIP[Appointment])."""
    practitioner, ref = practitioner_from_xcn(aip.field(3), sender)
    if ref is None:
        return None
    collected.add(practitioner)
    kind = cwe_codeable_concept(aip.field(4))
    return {"type": [kind] if kind else [], "actor": ref, "status": participant_status(aip.field(12)),
            "period": participant_period(aip, 6, (9, 10))}


def place(ail: Segment, sender: SenderConfig, collected: Collected) -> JSON | None:
    """AIL-3 → a Location participant (IG AIL[Appointment], PL[Location]; Location id as the Encounter map's)."""
    location = location_resource(ail.field(3), sender)
    if location is None:
        return None
    collected.add(location)
    return {"actor": reference("Location", location["id"], location.get("name")),
            "status": participant_status(ail.field(12)), "period": participant_period(ail, 6, (9, 10))}


def general_resource(aig: Segment) -> JSON | None:
    """AIG-3 (CWE) → a participant named by identifier and display, AIG-4 its type (IG AIG[Appointment])."""
    f = aig.field(3)
    code, text = comp(f, 1), comp(f, 2)
    if not code and not text:
        return None
    actor = {k: v for k, v in (("identifier", {"value": code} if code else None), ("display", text or code)) if v}
    kind = cwe_codeable_concept(aig.field(4))
    return {"type": [kind] if kind else [], "actor": actor, "status": participant_status(aig.field(14)),
            "period": participant_period(aig, 8, (11, 12))}


def participants(message: Message, patient_id: str, sender: SenderConfig, collected: Collected) -> list[JSON]:
    """The patient first (IG PID[Appointment]), then AIP, AIL and AIG resources in message order."""
    out: list[JSON] = [{"actor": reference("Patient", patient_id), "status": "accepted"}]
    for segment in message.segments:
        entry = None
        if segment.name == "AIP":
            entry = personnel(segment, sender, collected)
        elif segment.name == "AIL":
            entry = place(segment, sender, collected)
        elif segment.name == "AIG":
            entry = general_resource(segment)
        if entry is not None:
            out.append(entry)
    return out


RESOURCE_FIELDS_READ: dict[str, frozenset[int]] = {
    "RGS": frozenset({1}),
    "AIS": frozenset({1, 3, 4, 7, 8}),
    "AIP": frozenset({1, 3, 4, 6, 9, 10, 12}),
    "AIL": frozenset({1, 3, 6, 9, 10, 12}),
    "AIG": frozenset({1, 3, 4, 8, 11, 12, 14}),
    "NTE": frozenset({1, 3}),
}


# --------------------------------------------------------------------------------------------------
# The message


def map_schedule(message: Message, sender: SenderConfig) -> MappingResult:
    """SIU^S12–S15 → Patient, the Practitioners and Locations taking part, the Appointment."""
    sch = message.first("SCH")
    if sch is None:
        raise MappingError(REQUIRED_FIELD_MISSING, "SCH segment is missing", ErrorLocation("SCH", 1))
    patient = single_patient(message, sender)
    trigger = message.trigger.upper()
    collected = Collected()
    status = appointment_status(sch, trigger)
    start, end, minutes = schedule_times(message, sch)
    system = sender.system_for("appointment")
    comments = [n["text"] for n in (nte_annotation(s) for s in message.all("NTE")) if n]
    services = [c for c in (cwe_codeable_concept(ais.field(3)) for ais in message.all("AIS")) if c]
    body: JSON = {
        "resourceType": "Appointment",
        "identifier": [i for i in (order_identifier(sch.field(1), system, "PLAC"),
                                   order_identifier(sch.field(2), system, "FILL")) if i],
        "status": status,
        "cancelationReason": cwe_codeable_concept(sch.field(6)) if status == "cancelled" else None,
        "serviceType": services,
        **appointment_times(start, end, collected.warnings),
        "minutesDuration": minutes,
        "comment": "\n".join(comments) or None,
        "participant": participants(message, patient.patient_id, sender, collected),
    }
    apply_field_maps(sch, SCH_MAP, body)
    collected.add(finish(body, appointment_id(sch, sender), sender))
    read = {"SCH": frozenset(m.field for m in SCH_MAP) | SCH_NAMED_FIELDS, **RESOURCE_FIELDS_READ}
    return mapping_result(message, patient, collected, read)


SCHEDULING_MAPS: dict[str, Callable[[Message, SenderConfig], MappingResult]] = {
    f"SIU^{trigger}": in_sender_time_zone(map_schedule) for trigger in TRIGGER_STATUS
}

__all__ = ["SCHEDULING_MAPS", "SCH_MAP", "TRIGGER_STATUS", "map_schedule"]
