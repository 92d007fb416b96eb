"""Generate engine/search/parameters.json, the search parameter registry, from the FHIR specification.

Provenance:
- Search parameters: `../shared/reference/fhir/search-parameters-R4B.json`, the FHIR specification's
  SearchParameter Bundle (FHIR core content, CC0; as shipped in the PyPI package fhirstarter 4.2.0).
  R4B's search parameters are R4's for every resource sharedcare stores.
  https://hl7.org/fhir/R4/searchparameter-registry.html
- Element types (which elements are choices `value[x]`, which datatype each element has): the FHIR R4
  element model shipped with fhirpathpy (`fhirpathpy/models/r4/*.json`, derived from the R4
  StructureDefinitions), read only here, at generation time.

What it writes, for each stored resource type: every search parameter with its code, type, the part of
its FHIRPath expression that concerns that type (multi-base parameters such as `clinical-patient` are
split at their top-level `|`; `Resource.meta.tag` becomes `Patient.meta.tag`), its target types
(["Resource"] when any type may be referenced) and the SearchParameter's id (its canonical URL is
http://hl7.org/fhir/SearchParameter/<id>); the common Resource parameters `_profile`, `_tag`, `_security`
and `_source` for every type (`_id` and `_lastUpdated` are answered from the resources table); the type
of every element those expressions navigate; and what was skipped and why: composite and special
parameters, and any expression engine/search/fhirpath.py cannot compile. The report also goes to stderr.

Run from the repository root:  .venv/bin/python tools/gen_search_params.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.search.fhirpath import UnsupportedExpression, compile_expression, root_name, split_union

SOURCE = REPO.parent / "shared" / "reference" / "fhir" / "search-parameters-R4B.json"
SOURCE_LABEL = "../shared/reference/fhir/search-parameters-R4B.json"
OUTPUT = REPO / "engine" / "search" / "parameters.json"

RESOURCE_TYPES = (
    "AllergyIntolerance",
    "Appointment",
    "AuditEvent",
    "CareTeam",
    "Composition",
    "Condition",
    "Consent",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "Flag",
    "HealthcareService",
    "Immunization",
    "Location",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "RelatedPerson",
    "ServiceRequest",
    "Task",
)
COMMON_PARAMS = ("_profile", "_security", "_source", "_tag")
INDEXED_TYPES = frozenset({"string", "token", "date", "reference", "quantity", "number", "uri"})
ANY_TARGET = "Resource"

# FHIR primitive type names, as choice suffixes spell them capitalised ("DateTime" → "dateTime").
_PRIMITIVES = (
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
)
_BY_SUFFIX = {p[0].upper() + p[1:]: p for p in _PRIMITIVES}


class ElementModel:
    """Element types of FHIR R4 from fhirpathpy's model, answering compile_expression's lookups and
    remembering every path asked for (those go into the registry)."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.choices: Mapping[str, list[str]] = model["choiceTypePaths"]
        self.elsewhere: Mapping[str, str] = model["pathsDefinedElsewhere"]
        self.types: Mapping[str, str] = model["path2Type"]
        self.parents: Mapping[str, str] = model["type2Parent"]
        self.backbones = {p.rsplit(".", 1)[0] for p in self.types if "." in p}
        self.asked: dict[str, tuple[str, ...] | None] = {}

    def __call__(self, path: str) -> tuple[str, ...] | None:
        found = self._resolve(path)
        self.asked[path] = found
        return found

    def _resolve(self, path: str) -> tuple[str, ...] | None:
        if path in self.choices:
            return tuple(_canonical(t) for t in self.choices[path])
        if path in self.elsewhere:
            return ("#" + self.elsewhere[path],)
        if path in self.types:
            return (_canonical(self.types[path]),)
        if "." in path and path in self.backbones:
            return ("BackboneElement",)
        head, _, rest = path.partition(".")
        parent = self.parents.get(head)
        if parent and rest and parent not in ("Element", "BackboneElement"):
            return self._resolve(f"{parent}.{rest}")
        return None


def _canonical(type_name: str) -> str:
    """fhirpathpy's spelling → the FHIR type name: "DateTime" → "dateTime", "System.String" → "string"."""
    if type_name.startswith("System."):
        return type_name[len("System.") :].lower()
    return _BY_SUFFIX.get(type_name, type_name)


def load_model() -> Mapping[str, Any]:
    """The FHIR R4 element model from fhirpathpy (a test/dev dependency, needed only here)."""
    from fhirpathpy.models import models

    return models["r4"]


