"""Parsing: resource facts, FHIR date-times and IHE PCF-shaped Consents (R4 Consent)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.fhir_values import organisation_key, parse_fhir_datetime
from consent.model import Actor, ConsentError, Provision, ResourceFacts, parse_consent
from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, RBAC_ROLE_SYSTEM, owner_tag
from tests.consent.builders import consent_fixture, fixture


@pytest.mark.parametrize(
    ("text", "upper", "expected"),
    [
        ("2025", False, datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025", True, datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2025-12", True, datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2025-02", True, datetime(2025, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2025-01-14", False, datetime(2025, 1, 14, tzinfo=UTC)),
        ("2025-01-14", True, datetime(2025, 1, 14, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2025-04-28T10:05:00+01:00", False, datetime(2025, 4, 28, 9, 5, tzinfo=UTC)),
        ("2025-04-28T10:05:00Z", True, datetime(2025, 4, 28, 10, 5, tzinfo=UTC)),
        ("2025-04-28T10:05", False, datetime(2025, 4, 28, 10, 5, tzinfo=UTC)),
        ("2025-13-01", False, None),
        ("yesterday", False, None),
        (None, False, None),
    ],
)
def test_fhir_date_times_become_utc_instants(text: str | None, upper: bool, expected: datetime | None) -> None:
    assert parse_fhir_datetime(text, upper=upper) == expected


@given(sign=st.sampled_from("+-"), hours=st.integers(0, 99), minutes=st.integers(0, 99))
def test_an_offset_is_read_as_python_reads_it(sign: str, hours: int, minutes: int) -> None:
    text = f"2025-04-28T10:05:00{sign}{hours:02d}:{minutes:02d}"
    try:
        expected = datetime.fromisoformat(text).astimezone(UTC) if minutes < 60 else None
    except ValueError:  # a day or more
        expected = None
    assert parse_fhir_datetime(text) == expected


@pytest.mark.parametrize(
    ("reference", "key"),
    [
        ({"reference": "Organization/org-rr8"}, "Organization/org-rr8"),
        ({"reference": "https://example.org/fhir/Organization/org-rr8"}, "Organization/org-rr8"),
        ({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RR8"}}, "RR8"),
        ({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-site-code", "value": "VL9Z1"}}, "VL9Z1"),
        ({"identifier": {"system": "https://example.org/other", "value": "X"}}, None),
        ({"reference": "Practitioner/prac-1"}, None),
        (None, None),
    ],
)
def test_organisation_references_become_keys(reference: object, key: str | None) -> None:
    assert organisation_key(reference) == key


def test_resource_facts_from_a_labelled_condition() -> None:
    doc = {
        "resourceType": "Condition",
        "id": "cond-chloe-gad",
        "meta": {
            "tag": [owner_tag("RGD")],
            "security": [{"system": ACT_CODE_SYSTEM, "code": "PSY"}, {"system": CONFIDENTIALITY_SYSTEM, "code": "R"}],
        },
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "21897009"}]},
        "subject": {"reference": "Patient/pat-chloe-adeyemi"},
        "onsetDateTime": "2025-06-17",
        "recordedDate": "2025-06-18",
    }
    facts = ResourceFacts.from_document(doc)
    assert facts.res_type == "Condition" and facts.res_id == "cond-chloe-gad"
    assert facts.patient_id == "pat-chloe-adeyemi"
    assert facts.owner_org == "RGD"
    assert facts.labels == {(ACT_CODE_SYSTEM, "PSY"), (CONFIDENTIALITY_SYSTEM, "R")}
    assert ("http://snomed.info/sct", "21897009") in facts.codes
    assert facts.data_time == datetime(2025, 6, 17, tzinfo=UTC)  # onset before recordedDate
    assert facts.reference == "Condition/cond-chloe-gad"


@pytest.mark.parametrize(
    ("doc", "patient", "when"),
    [
        ({"resourceType": "Patient", "id": "p1"}, "p1", None),
        ({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p2"},
          "effectivePeriod": {"start": "2025-03-01"}, "issued": "2025-03-02T00:00:00Z"}, "p2",
         datetime(2025, 3, 1, tzinfo=UTC)),
        ({"resourceType": "EpisodeOfCare", "id": "e", "patient": {"reference": "Patient/p3"},
          "period": {"start": "2024-06-03"}}, "p3", datetime(2024, 6, 3, tzinfo=UTC)),
        ({"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p4"}}, "p4", None),
        ({"resourceType": "Organization", "id": "org"}, None, None),
    ],
)
def test_patient_and_clinical_date_are_derived(doc: dict, patient: str | None, when: datetime | None) -> None:
    facts = ResourceFacts.from_document(doc)
    assert (facts.patient_id, facts.data_time) == (patient, when)


def test_the_store_s_patient_id_wins_over_derivation() -> None:
    doc = {"resourceType": "AuditEvent", "id": "a"}
    assert ResourceFacts.from_document(doc, patient_id="p9").patient_id == "p9"


def test_encounter_class_coding_is_a_code() -> None:
    doc = {"resourceType": "Encounter", "id": "e", "class": {"system": ACT_CODE_SYSTEM, "code": "IMP"}}
    assert (ACT_CODE_SYSTEM, "IMP") in ResourceFacts.from_document(doc).codes


# --------------------------------------------------------------------------------------------------
# Consents


def test_basic_objection_is_recognised() -> None:
    parsed = consent_fixture("consent-objection-basic.json")
    assert parsed.patient_id == "pat-bilal-hussain"
    assert parsed.root == Provision("deny", period_start=datetime(2025, 5, 1, tzinfo=UTC))
    assert parsed.is_objection
    assert not parsed.in_force(datetime(2025, 4, 30, tzinfo=UTC))
    assert parsed.in_force(datetime(2025, 5, 1, 0, 0, 1, tzinfo=UTC))


def test_objection_with_an_exception_for_the_gp_practice() -> None:
    parsed = consent_fixture("consent-objection-except-gp.json")
    assert parsed.is_objection
    (exception,) = parsed.root.provisions
    assert exception.type == "permit"
    (actor,) = exception.actors
    assert actor.reference == "B86901"  # identifier-only ODS reference → the ODS code
    assert parsed.policy_uris == {"https://profiles.ihe.net/ITI/PCF/StructureDefinition/IHE.PCF.consentIntermediate"}


def test_deny_provision_with_actor_action_class_and_label() -> None:
    parsed = consent_fixture("consent-deny-mental-health-to-rr8.json")
    assert not parsed.is_objection
    (deny,) = parsed.root.provisions
    assert deny.type == "deny"
    assert {a.reference for a in deny.actors} == {"Organization/org-rr8"}
    assert {c for _, c in deny.classes} == {"Condition", "DocumentReference"}
    assert {c for _, c in deny.security_labels} == {"PSY"}
    assert {c for _, c in deny.actions} == {"access"}
    assert deny.narrows


def test_permit_with_period_purpose_and_labels() -> None:
    parsed = consent_fixture("consent-permit-psy-to-gp.json")
    assert parsed.root.type == "permit"
    assert parsed.root.period_end == datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert not parsed.in_force(datetime(2026, 7, 1, tzinfo=UTC))
    assert {c for _, c in parsed.root.purposes} == {"TREAT"}


def test_nested_provision_without_type_is_the_opposite_of_its_parent() -> None:
    parsed = consent_fixture("consent-deny-data-period.json")
    kinds = sorted((p.type, bool(p.actors)) for p in parsed.root.provisions)
    assert kinds == [("deny", False), ("deny", True)]
    by_actor = next(p for p in parsed.root.provisions if p.actors)
    assert by_actor.actors == {Actor(frozenset({(RBAC_ROLE_SYSTEM, "R8014")}), None)}
    dated = next(p for p in parsed.root.provisions if not p.actors)
    assert dated.data_refs == {"Observation/obs-david-spo2-2024"}
    assert dated.data_start == datetime(2024, 1, 1, tzinfo=UTC)


def test_national_opt_out_keeps_its_research_scope_and_policy() -> None:
    parsed = consent_fixture("consent-national-opt-out.json")
    assert parsed.root.type == "deny"
    assert parsed.policy_uris == {"https://digital.nhs.uk/services/national-data-opt-out"}


@pytest.mark.parametrize("name", ["consent-inactive.json", "consent-treatment-scope.json"])
def test_consents_that_do_not_apply_parse_to_none(name: str) -> None:
    assert parse_consent(fixture(name)) is None


def test_a_privacy_consent_without_patient_is_an_error() -> None:
    with pytest.raises(ConsentError, match="Consent.patient"):
        parse_consent(fixture("consent-no-patient.json"))


@pytest.mark.parametrize(
    ("provision", "policy_rule", "message"),
    [
        ({"type": "maybe"}, None, "deny or permit"),
        (None, None, "OPTIN or OPTOUT"),
        ({"period": {"start": "2025-01-01"}}, None, "OPTIN or OPTOUT"),
    ],
)
def test_unusable_provision_types_are_errors(provision: dict | None, policy_rule: object, message: str) -> None:
    doc = fixture("consent-objection-basic.json")
    doc.pop("policyRule")
    if provision is None:
        doc.pop("provision")
    else:
        doc["provision"] = provision
    with pytest.raises(ConsentError, match=message):
        parse_consent(doc)


def test_missing_provision_takes_its_type_from_policy_rule() -> None:
    doc = fixture("consent-objection-basic.json")
    doc.pop("provision")
    parsed = parse_consent(doc)
    assert parsed is not None and parsed.is_objection


def test_not_a_consent_is_an_error() -> None:
    with pytest.raises(ConsentError):
        parse_consent({"resourceType": "Patient"})


def test_provision_identity_ignores_order() -> None:
    a, b = Provision("permit", classes=frozenset({("x", "A")})), Provision("deny", codes=frozenset({("s", "1")}))
    assert Provision("deny", provisions=(a, b)) == Provision("deny", provisions=(b, a))
    assert hash(Provision("deny", provisions=(a, b))) == hash(Provision("deny", provisions=(b, a)))
