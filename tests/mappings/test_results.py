"""ORU^R01 → DiagnosticReport + Observation (mappings/hl7v2/results.py): UK-REFERENCE test case 7
(C replaces, W withdraws), OBX-2 value types, OBX-7/8/11, identity rules, errors with ERR locations,
and a hypothesis property: generated OBX variants map to valid R4 or raise a MappingError.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.parser import Message, parse_message
from adapters.senders import SecurityLabel, SenderConfig
from mappings.hl7v2.results import RESULT_MAPS, VALUE_ATTACHMENT_EXTENSION
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    ErrorLocation,
    MappingError,
    MappingResult,
)

RR8 = SenderConfig(ods_code="RR8", kind="hospital", name="Leeds Teaching Hospitals NHS Trust")
LABELS = (SecurityLabel("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY"),
          SecurityLabel("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R"))
RGD = SenderConfig(ods_code="RGD", kind="mental_health", security_labels=LABELS)
UCUM = "http://unitsofmeasure.org"
PID = "PID|1||9912003888^^^NHS^NH~RR81234567^^^RR8^MR||CARTER^OLIVIA||19780412|2"
ORC = "ORC|RE|ICE1^ICE|WP1^WINPATH||CM"
OBR = "OBR|1|ICE1^ICE|WP1^WINPATH|FBC^Full blood count^WINPATH|||202403110930|||||||||||||||202403121025||HM|F"


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def obx(n: int = 1, vt: str = "NM", code: str = "HB^Haemoglobin^WINPATH", value: str = "118", **more: str) -> str:
    fields = {1: str(n), 2: vt, 3: code, 5: value, 11: "F"}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return seg("OBX", {k: v for k, v in fields.items() if v is not None})


def oru(*segments: str, msh7: str = "20240312102500", facility: str = "RR8") -> Message:
    msh = f"MSH|^~\\&|WINPATH|{facility}|SC|SC|{msh7}||ORU^R01^ORU_R01|1|P|2.4"
    return parse_message("\r".join([msh, PID, *segments]))


def run(msg: Message, sender: SenderConfig = RR8) -> MappingResult:
    result = RESULT_MAPS["ORU^R01"](msg, sender)
    for resource in result.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return result


def of_type(result: MappingResult, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in result.resources if r["resourceType"] == resource_type]


def one_observation(*obx_segments: str, sender: SenderConfig = RR8) -> dict[str, Any]:
    found = of_type(run(oru(ORC, OBR, *obx_segments), sender), "Observation")
    assert len(found) == 1
    return found[0]


def errors_with(msg: Message) -> MappingError:
    with pytest.raises(MappingError) as caught:
        RESULT_MAPS["ORU^R01"](msg, RR8)
    return caught.value


# --- the shape of a result message -----------------------------------------------------------------------


def test_patient_first_then_request_observations_report() -> None:
    result = run(oru(ORC, OBR, obx(1), obx(2, code="WBC^White cell count^WINPATH", value="12.4")))
    types = [r["resourceType"] for r in result.resources]
    assert types[0] == "Patient"
    assert types.index("ServiceRequest") < types.index("Observation") < types.index("DiagnosticReport")
    report = of_type(result, "DiagnosticReport")[0]
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in of_type(result, "Observation")]
    assert report["subject"] == {"reference": f"Patient/{result.patient_id}"}
    assert result.patient_key is not None and result.patient_key.nhs_number == "9912003888"
    assert result.event_time is not None and result.event_time.isoformat() == "2024-03-12T10:25:00+00:00"


def test_report_fields_from_obr() -> None:
    report = of_type(run(oru(ORC, OBR, obx())), "DiagnosticReport")[0]
    assert report["id"] == resource_id("DiagnosticReport", "RR8", "WP1")
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == "FBC"
    assert report["effectiveDateTime"] == "2024-03-11T09:30:00+00:00"
    assert report["issued"] == "2024-03-12T10:25:00+00:00"
    assert report["category"][0]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                                  "code": "HM"}
    types = {i["type"]["coding"][0]["code"]: i for i in report["identifier"]}
    assert types["PLAC"]["value"] == "ICE1" and types["FILL"]["value"] == "WP1"
    assert types["FILL"]["system"] == RR8.system_for("order")


def test_orc_gives_a_service_request_the_report_is_based_on() -> None:
    result = run(oru(ORC, OBR, obx()))
    request = of_type(result, "ServiceRequest")[0]
    assert request["id"] == resource_id("ServiceRequest", "RR8", "ICE1")
    assert request["status"] == "completed"  # ORC-5 CM
    assert of_type(result, "DiagnosticReport")[0]["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]


def test_without_orc_no_service_request_and_no_based_on() -> None:
    result = run(oru(OBR, obx()))
    assert not of_type(result, "ServiceRequest")
    assert "basedOn" not in of_type(result, "DiagnosticReport")[0]


def test_report_id_falls_back_to_placer_number_and_code() -> None:
    obr = "OBR|1|ICE9^ICE||FBC^Full blood count^WINPATH|||202403110930|||||||||||||||||F"
    report = of_type(run(oru(obr, obx())), "DiagnosticReport")[0]
    assert report["id"] == resource_id("DiagnosticReport", "RR8", "ICE9", "FBC")


def test_several_obr_under_one_placer_number_stay_apart() -> None:
    result = run(oru("OBR|1|ICE9||FBC^Full blood count^L", obx(), "OBR|2|ICE9||CRP^CRP^L", obx(code="CRP^CRP^L")))
    assert len({r["id"] for r in of_type(result, "DiagnosticReport")}) == 2
    assert not result.warnings


def test_a_repeated_report_in_one_message_is_a_warning() -> None:
    result = run(oru("OBR|1|ICE9||FBC^Full blood count^L", obx(), "OBR|2|ICE9||FBC^Full blood count^L", obx()))
    assert len(of_type(result, "DiagnosticReport")) == 1
    assert any("replaces that report" in w for w in result.warnings)


def test_two_orders_two_reports() -> None:
    obr2 = OBR.replace("ICE1", "ICE2").replace("WP1", "WP2").replace("FBC^Full", "CRP^C-reactive")
    result = run(oru(ORC, OBR, obx(), ORC.replace("ICE1", "ICE2").replace("WP1", "WP2"), obr2,
                     obx(1, code="CRP^CRP^WINPATH", value="4")))
    reports = of_type(result, "DiagnosticReport")
    assert len(reports) == 2 and len({r["id"] for r in reports}) == 2
    assert [len(r["result"]) for r in reports] == [1, 1]


# --- test case 7: corrected and withdrawn results --------------------------------------------------------


def test_corrected_result_replaces_the_earlier_observation() -> None:
    first = one_observation(obx(1, value="118", o11="F"))
    corrected = one_observation(obx(1, value="128", o11="C"))
    assert corrected["id"] == first["id"]
    assert first["status"] == "final" and corrected["status"] == "corrected"
    assert corrected["valueQuantity"]["value"] == 128


def test_corrected_report_status_from_obr25() -> None:
    report = of_type(run(oru(ORC, OBR[:-1] + "C", obx(o11="C"))), "DiagnosticReport")[0]
    assert report["status"] == "corrected"


@pytest.mark.parametrize("code", ["W", "D"])
def test_withdrawn_or_deleted_result_is_entered_in_error(code: str) -> None:
    original = one_observation(obx(1, o11="F"))
    withdrawn = one_observation(obx(1, o11=code))
    assert withdrawn["id"] == original["id"]
    assert withdrawn["status"] == "entered-in-error"


@pytest.mark.parametrize(("code", "status"), [
    ("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("A", "amended"), ("X", "cancelled"),
    ("W", "entered-in-error"), ("D", "entered-in-error"), ("R", "preliminary"), ("I", "registered"),
    ("", "unknown"), ("Q", "unknown"),
])
def test_observation_status_table(code: str, status: str) -> None:
    assert one_observation(obx(o11=code))["status"] == status


def test_cancelled_result_says_why_there_is_no_value() -> None:
    found = one_observation(obx(vt="ST", value="", o11="X"))
    assert found["status"] == "cancelled"
    assert found["dataAbsentReason"]["coding"][0]["code"] == "cannot-be-obtained"


def test_observation_id_includes_set_id_only_when_code_and_sub_id_repeat() -> None:
    result = run(oru(OBR, obx(1, code="PH^pH^L", o4="1"), obx(2, code="PH^pH^L", o4="1", value="6.0"),
                     obx(3, code="NA^Sodium^L", value="139")))
    ids = [o["id"] for o in of_type(result, "Observation")]
    report_id = resource_id("DiagnosticReport", "RR8", "WP1")
    assert ids == [resource_id("Observation", report_id, "PH", "1", "1"),
                   resource_id("Observation", report_id, "PH", "1", "2"),
                   resource_id("Observation", report_id, "NA", "")]


# --- OBX-2 value types ------------------------------------------------------------------------------------


def test_nm_with_ucum_units() -> None:
    found = one_observation(obx(value="118", o6="g/L^g/L^UCUM"))
    assert found["valueQuantity"] == {"value": 118, "unit": "g/L", "system": UCUM, "code": "g/L"}


def test_nm_units_without_a_coding_system_are_just_a_unit() -> None:
    assert one_observation(obx(value="5.9", o6="mmol/L"))["valueQuantity"] == {"value": 5.9, "unit": "mmol/L"}


def test_nm_less_than_is_a_comparator_and_nonsense_is_kept_as_text() -> None:
    assert one_observation(obx(value="<4", o6="mg/L^mg/L^UCUM"))["valueQuantity"]["comparator"] == "<"
    result = run(oru(OBR, obx(value="see comment")))
    assert of_type(result, "Observation")[0]["valueString"] == "see comment"
    assert any("not a valid NM" in w for w in result.warnings)


@pytest.mark.parametrize(("value", "expected"), [
    (">^100000", {"valueQuantity": {"value": 100000, "comparator": ">"}}),
    ("^10^-^50", {"valueRange": {"low": {"value": 10}, "high": {"value": 50}}}),
    ("^1^:^64", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 64}}}),
    ("^1^/^3", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 3}}}),
    ("<>^5", {"valueString": "<> 5"}),
    ("^1^+^3", {"valueString": "1 + 3"}),
    ("=^7", {"valueQuantity": {"value": 7}}),
    ("^abc", {"valueString": "abc"}),
])
def test_sn_value_rows_of_the_ig(value: str, expected: dict[str, Any]) -> None:
    found = one_observation(obx(vt="SN", value=value))
    key = next(iter(expected))
    assert found[key] == expected[key]


@pytest.mark.parametrize(("vt", "value", "key", "expected"), [
    ("CWE", "112283007^Escherichia coli^SCT", "valueCodeableConcept",
     {"coding": [{"system": "http://snomed.info/sct", "code": "112283007", "display": "Escherichia coli"}]}),
    ("CE", "NEG^Negative^L", "valueCodeableConcept", {"coding": [{"code": "NEG", "display": "Negative"}]}),
    ("IS", "Y", "valueCodeableConcept", {"coding": [{"code": "Y"}]}),
    ("DT", "20240310", "valueDateTime", "2024-03-10"),
    ("TS", "202403111432", "valueDateTime", "2024-03-11T14:32:00+00:00"),
    ("DTM", "20240311143205+0100", "valueDateTime", "2024-03-11T14:32:05+01:00"),
    ("TM", "1530", "valueTime", "15:30:00"),
    ("DR", "20240301^20240302", "valuePeriod", {"start": "2024-03-01", "end": "2024-03-02"}),
    ("NR", "1^10", "valueRange", {"low": {"value": 1}, "high": {"value": 10}}),
    ("VR", "1^10", "valueString", "1-10"),
    ("ST", "No casts seen", "valueString", "No casts seen"),
    ("FT", "Line one\\.br\\Line two", "valueString", "Line one\nLine two"),
])
def test_value_types(vt: str, value: str, key: str, expected: Any) -> None:
    assert one_observation(obx(vt=vt, value=value))[key] == expected


def test_tx_lines_of_one_report_are_joined() -> None:
    lines = ["CHEST X-RAY PA", "", "  The lungs are clear.", "Conclusion: normal."]
    segments = [obx(i, vt="TX", code="REP^Report^RAD", value=line) for i, line in enumerate(lines, 1)]
    found = one_observation(*segments)
    assert found["valueString"] == "CHEST X-RAY PA\n\n  The lungs are clear.\nConclusion: normal."


def test_tx_lines_with_different_codes_stay_apart() -> None:
    result = run(oru(OBR, obx(1, vt="TX", code="A^a^L", value="one"), obx(2, vt="TX", code="B^b^L", value="two")))
    assert [o["valueString"] for o in of_type(result, "Observation")] == ["one", "two"]


def test_repeated_obx5_of_a_coded_type_become_components() -> None:
    found = one_observation(obx(vt="CWE", code="ORG^Organisms^L", value="A^Alpha^L~B^Beta^L"))
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in found["component"]] == ["A", "B"]
    assert all(c["code"]["coding"][0]["code"] == "ORG" for c in found["component"])


def test_ed_pdf_is_the_value_attachment_extension() -> None:
    pdf = b"%PDF-1.4 tiny"
    found = one_observation(obx(vt="ED", code="PDF^Report^L",
                                value=f"LAB^application^pdf^Base64^{base64.b64encode(pdf).decode()}"))
    extension = found["extension"][0]
    assert extension["url"] == VALUE_ATTACHMENT_EXTENSION
    assert extension["valueAttachment"]["contentType"] == "application/pdf"
    assert base64.b64decode(extension["valueAttachment"]["data"]) == pdf
    assert extension["valueAttachment"]["size"] == len(pdf)
    assert "dataAbsentReason" not in found


def test_ed_that_does_not_decode_is_a_data_type_error() -> None:
    error = errors_with(oru(OBR, obx(vt="ED", value="LAB^application^pdf^Base64^not*base64")))
    assert (error.code, error.location) == (DATA_TYPE_ERROR, ErrorLocation("OBX", 1, 5))


def test_ed_without_data_is_no_value_not_an_error() -> None:
    """ED-5 empty (`^TEXT^html^Base64^`, as US newborn-screening feeds send): data absent, not a bad encoding."""
    found = one_observation(obx(vt="ED", value="^TEXT^html^Base64^"))
    assert "extension" not in found and found["dataAbsentReason"]["coding"][0]["code"] == "unknown"


# No IG OBX-5 row and no R4 value[x] of their FHIR type: valueString with the readable text (results.TEXT_RENDERINGS).
@pytest.mark.parametrize(("vt", "value", "expected"), [
    ("XAD", "St James's University Hospital^Beckett Street^LEEDS^West Yorkshire^LS9 7TF^GBR^O",
     "St James's University Hospital, Beckett Street, LEEDS, West Yorkshire, LS9 7TF, GBR"),
    ("XAD", "14 Park Row&Park Row&Flat 3^^LEEDS", "14 Park Row, Park Row, Flat 3, LEEDS"),
    ("XTN", "0113 243 3144^WPN^PH", "0113 243 3144"),
    ("XTN", "^WPN^PH^^44^113^2433144", "+44 113 2433144"),
    ("XTN", "^NET^Internet^leedsth.pathology@nhs.net", "leedsth.pathology@nhs.net"),
    ("CX", "RR8^^^https://fhir.nhs.uk/Id/ods-organization-code^XX", "RR8"),
    ("CX", "G8234567", "G8234567"),
    ("FN", "Ó Súilleabháin", "Ó Súilleabháin"),
    ("FN", "de Vries^de^Vries", "de Vries"),
])
def test_address_telecom_identifier_and_family_name_are_text(vt: str, value: str, expected: str) -> None:
    found = one_observation(obx(vt=vt, code="X^x^L", value=value))
    assert found["valueString"] == expected
    assert "extension" not in found and "dataAbsentReason" not in found


def test_repeated_addresses_are_components_with_text() -> None:
    found = one_observation(obx(vt="XAD", code="ADDR^Addresses^L", value="1 High Street^^LEEDS~2 Low Road^^YORK"))
    assert [c["valueString"] for c in found["component"]] == ["1 High Street, LEEDS", "2 Low Road, YORK"]


@pytest.mark.parametrize(("vt", "value"), [("FN", "^182"), ("XTN", "^WPN^PH"), ("CX", "^^^RR8^MR")])
def test_text_rendered_type_without_its_main_part_is_kept_as_sent_with_a_warning(vt: str, value: str) -> None:
    """FN without FN.1, XTN without a number, CX without CX.1: not a valid value of the type, kept as text."""
    result = run(oru(OBR, obx(vt=vt, value=value)))
    assert of_type(result, "Observation")[0]["valueString"] == value
    assert any(f"not a valid {vt}" in w for w in result.warnings)


def test_empty_address_is_no_value() -> None:
    found = one_observation(obx(vt="XAD", value=""))
    assert "valueString" not in found and found["dataAbsentReason"]["coding"][0]["code"] == "unknown"


@pytest.mark.parametrize("vt", ["RP", "EI", "NA", "XYZ"])
def test_unsupported_value_type_is_102_at_obx2(vt: str) -> None:
    error = errors_with(oru(OBR, obx(1), obx(2, vt=vt, code="X^x^L", value="1")))
    assert error.code == DATA_TYPE_ERROR
    assert error.location == ErrorLocation("OBX", 2, 2)


def test_empty_value_with_final_status_is_data_absent_unknown() -> None:
    found = one_observation(obx(vt="ST", value=""))
    assert found["dataAbsentReason"]["coding"][0]["code"] == "unknown"


# --- OBX-6/7/8, 14, 16, NTE --------------------------------------------------------------------------------


def test_reference_range_text_and_bounds() -> None:
    found = one_observation(obx(value="118", o6="g/L^g/L^UCUM", o7="115-165"))
    assert found["referenceRange"] == [{"low": {"value": 115, "unit": "g/L", "system": UCUM, "code": "g/L"},
                                        "high": {"value": 165, "unit": "g/L", "system": UCUM, "code": "g/L"},
                                        "text": "115-165"}]
    assert one_observation(obx(o7="<5"))["referenceRange"] == [{"high": {"value": 5}, "text": "<5"}]
    assert one_observation(obx(o7="see report"))["referenceRange"] == [{"text": "see report"}]


@pytest.mark.parametrize(("flag", "expected"), [
    ("H", {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H",
           "display": "High"}),
    ("LL", {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "LL",
            "display": "Critical low"}),
    ("HM", {"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "HM"}),
])
def test_interpretation(flag: str, expected: dict[str, str]) -> None:
    assert one_observation(obx(o8=flag))["interpretation"][0]["coding"][0] == expected


def test_effective_from_obx14_else_from_the_report() -> None:
    assert one_observation(obx(o14="202403110800"))["effectiveDateTime"] == "2024-03-11T08:00:00+00:00"
    assert one_observation(obx())["effectiveDateTime"] == "2024-03-11T09:30:00+00:00"  # OBR-7


def test_responsible_observer_is_a_practitioner() -> None:
    result = run(oru(OBR, obx(o16="R7654321^HUGHES^SARAH^^^DR^^^GMC")))
    practitioner = of_type(result, "Practitioner")[0]
    assert practitioner["identifier"][0] == {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "R7654321"}
    assert of_type(result, "Observation")[0]["performer"][0]["reference"] == f"Practitioner/{practitioner['id']}"


def test_notes_attach_to_the_observation_or_the_report() -> None:
    result = run(oru(OBR, "NTE|1|L|Sample haemolysed.", obx(), "NTE|1|L|Repeat in 2 weeks.", "NTE|2|L|Phoned GP."))
    assert of_type(result, "Observation")[0]["note"] == [{"text": "Repeat in 2 weeks."}, {"text": "Phoned GP."}]
    extension = of_type(result, "DiagnosticReport")[0]["extension"][0]
    assert extension["valueAnnotation"] == {"text": "Sample haemolysed."}


def test_patient_level_nte_is_reported_unmapped() -> None:
    result = run(oru("NTE|1|L|Patient note", OBR, obx()))
    assert "NTE-3" in result.unmapped


def test_security_labels_on_every_resource() -> None:
    result = run(oru(ORC, OBR, obx(o16="R7654321^HUGHES^SARAH^^^DR^^^GMC"), facility="RGD"), RGD)
    for resource in result.resources:
        assert resource["meta"]["security"] == [label.to_coding() for label in LABELS], resource["resourceType"]


def test_encounter_from_pv1_19() -> None:
    result = run(oru("PV1|1|O|OPD||||||||||||||||V99", OBR, obx()))
    expected = {"reference": f"Encounter/{resource_id('Encounter', 'RR8', 'V99')}"}
    assert of_type(result, "Observation")[0]["encounter"] == expected
    assert of_type(result, "DiagnosticReport")[0]["encounter"] == expected


# --- errors ---------------------------------------------------------------------------------------------------


def test_obx_before_any_obr_is_100() -> None:
    error = errors_with(oru(obx(), OBR))
    assert (error.code, error.location) == (SEGMENT_SEQUENCE_ERROR, ErrorLocation("OBX", 1))


def test_obx_without_code_is_101_at_obx3() -> None:
    error = errors_with(oru(OBR, obx(1), obx(2, code="")))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("OBX", 2, 3))


def test_report_without_order_number_is_101() -> None:
    error = errors_with(oru("OBR|1|||FBC^Full blood count^L", obx()))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("OBR", 1, 3))


def test_report_without_code_is_101_at_obr4() -> None:
    error = errors_with(oru("OBR|1||WP1", obx()))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("OBR", 1, 4))


def test_message_without_obr_is_101() -> None:
    assert errors_with(oru()).code == REQUIRED_FIELD_MISSING


def test_second_patient_is_refused() -> None:
    msg = parse_message("\r".join(["MSH|^~\\&|L|RR8|SC|SC|20240312||ORU^R01|1|P|2.4", PID, OBR, obx(),
                                   "PID|1||9449305552^^^NHS^NH", OBR.replace("WP1", "WP2"), obx()]))
    error = errors_with(msg)
    assert (error.code, error.location) == (SEGMENT_SEQUENCE_ERROR, ErrorLocation("PID", 2))


# --- hypothesis: generated OBX variants never crash ---------------------------------------------------------

_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="|^~\\&\r\n"), max_size=12)
_NUMBER = st.one_of(st.integers(-10**6, 10**9).map(str), st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
                    st.sampled_from(["", "<5", ">=2.5", "1e5", ".5", "-", "NaN", '""']))
_VALUE_TYPES = st.sampled_from(["NM", "SN", "ST", "TX", "FT", "CE", "CWE", "CNE", "IS", "DT", "DTM", "TS", "TM", "DR",
                                "NR", "VR", "ED", "XAD", "XTN", "CX", "FN", "", "RP", "ZZ"])


@st.composite
def obx_variants(draw: st.DrawFn) -> str:
    vt = draw(_VALUE_TYPES)
    parts = draw(st.lists(st.one_of(_NUMBER, _TEXT, st.sampled_from(["<", ">", "-", ":", "/", "+", "<>", "UCUM",
                                                                      "Base64", "application", "pdf", "20240301"])),
                          max_size=5))
    value = "^".join(parts)
    if draw(st.booleans()):
        value = value + "~" + value
    units = draw(st.sampled_from(["", "g/L^g/L^UCUM", "mmol/L", "^^UCUM", "x^y^LN", '""']))
    return obx(1, vt=vt, code=draw(st.sampled_from(["HB^Hb^L", "^Text only", ""])), value=value, o6=units,
               o7=draw(st.sampled_from(["", "1-2", "<5", "a-b", "5-1"])), o8=draw(st.sampled_from(["", "H", "ZZ", "N~A"])),
               o11=draw(st.sampled_from(["", "F", "C", "W", "X", "N", "?"])), o14=draw(st.sampled_from(["", "2024", "2024013"])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variants=st.lists(obx_variants(), min_size=1, max_size=3))
def test_generated_obx_variants_map_to_valid_r4_or_a_mapping_error(variants: list[str]) -> None:
    msg = oru(ORC, OBR, *variants)
    try:
        result = RESULT_MAPS["ORU^R01"](msg, RR8)
    except MappingError as error:
        assert error.code in {DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, SEGMENT_SEQUENCE_ERROR}
        assert error.location is not None and error.location.segment == "OBX"
        return
    for resource in result.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
