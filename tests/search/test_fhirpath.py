"""The FHIRPath subset compiler, and a cross-check against fhirpathpy on the FHIR R4 examples.

https://hl7.org/fhirpath/N1/ · https://hl7.org/fhir/R4/search.html#table
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.search.fhirpath import (
    UnsupportedExpression,
    compile_expression,
    parse,
    root_name,
    split_union,
    type_matches,
)
from engine.search.registry import ELEMENT_TYPES, SUPPORTED_TYPES, params_for

EXAMPLES = Path("../shared/corpora/fhir/FHIR-fhir-test-cases-r4-examples")
SYNTHEA = Path("../shared/corpora/fhir/synthea")


def run(expression: str, resource: dict[str, Any]) -> list[tuple[Any, str | None]]:
    return compile_expression(expression, resource["resourceType"], ELEMENT_TYPES.get)(resource)


def nodes(expression: str, resource: dict[str, Any]) -> list[Any]:
    return [node for node, _ in run(expression, resource)]


# --- paths, unions, choices ----------------------------------------------------------------------

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [
        {"family": "O'Brien", "given": ["Zoë", "Anne"]},
        {"family": "Smith", "given": [None, "Jo"], "_given": [{"extension": []}, None]},
    ],
    "telecom": [
        {"system": "phone", "value": "01632 960001"},
        {"system": "email", "value": "zoe@example.org"},
    ],
}


def test_dotted_paths_flatten_lists_and_drop_nulls() -> None:
    assert nodes("Patient.name.given", PATIENT) == ["Zoë", "Anne", "Jo"]
    assert nodes("Patient.name.family", PATIENT) == ["O'Brien", "Smith"]


def test_items_carry_their_fhir_type() -> None:
    assert run("Patient.name", PATIENT)[0][1] == "HumanName"
    assert run("Patient.name.given", PATIENT)[0][1] == "string"


def test_absent_elements_give_nothing() -> None:
    assert run("Patient.birthDate", PATIENT) == []
    assert run("Patient.contact.name", PATIENT) == []


def test_union_keeps_both_sides() -> None:
    assert nodes("Patient.name.family | Patient.telecom.value", PATIENT) == [
        "O'Brien",
        "Smith",
        "01632 960001",
        "zoe@example.org",
    ]


def test_other_resource_types_do_not_match() -> None:
    assert run("Observation.code", PATIENT) == []
    assert compile_expression("Patient.name", "Patient", ELEMENT_TYPES.get)({"resourceType": "Group"}) == []


def test_choice_element_is_found_under_its_typed_json_name() -> None:
    quantity = {"value": 72, "unit": "/min"}
    obs = {"resourceType": "Observation", "valueQuantity": quantity, "effectivePeriod": {"start": "2020"}}
    assert run("Observation.value", obs) == [(quantity, "Quantity")]
    assert run("Observation.effective", obs) == [({"start": "2020"}, "Period")]


@pytest.mark.parametrize(
    "expression",
    [
        "(Observation.value as Quantity)",
        "Observation.value.as(Quantity)",
        "Observation.value.ofType(Quantity)",
    ],
)
def test_casts(expression: str) -> None:
    quantity = {"value": 1}
    assert nodes(expression, {"resourceType": "Observation", "valueQuantity": quantity}) == [quantity]
    assert nodes(expression, {"resourceType": "Observation", "valueString": "1"}) == []


def test_cast_to_primitive_and_then_navigate() -> None:
    obs = {"resourceType": "Observation", "valueCodeableConcept": {"text": "Positive"}}
    assert nodes("(Observation.value as string) | (Observation.value as CodeableConcept).text", obs) == [
        "Positive"
    ]
    obs = {"resourceType": "Observation", "valueString": "raised"}
    assert run("(Observation.value as string)", obs) == [("raised", "string")]


def test_cast_accepts_specialisations() -> None:
    condition = {"resourceType": "Condition", "onsetAge": {"value": 3, "unit": "a"}}
    assert nodes("Condition.onset.as(Age)", condition) == [{"value": 3, "unit": "a"}]
    assert nodes("Condition.onset.as(Quantity)", condition) == [{"value": 3, "unit": "a"}]
    assert nodes("Condition.onset.as(Range)", condition) == []
    assert type_matches("Age", "Quantity") and not type_matches("Quantity", "Age")
    assert type_matches("code", "string")


def test_backbone_elements_and_nested_choices() -> None:
    obs = {
        "resourceType": "Observation",
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 120}},
            {"code": {"text": "diastolic"}, "valueQuantity": {"value": 80}},
            {"code": {"text": "note"}, "valueString": "sitting"},
        ],
    }
    assert nodes("(Observation.component.value as Quantity)", obs) == [{"value": 120}, {"value": 80}]
    assert run("Observation.component", obs)[0][1] == "BackboneElement"


# --- where() -------------------------------------------------------------------------------------


def test_where_resolve_is_keeps_references_of_that_type() -> None:
    appointment = {
        "resourceType": "Appointment",
        "participant": [
            {"actor": {"reference": "Patient/1"}},
            {"actor": {"reference": "Practitioner/2"}},
            {"actor": {"reference": "https://other.example/fhir/Patient/3/_history/1"}},
            {"actor": {"reference": "urn:uuid:4", "type": "Patient"}},
            {"actor": {"reference": "urn:uuid:5"}},
            {"actor": {"reference": "#contained"}},
            {"actor": {"identifier": {"value": "6"}, "type": "Patient"}},
            {"actor": {"display": "Someone"}},
        ],
    }
    found = nodes("Appointment.participant.actor.where(resolve() is Patient)", appointment)
    assert found == [
        {"reference": "Patient/1"},
        {"reference": "https://other.example/fhir/Patient/3/_history/1"},
        {"reference": "urn:uuid:4", "type": "Patient"},
        {"identifier": {"value": "6"}, "type": "Patient"},
    ]
    practitioners = nodes("Appointment.participant.actor.where(resolve() is Practitioner)", appointment)
    assert practitioners == [{"reference": "Practitioner/2"}]


def test_where_comparison() -> None:
    assert nodes("Patient.telecom.where(system='email')", PATIENT) == [PATIENT["telecom"][1]]
    assert nodes("Patient.telecom.where(system != 'email')", PATIENT) == [PATIENT["telecom"][0]]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, False),
        ({"deceasedBoolean": False}, False),
        ({"deceasedBoolean": True}, True),
        ({"deceasedDateTime": "2015-02-14T13:42:00+10:00"}, True),
    ],
)
def test_deceased(extra: dict[str, Any], expected: bool) -> None:
    patient = {"resourceType": "Patient", **extra}
    assert run("Patient.deceased.exists() and Patient.deceased != false", patient) == [(expected, "boolean")]


# --- compile-time facts --------------------------------------------------------------------------


def test_root_keys_name_the_top_level_elements_needed() -> None:
    compiled = compile_expression(
        "Observation.value.as(Quantity) | Observation.code", "Observation", ELEMENT_TYPES.get
    )
    assert "valueQuantity" in compiled.root_keys and "code" in compiled.root_keys
    deceased = compile_expression(
        "Patient.deceased.exists() and Patient.deceased != false", "Patient", ELEMENT_TYPES.get
    )
    assert deceased.root_keys is None  # true or false whatever the resource holds


@pytest.mark.parametrize(
    "expression",
    [
        "Observation.code.first()",
        "Observation.value.text",  # into a choice without a cast
        "Observation.code[0]",
        "Observation.code.where()",
        "Observation.value as",
        "Observation.code | ",
    ],
)
def test_unsupported_expressions_raise(expression: str) -> None:
    with pytest.raises(UnsupportedExpression):
        compile_expression(expression, "Observation", ELEMENT_TYPES.get)


def test_split_union_respects_parentheses_and_quotes() -> None:
    expression = "(A.value as Quantity) | B.telecom.where(system='a|b') | C.x"
    assert split_union(expression) == ["(A.value as Quantity)", "B.telecom.where(system='a|b')", "C.x"]
    assert root_name("(A.value as Quantity)") == "A"
    assert parse("A.b | C.d") == parse("A.b|C.d")


# --- cross-check against fhirpathpy --------------------------------------------------------------

_LITERAL_TYPE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def _oracle_resolve(inputs: list[Any]) -> list[Any]:
    """resolve() for fhirpathpy: a node typed from the reference alone, as the spec allows for search."""
    from fhirpathpy.engine.nodes import ResourceNode

    out = []
    for reference in inputs:
        if not isinstance(reference, dict):
            continue
        literal = reference.get("reference") or ""
        match = None if literal.startswith("#") else _LITERAL_TYPE.search(literal)
        target = match.group(1) if match else (reference.get("type") or "").rsplit("/", 1)[-1]
        if target:
            out.append(ResourceNode.create_node({"resourceType": target}, target))
    return out


_AS_OPERATOR = re.compile(r"\(([A-Za-z.]+) as ([A-Za-z]+)\)")


def _for_fhirpathpy(expression: str) -> str:
    """`(X as T)` and `X.as(T)` → `X.ofType(T)`: FHIRPath's `as` wants a singleton and fhirpathpy enforces
    it, while search expressions such as `(Observation.component.value as Quantity)` mean a filter
    (R5 rewrote them with ofType())."""
    return _AS_OPERATOR.sub(r"\1.ofType(\2)", expression).replace(".as(", ".ofType(")


def _canonical(node: Any) -> str:
    """Comparable text of a node; fhirpathpy reads JSON decimals as Decimal, we keep floats."""
    return json.dumps(node, sort_keys=True, default=lambda o: float(o) if isinstance(o, Decimal) else str(o))


def _of_our_types(name: str, document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The document itself, or a Bundle's entries, where they are of a supported type."""
    if document.get("resourceType") == "Bundle":
        entries = [e.get("resource") or {} for e in document.get("entry", ())]
        return [(f"{name}#{i}", r) for i, r in enumerate(entries) if r.get("resourceType") in SUPPORTED_TYPES]
    return [(name, document)] if document.get("resourceType") in SUPPORTED_TYPES else []


