"""Datatype maps the order, result, document and scheduling maps need beyond `datatypes.py`, and
the message plumbing those four maps share.

Normative source: the HL7 v2-to-FHIR IG datatype maps (http://hl7.org/fhir/uv/v2mappings)
NM[Quantity], CWE[Quantity], SN[Quantity] / SN[Range] / SN[Ratio], NR[Range], ED[Attachment],
TQ[Appointment] / TQ[ServiceRequest], NDL[PractitionerRole], EI[Identifier-Extension], and the
concept maps ObservationResultStatusCodesInterpretation (table 0085), InterpretationCodes (0078),
ResultStatus[Non-Queries] (0123), OrderStatus (0038), OrderControlCode[ServiceRequest.status]
(0119), ExtendedPriorityCodes (0485), FillerStatusCodes[Appointment] (0278) and
DocumentConfidentialityStatus (0272). Where the IG leaves a code unmapped and we map it anyway,
the table says "ours".

Like `datatypes.py`, every datatype function takes one field repetition and returns FHIR JSON or
None; none raises on odd input. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from adapters.senders import SecurityLabel
from mappings.hl7v2.coverage import HEADER_FIELDS_READ, combine, populated_fields, unmapped_fields
from mappings.hl7v2.datatypes import (
    JSON,
    FieldLike,
    clean,
    coding_system_uri,
    comp,
    finish_resource,
    identifier_type,
    parse_v2_datetime,
    reference,
)
from mappings.hl7v2.patient import PATIENT_FIELDS_READ, PatientMapping, map_patient
from mappings.ids import resource_id
from mappings.result import SEGMENT_SEQUENCE_ERROR, ErrorLocation, MappingError, MappingResult

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message, Segment
    from adapters.senders import SenderConfig

UCUM: Final = "http://unitsofmeasure.org"
V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V2_0078: Final = "http://terminology.hl7.org/CodeSystem/v2-0078"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
ORIGINAL_TEXT_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/originalText"

# --------------------------------------------------------------------------------------------------
# Code tables (IG concept maps; "ours" marks a code the IG leaves unmapped)

# OBX-11 (table 0085) → Observation.status (IG ObservationResultStatusCodesInterpretation).
# D ("deletes the OBX record") is entered-in-error as the IG says: the engine never deletes.
OBSERVATION_STATUS: Final = MappingProxyType({
    "A": "amended", "C": "corrected", "D": "entered-in-error", "F": "final", "P": "preliminary",
    "W": "entered-in-error", "X": "cancelled",
    # ours: the IG leaves these empty
    "B": "amended", "I": "registered", "R": "preliminary", "S": "preliminary",
    "U": "final", "V": "final", "N": "unknown",
})

# OBX-11 codes that say why there is no value (IG: X → cannot-be-obtained, N → not-asked).
DATA_ABSENT_BY_STATUS: Final = MappingProxyType({"X": "cannot-be-obtained", "N": "not-asked"})

# OBR-25 (table 0123) → DiagnosticReport.status (IG ResultStatus[Non-Queries]).
REPORT_STATUS: Final = MappingProxyType({
    "O": "registered", "I": "registered", "S": "registered", "P": "preliminary", "C": "corrected",
    "R": "partial", "F": "final", "X": "cancelled",
    # ours: the IG leaves these empty (A: "some results available" is FHIR partial)
    "A": "partial", "M": "corrected", "N": "registered",
})

# OBX-8 (table 0078) → v3 ObservationInterpretation (IG InterpretationCodes; the inactive v3 codes
# AC HM OBX QCF TOX are left out and keep their v2-0078 coding).
INTERPRETATION: Final = MappingProxyType({code: display for code, display in (
    ("<", "Off scale low"), (">", "Off scale high"), ("A", "Abnormal"), ("AA", "Critical abnormal"),
    ("B", "Better"), ("CAR", "Carrier"), ("D", "Significant change down"), ("DET", "Detected"),
    ("E", "Equivocal"), ("EX", "outside threshold"), ("EXP", "Expected"), ("H", "High"),
    ("HH", "Critical high"), ("HU", "Significantly high"), ("I", "Intermediate"),
    ("IE", "Insufficient evidence"), ("IND", "Indeterminate"), ("L", "Low"), ("LL", "Critical low"),
    ("LU", "Significantly low"), ("MS", "moderately susceptible"), ("N", "Normal"),
    ("NCL", "No CLSI defined breakpoint"), ("ND", "Not detected"), ("NEG", "Negative"),
    ("NR", "Non-reactive"), ("NS", "Non-susceptible"), ("POS", "Positive"), ("R", "Resistant"),
    ("RR", "Reactive"), ("S", "Susceptible"), ("SDD", "Susceptible-dose dependent"),
    ("SYN-R", "Synergy - resistant"), ("SYN-S", "Synergy - susceptible"), ("U", "Significant change up"),
    ("VS", "very susceptible"), ("UNE", "Unexpected"), ("W", "Worse"), ("WR", "Weakly reactive"),
)})

# ORC-5 (table 0038) → ServiceRequest.status (IG OrderStatus).
ORDER_STATUS: Final = MappingProxyType({
    "CA": "revoked", "CM": "completed", "DC": "revoked", "ER": "entered-in-error", "HD": "on-hold",
    "IP": "active", "RP": "revoked", "SC": "active",
})

# ORC-1 (table 0119) → ServiceRequest.status when ORC-5 is empty (IG OrderControlCode[ServiceRequest.status]).
# The IG maps CA ("cancel order request") to active: the placer asks, the filler has not yet cancelled.
ORDER_CONTROL_STATUS: Final = MappingProxyType({
    "AF": "active", "CA": "active", "CR": "revoked", "DC": "revoked", "DF": "revoked", "DR": "revoked",
    "FU": "completed", "HD": "active", "HR": "on-hold", "NW": "active", "OC": "revoked", "OD": "revoked",
    "OH": "on-hold", "OK": "active", "PR": "active", "PY": "active", "RL": "active", "RO": "active",
    "RQ": "active",
    # ours: a changed order is still an active order
    "XO": "active", "XR": "active", "XX": "active",
})

# TQ-6 / OBR-5 priority (table 0485) → request-priority (IG ExtendedPriorityCodes).
PRIORITY: Final = MappingProxyType({"S": "stat", "A": "asap", "R": "routine"})

# SCH-25 / AIS-10 filler status (table 0278) → appointmentstatus (IG FillerStatusCodes[Appointment]).
APPOINTMENT_STATUS: Final = MappingProxyType({
    "PENDING": "pending", "WAITLIST": "waitlist", "BOOKED": "booked", "STARTED": "checked-in",
    "COMPLETE": "fulfilled", "CANCELLED": "cancelled", "DELETED": "entered-in-error", "NOSHOW": "noshow",
})

# OBR-24 diagnostic service section (table 0074) → Observation.category (ours: the IG leaves the
# category to the realm; these sections are laboratory or imaging by their definition in table 0074).
OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
SECTION_CATEGORY: Final = MappingProxyType({
    **dict.fromkeys(("BG", "BLB", "CG", "CH", "CP", "GE", "HM", "IMM", "LAB", "MB", "MCB", "MYC", "OSL", "SP",
                     "SR", "TX", "URN", "VR"), ("laboratory", "Laboratory")),
    **dict.fromkeys(("CT", "CUS", "NMR", "NMS", "OUS", "RAD", "RUS", "RX", "VUS", "XRC"), ("imaging", "Imaging")),
})

# TXA-18 (table 0272) → v3 Confidentiality (IG DocumentConfidentialityStatus names V/R/U; V and R are
# the v3 confidentiality codes of the same name, U is usual control, N).
CONFIDENTIALITY: Final = MappingProxyType({"V": ("V", "very restricted"), "R": ("R", "restricted"),
                                           "U": ("N", "normal")})
_CONFIDENTIALITY_RANK: Final = {"U": 0, "L": 1, "M": 2, "N": 3, "R": 4, "V": 5}


# --------------------------------------------------------------------------------------------------
# Numbers, units, quantities (NM, CWE[Quantity], SN, NR)

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_COMPARATORS = frozenset({"<", "<=", ">=", ">"})


@functools.lru_cache(maxsize=4096)  # reference range bounds and common results recur
def decimal_value(text: str | None) -> int | float | None:
    """An NM as a JSON number: int when it has no decimal point, else float; None if not a plain decimal.

    >>> decimal_value("118"), decimal_value("12.4"), decimal_value("1e5"), decimal_value("")
    (118, 12.4, None, None)
    """
    text = clean(text)
    if not _DECIMAL.fullmatch(text):
        return None
    if "." not in text:
        return int(text)
    number = float(text)
    return number if math.isfinite(number) else None


def units_quantity(f: FieldLike | None) -> JSON:
    """OBX-6 units → the unit part of a Quantity (IG CWE[Quantity]): unit CWE.2 else CWE.1; code CWE.1 and
    system only when CWE.3 names a known system (UCUM → http://unitsofmeasure.org), so qty-3 holds."""
    code, text, system = comp(f, 1), comp(f, 2), coding_system_uri(comp(f, 3))
    out: JSON = {}
    if text or code:
        out["unit"] = text or code
    if code and system:
        out["system"] = system
        out["code"] = code
    return out


def quantity(number: float, units: JSON, comparator: str = "") -> JSON:
    """A Quantity from a number, a comparator (kept only if it is a FHIR comparator) and `units_quantity`."""
    out: JSON = {"value": number}
    if comparator in _COMPARATORS:
        out["comparator"] = comparator
    return {**out, **units}


def nm_quantity(text: str, units: JSON) -> JSON | None:
    """NM → Quantity (IG NM[Quantity]); UK labs also send "<5" in an NM field: that becomes a comparator."""
    number = decimal_value(text)
    if number is not None:
        return quantity(number, units)
    match = re.fullmatch(r"\s*(<=|>=|<|>)\s*(\S+)\s*", text)
    if match and (number := decimal_value(match.group(2))) is not None:
        return quantity(number, units, match.group(1))
    return None


def sn_text(f: FieldLike | None, units: JSON) -> str:
    """An SN written out (IG: SN.1 + " " + SN.2 + " " + SN.3 + " " + SN.4 + " " + OBX-6), blanks dropped."""
    return " ".join(p for p in (comp(f, 1), comp(f, 2), comp(f, 3), comp(f, 4), units.get("unit", "")) if p)


def sn_value(f: FieldLike | None, units: JSON) -> JSON | None:
    """SN → `{valueQuantity | valueRange | valueRatio | valueString: …}` by the IG's OBX-5 SN rows:
    "<>" or separator "+" → string; ":" or "/" → Ratio; "-" → Range; otherwise a Quantity with SN.1 as
    its comparator. Numbers that do not parse fall back to the string (IG "if all fail")."""
    comparator, first, separator, second = comp(f, 1), comp(f, 2), comp(f, 3), comp(f, 4)
    if not any((comparator, first, separator, second)):
        return None
    text = sn_text(f, units)
    n1, n2 = decimal_value(first), decimal_value(second)
    if comparator == "<>" or separator == "+":
        return {"valueString": text}
    if separator in {":", "/"} and n1 is not None and n2 is not None:
        return {"valueRatio": {"numerator": quantity(n1, units, comparator), "denominator": quantity(n2, units)}}
    if separator == "-" and n1 is not None and n2 is not None:
        return {"valueRange": {"low": quantity(n1, units), "high": quantity(n2, units)}}
    if separator not in {":", "/", "-"} and n1 is not None and (not comparator or comparator in _COMPARATORS
                                                               or comparator == "="):
        value = quantity(n1, units, comparator)
        if separator or second:
            value = {"extension": [{"url": ORIGINAL_TEXT_EXTENSION, "valueString": text}], **value}
        return {"valueQuantity": value}
    return {"valueString": text}


def nr_range(f: FieldLike | None, units: JSON) -> JSON | None:
    """NR → Range (IG NR[Range]): low NR.1, high NR.2, with the OBX-6 units."""
    low, high = decimal_value(comp(f, 1)), decimal_value(comp(f, 2))
    out = {k: quantity(v, units) for k, v in (("low", low), ("high", high)) if v is not None}
    return out or None


_RANGE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:-|–|to)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*")
_BOUND = re.compile(r"\s*(<=|>=|<|>)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*")


