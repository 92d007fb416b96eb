"""Validation of FHIR resources we did not write (DESIGN.md, principle 5 "Validate what you did not write").

Three stages, each with its own HTTP status, so the API can answer the way FHIR RESTful servers do
(https://hl7.org/fhir/R4/http.html#2.21.0.9 "400 Bad Request - resource could not be parsed or failed basic
FHIR validation rules", "422 Unprocessable Entity - the proposed resource violated applicable FHIR profiles
or server business rules"):

1. shape — a JSON object with a known R4 `resourceType` (and the one the caller expected) → else 400;
2. model — `fhir.resources.R4B` (wire-compatible with R4 for our resources): types, cardinality, unknown
   elements, choice types → else 400, one issue per pydantic error with a FHIRPath-style expression; then
   required bindings, narrative content and NUL characters in strings → else 400;
3. UK rules — UK Core Patient NHS number (modulus 11 check digit, at most one) → else 422.

Issues use the FHIR IssueType codes (https://hl7.org/fhir/R4/valueset-issue-type.html). Diagnostics never
echo submitted values: error text ends up in logs, and submitted values are patient data.

Known gaps of stage 2 (fhir.resources behaviour, not ours): required value-set bindings such as
`Patient.gender` or `Observation.status` codes are not checked, JSON strings are coerced to booleans and
numbers ("true", "1.0"), and narrative XHTML is not checked against the FHIR narrative rules.

No database or web framework here: this is called by the API, the ingest pipeline and tests alike.
"""

from __future__ import annotations

import functools
import os.path
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from engine.narrative import narrative_issues
from engine.nhs_number import NHS_NUMBER_SYSTEM, mask_nhs_number, nhs_number_is_valid
from engine.required_bindings import binding_violations

Severity = Literal["error", "warning"]
IssueCode = Literal["structure", "required", "value", "invalid", "code-invalid", "business-rule", "not-supported"]

MAX_ISSUES = 50
# Bundles may nest Bundles and resources may contain resources; past this depth the input is hostile.
MAX_NESTING = 8

