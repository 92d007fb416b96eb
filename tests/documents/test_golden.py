"""Golden documents: each fixtures/documents/<type>/input.json builds exactly expected.json.

The builder is pure, so fixed inputs (ids, `now`, base URL) give a fixed document. A change to a
definition or to the narrative shows up here as a diff to review; regenerate with
`SHAREDCARE_UPDATE_GOLDEN=1 .venv/bin/pytest -p no:xdist tests/documents/test_golden.py` and read the diff.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from engine.documents.build import build_document, document_reference
from engine.documents.definitions import definitions
from engine.documents.receive import document_problem, match_definition, missing_headings
from engine.narrative import narrative_problem

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "documents"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "input.json").exists())


def build_case(name: str) -> dict[str, Any]:
    given = json.loads((FIXTURES / name / "input.json").read_text())
    return build_document(
        definitions()[given["definition"]],
        patient=given["patient"], encounter=given["encounter"], resources=given["resources"],
        author=given["author"], custodian=given["custodian"], now=datetime.fromisoformat(given["now"]),
        document_id=given["document_id"], base_url=given["base_url"],
    )


def test_every_document_type_has_a_golden_case() -> None:
    assert set(CASES) == set(definitions())


@pytest.mark.parametrize("name", CASES)
def test_document_matches_golden_file(name: str) -> None:
    built = build_case(name)
    expected_path = FIXTURES / name / "expected.json"
    if os.environ.get("SHAREDCARE_UPDATE_GOLDEN") or not expected_path.exists():
        expected_path.write_text(json.dumps(built, indent=2, ensure_ascii=False) + "\n")
    assert built == json.loads(expected_path.read_text())


@pytest.mark.parametrize("name", CASES)
def test_document_is_valid_r4_with_every_mandatory_heading(name: str) -> None:
    built = build_case(name)
    Bundle.model_validate(built)  # raises on any R4 structure or type error
    assert document_problem(built) is None
    composition = built["entry"][0]["resource"]
    definition = definitions()[name]
    assert match_definition(composition, definitions().values()) is definition
    assert missing_headings(definition, composition) == []
    for section in composition["section"]:
        assert narrative_problem(section["text"]["div"]) is None
        assert ("entry" in section) != ("emptyReason" in section), section["title"]  # cmp-2
    full_urls = [entry["fullUrl"] for entry in built["entry"]]
    assert len(full_urls) == len(set(full_urls))
    present = {url.split("/fhir/", 1)[1] for url in full_urls}
    for section in composition["section"]:
        for entry in section.get("entry", []):
            assert "reference" not in entry or entry["reference"] in present, entry  # every entry resolves


def test_headings_follow_the_definition_order_and_codes() -> None:
    built = build_case("inpatient-discharge")
    sections = built["entry"][0]["resource"]["section"]
    order = [h.title for h in definitions()["inpatient-discharge"].headings]
    titles = [s["title"] for s in sections]
    assert titles == sorted(titles, key=order.index)
    allergies = next(s for s in sections if s["title"] == "Allergies and adverse reactions")
    assert allergies["code"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "886921000000105",
                                              "display": "Allergies and adverse reactions"}


def test_entered_in_error_and_other_patients_data_never_appear() -> None:
    built = build_case("outpatient-letter")
    text = json.dumps(built)
    assert "cond-david-copd-entered-in-error" not in text
    patients = {e["resource"]["id"] for e in built["entry"] if e["resource"]["resourceType"] == "Patient"}
    assert patients == {"pat-david-kowalski"}


def test_red_bag_shows_falls_omitted_doses_and_recent_observations() -> None:
    composition = build_case("care-home-to-hospital")["entry"][0]["resource"]
    by_title = {s["title"]: s for s in composition["section"]}
    assert {"reference": "Observation/obs-alice-fall-2024-12-28"} in by_title["Falls"]["entry"]
    assert "Refused: drowsy" in by_title["Current medication"]["text"]["div"]
    assert {"reference": "Observation/obs-alice-care-home-temp-2025-01-05"} in by_title["Recent observations"]["entry"]


def test_a_document_carries_every_security_label_of_what_it_holds() -> None:
    given = json.loads((FIXTURES / "mental-health-discharge" / "input.json").read_text())
    psy = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    restricted = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    for resource in given["resources"]:
        if resource["resourceType"] == "Condition" and resource["id"] == "cond-chloe-gad":
            resource["meta"] = {"security": [restricted, psy]}
    built = build_document(
        definitions()["mental-health-discharge"], patient=given["patient"], encounter=given["encounter"],
        resources=given["resources"], author=given["author"], custodian=given["custodian"],
        now=datetime.fromisoformat(given["now"]), document_id=given["document_id"], base_url=given["base_url"])
    assert "cond-chloe-gad" in json.dumps(built["entry"][0]["resource"]["section"])
    assert built["meta"]["security"] == [psy, restricted]
    assert built["entry"][0]["resource"]["meta"]["security"] == [psy, restricted]
    docref = document_reference(built, reference_id="r1", now=datetime.fromisoformat(given["now"]))
    assert docref["meta"]["security"] == [psy, restricted]
    Bundle.model_validate(built)
