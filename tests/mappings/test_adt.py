"""ADT maps (mappings/hl7v2/adt.py): the UK-REFERENCE.md release test cases 1–5 at the mapping layer,
status by trigger, ids, coverage, and hypothesis properties (odd PID/PV1 content never crashes).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.parser import Message, parse_message
from adapters.senders import SecurityLabel, SenderConfig
from mappings.hl7v2 import codes
from mappings.hl7v2.adt import ADT_EVENTS, ADT_MAPS, event_time
from mappings.hl7v2.patient import subject_key
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    ErrorLocation,
    MappingError,
    MappingResult,
)

RR8 = SenderConfig(ods_code="RR8", kind="hospital", name="Leeds Teaching Hospitals NHS Trust")
LABELS = (SecurityLabel("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY"),
          SecurityLabel("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R"))
RGD = SenderConfig(ods_code="RGD", kind="mental_health", name="LYPFT", security_labels=LABELS)
NHS = "9449305552"
OTHER_NHS = "9912003888"
MRN_SYSTEM = "https://fhir.sharedcare.dev/Id/RR8/mrn"


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def message(trigger: str, *segments: str, msh7: str = "20240301101500", facility: str = "RR8",
            control_id: str = "1") -> Message:
    msh = f"MSH|^~\\&|PAS|{facility}|SC|SC|{msh7}||ADT^{trigger}|{control_id}|P|2.4"
    return parse_message("\r".join([msh, *segments]))


def pid(**fields: str) -> str:
    base = {1: "1", 3: f"{NHS}^^^NHS^NH~RR81234567^^^RR8^MR", 5: "SMITH^JANE", 7: "19620315", 8: "2"}
    base.update({int(k[1:]): v for k, v in fields.items()})
    return seg("PID", base)


def pv1(**fields: str) -> str:
    base = {1: "1", 2: "I", 3: "RR801^WARD 12^BED 4^RR8", 7: "C1234567^HOUSE^GREGORY^^^DR^^^GMC",
            19: "V1", 44: "202403011005"}
    base.update({int(k[1:]): v for k, v in fields.items()})
    return seg("PV1", {k: v for k, v in base.items() if v is not None})


def run(msg: Message, sender: SenderConfig = RR8) -> MappingResult:
    result = ADT_MAPS[f"ADT^{msg.trigger}"](msg, sender)
    for resource in result.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return result


def only(result: MappingResult, resource_type: str) -> dict[str, Any]:
    found = [r for r in result.resources if r["resourceType"] == resource_type]
    assert len(found) == 1, f"{len(found)} {resource_type} resources"
    return found[0]


def nhs_identifier(patient: dict[str, Any]) -> dict[str, Any] | None:
    return next((i for i in patient["identifier"] if i.get("system") == codes.NHS_NUMBER_SYSTEM), None)


def test_every_supported_event_is_registered() -> None:
    assert set(ADT_MAPS) == {f"ADT^A{n}" for n in ("01", "02", "03", "04", "05", "08", "11", "12", "13", "28",
                                                    "31", "34", "40")}
    assert len(ADT_EVENTS) == len(ADT_MAPS)


# --- test case 4: PID-3 variants, check digit ---------------------------------------------------------------


@pytest.mark.parametrize("pid3", [
    f"{NHS}^^^NHS",
    f"{NHS}^^^NHS^NH~12067204^^^R0A^MR",
    f"8000002^^^RMW00^MR~{NHS}^^^NHS^NH",
    f"{NHS}^^^^NHSNMBR",
    f"{NHS}^^^RR8^NHSNBR",
    f"RR81^^^RR8^MR~^^^NHSNMBR~{NHS}^^^NHS^NH",
])
def test_pid3_variants_all_map_to_the_nhs_number_system(pid3: str) -> None:
    result = run(message("A31", "EVN|A31|20240301", pid(p3=pid3)))
    patient = only(result, "Patient")
    assert nhs_identifier(patient)["value"] == NHS
    assert result.patient_key.nhs_number == NHS
    assert result.patient_id == resource_id("Patient", "nhs", NHS)
    assert sum(1 for i in patient["identifier"] if i.get("system") == codes.NHS_NUMBER_SYSTEM) == 1


def test_local_mrns_carry_type_system_and_assigner() -> None:
    patient = only(run(message("A31", pid(p3=f"8000002^^^RMW00^MR~{NHS}^^^NHS^NH~RR81^^^RR8^MR~X9^^^^MR"))),
                   "Patient")
    local = [i for i in patient["identifier"] if i.get("system") != codes.NHS_NUMBER_SYSTEM]
    assert [(i["system"], i["value"], i["assigner"]["identifier"]["value"]) for i in local] == [
        ("https://fhir.sharedcare.dev/Id/RMW00/mrn", "8000002", "RMW00"),
        (MRN_SYSTEM, "RR81", "RR8"),
        (MRN_SYSTEM, "X9", "RR8")]
    assert all(i["type"]["coding"][0]["code"] == "MR" for i in local)


def test_configured_mrn_system_is_used() -> None:
    sender = SenderConfig(ods_code="RR8", mrn_system="https://leedsth.nhs.uk/Id/pas-number")
    result = run(message("A31", pid(p3="RR81^^^RR8^MR")), sender)
    assert result.patient_key.local[0].system == "https://leedsth.nhs.uk/Id/pas-number"
    assert result.patient_id == resource_id("Patient", "https://leedsth.nhs.uk/Id/pas-number", "RR81")


@pytest.mark.parametrize(("pid3", "rep"), [("9912003814^^^NHS^NH", 1), ("RR81^^^RR8^MR~4123456879^^^NHS^NH", 2),
                                           ("123^^^^NHSNMBR", 1), ("99120038A8^^^NHS", 1)])
def test_failed_check_digit_is_a_clear_error(pid3: str, rep: int) -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A01", pid(p3=pid3), pv1()))
    assert caught.value.code == DATA_TYPE_ERROR
    assert caught.value.location == ErrorLocation("PID", 1, 3, rep)
    assert "modulus 11" in caught.value.message
    assert pid3.split("^")[0][:6] not in caught.value.message  # the number is masked


def test_two_different_nhs_numbers_are_an_error() -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A31", pid(p3=f"{NHS}^^^NHS~{OTHER_NHS}^^^NHS")))
    assert caught.value.code == DATA_TYPE_ERROR
    assert caught.value.location == ErrorLocation("PID", 1, 3, 2)


def test_nhs_number_in_display_form_is_normalised() -> None:
    patient = only(run(message("A31", pid(p3="944 930 5552^^^NHS"))), "Patient")
    assert nhs_identifier(patient)["value"] == NHS


@pytest.mark.parametrize("pid3", ["", "^^^NHSNMBR", '""'])
def test_no_usable_identifier_is_required_field_missing(pid3: str) -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A31", pid(p3=pid3)))
    assert caught.value.code == REQUIRED_FIELD_MISSING
    assert caught.value.location == ErrorLocation("PID", 1, 3)


def test_missing_pid_is_required_field_missing() -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A01", "EVN|A01|20240301", pv1()))
    assert caught.value.code == REQUIRED_FIELD_MISSING
    assert caught.value.location.segment == "PID"


# --- test case 5: PID-32 verification status -------------------------------------------------------


@pytest.mark.parametrize("code", ["01", "02", "03", "04", "05", "06", "07", "08"])
def test_nsts_gives_the_verification_extension(code: str) -> None:
    identifier = nhs_identifier(only(run(message("A31", pid(p32=f"NSTS{code}"))), "Patient"))
    (extension,) = identifier["extension"]
    assert extension["url"] == codes.VERIFICATION_STATUS_EXTENSION
    coding = extension["valueCodeableConcept"]["coding"][0]
    assert (coding["system"], coding["code"]) == (codes.VERIFICATION_STATUS_SYSTEM, code)


@pytest.mark.parametrize("p32", ["", "NSTS09", "XYZ"])
def test_no_or_unknown_pid32_gives_no_extension(p32: str) -> None:
    assert "extension" not in nhs_identifier(only(run(message("A31", pid(p32=p32))), "Patient"))


# --- demographics ------------------------------------------------------------------------------------


def test_patient_demographics() -> None:
    patient = only(run(message("A31", pid(
        p5="SMITH^JANE^^^MRS^^L", p7="196203151230", p8="2", p11="1 HIGH ST^^LEEDS^^LS1 4AB^GBR^H",
        p13="0113 496 0000^PRN^PH", p14="0113 496 0999^WPN^PH", p15="en^English^ISO639", p16="M", p22="H",
        p29="20240401231500", p30="Y", p24="Y", p25="2"))), "Patient")
    assert patient["name"][0] == {"use": "official", "family": "SMITH", "given": ["JANE"], "prefix": ["MRS"]}
    assert patient["birthDate"] == "1962-03-15"
    assert patient["_birthDate"]["extension"][0]["valueDateTime"] == "1962-03-15T12:30:00+00:00"
    assert patient["gender"] == "female"
    assert patient["address"][0]["postalCode"] == "LS1 4AB"
    assert [t["use"] for t in patient["telecom"]] == ["home", "work"]
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "en"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["extension"][0]["valueCodeableConcept"]["coding"][0] == {
        "system": codes.ETHNIC_CATEGORY_SYSTEM, "code": "H", "display": "Asian or Asian British - Indian"}
    assert patient["deceasedDateTime"] == "2024-04-01T23:15:00+01:00"
    assert "deceasedBoolean" not in patient
    assert patient["multipleBirthInteger"] == 2


def test_death_indicator_alone_and_unknown_ethnic_code() -> None:
    result = run(message("A31", pid(p30="Y", p22="Q")))
    patient = only(result, "Patient")
    assert patient["deceasedBoolean"] is True
    assert "extension" not in patient
    assert any("PID-22" in w for w in result.warnings)


def test_gp_practice_and_gp() -> None:
    result = run(message("A28", pid(), seg("PD1", {3: "LEEDS CITY MEDICAL PRACTICE^^B86001",
                                                    4: "G8234567^WELBY^MARCUS^^^DR"})))
    patient = only(result, "Patient")
    org, gp = only(result, "Organization"), only(result, "Practitioner")
    assert org["identifier"] == [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "B86001"}]
    assert org["id"] == resource_id("Organization", "B86001")
    assert gp["identifier"] == [{"system": "https://fhir.hl7.org.uk/Id/gmp-number", "value": "G8234567"}]
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{org['id']}"},
                                              {"reference": f"Practitioner/{gp['id']}"}]


def test_next_of_kin_becomes_contact_and_related_person() -> None:
    nk1 = seg("NK1", {1: "1", 2: "SMITH^JOHN", 3: "SPO^Spouse^HL70063", 5: "07700 900456^PRS^CP"})
    employer = seg("NK1", {1: "2", 2: "ACME LTD", 3: "EMR^Employer^HL70063"})
    result = run(message("A28", pid(), nk1, employer))
    patient = only(result, "Patient")
    related = only(result, "RelatedPerson")
    assert len(patient["contact"]) == 2
    assert related["patient"] == {"reference": f"Patient/{result.patient_id}"}
    assert related["relationship"][0]["coding"][0]["code"] == "SPS"
    assert related["id"] == resource_id("RelatedPerson", "RR8", subject_key(result.patient_key, RR8), "1", "SMITH JOHN")


# --- test case 3: A08/A31 update the same Patient ----------------------------------------------------


def test_a01_a08_a31_address_the_same_patient() -> None:
    ids = {run(message(t, pid(), pv1())).patient_id for t in ("A01", "A08", "A31")}
    assert ids == {resource_id("Patient", "nhs", NHS)}


def test_without_nhs_number_the_patient_is_identified_by_the_senders_mrn() -> None:
    first = run(message("A01", pid(p3="RR81^^^RR8^MR~12067204^^^R0A^MR"), pv1()))
    update = run(message("A31", pid(p3="12067204^^^R0A^MR~RR81^^^RR8^MR")))
    assert first.patient_id == update.patient_id == resource_id("Patient", MRN_SYSTEM, "RR81")
    assert first.patient_key.nhs_number is None


# --- Encounter: status by trigger, test case 2 ------------------------------------------------------------


@pytest.mark.parametrize(("trigger", "status"), [("A01", "in-progress"), ("A02", "in-progress"), ("A03", "finished"),
                                                 ("A04", "planned"), ("A05", "planned"), ("A11", "cancelled"),
                                                 ("A12", "in-progress"), ("A13", "in-progress")])
def test_status_by_trigger(trigger: str, status: str) -> None:
    assert only(run(message(trigger, pid(), pv1())), "Encounter")["status"] == status


@pytest.mark.parametrize(("fields", "status"), [({"p45": "202403051100"}, "finished"), ({}, "in-progress"),
                                                ({"p2": "P"}, "planned")])
def test_a08_status_follows_the_visit_times(fields: dict[str, str], status: str) -> None:
    assert only(run(message("A08", pid(), pv1(**fields))), "Encounter")["status"] == status


def test_a13_reopens_and_clears_the_end() -> None:
    encounter = only(run(message("A13", pid(), pv1(p45="202403051100"))), "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2024-03-01T10:05:00+00:00"}


def test_a11_cancels_the_same_encounter_a01_created() -> None:
    admitted = only(run(message("A01", pid(), pv1())), "Encounter")
    cancelled = only(run(message("A11", pid(), pv1())), "Encounter")
    assert admitted["id"] == cancelled["id"] == resource_id("Encounter", "RR8", "V1")
    assert cancelled["status"] == "cancelled"


def test_encounter_id_without_visit_number_uses_mrn_and_admit_time() -> None:
    encounter = only(run(message("A04", pid(), pv1(p19=None))), "Encounter")
    assert encounter["id"] == resource_id("Encounter", "RR8", "RR81234567", "202403011005")
    assert "identifier" not in encounter


@pytest.mark.parametrize("trigger", ["A02", "A03", "A05", "A11", "A12", "A13"])
def test_visit_needed_but_absent_is_an_error(trigger: str) -> None:
    """These name a stay that must already be known (or, A05, one its A01 must find): no PV1-19/44, no match."""
    with pytest.raises(MappingError) as caught:
        run(message(trigger, pid(), pv1(p19=None, p44=None), control_id="RR8-9"))
    assert (caught.value.code, caught.value.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("PV1", 1, 19))


def test_a01_without_visit_number_or_admit_time_is_identified_by_its_message() -> None:
    """No admission is lost: the Encounter's id comes from (sender, MRN, MSH-10), with a warning saying why."""
    result = run(message("A01", pid(), pv1(p19=None, p44=None), control_id="RR8-A01-77"))
    encounter = only(result, "Encounter")
    assert encounter["id"] == resource_id("Encounter", "RR8", "RR81234567", "MSH-10", "RR8-A01-77")
    assert encounter["status"] == "in-progress" and encounter["class"]["code"] == "IMP"
    assert "identifier" not in encounter and "period" not in encounter
    assert encounter["location"][0]["status"] == "active"
    assert any("MSH-10" in w and "cannot update it" in w for w in result.warnings)