def reference_range(text: str, units: JSON) -> JSON | None:
    """OBX-7 → referenceRange: always the text (IG), plus low/high when it reads "a-b", "<b" or ">a"
    (the IG: "if OBX-7 is sufficiently parseable, then the low, high … may be used")."""
    text = clean(text)
    if not text:
        return None
    out: JSON = {}
    if match := _RANGE.fullmatch(text):
        low, high = decimal_value(match.group(1)), decimal_value(match.group(2))
        if low is not None and high is not None and low <= high:
            out = {"low": quantity(low, units), "high": quantity(high, units)}
    elif match := _BOUND.fullmatch(text):
        bound = decimal_value(match.group(2))
        if bound is not None:
            out = {("high" if match.group(1).startswith("<") else "low"): quantity(bound, units)}
    return {**out, "text": text}


# --------------------------------------------------------------------------------------------------
# Times (TM, TQ durations)

_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:[+-]\d{4})?")


def tm_time(text: str | None) -> str | None:
    """TM (HH[MM[SS[.S[S[S[S]]]]]][+/-ZZZZ]) → FHIR time hh:mm:ss[.s]; None if out of range.

    FHIR time has no zone: the offset is dropped. >>> tm_time("1530") → "15:30:00".
    """
    match = _TM.fullmatch(clean(text))
    if match is None:
        return None
    hour, minute, second = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    fraction = f".{match.group(4)}" if match.group(4) and match.group(3) else ""
    return f"{hour:02d}:{minute:02d}:{second:02d}{fraction}"


