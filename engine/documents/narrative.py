"""Section narratives: the XHTML a clinician reads for each heading (https://hl7.org/fhir/R4/narrative.html).

Receivers must display every section's narrative (UK-REFERENCE §2), so each heading becomes a table
(one row per entry) or, for the patient and the encounter, a list of labelled values. Every value
taken from a stored resource is escaped: stored strings are never trusted as markup.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from html import escape

from engine.documents.elements import (
    JSON,
    concept_text,
    date_text,
    first_at,
    human_name,
    identifier_value,
    period_text,
    quantity_text,
    reference_text,
    values_at,
)
from engine.documents.selection import Item

XHTML_NS = "http://www.w3.org/1999/xhtml"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS_CODE = "https://fhir.nhs.uk/Id/ods-organization-code"
ODS_SITE = "https://fhir.nhs.uk/Id/ods-site-code"
MAX_TEXT = 4000  # characters of an inline text attachment shown in a narrative

Index = Mapping[tuple[str, str], JSON]
Extract = Callable[[JSON, Index], str]


# -- small extractors --------------------------------------------------------------------------


def _concept(path: str) -> Extract:
    return lambda r, _: concept_text(values_at(r, path))


def _date(*paths: str) -> Extract:
    def extract(resource: JSON, _: Index) -> str:
        for path in paths:
            value = first_at(resource, path)
            if value:
                return period_text(value) if isinstance(value, Mapping) else date_text(value)
        return ""
    return extract


def _text(path: str) -> Extract:
    return lambda r, _: ", ".join(str(v) for v in values_at(r, path) if isinstance(v, str | int | float))


def _reference(path: str) -> Extract:
    return lambda r, index: ", ".join(t for t in (reference_text(v, index) for v in values_at(r, path)) if t)


def _name(resource: JSON, _: Index) -> str:
    return human_name(resource)


def _nhs_number(resource: JSON, _: Index) -> str:
    value = identifier_value(resource, NHS_NUMBER)
    return f"{value[:3]} {value[3:6]} {value[6:]}" if len(value) == 10 else value


def _address(resource: JSON, _: Index) -> str:
    addresses = resource.get("address")
    chosen = addresses[0] if isinstance(addresses, list) and addresses else addresses
    if not isinstance(chosen, Mapping):
        return ""
    if chosen.get("text"):
        return str(chosen["text"])
    parts = [*(chosen.get("line") or []), chosen.get("city"), chosen.get("postalCode")]
    return ", ".join(str(p) for p in parts if p)


def _telecom(resource: JSON, _: Index) -> str:
    return ", ".join(str(t.get("value")) for t in resource.get("telecom") or () if isinstance(t, Mapping)
                     and t.get("value"))


def _extension(url_suffix: str) -> Extract:
    def extract(resource: JSON, _: Index) -> str:
        for extension in values_at(resource, "extension"):
            if isinstance(extension, Mapping) and str(extension.get("url", "")).endswith(url_suffix):
                return concept_text(extension.get("valueCodeableConcept") or extension.get("valueCoding"))
        return ""
    return extract


def _ods_code(resource: JSON, _: Index) -> str:
    return identifier_value(resource, ODS_CODE) or identifier_value(resource, ODS_SITE)


def _observation_value(resource: JSON, _: Index) -> str:
    value = _single_value(resource)
    if not value and resource.get("component"):
        parts = [_single_value(c) for c in resource["component"] if isinstance(c, Mapping)]
        value = " / ".join(p for p in parts if p)
    interpretation = concept_text(resource.get("interpretation"))
    return f"{value} ({interpretation})" if value and interpretation else value


def _single_value(node: JSON) -> str:
    for key, shown in (("valueQuantity", quantity_text), ("valueCodeableConcept", concept_text)):
        if key in node:
            return shown(node[key])
    for key in ("valueString", "valueInteger", "valueBoolean", "valueDateTime"):
        if key in node:
            return str(node[key])
    return ""


def _allergy_reaction(resource: JSON, _: Index) -> str:
    reactions = []
    for reaction in resource.get("reaction") or ():
        manifest = concept_text(reaction.get("manifestation")) if isinstance(reaction, Mapping) else ""
        severity = reaction.get("severity") if isinstance(reaction, Mapping) else None
        reactions.append(f"{manifest} ({severity})" if manifest and severity else manifest)
    return "; ".join(r for r in reactions if r)


def _medication(resource: JSON, index: Index) -> str:
    if "medicationCodeableConcept" in resource:
        return concept_text(resource["medicationCodeableConcept"])
    return reference_text(resource.get("medicationReference"), index)


def _dosage(resource: JSON, _: Index) -> str:
    dosages = resource.get("dosage") or resource.get("dosageInstruction") or ()
    return "; ".join(str(d.get("text")) for d in dosages if isinstance(d, Mapping) and d.get("text"))


_ADMINISTRATION = {"completed": "Given", "not-done": "Not given", "in-progress": "Being given",
                   "on-hold": "On hold", "stopped": "Stopped"}


def _administration(resource: JSON, _: Index) -> str:
    """eMAR: given or not, and why not (DAPB4102 medication management: an omitted dose has a reason)."""
    reason = concept_text(resource.get("statusReason"))
    status = str(resource.get("status") or "")
    shown = _ADMINISTRATION.get(status, status)
    return f"{shown}: {reason}" if reason else shown


def _participants(resource: JSON, index: Index) -> str:
    return _reference("participant.individual")(resource, index)


def _appointment_with(resource: JSON, index: Index) -> str:
    names = []
    for participant in resource.get("participant") or ():
        actor = participant.get("actor") if isinstance(participant, Mapping) else None
        if isinstance(actor, Mapping) and not str(actor.get("reference", "")).startswith("Patient/"):
            names.append(reference_text(actor, index))
    return ", ".join(n for n in names if n)


def _locations(resource: JSON, index: Index) -> str:
    return _reference("location.location")(resource, index)


def _attachment_text(resource: JSON, _: Index) -> str:
    """An inline plain-text attachment (an HL7 MDM note, an uploaded letter), decoded for reading."""
    for attachment in values_at(resource, "content.attachment"):
        if not isinstance(attachment, Mapping) or not attachment.get("data"):
            continue
        if not str(attachment.get("contentType", "")).startswith("text/plain"):
            continue
        try:
            text = base64.b64decode(attachment["data"], validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            continue
        return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " …"
    return ""


def _describe(resource: JSON, index: Index) -> str:
    return concept_text(resource.get("code")) or str(resource.get("description") or "") or \
        f"{resource.get('resourceType')}/{resource.get('id')}"


# -- views: which columns (tables) or labelled rows (records) show each kind of entry ----------------

Columns = tuple[tuple[str, Extract], ...]

TABLES: Mapping[str, Columns] = {
    "Condition": (("Diagnosis or problem", _concept("code")), ("Status", _concept("clinicalStatus")),
                  ("Onset", _date("onsetDateTime", "onsetPeriod", "onsetString")), ("Recorded", _date("recordedDate"))),
    "AllergyIntolerance": (("Substance", _concept("code")), ("Reaction", _allergy_reaction),
                           ("Criticality", _text("criticality")), ("Status", _concept("clinicalStatus")),
                           ("Recorded", _date("recordedDate"))),
    "MedicationStatement": (("Medication", _medication), ("Dose", _dosage), ("Status", _text("status")),
                            ("Since", _date("effectiveDateTime", "effectivePeriod", "dateAsserted"))),
    "MedicationRequest": (("Medication", _medication), ("Dose", _dosage), ("Status", _text("status")),
                          ("Prescribed", _date("authoredOn")), ("Prescriber", _reference("requester"))),
    "MedicationAdministration": (("Medication", _medication), ("Given", _administration),
                                 ("When", _date("effectiveDateTime", "effectivePeriod"))),
    "Observation": (("Observation", _concept("code")), ("Value", _observation_value),
                    ("When", _date("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")),
                    ("Status", _text("status"))),
    "DiagnosticReport": (("Report", _concept("code")), ("Conclusion", _text("conclusion")),
                         ("When", _date("effectiveDateTime", "effectivePeriod", "issued")), ("Status", _text("status"))),
    "Procedure": (("Procedure", _concept("code")), ("When", _date("performedDateTime", "performedPeriod")),
                  ("Status", _text("status"))),
    "DocumentReference": (("Document", lambda r, _: concept_text(r.get("type")) or str(r.get("description") or "")),
                          ("Date", _date("date")), ("Author", _reference("author")), ("Text", _attachment_text)),
    "Flag": (("Alert", _concept("code")), ("Category", _concept("category")), ("Since", _date("period"))),
    "Consent": (("Consent", lambda r, _: concept_text(r.get("category")) or concept_text(r.get("scope"))),
                ("Decision", _text("provision.type")), ("Status", _text("status")), ("Date", _date("dateTime"))),
    "ServiceRequest": (("Request", _concept("code")), ("Status", _text("status")), ("Requested", _date("authoredOn")),
                       ("To", _reference("performer"))),
    "Appointment": (("Appointment", lambda r, _: str(r.get("description") or "") or concept_text(r.get("serviceType"))),
                    ("When", _date("start")), ("With", _appointment_with), ("Status", _text("status"))),
    "EpisodeOfCare": (("Care", _concept("type")), ("Organisation", _reference("managingOrganization")),
                      ("Since", _date("period")), ("Care manager", _reference("careManager"))),
    "RelatedPerson": (("Name", _name), ("Relationship", _concept("relationship")), ("Telephone", _telecom),
                      ("Address", _address)),
    "Organization": (("Name", _text("name")), ("ODS code", _ods_code), ("Telephone", _telecom), ("Address", _address)),
    "Practitioner": (("Name", _name), ("Identifier", lambda r, _: _text("identifier.value")(r, _)),
                     ("Telephone", _telecom)),
    "reference": (("Name", lambda r, _: ""),),
}

RECORDS: Mapping[str, Columns] = {
    "demographics": (("Name", _name), ("NHS number", _nhs_number), ("Date of birth", _text("birthDate")),
                     ("Gender", _text("gender")), ("Address", _address), ("Telephone", _telecom),
                     ("Date of death", _text("deceasedDateTime"))),
    "communication": (("Language", _concept("communication.language")),
                      ("Interpreter required", _extension("InterpreterRequired")),
                      ("Name", _name)),
    "admission": (("Admitted", _date("period.start")), ("Admission method", _extension("AdmissionMethod")),
                  ("Source of admission", _concept("hospitalization.admitSource")),
                  ("Reason for admission", _concept("reasonCode")), ("Ward or location", _locations),
                  ("Responsible clinician", _participants), ("Hospital", _reference("serviceProvider"))),
    "discharge": (("Discharged", _date("period.end")), ("Discharge method", _extension("DischargeMethod")),
                  ("Discharge destination", _concept("hospitalization.dischargeDisposition")),
                  ("Ward or location", _locations), ("Responsible clinician", _participants)),
    "attendance": (("Seen", _date("period")), ("Setting", _concept("class")), ("Reason", _concept("reasonCode")),
                   ("Location", _locations), ("Clinician", _participants), ("Provider", _reference("serviceProvider"))),
    "presenting-complaints": (("Presenting complaint", _concept("reasonCode")),),
}


def has_content(item: Item) -> bool:
    """A record view with no value to show adds nothing to a heading (e.g. no communication needs)."""
    if item.resource is None or item.view not in RECORDS:
        return True
    return any(extract(item.resource, {}) for label, extract in RECORDS[item.view] if label != "Name")


# -- rendering -----------------------------------------------------------------------------------


def text_html(value: str) -> str:
    """Escaped text, line breaks kept."""
    return escape(value, quote=True).replace("\r\n", "\n").replace("\n", "<br/>")


def section_div(items: Sequence[Item], index: Index, *, empty_text: str) -> str:
    """The XHTML div of one heading: its entries grouped by view, or `empty_text`."""
    if not items:
        return _div(f"<p>{text_html(empty_text)}</p>")
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.view, []).append(item)
    return _div("".join(_group_html(view, members, index) for view, members in groups.items()))


def _div(body: str) -> str:
    return f'<div xmlns="{XHTML_NS}">{body}</div>'


def _group_html(view: str, items: Sequence[Item], index: Index) -> str:
    if view in RECORDS:
        return "".join(_record_html(RECORDS[view], item, index) for item in items)
    if view == "reference" or all(item.resource is None for item in items):
        return "<ul>" + "".join(f"<li>{text_html(reference_text(i.reference, index))}</li>" for i in items) + "</ul>"
    columns = TABLES.get(view) or (("Entry", _describe),)
    rows = [[extract(item.resource, index) for _, extract in columns] for item in items if item.resource]
    shown = [i for i in range(len(columns)) if any(row[i] for row in rows)] or [0]
    head = "".join(f"<th>{text_html(columns[i][0])}</th>" for i in shown)
    body = "".join("<tr>" + "".join(f"<td>{text_html(row[i])}</td>" for i in shown) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _record_html(fields: Columns, item: Item, index: Index) -> str:
    if item.resource is None:
        return f"<p>{text_html(reference_text(item.reference, index))}</p>"
    rows = [(label, extract(item.resource, index)) for label, extract in fields]
    body = "".join(f"<tr><th>{text_html(label)}</th><td>{text_html(value)}</td></tr>" for label, value in rows if value)
    return f"<table><tbody>{body}</tbody></table>"