def test_a01_identified_by_its_message_is_stable_and_never_shared() -> None:
    """A replay or re-send gives the same id; another message, or another patient's, a different one."""
    def encounter_id(control_id: str, mrn: str = "RR81234567") -> str:
        msg = message("A01", pid(p3=f"{mrn}^^^RR8^MR"), pv1(p19=None, p44=None), control_id=control_id)
        return only(run(msg), "Encounter")["id"]

    assert encounter_id("RR8-1") == encounter_id("RR8-1")
    assert len({encounter_id("RR8-1"), encounter_id("RR8-2"), encounter_id("RR8-1", mrn="RR87654321")}) == 3


def test_a01_identified_by_its_message_keys_its_diagnosis_on_that_encounter() -> None:
    result = run(message("A01", pid(), pv1(p19=None, p44=None), seg("DG1", {1: "1", 3: "J18.9^Pneumonia^I10"}),
                         control_id="RR8-A01-78"))
    encounter, condition = only(result, "Encounter"), only(result, "Condition")
    assert condition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert encounter["diagnosis"][0]["condition"]["reference"] == f"Condition/{condition['id']}"


def test_a01_with_a_visit_has_no_identity_warning() -> None:
    assert not [w for w in run(message("A01", pid(), pv1(p19=None), control_id="RR8-3")).warnings if "MSH-10" in w]


