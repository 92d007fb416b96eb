"""Legitimate relationships from the shapes the store holds (fixtures/demo, mappings/hl7v2 output)."""

from __future__ import annotations

from datetime import UTC, datetime

from consent.model import Relationship
from consent.relationships import relationships_from
from tests.consent.builders import demo_resources

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def _all_demo_relationships() -> set[Relationship]:
    return {r for doc in demo_resources() for r in relationships_from(doc)}


def test_demo_registered_gp_and_care_home_and_referral() -> None:
    found = _all_demo_relationships()
    assert Relationship("pat-alice-hughes", "Organization/org-b86901", "registered-gp") in found
    assert Relationship("pat-alice-hughes", "Organization/org-oakwood-grange", "care-home",
                        datetime(2024, 6, 3, tzinfo=UTC), None) in found
    assert Relationship("pat-chloe-adeyemi", "Organization/org-rgd", "referral",
                        datetime(2025, 4, 28, 9, 5, tzinfo=UTC), None) in found
    assert Relationship("pat-alice-hughes", "Organization/org-rr8", "encounter",
                        datetime(2025, 1, 6, 9, 40, tzinfo=UTC), datetime(2025, 1, 14, 11, 0, tzinfo=UTC)) in found
    assert not any(r.patient_id == "pat-george-lin" and r.kind == "registered-gp" for r in found)


def test_generalpractitioner_practitioner_references_are_not_organisations() -> None:
    patient = {"resourceType": "Patient", "id": "p", "generalPractitioner": [
        {"reference": "Practitioner/prac-1"},
        {"identifier": {"system": ODS, "value": "B86901"}},
    ]}
    assert relationships_from(patient) == [Relationship("p", "B86901", "registered-gp")]


def test_encounter_with_identifier_only_provider_and_open_period() -> None:
    encounter = {"resourceType": "Encounter", "id": "e", "status": "in-progress",
                 "subject": {"reference": "Patient/p"},
                 "serviceProvider": {"identifier": {"system": ODS, "value": "RR8"}},
                 "period": {"start": "2025-08-01T10:00:00Z"}}
    assert relationships_from(encounter) == [
        Relationship("p", "RR8", "encounter", datetime(2025, 8, 1, 10, tzinfo=UTC), None)]


def test_cancelled_encounters_give_no_relationship() -> None:
    encounter = {"resourceType": "Encounter", "id": "e", "status": "cancelled", "subject": {"reference": "Patient/p"},
                 "serviceProvider": {"reference": "Organization/o"}}
    assert relationships_from(encounter) == []


def test_episode_is_an_episode_unless_it_says_care_home() -> None:
    episode = {"resourceType": "EpisodeOfCare", "id": "e", "status": "active", "patient": {"reference": "Patient/p"},
               "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "x", "display": "District nursing"}]}],
               "managingOrganization": {"reference": "Organization/org-ry6"},
               "period": {"start": "2025-01-01", "end": "2025-03-31"}}
    (rel,) = relationships_from(episode)
    assert (rel.kind, rel.end) == ("episode", datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC))
    episode["type"][0]["coding"][0]["display"] = "Residential Home placement"
    assert relationships_from(episode)[0].kind == "care-home"


def test_referral_ends_with_its_occurrence_period() -> None:
    referral = {"resourceType": "ServiceRequest", "id": "s", "status": "active", "subject": {"reference": "Patient/p"},
                "authoredOn": "2025-04-28", "occurrencePeriod": {"start": "2025-05-01", "end": "2025-06-30"},
                "performer": [{"reference": "Organization/org-rgd"}, {"reference": "Practitioner/x"}]}
    assert relationships_from(referral) == [Relationship(
        "p", "Organization/org-rgd", "referral", datetime(2025, 4, 28, tzinfo=UTC),
        datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC))]


def test_care_team_managing_and_member_organisations() -> None:
    team = {"resourceType": "CareTeam", "id": "t", "status": "active", "subject": {"reference": "Patient/p"},
            "period": {"start": "2025-01-01"},
            "managingOrganization": [{"reference": "Organization/org-ry6"}],
            "participant": [{"member": {"identifier": {"system": ODS, "value": "RGD"}}},
                            {"member": {"reference": "Practitioner/x"}}]}
    assert [(r.org, r.kind) for r in relationships_from(team)] == [
        ("Organization/org-ry6", "care-team"), ("RGD", "care-team")]


def test_explicit_patient_id_and_types_without_relationships() -> None:
    patient = {"resourceType": "Patient", "id": "old", "generalPractitioner": [{"reference": "Organization/o"}]}
    assert relationships_from(patient, "survivor")[0].patient_id == "survivor"
    assert relationships_from({"resourceType": "Observation", "subject": {"reference": "Patient/p"}}) == []
    assert relationships_from({"resourceType": "Encounter", "serviceProvider": {"reference": "Organization/o"}}) == []


def test_hl7v2_mapped_encounter_shape() -> None:
    """mappings/hl7v2/encounter.py: serviceProvider is a literal reference to the sender's Organization."""
    encounter = {"resourceType": "Encounter", "id": "e", "status": "finished",
                 "subject": {"reference": "Patient/3f1c"},
                 "serviceProvider": {"reference": "Organization/9b2e", "display": "Leeds Teaching Hospitals"},
                 "period": {"start": "2025-01-06T09:40:00+00:00", "end": "2025-01-14T11:00:00+00:00"}}
    assert [r.org for r in relationships_from(encounter)] == ["Organization/9b2e"]
