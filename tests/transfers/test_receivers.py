"""Who receives a discharge (engine/transfers/receivers.py): pure decisions over FHIR JSON."""

from __future__ import annotations

import pytest

from engine.transfers import receivers as rx
from mappings.ids import resource_id
from tests.transfers.helpers import CARE_HOME_ODS, COMMUNITY_ODS, GP_ODS, organization, residency

GP_ID = resource_id("Organization", GP_ODS)
HOME_ID = resource_id("Organization", CARE_HOME_ODS)
TEAM_ID = resource_id("Organization", COMMUNITY_ODS)
ORGS = {GP_ID: {**organization(GP_ODS, "Beeston Village Surgery"), "id": GP_ID},
        HOME_ID: {**organization(CARE_HOME_ODS, "Oak Lodge Care Home"), "id": HOME_ID},
        TEAM_ID: {**organization(COMMUNITY_ODS, "Leeds Community Healthcare"), "id": TEAM_ID}}
PATIENT = {"resourceType": "Patient", "id": "p1", "generalPractitioner": [
    {"reference": f"Organization/{GP_ID}"}, {"reference": "Practitioner/gp1"}]}


def encounter(destination: str | None = "54", status: str = "finished", klass: str = "IMP") -> dict:
    found = {"resourceType": "Encounter", "id": "e1", "status": status, "class": {"code": klass},
             "subject": {"reference": "Patient/p1"}}
    if destination:
        found["hospitalization"] = {"dischargeDisposition": {"coding": [
            {"system": rx.DISCHARGE_DESTINATION_SYSTEM, "code": destination}]}}
    return found


def referral(status: str = "active", performer: str = TEAM_ID) -> dict:
    return {"resourceType": "ServiceRequest", "status": status, "intent": "order",
            "subject": {"reference": "Patient/p1"}, "performer": [{"reference": f"Organization/{performer}"}]}


def receivers(**kwargs) -> list[tuple[str, str | None]]:
    args = {"patient": PATIENT, "encounter": encounter(), "episodes": [], "referrals": [], "organizations": ORGS,
            "locations": {}, "sender_ods": "RR8"} | kwargs
    return [(r.role, r.org.ods if r.org else None) for r in rx.discharge_receivers(**args)]


@pytest.mark.parametrize("code", ["54", "65", "85"])
def test_care_home_destinations_add_the_care_home(code: str) -> None:
    episode = residency("p1", HOME_ID)
    assert receivers(encounter=encounter(code), episodes=[episode]) == [("gp-practice", GP_ODS),
                                                                        ("care-home", CARE_HOME_ODS)]


@pytest.mark.parametrize("code", ["19", "29", "51", "79", None])
def test_other_destinations_go_to_the_gp_only(code: str | None) -> None:
    assert receivers(encounter=encounter(code), episodes=[residency("p1", HOME_ID)]) == [("gp-practice", GP_ODS)]


def test_an_unidentified_care_home_still_raises_its_transfer_without_owner() -> None:
    found = rx.discharge_receivers(patient=PATIENT, encounter=encounter("85"), episodes=[], referrals=[],
                                   organizations=ORGS, locations={}, sender_ods="RR8")
    assert [(r.role, r.org) for r in found] == [("gp-practice", found[0].org), ("care-home", None)]
    assert found[1].key == "care-home:unidentified"


def test_ended_residency_is_not_the_care_home_but_a_destination_location_is() -> None:
    ended = {**residency("p1", HOME_ID), "status": "finished"}
    location = {"resourceType": "Location", "id": "loc1", "managingOrganization": {"reference": f"Organization/{HOME_ID}"}}
    enc = encounter("54")
    enc["hospitalization"]["destination"] = {"reference": "Location/loc1"}
    assert receivers(encounter=enc, episodes=[ended], locations={"loc1": location})[1] == ("care-home", CARE_HOME_ODS)


def test_active_referrals_add_the_community_team_once() -> None:
    found = receivers(encounter=encounter("19"), referrals=[referral(), referral(), referral("completed")])
    assert found == [("gp-practice", GP_ODS), ("community-team", COMMUNITY_ODS)]


def test_the_discharging_hospital_and_repeats_never_receive() -> None:
    hospital = resource_id("Organization", "RR8")
    orgs = {**ORGS, hospital: {**organization("RR8", "Leeds Teaching Hospitals"), "id": hospital}}
    found = receivers(encounter=encounter("19"), organizations=orgs,
                      referrals=[referral(performer=hospital), referral(performer=GP_ID)])
    assert found == [("gp-practice", GP_ODS)]


def test_no_registered_practice_and_no_care_home_means_no_receivers() -> None:
    assert receivers(patient={"resourceType": "Patient", "id": "p1"}, encounter=encounter("19")) == []


@pytest.mark.parametrize(("trigger", "status", "klass", "expected"), [
    ("A03", "finished", "IMP", True), ("A03", "finished", "EMER", False), ("A03", "in-progress", "IMP", False),
    ("A01", "finished", "IMP", False), ("A08", "finished", "IMP", False)])
def test_only_an_inpatient_discharge_raises_transfers(trigger: str, status: str, klass: str, expected: bool) -> None:
    assert rx.is_inpatient_discharge(trigger, encounter(status=status, klass=klass)) is expected


def test_ods_codes_come_from_the_reference_or_the_stored_organization() -> None:
    by_identifier = rx.org_ref({"identifier": {"system": rx.ODS_ORGANIZATION, "value": "Y01234"}}, {})
    assert by_identifier == rx.OrgRef(resource_id("Organization", "Y01234"), "Y01234", None)
    stored = rx.org_ref({"reference": f"Organization/{GP_ID}"}, ORGS)
    assert (stored.ods, stored.display) == (GP_ODS, "Beeston Village Surgery")
    assert rx.org_ref({"reference": "Practitioner/x"}, ORGS) is None