def test_a01_without_visit_or_control_id_is_an_error() -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A01", pid(), pv1(p19=None, p44=None), control_id=""))
    assert (caught.value.code, caught.value.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("PV1", 1, 19))


def test_a03_cannot_close_an_a01_identified_by_its_message() -> None:
    """The documented limitation: the discharge names no visit either, so it cannot find the stay."""
    run(message("A01", pid(), pv1(p19=None, p44=None), control_id="RR8-A01-79"))
    with pytest.raises(MappingError):
        run(message("A03", pid(), pv1(p19=None, p44=None, p45="202403051100"), control_id="RR8-A03-79"))


@pytest.mark.parametrize("trigger", ["A04", "A08"])
def test_registration_without_visit_content_is_patient_only(trigger: str) -> None:
    result = run(message(trigger, pid(), "PV1|1|N"))
    assert [r["resourceType"] for r in result.resources] == ["Patient"]


@pytest.mark.parametrize(("code", "expected"), [("E", "EMER"), ("I", "IMP"), ("O", "AMB"), ("P", "PRENC"),
                                                ("", "U"), ("Z", "U")])
def test_encounter_class(code: str, expected: str) -> None:
    assert only(run(message("A01", pid(), pv1(p2=code))), "Encounter")["class"]["code"] == expected


