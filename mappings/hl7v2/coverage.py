"""What a message carried that no map used: the coverage report behind `MappingResult.unmapped`.

Each map module declares the fields it reads per segment (`PATIENT_FIELDS_READ`,
`ENCOUNTER_FIELDS_READ`, `CLINICAL_FIELDS_READ`, …); this module compares them with the populated
fields of a message. A populated field no map read is reported as "PID-9" (GT1, IN1 … in an ADT
field by field); a Z-segment such as ZU1 by its name, once. Field numbers follow HL7 (MSH-1 is the field separator). Pure; the result is sorted by
message order and has no duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment

FieldsRead = Mapping[str, frozenset[int]]

# MSH fields the pipeline itself consumes (routing, ACK, charset, version): MSH-1..7, 9..12, 15, 16, 18.
MSH_FIELDS_READ = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 18})
# EVN-1 event type (v2.4, repeats MSH-9.2) and EVN-2 recorded date/time (the event time).
EVN_FIELDS_READ = frozenset({1, 2})
# MRG-1 prior patient identifier list and MRG-4 prior patient ID (A34/A40 merges).
MRG_FIELDS_READ = frozenset({1, 4})
HEADER_FIELDS_READ: FieldsRead = {"MSH": MSH_FIELDS_READ, "EVN": EVN_FIELDS_READ}


def combine(*tables: FieldsRead) -> dict[str, frozenset[int]]:
    """Union of several per-segment field sets."""
    out: dict[str, frozenset[int]] = {}
    for table in tables:
        for segment, fields in table.items():
            out[segment] = out.get(segment, frozenset()) | fields
    return out


def populated_fields(segment: Segment) -> list[int]:
    """Field numbers of `segment` that carry a value (the explicit null `""` counts: it was sent)."""
    return segment.present_fields()


def is_z_segment(name: str) -> bool:
    """Z-segments are site-defined (HL7 v2.5 §2.10.2); UK ADT sends ZU1–ZU8 (UK-REFERENCE §3)."""
    return name.startswith("Z")


def unmapped_fields(message: Message, read: FieldsRead) -> list[str]:
    """Every populated field of `message` that `read` does not list, as "SEG-n"; Z-segments by name.

    A standard segment no map reads at all (GT1, IN1 … in an ADT) is listed field by field, so the
    report says exactly what was dropped.
    """
    report: list[str] = []
    for segment in message.segments:
        if is_z_segment(segment.name):
            report.append(segment.name)
            continue
        fields = read.get(segment.name, frozenset())
        report.extend(f"{segment.name}-{n}" for n in populated_fields(segment) if n not in fields)
    return list(dict.fromkeys(report))


def z_segments(message: Message) -> list[str]:
    """Names of the Z-segments in `message`, in order, without duplicates."""
    return list(dict.fromkeys(s.name for s in message.segments if is_z_segment(s.name)))