# Present in fhir.resources.R4B but not in FHIR R4 4.0.1 (https://hl7.org/fhir/R4B/diff.html): a UK Core
# (R4) server must not accept them even though the R4B models would.
_R4B_ONLY_TYPES = frozenset({
    "AdministrableProductDefinition", "Citation", "ClinicalUseDefinition", "EvidenceReport", "Ingredient",
    "ManufacturedItemDefinition", "MedicinalProductDefinition", "NutritionProduct",
    "PackagedProductDefinition", "RegulatedAuthorization", "SubscriptionStatus", "SubscriptionTopic",
})
_REFUSED_TYPES = _R4B_ONLY_TYPES | {"Resource", "DomainResource"}  # the last two are abstract
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
# fhir.resources reports choice-type ("value[x]") errors as root validator messages naming the options.
_CHOICE_MULTIPLE = "Any of one field value is expected from this list"
_CHOICE_MISSING = "Expect any of field value from this list"
_QUOTED_NAME = re.compile(r"'([A-Za-z][A-Za-z0-9]*)'")
# pydantic inserts validator tags such as "function-after[...]" into `loc`; they are not JSON names.
_PYDANTIC_TAG = re.compile(r"[a-z][a-z-]*\[.*\]")
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Resource types whose backbone elements hold whole resources: Bundle.entry.resource, Parameters.parameter.resource.
_RESOURCE_HOLDERS = {"Bundle": "entry", "Parameters": "parameter"}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue (https://hl7.org/fhir/R4/operationoutcome.html)."""

    severity: Severity
    code: IssueCode
    diagnostics: str
    expression: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationResult:
    """Issues found, the HTTP status they call for (200, 400 or 422), and how many issues were cut off."""

    issues: list[Issue]
    status: int
    omitted: int = 0

    @property
    def ok(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)


def validate_resource(data: object, expected_type: str | None = None) -> ValidationResult:
    """Validate parsed JSON as a FHIR R4 resource plus the UK Core checks; never raises on bad input.

    `expected_type` is the type named by the request (e.g. `PUT /Patient/x`); a body of another type is 400.

    >>> validate_resource({"resourceType": "Patient", "birthDate": "1970-02-30"}).status
    400
    """
    shape = _shape_issue(data, expected_type)
    if shape is not None:
        return _result([shape], 400)
    assert isinstance(data, dict)  # _shape_issue guarantees it; the assert narrows the type
    resource_type: str = data["resourceType"]
    nested = list(_nested_type_issues(data, resource_type))
    if nested:
        return _result(nested, 400)
    model = _model_issues(data, resource_type)
    if model:
        return _result(model, 400)
    content = list(_content_issues(data, resource_type))
    if content:
        return _result(content, 400)
    uk = list(_uk_issues(data, resource_type))
    return _result(uk, 422 if any(issue.severity == "error" for issue in uk) else 200)


def _content_issues(data: dict[str, Any], resource_type: str) -> Iterator[Issue]:
    """Codes outside required bindings, narratives with active content and NUL characters (all 400)."""
    for element, allowed in binding_violations(data):
        yield Issue("error", "code-invalid", f"{resource_type}.{element} must be one of: {allowed}",
                    [f"{resource_type}.{element}"])
    for expression, problem in narrative_issues(data, resource_type):
        yield Issue("error", "invalid", problem, [expression])
    for loc in _nul_locations(data, ()):
        path = fhirpath(resource_type, loc)
        yield Issue("error", "value", f"{path} contains a NUL character (U+0000), which is not allowed", [path])


def _nul_locations(node: object, loc: tuple[int | str, ...]) -> Iterator[tuple[int | str, ...]]:
    """Where strings hold U+0000. FHIR strings should carry no control characters but tab, CR and LF
    (https://hl7.org/fhir/R4/datatypes.html#string); NUL is refused outright, as PostgreSQL text and
    jsonb cannot store it and the answer must not depend on the back end."""
    if isinstance(node, str):
        if "\x00" in node:
            yield loc
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _nul_locations(value, (*loc, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _nul_locations(item, (*loc, i))


def _result(issues: list[Issue], status: int) -> ValidationResult:
    return ValidationResult(issues=issues[:MAX_ISSUES], status=status, omitted=max(0, len(issues) - MAX_ISSUES))


# --- stage 1: shape ------------------------------------------------------------------------------------


# Bounded: there are about 150 resource types, and the names looked up come from untrusted input.
@functools.lru_cache(maxsize=512)
def model_class(resource_type: str) -> type[Resource] | None:
    """The R4B model for an R4 resource type name, or None; cached because the lookup imports modules.

    Rejects datatypes (`HumanName`), abstract types and R4B-only resources, which `get_fhir_model_class`
    would all return.
    """
    if _TYPE_NAME.fullmatch(resource_type) is None or resource_type in _REFUSED_TYPES:
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Resource) else None


def _type_problem(value: object) -> tuple[IssueCode, str] | None:
    """Why `value` is not a usable resourceType, or None when it names an R4 resource."""
    if value is None:
        return "required", "resourceType is missing, so this is not a FHIR resource"
    if not isinstance(value, str):
        return "structure", "resourceType must be a string naming a FHIR R4 resource type"
    if model_class(value) is None:
        return "not-supported", f"resourceType {value[:64]!r} is not a FHIR R4 resource type"
    return None


def _shape_issue(data: object, expected_type: str | None) -> Issue | None:
    if not isinstance(data, dict):
        return Issue("error", "structure", "The body must be a JSON object (a FHIR resource)", [])
    problem = _type_problem(data.get("resourceType"))
    if problem is not None:
        return Issue("error", problem[0], problem[1], ["resourceType"])
    if expected_type is not None and data["resourceType"] != expected_type:
        return Issue(
            "error", "invalid",
            f"Expected a {expected_type} resource but the body is a {data['resourceType']}",
            ["resourceType"],
        )
    return None


def _child_resources(resource: dict[str, Any], path: str) -> Iterator[tuple[str, object]]:
    """Resources held inside a resource: contained[], Bundle.entry[].resource, Parameters.parameter[].resource.

    Yields (FHIRPath of the child, the child as sent); shapes are not trusted yet, so non-lists are skipped
    and left for the model to report.
    """
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, child in enumerate(contained):
            yield f"{path}.contained[{i}]", child
    name = _RESOURCE_HOLDERS.get(resource.get("resourceType"))
    holders = resource.get(name) if name else None
    if isinstance(holders, list):
        for i, holder in enumerate(holders):
            if isinstance(holder, dict) and "resource" in holder:
                yield f"{path}.{name}[{i}].resource", holder["resource"]


def resources_within(data: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], int]]:
    """The resource itself and every resource nested in it, with its FHIRPath and nesting depth."""
    stack: list[tuple[str, dict[str, Any], int]] = [(path, data, 0)]
    while stack:
        where, resource, depth = stack.pop()
        yield where, resource, depth
        children = [(p, c, depth + 1) for p, c in _child_resources(resource, where) if isinstance(c, dict)]
        stack.extend(reversed(children))  # reversed so that issues come out in document order