def test_encounter_uk_codes_participants_and_provider() -> None:
    result = run(message("A03", pid(), pv1(p4="21", p8="G8234567^WELBY^MARCUS^^^DR^^^GMP",
                                          p9="C7654321^WILSON^JAMES^^^DR^^^GMC", p14="19",
                                          p17="C1234567^HOUSE^GREGORY^^^DR^^^GMC", p36="1", p37="65",
                                          p45="202403051100")))
    encounter = only(result, "Encounter")
    extensions = {e["url"]: e["valueCodeableConcept"]["coding"][0]["code"] for e in encounter["extension"]}
    assert extensions == {codes.ADMISSION_METHOD_EXTENSION: "21", codes.DISCHARGE_METHOD_EXTENSION: "1"}
    hospitalization = encounter["hospitalization"]
    assert hospitalization["admitSource"]["coding"][0]["system"] == codes.SOURCE_OF_ADMISSION_SYSTEM
    assert hospitalization["dischargeDisposition"]["coding"][0] == {
        "system": codes.DISCHARGE_DESTINATION_SYSTEM, "code": "65",
        "display": codes.DISCHARGE_DESTINATION["65"]}
    roles = [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]]
    assert roles == ["ATND", "REF", "CON", "ADM"]
    assert len([r for r in result.resources if r["resourceType"] == "Practitioner"]) == 3  # ATND = ADM
    assert encounter["serviceProvider"]["reference"] == f"Organization/{resource_id('Organization', 'RR8')}"
    assert encounter["period"]["end"] == "2024-03-05T11:00:00+00:00"
    assert encounter["location"][0]["status"] == "completed"


