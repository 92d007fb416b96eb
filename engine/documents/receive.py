"""Checks on a document Bundle produced elsewhere, before it is stored (UK-REFERENCE test 8).

Pure: which definition a received Composition follows and which of its mandatory headings are
missing. The definition is found by `Composition.type`; where several share a type (inpatient,
emergency care and mental health discharge are all SNOMED 373942005, told apart by care setting)
by the care-setting category, then by the title, then the definition marked `receive_default`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from engine.documents.definitions import DocumentDefinition, Heading
from engine.documents.elements import JSON, codes_of
from engine.narrative import narrative_issues, narrative_problem


def _codings(concept: object) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    concepts = concept if isinstance(concept, list) else [concept]
    for item in concepts:
        if isinstance(item, Mapping):
            for coding in item.get("coding") or ():
                if isinstance(coding, Mapping) and coding.get("code"):
                    found.add((str(coding.get("system") or ""), str(coding["code"])))
    return found


def _pair(coding: Mapping[str, str]) -> tuple[str, str]:
    return coding["system"], coding["code"]


def document_problem(bundle: JSON) -> str | None:
    """Why a (valid R4) Bundle is not a FHIR document, or None (https://hl7.org/fhir/R4/documents.html)."""
    if bundle.get("type") != "document":
        return "Bundle.type must be 'document'"
    entries = bundle.get("entry") or []
    first = entries[0].get("resource") if entries and isinstance(entries[0], Mapping) else None
    if not isinstance(first, Mapping) or first.get("resourceType") != "Composition":
        return "The first entry of a document Bundle must be its Composition"
    if not bundle.get("identifier") or not bundle.get("timestamp"):
        return "A document Bundle needs an identifier and a timestamp (bdl-9, bdl-10)"
    return None


def unsafe_narratives(bundle: JSON) -> list[tuple[str, str]]:
    """(expression, problem) for every narrative in the document that could run code where it is shown:
    each entry's resource text and contained resources, and every Composition section's text."""
    found: list[tuple[str, str]] = []
    for i, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        path = f"Bundle.entry[{i}].resource"
        found.extend(narrative_issues(dict(resource), path))
        if resource.get("resourceType") == "Composition":
            found.extend(_section_issues(resource.get("section") or [], f"{path}.section"))
    return found


def _section_issues(sections: Sequence[object], path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for i, section in enumerate(sections):
        if not isinstance(section, Mapping):
            continue
        div = (section.get("text") or {}).get("div") if isinstance(section.get("text"), Mapping) else None
        problem = narrative_problem(div) if isinstance(div, str) else None
        if problem:
            found.append((f"{path}[{i}].text.div", problem))
        found.extend(_section_issues(section.get("section") or [], f"{path}[{i}].section"))
    return found


def match_definition(composition: JSON, candidates: Iterable[DocumentDefinition]) -> DocumentDefinition | None:
    """The definition `composition` follows, or None when its type is not one we know."""
    types = _codings(composition.get("type"))
    same_type = [d for d in candidates if _pair(d.type) in types]
    if len(same_type) <= 1:
        return same_type[0] if same_type else None
    categories = _codings(composition.get("category"))
    by_setting = [d for d in same_type if d.care_setting and _pair(d.care_setting) in categories]
    if by_setting:
        return by_setting[0]
    title = str(composition.get("title") or "").strip().lower()
    by_title = [d for d in same_type if d.title.lower() == title]
    if by_title:
        return by_title[0]
    defaults = [d for d in same_type if d.receive_default]
    return defaults[0] if defaults else same_type[0]


def missing_headings(definition: DocumentDefinition, composition: JSON) -> list[Heading]:
    """Mandatory headings with no section: matched by section code, else by title (case-insensitive)."""
    sections = _all_sections(composition.get("section") or [])
    codes = {pair for s in sections for pair in _codings(s.get("code"))}
    titles = {str(s.get("title") or "").strip().lower() for s in sections}
    return [
        h for h in definition.headings
        if h.mandatory and _pair(h.code) not in codes and h.title.lower() not in titles
    ]


def _all_sections(sections: Sequence[object]) -> list[JSON]:
    """Sections and their sub-sections (a heading may be nested one level down)."""
    found: list[JSON] = []
    for item in sections:
        if isinstance(item, Mapping):
            found.append(dict(item))
            found.extend(_all_sections(item.get("section") or []))
    return found


def type_codes(composition: JSON) -> list[str]:
    return list(codes_of(composition.get("type")))