# Duration units (table 0300 ISO+ / the usual v2 spellings) → minutes per unit.
_MINUTES_PER: Final = MappingProxyType({
    "S": 1 / 60, "SEC": 1 / 60, "SECONDS": 1 / 60, "M": 1, "MIN": 1, "MINS": 1, "MINUTES": 1, "MINUTE": 1,
    "H": 60, "HR": 60, "HRS": 60, "HOUR": 60, "HOURS": 60, "D": 1440, "DAY": 1440, "DAYS": 1440,
})


def duration_minutes(amount: str, units: str = "") -> int | None:
    """A duration as whole minutes: `amount` with its CE units (SCH-9/SCH-10, AIS-7/AIS-8), or a TQ.3
    duration such as "M30" / "H1" / "30" (minutes when no unit is given, HL7 v2.5 §4.5.4.3)."""
    amount, units = clean(amount).upper(), clean(units).upper()
    match = re.fullmatch(r"([SMHD]?)(\d+(?:\.\d+)?)", amount)
    if match is None:
        return None
    unit = units or match.group(1) or "M"
    per = _MINUTES_PER.get(unit)
    if per is None:
        return None
    minutes = round(float(match.group(2)) * per)
    return minutes if 0 < minutes < 2**31 else None


def add_minutes(moment: str, minutes: int) -> str | None:
    """A FHIR dateTime with a time plus `minutes`, keeping its UTC offset; None for a date-only value."""
    if "T" not in moment:
        return None
    try:
        return (datetime.fromisoformat(moment) + timedelta(minutes=minutes)).isoformat()
    except (ValueError, OverflowError):
        return None


