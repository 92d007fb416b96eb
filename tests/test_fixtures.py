"""fixtures/demo: transaction Bundles of PUTs that validate, reference only each other, and are idempotent."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from engine.nhs_number import NHS_NUMBER_SYSTEM, nhs_number_is_valid
from engine.validation import validate_resource

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
FILES = sorted(DEMO.glob("*.json"))
ODS_ORG = "https://fhir.nhs.uk/Id/ods-organization-code"
ODS_SITE = "https://fhir.nhs.uk/Id/ods-site-code"
JOB_ROLE = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName"
DATE = re.compile(r"(\d{4})-\d{2}-\d{2}")


@cache
def _bundle(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _resources() -> list[dict[str, Any]]:
    return [entry["resource"] for path in FILES for entry in _bundle(path)["entry"]]


def _of_type(resource_type: str) -> list[dict[str, Any]]:
    return [r for r in _resources() if r["resourceType"] == resource_type]


def _references(node: object) -> Iterator[str]:
    """Every Reference.reference string anywhere inside `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def test_the_expected_files_exist_in_load_order() -> None:
    assert [p.name for p in FILES] == [
        "01-organizations.json", "02-practitioners.json", "03-patients.json", "04-clinical.json",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_is_a_transaction_of_puts_with_fixed_ids(path: Path) -> None:
    bundle = _bundle(path)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert validate_resource(bundle, expected_type="Bundle").status == 200
    for entry in bundle["entry"]:
        resource = entry["resource"]
        # PUT to Type/id makes a reload an update of the same resource, never a duplicate.
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_resource_validates(path: Path) -> None:
    failures = {}
    for entry in _bundle(path)["entry"]:
        resource = entry["resource"]
        result = validate_resource(resource, expected_type=resource["resourceType"])
        if result.status != 200 or result.issues:
            failures[resource["id"]] = [(i.expression, i.diagnostics) for i in result.issues]
    assert failures == {}


def test_ids_are_unique() -> None:
    keys = Counter(f"{r['resourceType']}/{r['id']}" for r in _resources())
    assert [key for key, n in keys.items() if n > 1] == []
    # Ids are unique across types too, so a README can name a resource by id alone.
    ids = Counter(r["id"] for r in _resources())
    assert [rid for rid, n in ids.items() if n > 1] == []


def test_every_relative_reference_resolves() -> None:
    present = {f"{r['resourceType']}/{r['id']}" for r in _resources()}
    dangling = {
        f"{r['resourceType']}/{r['id']}": ref
        for r in _resources() for ref in _references(r)
        if not ref.startswith(("#", "urn:", "http://", "https://")) and ref not in present
    }
    assert dangling == {}


def test_references_only_point_backwards_in_load_order_or_within_a_file() -> None:
    # A loader that commits file by file never sees a reference to a resource it has not loaded yet.
    loaded: set[str] = set()
    for path in FILES:
        resources = [e["resource"] for e in _bundle(path)["entry"]]
        loaded |= {f"{r['resourceType']}/{r['id']}" for r in resources}
        forward = [ref for r in resources for ref in _references(r) if ref not in loaded]
        assert forward == [], path.name


def test_nhs_numbers_are_valid_test_numbers() -> None:
    numbers = [
        identifier["value"]
        for patient in _of_type("Patient") for identifier in patient.get("identifier", [])
        if identifier["system"] == NHS_NUMBER_SYSTEM
    ]
    assert numbers and all(nhs_number_is_valid(n) for n in numbers)
    assert all(n.startswith("999") for n in numbers)  # the NHS test range: never a real person's number
    assert len(set(numbers)) == len(numbers)


def test_patient_mix() -> None:
    patients = _of_type("Patient")
    assert 6 <= len(patients) <= 8
    assert {p["gender"] for p in patients} >= {"female", "male"}
    assert len([p for p in patients if "deceasedDateTime" in p or p.get("deceasedBoolean")]) == 1
    unavailable = [
        p for p in patients
        if any(e["url"].endswith("Extension-UKCore-NHSNumberUnavailableReason") for e in p.get("extension", []))
    ]
    assert len(unavailable) == 1
    assert not any(i["system"] == NHS_NUMBER_SYSTEM for i in unavailable[0].get("identifier", []))
    for patient in patients:
        assert all(a["postalCode"].startswith("LS") for a in patient["address"])
        assert any(e["url"].endswith("Extension-UKCore-EthnicCategory") for e in patient["extension"])


def test_organisations_carry_ods_codes() -> None:
    codes = {i["value"] for o in _of_type("Organization") for i in o["identifier"] if i["system"] == ODS_ORG}
    assert {"RR8", "RGD", "RY6"} <= codes
    assert len([c for c in codes if c.startswith("B86")]) == 3
    assert any(i["system"] == ODS_SITE for o in _of_type("Organization") for i in o["identifier"])


def test_demo_users_for_each_documented_role_exist() -> None:
    roles = {
        (coding["code"], role["organization"]["reference"])
        for role in _of_type("PractitionerRole") for concept in role["code"] for coding in concept["coding"]
        if coding["system"] == JOB_ROLE
    }
    assert ("R8000", "Organization/org-b86901") in roles  # GP
    assert ("R8001", "Organization/org-rr8") in roles  # hospital nurse
    assert any(code == "R8009" for code, _ in roles)  # receptionist
    assert any(code == "R8012" for code, _ in roles)  # IG officer


def test_observation_counts() -> None:
    per_patient = Counter(o["subject"]["reference"] for o in _of_type("Observation"))
    assert sum(per_patient.values()) >= 30
    # Exactly one patient with exactly 20: paging tests (_count=10 → two full pages) rely on it.
    assert [p for p, n in per_patient.items() if n == 20] == ["Patient/pat-alice-hughes"]


def test_clinical_dates_fall_in_2024_to_2026() -> None:
    clinical = _bundle(DEMO / "04-clinical.json")
    years = {int(m.group(1)) for s in _strings(clinical) for m in [DATE.match(s)] if m}
    assert years and years <= {2024, 2025, 2026}