def test_a02_transfer_keeps_the_prior_location_completed() -> None:
    encounter = only(run(message("A02", pid(), pv1(p3="RR805^WARD 20^BED 1^RR8", p6="RR801^WARD 12^BED 4^RR8"))),
                     "Encounter")
    assert [loc["status"] for loc in encounter["location"]] == ["active", "completed"]


def test_a12_cancel_transfer_drops_the_erroneous_location() -> None:
    encounter = only(run(message("A12", pid(), pv1(p6="RR805^WARD 20^BED 1^RR8"))), "Encounter")
    assert [loc["status"] for loc in encounter["location"]] == ["active"]


def test_location_id_is_stable_per_sender_and_place() -> None:
    location = only(run(message("A01", pid(), pv1())), "Location")
    assert location["id"] == resource_id("Location", "RR8", "RR8", "", "", "RR801", "WARD 12", "BED 4")


# --- AL1, DG1 ---------------------------------------------------------------------------------------


def test_allergy_and_diagnosis() -> None:
    result = run(message("A01", pid(), pv1(),
                         seg("AL1", {1: "1", 2: "DA", 3: "91936005^Allergy to penicillin^SCT", 4: "SV", 5: "Rash"}),
                         seg("DG1", {1: "1", 3: "J18.9^Pneumonia^I10", 5: "20240301", 6: "A", 15: "1",
                                     16: "C1234567^HOUSE^GREGORY^^^DR^^^GMC", 19: "20240301120000"})))
    allergy, condition, encounter = (only(result, t) for t in ("AllergyIntolerance", "Condition", "Encounter"))
    assert allergy["id"] == resource_id("AllergyIntolerance", "RR8", subject_key(result.patient_key, RR8), "SCT|91936005")
    assert (allergy["category"], allergy["criticality"], allergy["type"]) == (["medication"], "high", "allergy")
    assert allergy["reaction"] == [{"manifestation": [{"text": "Rash"}], "severity": "severe"}]
    assert condition["id"] == resource_id("Condition", encounter["id"], "I10|J18.9")
    assert condition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert condition["recordedDate"] == "2024-03-01T12:00:00+00:00"
    assert condition["asserter"]["reference"].startswith("Practitioner/")
    assert encounter["diagnosis"] == [{"condition": {"reference": f"Condition/{condition['id']}"},
                                       "use": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                                                           "code": "AD", "display": "Admission diagnosis"}]},
                                       "rank": 1}]