def _nested_type_issues(data: dict[str, Any], resource_type: str) -> Iterator[Issue]:
    """Nested resources need a known resourceType before the model sees them (it raises KeyError otherwise)."""
    for where, resource, depth in resources_within(data, resource_type):
        if depth > MAX_NESTING:
            yield Issue("error", "structure", f"Resources are nested more than {MAX_NESTING} deep", [where])
            return
        if depth == 0:
            continue
        problem = _type_problem(resource.get("resourceType"))
        if problem is not None:
            yield Issue("error", problem[0], problem[1], [f"{where}.resourceType"])


# --- stage 2: the R4B model ----------------------------------------------------------------------------


def _model_issues(data: dict[str, Any], resource_type: str) -> list[Issue]:
    cls = model_class(resource_type)
    assert cls is not None  # checked in stage 1
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        return [_issue_from_error(error, resource_type) for error in exc.errors()]
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        # fhir.resources raises these for resources nested where stage 1 does not look
        # (e.g. Bundle.entry.response.outcome with an unknown resourceType).
        return [Issue("error", "structure", f"The {resource_type} could not be parsed as FHIR R4", [resource_type])]
    return []


def fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIRPath-style expression.

    JSON names are kept (choice types stay `valueQuantity`), list positions become `[n]`, and a primitive's
    extension holder `_given` is addressed as `given`, as FHIRPath does.

    >>> fhirpath("Patient", ("name", 0, "_given", 1, "extension", 0, "url"))
    'Patient.name[0].given[1].extension[0].url'
    """
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PYDANTIC_TAG.fullmatch(part):
            continue
        else:
            name = part[1:] if part.startswith("_") and len(part) > 1 else part
            path += f".{name}" if _PLAIN_NAME.fullmatch(name) else f".`{name}`"
    return path


# pydantic error types (https://docs.pydantic.dev/latest/errors/validation_errors/) grouped by FHIR issue type.
_REQUIRED_TYPES = frozenset({"missing", "model_field_validation.missing"})
_STRUCTURE_TYPES = {
    "json_invalid": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array of non-null values",
}


def _issue_from_error(error: Any, resource_type: str) -> Issue:
    """One pydantic error as one Issue; the submitted value (`error["input"]`) is never quoted."""
    kind: str = error["type"]
    loc: tuple[int | str, ...] = tuple(error["loc"])
    path = fhirpath(resource_type, loc)
    message: str = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and (_CHOICE_MULTIPLE in message or _CHOICE_MISSING in message):
        return _choice_issue(path, message, error.get("input"))
    if kind in _REQUIRED_TYPES:
        return Issue("error", "required", f"{path} is required", [path])
    if kind == "extra_forbidden":
        name = str(loc[-1])[:64] if loc else "?"
        return Issue("error", "structure", f"Unknown element {name!r}: it is not defined in FHIR R4 here", [path])
    if kind in _STRUCTURE_TYPES:
        return Issue("error", "structure", f"{path} {_STRUCTURE_TYPES[kind]}", [path])
    return Issue("error", "value", f"{path} is not valid: {message}", [path])


def _choice_base(names: list[str]) -> str:
    """The element name shared by choice-type JSON names: ['effectiveDateTime', 'effectivePeriod'] → 'effective'."""
    base = os.path.commonprefix(names)
    # commonprefix of effectiveDateTime/effectiveDuration is "effectiveD": back off to a type-name boundary.
    while base and not all(len(n) > len(base) and n[len(base)].isupper() for n in names):
        base = base[:-1]
    return base or "value"


def _choice_issue(path: str, message: str, given: object) -> Issue:
    """A choice type `x[x]` (https://hl7.org/fhir/R4/formats.html#choice) given twice or required but absent."""
    names = _QUOTED_NAME.findall(message)
    element = f"{path}.{_choice_base(names)}[x]"
    if _CHOICE_MISSING in message:
        options = ", ".join(names)
        return Issue("error", "required", f"{element} is required: give one of {options}", [element])
    present = [name for name in names if isinstance(given, dict) and name in given]
    where = [f"{path}.{name}" for name in present] or [element]
    return Issue(
        "error", "structure",
        f"Only one form of {element} may be present, found {' and '.join(present) or 'several'}", where,
    )


# --- stage 3: UK Core rules ----------------------------------------------------------------------------


def _uk_issues(data: dict[str, Any], resource_type: str) -> Iterator[Issue]:
    """UK Core checks on the resource and on resources nested in it (a Bundle's Patients are checked too)."""
    for where, resource, _depth in resources_within(data, resource_type):
        if resource.get("resourceType") == "Patient":
            yield from nhs_number_issues(resource, where)


def nhs_number_issues(patient: dict[str, Any], path: str = "Patient") -> list[Issue]:
    """UK Core Patient: NHS number identifiers have a valid check digit, and there is at most one.

    Spec: UKCore-Patient `identifier:nhsNumber` (0..1) with system https://fhir.nhs.uk/Id/nhs-number; the
    check digit is the NHS Data Dictionary modulus 11 rule (UK-REFERENCE.md §1). `patient` must already
    have passed the model (stage 2).
    """
    issues: list[Issue] = []
    found: list[str] = []
    for i, identifier in enumerate(patient.get("identifier") or []):
        if identifier.get("system") != NHS_NUMBER_SYSTEM:
            continue
        found.append(f"{path}.identifier[{i}]")
        problem = _nhs_number_problem(identifier.get("value"), f"{path}.identifier[{i}].value")
        if problem is not None:
            issues.append(problem)
    if len(found) > 1:
        issues.append(Issue(
            "error", "business-rule",
            f"A Patient may carry at most one NHS number identifier (UK Core Patient); found {len(found)}",
            found,
        ))
    return issues


def _nhs_number_problem(value: object, where: str) -> Issue | None:
    if value is None:
        return Issue("error", "required", "An NHS number identifier must have a value", [where])
    if nhs_number_is_valid(value):  # type: ignore[arg-type]  # non-strings are simply invalid
        return None
    masked = mask_nhs_number(value)
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) == 10):
        return Issue(
            "error", "value", f"NHS number {masked} must be exactly 10 digits, with no spaces or punctuation",
            [where],
        )
    return Issue("error", "value", f"NHS number {masked} fails the modulus 11 check digit", [where])