def build_registry(bundle: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """The registry document (see the module docstring) from the SearchParameter Bundle."""
    elements = ElementModel(model)
    definitions = [
        e["resource"] for e in bundle["entry"] if e["resource"].get("resourceType") == "SearchParameter"
    ]
    any_target = max((frozenset(d.get("target", ())) for d in definitions), key=len)
    params: dict[str, dict[str, Any]] = {t: {} for t in RESOURCE_TYPES}
    skipped: dict[str, dict[str, str]] = {t: {} for t in RESOURCE_TYPES}
    for definition in definitions:
        for resource_type in _bases(definition):
            code = definition["code"]
            entry, reason = _entry(definition, resource_type, elements, any_target)
            if entry is not None and code not in params[resource_type]:
                params[resource_type][code] = entry
            elif reason is not None:
                skipped[resource_type][code] = reason
    used = {p for p, types in elements.asked.items() if types is not None}
    return {
        "about": {
            "generator": "tools/gen_search_params.py",
            "source": SOURCE_LABEL,
            "source_last_updated": bundle.get("meta", {}).get("lastUpdated"),
            "element_types": "fhirpathpy models/r4 (FHIR R4 StructureDefinitions)",
        },
        "elements": {p: list(elements.asked[p] or ()) for p in sorted(used)},
        "params": {t: dict(sorted(params[t].items())) for t in sorted(params)},
        "skipped": {t: dict(sorted(skipped[t].items())) for t in sorted(skipped) if skipped[t]},
        "untyped_elements": sorted(p for p, types in elements.asked.items() if types is None),
    }


def _bases(definition: Mapping[str, Any]) -> list[str]:
    """The stored resource types a SearchParameter applies to (all of them for the common ones)."""
    bases = definition.get("base", ())
    if "Resource" in bases:
        return list(RESOURCE_TYPES) if definition.get("code") in COMMON_PARAMS else []
    return [b for b in bases if b in RESOURCE_TYPES]


def _entry(
    definition: Mapping[str, Any], resource_type: str, lookup: ElementModel, any_target: frozenset[str]
) -> tuple[dict[str, Any] | None, str | None]:
    """One registry entry, or None and why it was skipped."""
    if definition["type"] not in INDEXED_TYPES:
        return None, f"{definition['type']} parameter"
    expression = _own_expression(definition.get("expression") or "", resource_type)
    if not expression:
        return None, "no expression for this type"
    try:
        compile_expression(expression, resource_type, lookup)
    except UnsupportedExpression as exc:
        return None, f"unsupported expression: {exc}"
    entry: dict[str, Any] = {"type": definition["type"], "expression": expression}
    targets = definition.get("target")
    if targets:
        entry["targets"] = [ANY_TARGET] if frozenset(targets) >= any_target else sorted(targets)
    entry["id"] = definition["id"]
    return entry, None


def _own_expression(expression: str, resource_type: str) -> str:
    """The union members of `expression` rooted at `resource_type`; a `Resource.` root becomes the type."""
    own = []
    for member in split_union(expression):
        root = root_name(member)
        if root in ("Resource", "DomainResource"):
            member = re.sub(rf"\b{root}\.", f"{resource_type}.", member, count=1)
            root = resource_type
        if root == resource_type:
            own.append(member)
    return " | ".join(own)


def render(registry: Mapping[str, Any]) -> str:
    """Sorted JSON with one element type or one parameter per line, so that a diff reads well."""
    lines = ["{", f'"about": {_dumps(registry["about"])},', '"elements": {']
    lines += _members(registry["elements"], indent="  ")
    lines += ["},", '"params": {']
    types = list(registry["params"].items())
    for i, (resource_type, params) in enumerate(types):
        lines.append(f"  {_dumps(resource_type)}: {{")
        lines += _members(params, indent="    ")
        lines.append("  }" + ("," if i < len(types) - 1 else ""))
    lines += ["},", '"skipped": {']
    lines += _members(registry["skipped"], indent="  ")
    lines += ["},", f'"untyped_elements": {_dumps(registry["untyped_elements"])}', "}"]
    return "\n".join(lines) + "\n"


def _members(mapping: Mapping[str, Any], indent: str) -> list[str]:
    items = list(mapping.items())
    return [
        f"{indent}{_dumps(k)}: {_dumps(v)}" + ("," if i < len(items) - 1 else "")
        for i, (k, v) in enumerate(items)
    ]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def report(registry: Mapping[str, Any]) -> Sequence[str]:
    """Human-readable lines: counts per type and each skipped parameter with its reason."""
    lines = [f"{t}: {len(p)} parameters" for t, p in registry["params"].items()]
    for resource_type, skipped in registry["skipped"].items():
        lines += [f"skipped {resource_type}.{code}: {reason}" for code, reason in skipped.items()]
    lines += [f"untyped element (navigated without its type): {p}" for p in registry["untyped_elements"]]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output is not up to date")
    args = parser.parse_args(argv)
    bundle = json.loads(args.source.read_text(encoding="utf-8"))
    registry = build_registry(bundle, load_model())
    text = render(registry)
    for line in report(registry):
        print(line, file=sys.stderr)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run tools/gen_search_params.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
