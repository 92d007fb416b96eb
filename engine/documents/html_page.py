"""A stored document as an HTML page a clinician can read and print.

Pure: document Bundle (dict) → HTML text. The banner (patient, NHS number, date of birth, author,
organisation, date) comes from the Composition and its subject; each section shows its narrative
after `sanitise`, whoever wrote it. A print stylesheet (`@media print`) drops the screen chrome and
keeps each section on a page where it fits. Serve it with a Content-Security-Policy that forbids
scripts (engine/api/document_routes.py) — defence in depth on top of the escaping.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from engine.documents.elements import (
    JSON,
    concept_text,
    date_text,
    human_name,
    identifier_value,
    reference_text,
)
from engine.documents.sanitise import sanitise

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"

STYLE = """
body{font-family:Arial,Helvetica,sans-serif;color:#212b32;margin:0;background:#f0f4f5;line-height:1.4}
main{max-width:60rem;margin:0 auto;background:#fff;padding:1.5rem 2rem}
header.banner{border-bottom:3px solid #005eb8;margin-bottom:1rem;padding-bottom:.5rem}
h1{font-size:1.6rem;margin:.2rem 0 .6rem}
dl.patient{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:.2rem 1rem;margin:0}
dl.patient dt{font-weight:bold}dl.patient dd{margin:0}
section{margin:1.2rem 0;break-inside:avoid}
h2{font-size:1.15rem;color:#005eb8;border-bottom:1px solid #d8dde0;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0}
th,td{border:1px solid #d8dde0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f4f5}
p.empty{font-style:italic;color:#4c6272}
footer{font-size:.8rem;color:#4c6272;margin-top:2rem;border-top:1px solid #d8dde0;padding-top:.5rem}
@media print{
 body{background:#fff;font-size:10.5pt}
 main{max-width:none;padding:0}
 header.banner{border-bottom:2px solid #000}
 h2{color:#000;border-bottom:1px solid #000}
 th{background:#eee}
 section{break-inside:avoid;page-break-inside:avoid}
 @page{margin:1.5cm;@bottom-right{content:counter(page) " / " counter(pages)}}
}
"""


def _e(value: object) -> str:
    return escape(str(value or ""), quote=True)


def _entries(bundle: JSON) -> list[JSON]:
    return [e for e in bundle.get("entry") or [] if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)]


def _subject(bundle: JSON, composition: JSON) -> JSON:
    reference = str((composition.get("subject") or {}).get("reference") or "")
    for entry in _entries(bundle):
        resource = entry["resource"]
        if resource.get("resourceType") != "Patient":
            continue
        if entry.get("fullUrl") == reference or reference.endswith(f"Patient/{resource.get('id')}"):
            return resource
    return {}


def _banner(bundle: JSON, composition: JSON) -> str:
    patient = _subject(bundle, composition)
    index = {(e["resource"].get("resourceType"), e["resource"].get("id")): e["resource"] for e in _entries(bundle)}
    nhs = identifier_value(patient, NHS_NUMBER)
    pairs = [
        ("Patient", human_name(patient) or reference_text(composition.get("subject"), index)),
        ("NHS number", f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if len(nhs) == 10 else nhs),
        ("Date of birth", patient.get("birthDate")),
        ("Gender", patient.get("gender")),
        ("Author", ", ".join(reference_text(a, index) for a in composition.get("author") or [])),
        ("Organisation", reference_text(composition.get("custodian"), index)),
        ("Date", date_text(composition.get("date"))),
        ("Status", composition.get("status")),
    ]
    cells = "".join(f"<dt>{_e(label)}</dt><dd>{_e(value)}</dd>" for label, value in pairs if value)
    title = composition.get("title") or concept_text(composition.get("type")) or "Document"
    return f'<header class="banner"><h1>{_e(title)}</h1><dl class="patient">{cells}</dl></header>'


def _section(section: JSON) -> str:
    title = section.get("title") or concept_text(section.get("code")) or "Section"
    div = (section.get("text") or {}).get("div")
    body = sanitise(div) if isinstance(div, str) and div else ""
    if not body.strip():
        body = f'<p class="empty">{_e(concept_text(section.get("emptyReason")) or "No content")}</p>'
    nested = "".join(_section(s) for s in section.get("section") or [] if isinstance(s, Mapping))
    return f"<section><h2>{_e(title)}</h2>{body}{nested}</section>"


def render_document(bundle: JSON) -> str:
    """The whole document as one HTML page (UTF-8), sections in the Composition's order."""
    entries = _entries(bundle)
    composition = entries[0]["resource"] if entries else {}
    title = composition.get("title") or "Document"
    sections = "".join(_section(s) for s in composition.get("section") or [] if isinstance(s, Mapping))
    identifier = (bundle.get("identifier") or {}).get("value")
    return (
        '<!DOCTYPE html><html lang="en-GB"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
        f"{_banner(bundle, composition)}{sections}"
        f"<footer>Document {_e(identifier)} · issued {_e(date_text(bundle.get('timestamp')))}</footer>"
        "</main></body></html>"
    )