def instant(moment: str | None) -> str | None:
    """A FHIR dateTime usable as an `instant` (full time and zone), else None (FHIR R4 instant)."""
    return moment if moment and "T" in moment else None


# --------------------------------------------------------------------------------------------------
# Identifiers and people (EI, NDL)


def order_identifier(f: FieldLike | None, system: str, type_code: str) -> JSON | None:
    """An order number EI (ORC-2/3, OBR-2/3, ORC-4) → Identifier typed PLAC/FILL/PGN (v2-0203) in the
    sender's order system (SenderConfig.system_for("order")); EI.2 names the assigning application."""
    value = comp(f, 1)
    if not value:
        return None
    ident: JSON = {"type": identifier_type(type_code), "system": system, "value": value}
    if comp(f, 2):
        ident["assigner"] = {"display": comp(f, 2)}
    return ident


class SubcomponentsAsComponents:
    """Component `c` of a field seen as a field of its own: NDL.1 (a CNN) read with the XCN functions."""

    def __init__(self, f: FieldLike, c: int) -> None:
        self._f = f
        self._c = c

    def component(self, i: int) -> str:
        return self._f.subcomponent(self._c, i)

    def subcomponent(self, i: int, j: int) -> str:
        return self._f.subcomponent(self._c, i) if j == 1 else ""

    @property
    def is_null(self) -> bool:
        return self._f.is_null