def test_al1_without_allergen_is_a_warning() -> None:
    result = run(message("A01", pid(), pv1(), seg("AL1", {1: "1", 2: "DA"})))
    assert not [r for r in result.resources if r["resourceType"] == "AllergyIntolerance"]
    assert any("AL1-3" in w for w in result.warnings)


def test_dg1_without_encounter_is_patient_level() -> None:
    result = run(message("A31", pid(), seg("DG1", {1: "1", 3: "J45^Asthma^I10"})))
    condition = only(result, "Condition")
    assert condition["id"] == resource_id("Condition", "RR8", subject_key(result.patient_key, RR8), "I10|J45")
    assert "encounter" not in condition


def test_allergy_and_condition_ids_survive_an_nhs_number_arriving_later() -> None:
    """Keyed on the sender's MRN (`subject_key`), not the Patient id: MRN-only first, NHS number later."""
    def ids(nhs: str) -> tuple[str, str, str]:
        result = run(message("A31", pid(f3=f"{nhs}RR81234567^^^RR8^MR"), seg("AL1", {1: "1", 3: "91936005^Penicillin^SCT"}),
                             seg("DG1", {1: "1", 3: "J45^Asthma^I10"})))
        return result.patient_id, only(result, "AllergyIntolerance")["id"], only(result, "Condition")["id"]

    mrn_only, with_nhs = ids(""), ids("9449305552^^^NHS^NH~")
    assert mrn_only[0] != with_nhs[0]  # the map's Patient id changes (the engine matches it by MRN)...
    assert mrn_only[1:] == with_nhs[1:]  # ...what the sender recorded about the patient does not


