"""Security labels from code lists (UK-REFERENCE §5)."""

from __future__ import annotations

import copy

import pytest

from consent.labels import apply_labels, sensitivity_labels
from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM
from tests.consent.builders import POLICY, demo_resources

SCT, ICD10 = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10"


def condition(system: str, code: str) -> dict:
    return {"resourceType": "Condition", "id": "c", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/p"}}


def codes_of(labels: list[dict]) -> list[str]:
    return [label["code"] for label in labels]


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        (ICD10, "F32", ["PSY", "R"]),
        (ICD10, "F32.1", ["PSY", "R"]),
        ("http://hl7.org/fhir/sid/icd-10-uk", "F321", ["PSY", "R"]),
        (ICD10, "F10.2", ["ETH", "PSY", "R"]),
        (ICD10, "F03", []),  # dementia is not in the local mental-health list
        (ICD10, "B20.1", ["HIV", "R"]),
        (ICD10, "Z21", ["HIV", "R"]),
        (ICD10, "A54.9", ["STD", "R"]),
        (ICD10, "Z31.2", ["SEX", "R"]),
        (ICD10, "O04", ["SEX", "R"]),
        (ICD10, "F64.0", ["PSY", "SEX", "R"]),
        (ICD10, "T74.1", ["SDV", "R"]),
        (SCT, "86406008", ["HIV", "R"]),
        (SCT, "52637005", ["SEX", "R"]),
        (SCT, "57797005", ["SEX", "R"]),
        (SCT, "21897009", ["PSY", "R"]),
        (SCT, "76272004", ["STD", "R"]),
        (SCT, "38341003", []),
        ("http://example.org/local", "F32", []),
    ],
)
def test_code_lists_call_for_labels(system: str, code: str, expected: list[str]) -> None:
    assert codes_of(sensitivity_labels(condition(system, code), POLICY)) == expected


def test_labels_are_sorted_by_system_then_code() -> None:
    labels = sensitivity_labels(condition(ICD10, "F10.2"), POLICY)
    assert [(l["system"], l["code"]) for l in labels] == [
        (ACT_CODE_SYSTEM, "ETH"), (ACT_CODE_SYSTEM, "PSY"), (CONFIDENTIALITY_SYSTEM, "R"),
    ]


def test_codes_in_category_and_value_count_too() -> None:
    observation = {"resourceType": "Observation", "id": "o",
                   "valueCodeableConcept": {"coding": [{"system": SCT, "code": "165816005"}]}}
    assert codes_of(sensitivity_labels(observation, POLICY)) == ["HIV", "R"]


def test_apply_labels_keeps_existing_labels_and_is_idempotent() -> None:
    doc = condition(ICD10, "F32")
    doc["meta"] = {"security": [{"system": CONFIDENTIALITY_SYSTEM, "code": "R"},
                                {"system": "urn:local", "code": "X"}], "versionId": "3"}
    original = copy.deepcopy(doc)
    once = apply_labels(doc, POLICY)
    assert doc == original  # not mutated
    assert [(l["system"], l["code"]) for l in once["meta"]["security"]] == [
        (CONFIDENTIALITY_SYSTEM, "R"), ("urn:local", "X"), (ACT_CODE_SYSTEM, "PSY"),
    ]
    assert once["meta"]["versionId"] == "3"
    assert apply_labels(once, POLICY) == once


def test_apply_labels_leaves_unlabelled_documents_unchanged() -> None:
    doc = condition(SCT, "38341003")
    assert apply_labels(doc, POLICY) == doc


def test_demo_fixtures_label_only_the_anxiety_disorder_and_its_encounter() -> None:
    """The LYPFT encounter carries the diagnosis as its reasonCode, so it is as sensitive as the Condition."""
    labelled = {r["id"]: codes_of(sensitivity_labels(r, POLICY)) for r in demo_resources()}
    assert {rid: codes for rid, codes in labelled.items() if codes} == {
        "cond-chloe-gad": ["PSY", "R"], "enc-chloe-mh-2025-06": ["PSY", "R"]}