def ndl_person(f: FieldLike) -> FieldLike:
    """NDL.1 (CNN: ID & family & given & middle & suffix & prefix & degree & source & assigner) as an
    XCN-shaped field, so `datatypes.practitioner_from_xcn` reads it (IG NDL[PractitionerRole], CNN[Practitioner])."""
    return SubcomponentsAsComponents(f, 1)


# --------------------------------------------------------------------------------------------------
# ED → Attachment

_MIME_TOP = frozenset({"application", "audio", "image", "message", "model", "multipart", "text", "video"})
# ED.3 subtype (table 0291) → MIME type.
_SUBTYPES: Final = MappingProxyType({
    "PDF": "application/pdf", "RTF": "application/rtf", "JPEG": "image/jpeg", "JPG": "image/jpeg",
    "PNG": "image/png", "GIF": "image/gif", "TIFF": "image/tiff", "BMP": "image/bmp", "HTML": "text/html",
    "XML": "application/xml", "PLAIN": "text/plain", "TEXT": "text/plain", "DICOM": "application/dicom",
    "MSWORD": "application/msword", "OCTET-STREAM": "application/octet-stream",
})


def ed_content_type(f: FieldLike | None) -> str | None:
    """ED.2 type of data and ED.3 subtype → MIME type (IG ED[Attachment] contentType from ED.3): "application"
    + "pdf" → application/pdf; a table 0291 subtype (PDF, JPEG …) → its MIME type; a full MIME type kept."""
    kind, subtype = comp(f, 2).lower(), comp(f, 3)
    if "/" in subtype and " " not in subtype:
        return subtype.lower()
    if kind in _MIME_TOP and re.fullmatch(r"[A-Za-z0-9.+-]+", subtype or ""):
        return f"{kind}/{subtype.lower()}"
    return _SUBTYPES.get(subtype.upper())


def ed_data(f: FieldLike | None) -> bytes | None:
    """ED.5 data decoded by ED.4 encoding (table 0299: Base64, Hex, A = ASCII text); None when ED.5 is
    empty or not valid in its declared encoding."""
    data, encoding = comp(f, 5), comp(f, 4).upper()
    if not data:
        return None
    try:
        if encoding == "BASE64":
            return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        if encoding == "HEX":
            return bytes.fromhex(data)
    except (binascii.Error, ValueError):
        return None
    return data.encode("utf-8")


