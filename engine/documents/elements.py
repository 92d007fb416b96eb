"""Reading FHIR R4 elements the way documents need them: references, codes, dates, display text.

Pure helpers over resources as parsed JSON (dicts): no I/O, no clock. Stored strings are returned
as they are — escaping is the narrative module's job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

JSON = dict[str, Any]
UK_TIME = ZoneInfo("Europe/London")  # narratives are read in England: show times as the clock on the ward

# The element holding a resource's clinically relevant date, first present wins
# (https://hl7.org/fhir/R4/compartmentdefinition-patient.html lists the same dates for `date` searches).
DATE_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "AllergyIntolerance": ("recordedDate", "onsetDateTime", "onsetPeriod.start"),
    "Appointment": ("start",),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Consent": ("dateTime",),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "DocumentReference": ("date", "context.period.start"),
    "Encounter": ("period.start",),
    "EpisodeOfCare": ("period.start",),
    "Flag": ("period.start",),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod.start"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "ServiceRequest": ("authoredOn", "occurrenceDateTime"),
    "Task": ("authoredOn",),
}


def values_at(node: Any, path: str) -> list[Any]:
    """Every value at a dotted `path` below `node`, flattening lists (`meta.tag`, `period.start`)."""
    current: list[Any] = [node]
    for name in path.split("."):
        found: list[Any] = []
        for item in current:
            if isinstance(item, Mapping) and name in item:
                value = item[name]
                found.extend(value if isinstance(value, list) else [value])
        current = found
    return current


def first_at(node: Any, path: str) -> Any:
    found = values_at(node, path)
    return found[0] if found else None


def codes_of(value: Any) -> Iterator[str]:
    """The codes a value carries: a code or boolean, a Coding, a CodeableConcept, or lists of them."""
    if isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from codes_of(item)
    elif isinstance(value, Mapping):
        if isinstance(value.get("code"), str):
            yield value["code"]
        for coding in value.get("coding") or ():
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                yield coding["code"]


def reference_target(reference: Any) -> tuple[str, str] | None:
    """`{"reference": "Type/id"}` (relative, or absolute ending in Type/id) → (Type, id); else None."""
    if not isinstance(reference, Mapping) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


def key_of(resource: Mapping[str, Any]) -> tuple[str, str]:
    return str(resource.get("resourceType")), str(resource.get("id"))


def relative_reference(resource: Mapping[str, Any]) -> str:
    res_type, res_id = key_of(resource)
    return f"{res_type}/{res_id}"


def encounter_ids(resource: Mapping[str, Any]) -> set[str]:
    """Ids of the Encounters a resource was recorded in (`encounter`, `context`, `context.encounter`)."""
    found: set[str] = set()
    for path in ("encounter", "context", "context.encounter"):
        for reference in values_at(resource, path):
            target = reference_target(reference)
            if target and target[0] == "Encounter":
                found.add(target[1])
    return found


def parse_date(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware UTC datetime (the start of a partial date)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value.strip()
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        moment = datetime.fromisoformat(text)  # Python 3.11 reads "Z"
    except ValueError:
        return None
    return as_utc(moment)


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are UTC throughout the store (engine.db.repository.utc_now)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def resource_date(resource: Mapping[str, Any]) -> datetime | None:
    for path in DATE_ELEMENTS.get(str(resource.get("resourceType")), ()):
        moment = parse_date(first_at(resource, path))
        if moment is not None:
            return moment
    return None


def concept_text(value: Any) -> str:
    """What a clinician reads for a CodeableConcept or Coding: its text, else the first display, else code."""
    if isinstance(value, list):
        return ", ".join(t for t in (concept_text(v) for v in value) if t)
    if not isinstance(value, Mapping):
        return str(value) if isinstance(value, str | int | float) else ""
    if isinstance(value.get("text"), str) and value["text"]:
        return value["text"]
    codings = value.get("coding") or ([value] if "code" in value or "display" in value else [])
    for coding in codings:
        if isinstance(coding, Mapping) and coding.get("display"):
            return str(coding["display"])
    for coding in codings:
        if isinstance(coding, Mapping) and coding.get("code"):
            return str(coding["code"])
    return ""


def human_name(resource: Mapping[str, Any]) -> str:
    """The official (else first) HumanName as "Given Family", or the resource's `name` string."""
    names = resource.get("name")
    if isinstance(names, str):
        return names
    if not isinstance(names, list) or not names:
        return ""
    chosen = next((n for n in names if isinstance(n, Mapping) and n.get("use") == "official"), names[0])
    if not isinstance(chosen, Mapping):
        return ""
    if chosen.get("text"):
        return str(chosen["text"])
    parts = [*(chosen.get("prefix") or []), *(chosen.get("given") or []), chosen.get("family") or ""]
    return " ".join(str(p) for p in parts if p)


def identifier_value(resource: Mapping[str, Any], system: str) -> str:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, Mapping) and identifier.get("system") == system:
            return str(identifier.get("value") or "")
    return ""


def reference_text(reference: Any, index: Mapping[tuple[str, str], JSON] | None = None) -> str:
    """A reference as a reader sees it: its display, else the named resource's name, else the reference."""
    if not isinstance(reference, Mapping):
        return ""
    if reference.get("display"):
        return str(reference["display"])
    target = reference_target(reference)
    if target and index is not None and target in index:
        named = human_name(index[target])
        if named:
            return named
    identifier = reference.get("identifier")
    if isinstance(identifier, Mapping) and identifier.get("value"):
        return str(identifier["value"])
    return str(reference.get("reference") or "")


def quantity_text(value: Any) -> str:
    if not isinstance(value, Mapping) or value.get("value") is None:
        return ""
    unit = value.get("unit") or value.get("code") or ""
    return f"{value.get('comparator', '')}{value['value']} {unit}".strip()


def date_text(value: Any) -> str:
    """A FHIR date/dateTime as a UK reader expects it: `2025-07-08 14:00` in UK time, or the date as written."""
    if not isinstance(value, str):
        return ""
    if len(value) <= 10:
        return value
    moment = parse_date(value)
    return moment.astimezone(UK_TIME).strftime("%Y-%m-%d %H:%M") if moment else value


def period_text(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    start, end = date_text(value.get("start")), date_text(value.get("end"))
    if start and end:
        return f"{start} to {end}"
    return f"from {start}" if start else (f"until {end}" if end else "")