# --- test case 1: merges ----------------------------------------------------------------------------


def test_a40_merge_action_and_survivor() -> None:
    result = run(message("A40", "EVN|A40|20240403110000", pid(),
                         seg("MRG", {1: f"{OTHER_NHS}^^^NHS^NH~RR80000042^^^RR8^MR"})))
    (action,) = result.actions
    assert action.kind == "merge"
    assert action.detail.survivor == result.patient_key
    assert action.detail.old.nhs_number == OTHER_NHS
    assert [(i.system, i.value) for i in action.detail.old.local] == [(MRN_SYSTEM, "RR80000042")]
    assert [r["resourceType"] for r in result.resources] == ["Patient"]


def test_a34_merge_by_mrn_only() -> None:
    result = run(message("A34", pid(p3="RR81^^^RR8^MR"), seg("MRG", {1: "RR82^^^RR8^MR"})))
    assert result.actions[0].detail.old.local[0].value == "RR82"
    assert result.actions[0].detail.survivor.local[0].value == "RR81"


def test_a40_with_several_patient_groups() -> None:
    result = run(message("A40", pid(), seg("MRG", {1: "RR82^^^RR8^MR"}),
                         pid(p3=f"{OTHER_NHS}^^^NHS"), seg("MRG", {1: "RR83^^^RR8^MR"})))
    assert [a.detail.old.local[0].value for a in result.actions] == ["RR82", "RR83"]
    assert result.patient_id == resource_id("Patient", "nhs", NHS)
    assert len(result.resources) == 2


@pytest.mark.parametrize(("mrg", "code", "location"), [
    (None, REQUIRED_FIELD_MISSING, ErrorLocation("MRG")),
    (seg("MRG", {2: "x"}), REQUIRED_FIELD_MISSING, ErrorLocation("MRG", 1, 1)),
    (seg("MRG", {1: "9912003814^^^NHS"}), DATA_TYPE_ERROR, ErrorLocation("MRG", 1, 1, 1)),
])
def test_bad_merges(mrg: str | None, code: str, location: ErrorLocation) -> None:
    with pytest.raises(MappingError) as caught:
        run(message("A40", *[s for s in (pid(), mrg) if s]))
    assert (caught.value.code, caught.value.location) == (code, location)


# --- cross-cutting: labels, event time, determinism, coverage ---------------------------------------------


def test_security_labels_on_every_resource() -> None:
    result = run(message("A01", pid(), seg("PD1", {3: "PRACTICE^^B86001", 4: "G1^GP^A"}), pv1(),
                         seg("AL1", {1: "1", 3: "1^Peanut^SCT"}), seg("DG1", {1: "1", 3: "F20^Schizophrenia^I10"}),
                         facility="RGD"), RGD)
    assert len(result.resources) >= 7
    for resource in result.resources:
        assert resource["meta"]["security"] == [label.to_coding() for label in LABELS]


@pytest.mark.parametrize(("evn", "expected"), [("EVN|A01|20240301101200", "2024-03-01T10:12:00+00:00"),
                                               ("EVN|A01|", "2024-03-01T10:15:00+00:00"),
                                               ("EVN|A01|rubbish", "2024-03-01T10:15:00+00:00"),
                                               ("EVN|A01|202403011012+0100", "2024-03-01T09:12:00+00:00")])
def test_event_time_is_evn2_else_msh7(evn: str, expected: str) -> None:
    assert event_time(message("A01", evn, pid(), pv1())).isoformat() == expected