def attachment(data: bytes, content_type: str | None, title: str | None = None,
               creation: str | None = None) -> JSON:
    """An Attachment carrying `data` inline (base64), with its size and SHA-1 hash (FHIR R4 Attachment)."""
    return {k: v for k, v in (
        ("contentType", content_type),
        ("data", base64.b64encode(data).decode("ascii")),
        ("size", len(data)),
        ("hash", base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")),
        ("title", title),
        ("creation", creation),
    ) if v not in (None, "")}


def ed_attachment(f: FieldLike | None, title: str | None = None) -> JSON | None:
    """ED → Attachment (IG ED[Attachment]); None when there is no decodable data."""
    data = ed_data(f)
    if not data:
        return None
    return attachment(data, ed_content_type(f), title)


def text_attachment(lines: Iterable[str], title: str | None = None, creation: str | None = None) -> JSON | None:
    """TX/FT report lines → a text/plain attachment, lines joined by line feeds (IG OBX[DocumentReference]:
    "each repeat yields a line feed"). The parser has already decoded escapes, so the text is plain."""
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        return None
    return attachment(text.encode("utf-8"), "text/plain; charset=utf-8", title, creation)


# --------------------------------------------------------------------------------------------------
# Text (ST, TX, FT, NTE-3)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Text without the control characters FHIR strings may not hold."""
    return _CONTROL.sub("", text)


def field_text(f: Any) -> str:
    """A repetition written out as text, components joined by "^" (a TX line with a stray "^" stays whole);
    the explicit null is empty; trailing blanks removed, leading indentation kept."""
    if f is None or getattr(f, "is_null", False):
        return ""
    components = getattr(f, "components", None)
    if components is None:
        return comp(f, 1)
    return clean_text("^".join("&".join(subs) for subs in components).rstrip("^&").rstrip())


def nte_annotation(segment: Segment) -> JSON | None:
    """NTE-3 comment (each repetition a line) → Annotation.text (IG NTE[Observation], NTE[ServiceRequest])."""
    text = "\n".join(field_text(r) for r in segment.repetitions(3)).strip()
    return {"text": text} if text else None


# --------------------------------------------------------------------------------------------------
# Security labels


def confidentiality_labels(code: str, labels: Iterable[SecurityLabel]) -> tuple[SecurityLabel, ...]:
    """The sender's labels with a v3-Confidentiality label for a TXA-18 of R or V (table 0272): the
    stricter of the two confidentialities is kept, so a restricted document is never labelled normal."""
    labels = tuple(labels)
    hit = CONFIDENTIALITY.get(clean(code).upper())
    if hit is None or hit[0] not in {"R", "V"}:
        return labels
    present = [label for label in labels if label.system == V3_CONFIDENTIALITY]
    if any(_CONFIDENTIALITY_RANK.get(label.code, 0) >= _CONFIDENTIALITY_RANK[hit[0]] for label in present):
        return labels
    kept = tuple(label for label in labels if label.system != V3_CONFIDENTIALITY)
    return (*kept, SecurityLabel(V3_CONFIDENTIALITY, hit[0], hit[1]))


# --------------------------------------------------------------------------------------------------
# Message plumbing shared by the ORU / ORM / OML / MDM / SIU maps


@dataclass
class Collected:
    """Resources in dependency order, one per (type, id): the first position is kept, the last version wins."""

    resources: list[JSON] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[Segment] = field(default_factory=list)  # segments no map read at all
    _index: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def find(self, resource_type: str, resource_id_: str) -> JSON | None:
        """The collected resource with that type and id, if any."""
        position = self._index.get((resource_type, resource_id_))
        return None if position is None else self.resources[position]

    def add(self, *resources: JSON | None) -> None:
        for resource in resources:
            if resource is None:
                continue
            key = (resource["resourceType"], resource["id"])
            if key in self._index:
                self.resources[self._index[key]] = resource
            else:
                self._index[key] = len(self.resources)
                self.resources.append(resource)


def event_time(message: Message) -> datetime | None:
    """EVN-2 recorded date/time, else MSH-7, as an aware UTC datetime (same rule as the ADT maps)."""
    evn = message.first("EVN")
    recorded = parse_v2_datetime(comp(evn.field(2), 1)) if evn is not None else None
    return recorded or parse_v2_datetime(message.timestamp)


def single_patient(message: Message, sender: SenderConfig) -> PatientMapping:
    """The message's subject Patient (`patient.map_patient`). A second PID is refused (100): these maps
    attribute every resource to one patient, and a result must never land in the wrong record."""
    pids = message.all("PID")
    if len(pids) > 1:
        raise MappingError(SEGMENT_SEQUENCE_ERROR, "more than one PID: one patient per message is supported",
                           ErrorLocation("PID", 2))
    return map_patient(message, sender)


def encounter_reference(message: Message, sender: SenderConfig) -> JSON | None:
    """PV1-19 visit number → a reference to that visit's Encounter, by the id rule of `encounter.encounter_id`
    (sender ODS, visit number). The Encounter itself comes from ADT: a result must not rewrite its status."""
    pv1 = message.first("PV1")
    visit = comp(pv1.field(19), 1) if pv1 is not None else ""
    return reference("Encounter", resource_id("Encounter", sender.ods_code, visit)) if visit else None


# Segments every one of these maps reads: the header, the patient and PV1-19 (see `encounter_reference`).
BASE_FIELDS_READ: Final = combine(HEADER_FIELDS_READ, PATIENT_FIELDS_READ, {"PV1": frozenset({19})})


def finish(resource: JSON, resource_id_: str, sender: SenderConfig,
           labels: Iterable[SecurityLabel] | None = None) -> JSON:
    """`datatypes.finish_resource` with the sender's security labels (or `labels`) in meta.security."""
    return finish_resource(resource, resource_id_, sender.security_labels if labels is None else labels)


def mapping_result(message: Message, patient: PatientMapping, collected: Collected,
                   read: Mapping[str, frozenset[int]]) -> MappingResult:
    """The MappingResult: the Patient's resources first, then `collected`; `unmapped` from the coverage
    report plus every populated field of the segments a map skipped as a whole (e.g. an NTE after PID)."""
    resources = Collected()
    resources.add(*patient.resources, *collected.resources)
    unmapped = unmapped_fields(message, combine(BASE_FIELDS_READ, read))
    unmapped += [f"{s.name}-{n}" for s in collected.skipped for n in populated_fields(s)]
    return MappingResult(
        message_type=f"{message.message_code}^{message.trigger}",
        resources=resources.resources,
        patient_id=patient.patient_id,
        patient_key=patient.key,
        event_time=event_time(message),
        patient_elements_not_sent=patient.not_sent,
        unmapped=list(dict.fromkeys(unmapped)),
        warnings=[*patient.warnings, *collected.warnings],
    )


def first_valued(*fields: FieldLike | None) -> FieldLike | None:
    """The first field whose component 1 has a value (e.g. ORC-2 else OBR-2)."""
    return next((f for f in fields if f is not None and comp(f, 1)), None)


__all__ = [
    "APPOINTMENT_STATUS",
    "BASE_FIELDS_READ",
    "DATA_ABSENT_BY_STATUS",
    "INTERPRETATION",
    "OBSERVATION_STATUS",
    "ORDER_CONTROL_STATUS",
    "ORDER_STATUS",
    "PRIORITY",
    "REPORT_STATUS",
    "SECTION_CATEGORY",
    "Collected",
    "add_minutes",
    "attachment",
    "clean_text",
    "confidentiality_labels",
    "decimal_value",
    "duration_minutes",
    "ed_attachment",
    "ed_content_type",
    "ed_data",
    "encounter_reference",
    "event_time",
    "field_text",
    "finish",
    "first_valued",
    "instant",
    "mapping_result",
    "ndl_person",
    "nm_quantity",
    "nr_range",
    "nte_annotation",
    "order_identifier",
    "quantity",
    "reference_range",
    "single_patient",
    "sn_value",
    "text_attachment",
    "tm_time",
    "units_quantity",
]