def _example_resources() -> list[tuple[str, dict[str, Any]]]:
    """The FHIR R4 spec's examples of our types, then a few of each type from one Synthea record."""
    found: list[tuple[str, dict[str, Any]]] = []
    if EXAMPLES.is_dir():
        for path in sorted(EXAMPLES.glob("*.json")):
            found += _of_our_types(path.name, json.loads(path.read_text(encoding="utf-8-sig")))
    synthea = sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else []
    per_type: dict[str, int] = {}
    for path in synthea[:1] + [p for p in synthea if "Information" in p.name]:
        for name, resource in _of_our_types(path.name, json.loads(path.read_text(encoding="utf-8-sig"))):
            seen = per_type.get(resource["resourceType"], 0)
            if seen < 3:
                per_type[resource["resourceType"]] = seen + 1
                found.append((name, resource))
    return found


EXAMPLE_RESOURCES = _example_resources()


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not there")
def test_examples_cover_most_supported_types() -> None:
    covered = {resource["resourceType"] for _, resource in EXAMPLE_RESOURCES}
    assert len(covered) >= 18, sorted(SUPPORTED_TYPES - covered)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not there")
@pytest.mark.parametrize(("name", "resource"), EXAMPLE_RESOURCES, ids=[name for name, _ in EXAMPLE_RESOURCES])
def test_same_nodes_as_fhirpathpy(name: str, resource: dict[str, Any]) -> None:
    """Every registered expression finds the same nodes as fhirpathpy on the spec's examples."""
    from fhirpathpy import compile as fhirpath_compile
    from fhirpathpy.models import models

    options = {"userInvocationTable": {"resolve": {"fn": _oracle_resolve, "arity": {0: []}}}}
    differences = []
    found_any = 0
    for code, param in params_for(resource["resourceType"]).items():
        oracle = fhirpath_compile(_for_fhirpathpy(param.expression), model=models["r4"], options=options)
        expected = oracle(resource)
        actual = [node for node, _ in param.evaluator(resource)]
        found_any += bool(actual)
        if {_canonical(n) for n in actual} != {_canonical(n) for n in expected}:
            differences.append(f"{code} ({param.expression}): ours {actual!r} fhirpathpy {expected!r}")
    assert not differences, "\n".join(differences)
    assert found_any, f"no parameter found anything in {name}"
