"""Search index extraction, the patient compartment, and the parameter registry.

https://hl7.org/fhir/R4/search.html#ptypes
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.search.extract import INDEX_KINDS, extract_index, patient_compartment
from engine.search.registry import (
    SUPPORTED_TYPES,
    alternatives,
    get_param,
    narrower_params,
    params_for,
    searched_as,
    selects_part_of,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path("../shared/reference/fhir/search-parameters-R4B.json")
EXAMPLES = Path("../shared/corpora/fhir/FHIR-fhir-test-cases-r4-examples")
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
COLUMNS = {
    "string": {"param", "value", "exact"},
    "token": {"param", "system", "code", "display"},
    "date": {"param", "low", "high"},
    "reference": {"param", "target_type", "target_id", "url"},
    "quantity": {"param", "system", "code", "value"},
    "number": {"param", "value"},
    "uri": {"param", "value"},
    "relationship": {"param", "patient_id", "org", "low", "high"},
}

HEART_RATE = {
    "resourceType": "Observation",
    "id": "hr1",
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"], "source": "#pas"},
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
        "text": "HR",
    },
    "subject": {"reference": "Patient/123"},
    "encounter": {"reference": "Encounter/456"},
    "effectiveDateTime": "2024-03-01T10:15:00+01:00",
    "valueQuantity": {
        "value": 72,
        "unit": "beats/minute",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    },
}


def rows(resource: dict[str, Any], kind: str, param: str) -> list[dict[str, Any]]:
    """The rows a search on `param` reads: its own and those stored once under a narrower parameter."""
    codes = searched_as(resource["resourceType"], param)
    return [
        {k: v for k, v in row.items() if k != "param"}
        for row in extract_index(resource)[kind]
        if row["param"] in codes
    ]


def stored(resource: dict[str, Any], kind: str, param: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "param"} for row in extract_index(resource)[kind]
            if row["param"] == param]


def values(resource: dict[str, Any], kind: str, param: str, column: str = "value") -> list[Any]:
    return [row[column] for row in rows(resource, kind, param)]


# --- a typical Observation -----------------------------------------------------------------------


def test_every_kind_is_present_with_exactly_its_columns() -> None:
    index = extract_index(HEART_RATE)
    assert tuple(index) == INDEX_KINDS
    for kind, kind_rows in index.items():
        for row in kind_rows:
            assert set(row) == COLUMNS[kind], kind


def test_heart_rate_observation() -> None:
    assert rows(HEART_RATE, "token", "code") == [
        {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
    ]
    assert values(HEART_RATE, "token", "category", "code") == ["vital-signs"]
    assert rows(HEART_RATE, "token", "status") == [{"system": "", "code": "final", "display": None}]
    assert rows(HEART_RATE, "reference", "subject") == [
        {"target_type": "Patient", "target_id": "123", "url": None}
    ]
    assert rows(HEART_RATE, "reference", "patient") == [
        {"target_type": "Patient", "target_id": "123", "url": None}
    ]
    assert rows(HEART_RATE, "reference", "encounter") == [
        {"target_type": "Encounter", "target_id": "456", "url": None}
    ]
    assert rows(HEART_RATE, "date", "date") == [
        {"low": datetime(2024, 3, 1, 9, 15), "high": datetime(2024, 3, 1, 9, 15, 0, 999999)}
    ]
    assert rows(HEART_RATE, "quantity", "value-quantity") == [
        {"system": "http://unitsofmeasure.org", "code": "/min", "value": 72.0}
    ]
    assert values(HEART_RATE, "uri", "_profile") == ["http://hl7.org/fhir/StructureDefinition/heartrate"]
    assert values(HEART_RATE, "uri", "_source") == ["#pas"]
    assert values(HEART_RATE, "string", "value-string") == []


def test_unsupported_type_gives_no_rows() -> None:
    assert extract_index({"resourceType": "Basic", "id": "x"}) == {kind: [] for kind in INDEX_KINDS}
    assert extract_index({"id": "no type"}) == {kind: [] for kind in INDEX_KINDS}


# --- strings -------------------------------------------------------------------------------------


def test_human_name_parts_folded_with_exact_kept() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [
            {
                "text": "Dr Zoë Ó'Brien",
                "family": "Ó'Brien",
                "given": ["Zoë", "Máire"],
                "prefix": ["Dr"],
                "suffix": ["MBE"],
            }
        ],
    }
    assert rows(patient, "string", "name") == [
        {"value": "dr zoe o'brien", "exact": "Dr Zoë Ó'Brien"},
        {"value": "o'brien", "exact": "Ó'Brien"},
        {"value": "zoe", "exact": "Zoë"},
        {"value": "maire", "exact": "Máire"},
        {"value": "dr", "exact": "Dr"},
        {"value": "mbe", "exact": "MBE"},
    ]
    assert values(patient, "string", "family") == ["o'brien"]
    assert values(patient, "string", "given") == ["zoe", "maire"]
    assert values(patient, "string", "phonetic") == values(patient, "string", "name")


def test_address_parts() -> None:
    patient = {
        "resourceType": "Patient",
        "address": [
            {
                "use": "home",
                "line": ["1 Station Road", "Flat 2"],
                "city": "Leeds",
                "district": "West Yorkshire",
                "postalCode": "LS1 4AP",
                "country": "GBR",
            }
        ],
    }
    assert values(patient, "string", "address") == [
        "1 station road",
        "flat 2",
        "leeds",
        "west yorkshire",
        "ls1 4ap",
        "gbr",
    ]
    assert values(patient, "string", "address-postalcode", "exact") == ["LS1 4AP"]
    assert values(patient, "token", "address-use", "code") == ["home"]


def test_long_strings_are_cut_to_the_column_width() -> None:
    org = {"resourceType": "Organization", "name": "N" * 400}
    (row,) = rows(org, "string", "name")
    assert len(row["value"]) == 256 and len(row["exact"]) == 256


def test_duplicate_rows_of_one_parameter_are_dropped() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Smith"}, {"family": "Smith", "given": ["Smith"]}],
    }
    assert values(patient, "string", "name") == ["smith"]


# --- tokens --------------------------------------------------------------------------------------


def test_nhs_number_identifier() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER, "value": "9434765919"}, {"value": "L123"}],
    }
    assert rows(patient, "token", "identifier") == [
        {"system": NHS_NUMBER, "code": "9434765919", "display": None},
        {"system": "", "code": "L123", "display": None},
    ]


def test_codeable_concept_each_coding_and_nothing_for_text_only() -> None:
    condition = {
        "resourceType": "Condition",
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "44054006",
                    "display": "Diabetes mellitus type 2",
                },
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"},
                {"system": "http://example.org", "display": "no code"},
            ]
        },
        "category": [{"text": "free text only"}],
    }
    assert [(r["system"], r["code"]) for r in rows(condition, "token", "code")] == [
        ("http://snomed.info/sct", "44054006"),
        ("http://hl7.org/fhir/sid/icd-10", "E11"),
    ]
    assert rows(condition, "token", "category") == []


def test_contact_points_and_booleans() -> None:
    patient = {
        "resourceType": "Patient",
        "active": False,
        "telecom": [
            {"system": "phone", "value": "01632 960001"},
            {"system": "email", "value": "a@example.org"},
        ],
    }
    assert rows(patient, "token", "phone") == [{"system": "", "code": "01632 960001", "display": None}]
    assert values(patient, "token", "email", "code") == ["a@example.org"]
    assert values(patient, "token", "telecom", "code") == ["01632 960001", "a@example.org"]
    assert values(patient, "token", "active", "code") == ["false"]
    assert values(patient, "token", "deceased", "code") == ["false"]
    assert values({**patient, "deceasedDateTime": "2020-01-01"}, "token", "deceased", "code") == ["true"]
    assert values({**patient, "deceasedDateTime": "2020-01-01"}, "date", "death-date", "low") == [
        datetime(2020, 1, 1)
    ]


def test_coding_tokens_and_truncation() -> None:
    encounter = {
        "resourceType": "Encounter",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
            "display": "x" * 300,
        },
        "meta": {"tag": [{"system": "urn:tag", "code": "t" * 300}], "security": [{"code": ""}]},
    }
    (row,) = rows(encounter, "token", "class")
    assert row["code"] == "IMP" and len(row["display"]) == 256
    assert [len(code) for code in values(encounter, "token", "_tag", "code")] == [256]
    assert rows(encounter, "token", "_security") == []


# --- dates ---------------------------------------------------------------------------------------


def test_periods_keep_open_ends() -> None:
    encounter = {"resourceType": "Encounter", "period": {"start": "2024-01-05T09:00:00Z"}}
    assert rows(encounter, "date", "date") == [{"low": datetime(2024, 1, 5, 9), "high": None}]
    episode = {"resourceType": "EpisodeOfCare", "period": {"end": "2024-02"}}
    assert rows(episode, "date", "date") == [{"low": None, "high": datetime(2024, 2, 29, 23, 59, 59, 999999)}]
    assert rows({"resourceType": "Encounter", "period": {}}, "date", "date") == []


def test_timing_events_and_invalid_dates() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "dosageInstruction": [{"timing": {"event": ["2024-05-01T08:00:00Z", "not a date", "2024-05-02"]}}],
        "authoredOn": "2024-13-01",
    }
    assert values(request, "date", "date", "low") == [datetime(2024, 5, 1, 8), datetime(2024, 5, 2)]
    assert rows(request, "date", "authoredon") == []


def test_condition_onset_choices() -> None:
    by_age = {
        "resourceType": "Condition",
        "onsetAge": {"value": 52, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    assert rows(by_age, "date", "onset-date") == []
    assert rows(by_age, "quantity", "onset-age") == [
        {"system": "http://unitsofmeasure.org", "code": "a", "value": 52.0}
    ]
    by_text = {
        "resourceType": "Condition",
        "onsetString": "In childhood",
        "abatementRange": {"low": {"value": 1}, "high": {"value": 3, "unit": "a"}},
    }
    assert values(by_text, "string", "onset-info") == ["in childhood"]
    assert rows(by_text, "date", "onset-date") == []
    assert rows(by_text, "quantity", "abatement-age") == [
        {"system": "", "code": "", "value": 1.0},
        {"system": "", "code": "a", "value": 3.0},
    ]
    by_period = {"resourceType": "Condition", "onsetPeriod": {"start": "2019", "end": "2020"}}
    assert rows(by_period, "date", "onset-date") == [
        {"low": datetime(2019, 1, 1), "high": datetime(2020, 12, 31, 23, 59, 59, 999999)}
    ]


# --- rows stored once under the narrower parameter --------------------------------------------------


def test_rows_of_a_narrower_parameter_are_not_stored_again_for_the_wider_one() -> None:
    observation = {**HEART_RATE, "component": [{"code": {"coding": [{"system": "http://loinc.org",
                                                                       "code": "8480-6"}]},
                                                "valueQuantity": {"value": 120, "code": "mm[Hg]"}}]}
    assert stored(observation, "reference", "subject") == []
    assert stored(observation, "reference", "patient") == [{"target_type": "Patient", "target_id": "123", "url": None}]
    assert stored(observation, "token", "combo-code") == []  # code and component-code hold them
    assert sorted(r["code"] for r in rows(observation, "token", "combo-code")) == ["8480-6", "8867-4"]
    assert sorted(r["value"] for r in rows(observation, "quantity", "combo-value-quantity")) == [72.0, 120.0]
    group = {**HEART_RATE, "subject": {"reference": "Group/g1"}}
    assert stored(group, "reference", "subject") == [{"target_type": "Group", "target_id": "g1", "url": None}]
    assert stored(group, "reference", "patient") == []


def test_narrower_parameters_are_read_from_the_expressions() -> None:
    assert alternatives("(A.value as Quantity) | A.component.code | A.x.where(system='a|b')") == {
        "(A.value as Quantity)", "A.component.code", "A.x.where(system='a|b')"}
    assert narrower_params("Observation")["subject"] == ("patient",)
    assert narrower_params("Observation")["combo-code"] == ("code", "component-code")
    assert narrower_params("Encounter")["participant"] == ("practitioner",)
    assert searched_as("Observation", "patient") == ("patient",)
    assert searched_as("Observation", "code") == ("code",)
    assert searched_as("Observation", "subject") == ("patient", "subject")
    observation = params_for("Observation")
    assert not selects_part_of(observation["subject"], observation["patient"])  # wider, not narrower
    assert not selects_part_of(observation["code"], observation["code"])
    patient = params_for("Patient")
    assert not selects_part_of(patient["phonetic"], patient["name"])  # strings: rows depend on the parameter
    for res_type in SUPPORTED_TYPES:
        for wide, narrow in narrower_params(res_type).items():
            for code in narrow:  # never both ways: each would leave its rows to the other
                assert wide not in narrower_params(res_type).get(code, ())


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ({"reference": "Patient/123/_history/2"}, [("Patient", "123", None)]),
        (
            {"reference": "https://pds.example/fhir/Patient/9"},
            [("Patient", "9", "https://pds.example/fhir/Patient/9")],
        ),
        ({"reference": "urn:uuid:0f1e"}, [(None, None, "urn:uuid:0f1e")]),
        ({"reference": "urn:uuid:0f1e", "type": "Patient"}, [("Patient", None, "urn:uuid:0f1e")]),
        ({"reference": "#p1"}, []),
        ({"identifier": {"system": NHS_NUMBER, "value": "9434765919"}}, []),
        ({"display": "Mrs Smith"}, []),
        ({"reference": "Patient?identifier=x|1"}, []),
    ],
)
def test_reference_forms(reference: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    flag = {"resourceType": "Flag", "subject": reference}
    found = [(r["target_type"], r["target_id"], r["url"]) for r in rows(flag, "reference", "subject")]
    assert found == expected


def test_canonical_reference_is_a_url() -> None:
    request = {
        "resourceType": "ServiceRequest",
        "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/kidney|1.0"],
        "instantiatesUri": ["http://example.org/protocol"],
    }
    assert rows(request, "reference", "instantiates-canonical") == [
        {"target_type": None, "target_id": None, "url": "http://example.org/fhir/PlanDefinition/kidney|1.0"}
    ]
    assert values(request, "uri", "instantiates-uri") == ["http://example.org/protocol"]


def test_choice_of_reference_or_other_type() -> None:
    consent = {"resourceType": "Consent", "sourceAttachment": {"url": "http://example.org/form.pdf"}}
    assert rows(consent, "reference", "source-reference") == []
    statement = {
        "resourceType": "MedicationStatement",
        "medicationReference": {"reference": "Medication/m1"},
        "subject": {"reference": "Group/g1"},
    }
    assert values(statement, "reference", "medication", "target_id") == ["m1"]
    assert rows(statement, "token", "code") == []
    assert rows(statement, "reference", "patient") == []


# --- quantities ----------------------------------------------------------------------------------


def test_quantity_code_falls_back_to_unit_and_sampled_data_is_skipped() -> None:
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
        "component": [
            {
                "code": {"text": "x"},
                "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 1},
            }
        ],
    }
    assert rows(obs, "quantity", "value-quantity") == [{"system": "", "code": "mmol/L", "value": 5.4}]
    assert rows(obs, "quantity", "component-value-quantity") == []
    assert (
        rows({"resourceType": "Observation", "valueQuantity": {"unit": "kg"}}, "quantity", "value-quantity")
        == []
    )
    assert rows({"resourceType": "Encounter", "length": {"value": 3, "code": "d"}}, "quantity", "length") == [
        {"system": "", "code": "d", "value": 3.0}
    ]


# --- the patient compartment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient", "id": "p1"}, "p1"),
        (HEART_RATE, "123"),
        ({"resourceType": "Observation", "subject": {"reference": "Group/g1"}}, None),
        ({"resourceType": "Observation", "subject": {"reference": "urn:uuid:1", "type": "Patient"}}, None),
        (
            {"resourceType": "Observation", "subject": {"reference": "https://other.example/fhir/Patient/9"}},
            None,
        ),
        ({"resourceType": "Condition", "subject": {"reference": "Patient/c1"}}, "c1"),
        ({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/a1"}}, "a1"),
        (
            {
                "resourceType": "AuditEvent",
                "agent": [{"who": {"reference": "Practitioner/d1"}}],
                "entity": [{"what": {"reference": "Patient/e1"}}],
            },
            "e1",
        ),
        (
            {
                "resourceType": "Provenance",
                "target": [{"reference": "Observation/o1"}, {"reference": "Patient/v1"}],
            },
            "v1",
        ),
        (
            {
                "resourceType": "Appointment",
                "participant": [
                    {"actor": {"reference": "Location/l1"}},
                    {"actor": {"reference": "Patient/ap1"}},
                ],
            },
            "ap1",
        ),
        ({"resourceType": "Consent", "patient": {"reference": "Patient/cn1"}}, "cn1"),
        ({"resourceType": "RelatedPerson", "patient": {"reference": "Patient/rp1"}}, "rp1"),
        ({"resourceType": "Task", "for": {"reference": "Patient/t1"}}, "t1"),
        ({"resourceType": "Flag", "subject": {"reference": "Patient/f1"}}, "f1"),
        ({"resourceType": "Organization", "id": "o1"}, None),
        ({"resourceType": "Basic", "subject": {"reference": "Patient/b1"}}, None),
    ],
)
def test_patient_compartment(resource: dict[str, Any], expected: str | None) -> None:
    assert patient_compartment(resource) == expected


def test_absolute_references_to_this_server_count_for_the_compartment() -> None:
    obs = {"resourceType": "Observation", "subject": {"reference": "https://care.example/fhir/Patient/9"}}
    assert patient_compartment(obs, local_bases=["https://care.example/fhir/"]) == "9"
    assert patient_compartment(obs, local_bases=["https://care.example/fhir/other"]) is None


# --- the spec's examples -------------------------------------------------------------------------


def _examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
        entries = (
            [e.get("resource", {}) for e in document.get("entry", ())]
            if document["resourceType"] == "Bundle"
            else [document]
        )
        found += [r for r in entries if r.get("resourceType") in SUPPORTED_TYPES]
    return found


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not there")
def test_examples_give_rows_that_fit_the_tables() -> None:
    for resource in _examples():
        index = extract_index(resource)
        assert sum(len(r) for r in index.values()) > 0, resource["resourceType"]
        for kind, kind_rows in index.items():
            for row in kind_rows:
                assert set(row) == COLUMNS[kind]
                if kind != "relationship":  # its param is the relationship kind
                    assert row["param"] in params_for(resource["resourceType"])
                for column in ("value", "exact", "system", "code", "display"):
                    if isinstance(row.get(column), str):
                        assert len(row[column]) <= 256
                if kind in ("reference", "uri"):
                    assert len(row.get("url") or row.get("value") or "") <= 512


# --- the registry --------------------------------------------------------------------------------


def test_registry_types_and_common_parameters() -> None:
    assert len(SUPPORTED_TYPES) == 28 and "Patient" in SUPPORTED_TYPES and "Task" in SUPPORTED_TYPES
    for resource_type in SUPPORTED_TYPES:
        params = params_for(resource_type)
        assert {"_profile", "_tag", "_security", "_source"} <= set(params)
        assert "_id" not in params and "_lastUpdated" not in params
        assert all(p.type not in ("composite", "special") for p in params.values())
    assert params_for("Basic") == {}
    assert get_param("Basic", "code") is None and get_param("Observation", "nope") is None


def test_multi_base_parameters_are_split_per_type() -> None:
    patient = get_param("Observation", "patient")
    assert patient is not None
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert (
        patient.targets == ("Patient",)
        and patient.allows_target("Patient")
        and not patient.allows_target("Group")
    )
    assert patient.definition == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    code = get_param("MedicationStatement", "code")
    assert code is not None and code.expression == "(MedicationStatement.medication as CodeableConcept)"
    tag = get_param("Flag", "_tag")
    assert tag is not None and tag.expression == "Flag.meta.tag" and tag.type == "token"
    target = get_param("Provenance", "target")
    assert target is not None and target.allows_target("Basic")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen_search_params", REPO / "tools" / "gen_search_params.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} is not there")
def test_parameters_json_is_in_sync_with_the_generator() -> None:
    generator = _generator()
    bundle = json.loads(SOURCE.read_text(encoding="utf-8"))
    expected = generator.render(generator.build_registry(bundle, generator.load_model()))
    current = (REPO / "engine" / "search" / "parameters.json").read_text(encoding="utf-8")
    assert current == expected, "engine/search/parameters.json is stale: run tools/gen_search_params.py"


def test_generator_splits_multi_base_parameters_and_reports_what_it_skips() -> None:
    def definition(
        id_: str, code: str, type_: str, base: list[str], expression: str | None
    ) -> dict[str, Any]:
        resource = {
            "resourceType": "SearchParameter",
            "id": id_,
            "url": f"http://hl7.org/fhir/SearchParameter/{id_}",
            "code": code,
            "type": type_,
            "base": base,
        }
        if expression is not None:
            resource["expression"] = expression
        return {"resource": resource}

    bundle = {
        "resourceType": "Bundle",
        "entry": [
            definition(
                "clinical-code",
                "code",
                "token",
                ["Condition", "Observation", "Procedure"],
                "Condition.code | Observation.code | Procedure.code",
            ),
            definition("Patient-x", "x", "string", ["Patient"], "Patient.name.first()"),
            definition("Observation-c", "c", "composite", ["Observation"], "Observation"),
            definition("Resource-tag", "_tag", "token", ["Resource"], "Resource.meta.tag"),
            definition("Resource-id", "_id", "token", ["Resource"], "Resource.id"),
        ],
    }
    generator = _generator()
    registry = generator.build_registry(bundle, generator.load_model())
    assert registry["params"]["Observation"]["code"]["expression"] == "Observation.code"
    assert registry["params"]["Condition"]["code"]["expression"] == "Condition.code"
    assert registry["params"]["Task"] == {
        "_tag": {"type": "token", "expression": "Task.meta.tag", "id": "Resource-tag"}
    }
    assert "x" not in registry["params"]["Patient"]
    assert registry["skipped"]["Patient"]["x"].startswith("unsupported expression")
    assert registry["skipped"]["Observation"] == {"c": "composite parameter"}
    assert registry["elements"]["Observation.code"] == ["CodeableConcept"]
    assert any("Patient.x" in line for line in generator.report(registry))


def test_search_modules_stay_pure() -> None:
    """No database, web or network library is imported by the extraction path."""
    code = (
        "import sys, engine.search.extract, engine.search.normalise;"
        "bad = {'sqlalchemy', 'fastapi', 'httpx', 'socket'} & {m.split('.')[0] for m in sys.modules};"
        "print(','.join(sorted(bad)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