def test_mapping_is_deterministic() -> None:
    msg = message("A01", pid(), pv1(), seg("AL1", {1: "1", 3: "1^Peanut^SCT"}))
    assert run(msg).resources == run(msg).resources


def test_unmapped_fields_and_z_segments_are_reported() -> None:
    result = run(message("A01", pid(p10="A^White", p17="C^Christian"), pv1(p20="X"), seg("GT1", {1: "1", 3: "X"}),
                         "ZU1|1|Y", "ZU3|2"))
    assert result.unmapped == ["PID-10", "PID-17", "PV1-20", "GT1-1", "GT1-3", "ZU1", "ZU3"]


def test_patient_only_events_report_an_ignored_pv1() -> None:
    assert run(message("A28", pid(), pv1())).unmapped[:3] == ["PV1-1", "PV1-2", "PV1-3"]


# --- hypothesis: odd content never crashes ---------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n|^~\\&"),
                max_size=12)
_COMPONENTS = st.lists(st.one_of(_TEXT, st.just('""'), st.just("")), max_size=6).map("^".join)
_FIELD = st.one_of(st.just(""), st.just('""'), _COMPONENTS,
                   st.lists(_COMPONENTS, min_size=1, max_size=3).map("~".join))
_DATE = st.one_of(st.just(""), st.from_regex(r"[0-9]{4,14}(\.[0-9]{1,4})?([+-][0-9]{4})?", fullmatch=True), _TEXT)
_PID3 = st.one_of(
    st.sampled_from([f"{NHS}^^^NHS^NH", "RR81^^^RR8^MR", f"{OTHER_NHS}^^^^NHSNMBR", "^^^NHSNMBR", "9912003814^^^NHS"]),
    _FIELD)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=st.sampled_from(sorted(t.removeprefix("ADT^") for t in ADT_MAPS)),
       pid3=st.tuples(_PID3, st.lists(_PID3, max_size=2)).map(lambda t: "~".join([t[0], *t[1]])),
       name=_FIELD, birth=_DATE, sex=st.one_of(_FIELD, st.sampled_from(list(codes.GENDER))),
       address=_FIELD, phone=_FIELD, pid32=st.one_of(_FIELD, st.sampled_from(["NSTS01", "NSTS08"])),
       death=_DATE, visit=st.one_of(st.sampled_from(["V1", "V2^^^RR8^VN", "", '""']), _FIELD), admitted=_DATE,
       pv1_fields=st.dictionaries(st.sampled_from([2, 3, 4, 6, 7, 8, 9, 10, 14, 17, 36, 37, 45]),
                                  st.one_of(_FIELD, _DATE), max_size=8))
def test_generated_pid_pv1_never_crash(trigger: str, pid3: str, name: str, birth: str, sex: str, address: str,
                                       phone: str, pid32: str, death: str, visit: str, admitted: str,
                                       pv1_fields: dict[int, str]) -> None:
    """Any PID/PV1 content yields valid R4 resources (validated in `run`) or a located MappingError."""
    segments = [pid(p3=pid3, p5=name, p7=birth, p8=sex, p11=address, p13=phone, p29=death, p32=pid32),
                seg("PV1", {1: "1", 19: visit, 44: admitted, **pv1_fields})]
    if trigger in {"A34", "A40"}:
        segments.append(seg("MRG", {1: "RR82^^^RR8^MR"}))
    try:
        result = run(message(trigger, *segments))
    except MappingError as exc:
        assert exc.code in {DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING}
        assert exc.location is not None
        event(f"MappingError {exc.code}")
        return
    event("mapped with an Encounter" if any(r["resourceType"] == "Encounter" for r in result.resources)
          else "mapped, Patient only")
    assert result.patient_id in {r["id"] for r in result.resources if r["resourceType"] == "Patient"}
    assert len({(r["resourceType"], r["id"]) for r in result.resources}) == len(result.resources)
