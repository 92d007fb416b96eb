"""HL7 v2 datatype maps (mappings/hl7v2/datatypes.py), code tables and the NHS number helpers.

Expected values follow the HL7 v2-to-FHIR IG datatype maps (CX, XPN, XAD, XTN, CWE, DTM, XCN, PL,
HD, XON) and UK-REFERENCE.md where UK practice differs.
"""

from __future__ import annotations

import doctest
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.hl7v2.parser import Field
from adapters.senders import SecurityLabel, SenderConfig
from mappings.hl7v2 import codes, nhs
from mappings.hl7v2 import datatypes as dt
from mappings.hl7v2.nhs import is_nhs_number_cx, mask, nhs_number_is_valid, verification_code

# FHIR R4 dateTime and date (https://hl7.org/fhir/R4/datatypes.html#dateTime).
FHIR_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?")
FHIR_DATE = re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
SENDER = SenderConfig(ods_code="RR8", name="Leeds Teaching Hospitals NHS Trust")


# --- DTM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("v2", "fhir"), [
    ("2024", "2024"),
    ("202403", "2024-03"),
    ("20240301", "2024-03-01"),
    ("2024030112", "2024-03-01T12:00:00+00:00"),
    ("202403011230", "2024-03-01T12:30:00+00:00"),
    ("20240301123005", "2024-03-01T12:30:05+00:00"),
    ("20240301123005.1234", "2024-03-01T12:30:05.1234+00:00"),
    ("20240301123005+0100", "2024-03-01T12:30:05+01:00"),
    ("202403011230-0500", "2024-03-01T12:30:00-05:00"),
    ("20240229", "2024-02-29"),
])
def test_v2_to_fhir_datetime_keeps_the_source_precision(v2: str, fhir: str) -> None:
    assert dt.v2_to_fhir_datetime(v2) == fhir
    assert FHIR_DATETIME.fullmatch(fhir)


@pytest.mark.parametrize("bad", ["", '""', "2024-03-01", "20240230", "20231301", "202403012460", "2024030112300",
                                 "20240301.5", "20240301123005+1500", "abc", "99", "20240301 1230"])
def test_invalid_dtm_gives_none(bad: str) -> None:
    assert dt.v2_to_fhir_datetime(bad) is None
    assert dt.parse_v2_datetime(bad) is None
    assert dt.v2_to_fhir_date(bad) is None


def test_parse_v2_datetime_is_aware_utc() -> None:
    assert dt.parse_v2_datetime("20240301123000+0100") == datetime(2024, 3, 1, 11, 30, tzinfo=UTC)
    assert dt.parse_v2_datetime("20240301") == datetime(2024, 3, 1, tzinfo=UTC)
    assert dt.parse_v2_datetime("20240301123005.5").microsecond == 500000


def test_local_time_can_be_read_in_a_sender_zone() -> None:
    london = ZoneInfo("Europe/London")
    assert dt.parse_v2_datetime("202407011200", london) == datetime(2024, 7, 1, 11, 0, tzinfo=UTC)
    assert dt.v2_to_fhir_datetime("202407011200", london) == "2024-07-01T12:00:00+01:00"


@pytest.mark.parametrize("sent, fhir, utc", [
    ("202401151030", "2024-01-15T10:30:00+00:00", datetime(2024, 1, 15, 10, 30)),  # winter: GMT
    ("202407151030", "2024-07-15T10:30:00+01:00", datetime(2024, 7, 15, 9, 30)),  # summer: BST
    # 31 March 2024: clocks go forward at 01:00 GMT; 01:30 does not exist and is read as GMT (fold=0)
    ("202403310059", "2024-03-31T00:59:00+00:00", datetime(2024, 3, 31, 0, 59)),
    ("202403310130", "2024-03-31T01:30:00+00:00", datetime(2024, 3, 31, 1, 30)),
    ("202403310200", "2024-03-31T02:00:00+01:00", datetime(2024, 3, 31, 1, 0)),
    # 27 October 2024: clocks go back at 02:00 BST; 01:30 happens twice and is its first (BST) occurrence
    ("202410270030", "2024-10-27T00:30:00+01:00", datetime(2024, 10, 26, 23, 30)),
    ("202410270130", "2024-10-27T01:30:00+01:00", datetime(2024, 10, 27, 0, 30)),
    ("202410270200", "2024-10-27T02:00:00+00:00", datetime(2024, 10, 27, 2, 0)),
    ("202407151030+0000", "2024-07-15T10:30:00+00:00", datetime(2024, 7, 15, 10, 30)),  # an offset sent wins
])
def test_a_map_reads_times_without_offset_in_the_sender_zone(sent: str, fhir: str, utc: datetime) -> None:
    @dt.in_sender_time_zone
    def read(message: object, sender: SenderConfig) -> tuple[str | None, datetime | None]:
        return dt.v2_to_fhir_datetime(sent), dt.parse_v2_datetime(sent)

    assert read(None, SenderConfig("RR8")) == (fhir, utc.replace(tzinfo=UTC))  # Europe/London by default
    assert dt.v2_to_fhir_datetime(sent).endswith(fhir[-6:] if "+0000" in sent else "+00:00")  # outside: UTC


def test_the_sender_zone_is_configurable_and_restored_after_the_map() -> None:
    @dt.in_sender_time_zone
    def read(message: object, sender: SenderConfig) -> str | None:
        return dt.v2_to_fhir_datetime("202401151030")

    assert read(None, SenderConfig("X", timezone="America/New_York")) == "2024-01-15T10:30:00-05:00"
    assert read(None, SenderConfig("X", timezone="UTC")) == "2024-01-15T10:30:00+00:00"
    assert dt.parse_v2_datetime("202407151030") == datetime(2024, 7, 15, 10, 30, tzinfo=UTC)


def test_v2_to_fhir_date_drops_the_time() -> None:
    assert dt.v2_to_fhir_date("196203151230") == "1962-03-15"


@given(st.text(max_size=30))
def test_dtm_functions_never_raise(text: str) -> None:
    value = dt.v2_to_fhir_datetime(text)
    assert value is None or FHIR_DATETIME.fullmatch(value)
    day = dt.v2_to_fhir_date(text)
    assert day is None or FHIR_DATE.fullmatch(day)
    moment = dt.parse_v2_datetime(text)
    assert moment is None or moment.tzinfo is not None


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
       st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_dtm_round_trips_an_instant(moment: datetime, offset_minutes: int) -> None:
    offset = timedelta(minutes=offset_minutes)
    sign = "-" if offset_minutes < 0 else "+"
    text = moment.strftime("%Y%m%d%H%M%S") + f"{sign}{abs(offset_minutes) // 60:02d}{abs(offset_minutes) % 60:02d}"
    expected = moment.replace(microsecond=0, tzinfo=timezone(offset)).astimezone(UTC)
    assert dt.parse_v2_datetime(text) == expected


# --- names, addresses, telecoms ------------------------------------------------------------------


def test_xpn_maps_family_given_prefix_suffix_use() -> None:
    assert dt.xpn_human_name(Field("SMITH^JANE^ANNE MARIE^JR^MRS^^L")) == {
        "use": "official", "family": "SMITH", "given": ["JANE", "ANNE", "MARIE"], "prefix": ["MRS"], "suffix": ["JR"]}


def test_xpn_maiden_and_unknown_use() -> None:
    assert dt.xpn_human_name(Field("JONES^JANE^^^^^M"))["use"] == "maiden"
    assert "use" not in dt.xpn_human_name(Field("JONES^JANE^^^^^ZZ"))


@pytest.mark.parametrize("raw", ["", '""', "^^^^^^L", '""^""'])
def test_xpn_without_a_name_is_none(raw: str) -> None:
    assert dt.xpn_human_name(Field(raw)) is None


def test_xad_uk_address() -> None:
    assert dt.xad_address(Field("1 HIGH STREET^FLAT 2^LEEDS^WEST YORKSHIRE^LS1 4AB^GBR^H")) == {
        "use": "home", "line": ["1 HIGH STREET", "FLAT 2"], "city": "LEEDS", "state": "WEST YORKSHIRE",
        "postalCode": "LS1 4AB", "country": "GBR"}


def test_xad_mailing_is_a_postal_type_and_sad_lines() -> None:
    address = dt.xad_address(Field("1 HIGH ST&STREET&FLAT 3^^LEEDS^^^^M"))
    assert address == {"type": "postal", "line": ["1 HIGH ST", "STREET", "FLAT 3"], "city": "LEEDS"}


@pytest.mark.parametrize(("raw", "default", "expected"), [
    ("0113 496 0000^PRN^PH", None, {"system": "phone", "value": "0113 496 0000", "use": "home"}),
    ("07700 900123^PRS^CP", None, {"system": "phone", "value": "07700 900123", "use": "mobile"}),
    ("^NET^Internet^a@example.org", "home", {"system": "email", "value": "a@example.org", "use": "home"}),
    ("^WPN^PH^^44^113^4960000^12", None, {"system": "phone", "value": "+44 113 4960000 X12", "use": "work"}),
    ("01134960000", "work", {"system": "phone", "value": "01134960000", "use": "work"}),
    ("^^FX^^^^^^^^^0113 496 0001", None, {"system": "fax", "value": "0113 496 0001"}),
])
def test_xtn(raw: str, default: str | None, expected: dict) -> None:
    assert dt.xtn_contact_point(Field(raw), default) == expected


def test_xtn_empty_is_none() -> None:
    assert dt.xtn_contact_point(Field("^PRN^PH")) is None


# --- datatypes as text (OBX-5 of OBX-2 XAD, XTN, CX, FN; IG CX[string], FN[HumanName]) --------------------


@pytest.mark.parametrize(("render", "raw", "expected"), [
    (dt.xad_string, "1 HIGH STREET^FLAT 2^LEEDS^WEST YORKSHIRE^LS1 4AB^GBR^H",
     "1 HIGH STREET, FLAT 2, LEEDS, WEST YORKSHIRE, LS1 4AB, GBR"),
    (dt.xad_string, "1 HIGH ST&STREET&FLAT 3^^LEEDS^^^^M", "1 HIGH ST, STREET, FLAT 3, LEEDS"),
    (dt.xad_string, "^^^^LS1 4AB", "LS1 4AB"),
    (dt.xad_string, "^^^^^^H", None),
    (dt.xtn_string, "0113 496 0000^WPN^PH", "0113 496 0000"),
    (dt.xtn_string, "^WPN^PH^^44^113^4960000^12", "+44 113 4960000 X12"),
    (dt.xtn_string, "^NET^Internet^ward12@nhs.net", "ward12@nhs.net"),
    (dt.xtn_string, "^PRN^PH", None),
    (dt.cx_string, "RR81234567^^^RR8^MR", "RR81234567"),
    (dt.cx_string, "^^^RR8^MR", None),
    (dt.fn_string, "de Vries^de^Vries", "de Vries"),
    (dt.fn_string, "^182", None),
])
def test_datatype_as_text(render: Callable[[Field], str | None], raw: str, expected: str | None) -> None:
    assert render(Field(raw)) == expected


# --- coded values ---------------------------------------------------------------------------------


def test_cwe_both_triplets_and_text() -> None:
    concept = dt.cwe_codeable_concept(Field("91936005^Allergy to penicillin^SCT^PEN^Penicillin^L^^^As told"))
    assert concept == {"coding": [
        {"system": "http://snomed.info/sct", "code": "91936005", "display": "Allergy to penicillin"},
        {"code": "PEN", "display": "Penicillin"}], "text": "As told"}


def test_cwe_text_only() -> None:
    assert dt.cwe_codeable_concept(Field("^Peanuts")) == {"text": "Peanuts"}
    assert dt.cwe_codeable_concept(Field("")) is None


@pytest.mark.parametrize(("name", "uri"), [
    ("SCT", "http://snomed.info/sct"), ("LN", "http://loinc.org"), ("I10", "http://hl7.org/fhir/sid/icd-10"),
    ("HL70063", "http://terminology.hl7.org/CodeSystem/v2-0063"), ("urn:oid:1.2.3", "urn:oid:1.2.3"),
    ("LOCALCS", None), ("", None),
])
def test_coding_system_uri(name: str, uri: str | None) -> None:
    assert dt.coding_system_uri(name) == uri


def test_mapped_concept_keeps_the_senders_coding_when_it_adds_information() -> None:
    marital = dt.mapped_concept(Field("M"), codes.MARITAL_STATUS, "http://terminology.hl7.org/CodeSystem/v2-0002")
    assert [c["code"] for c in marital["coding"]] == ["M", "M"]
    assert marital["coding"][0]["system"] == codes.V3_MARITAL
    unknown = dt.mapped_concept(Field("Q^Quirky^L"), codes.MARITAL_STATUS)
    assert unknown == {"coding": [{"code": "Q", "display": "Quirky"}]}
    same = dt.mapped_concept(Field("19"), {"19": ("http://x", "19", "home")})
    assert same == {"coding": [{"system": "http://x", "code": "19", "display": "home"}]}


@pytest.mark.parametrize(("code", "gender"), [("1", "male"), ("2", "female"), ("9", "other"), ("X", "unknown"),
                                              ("M", "male"), ("F", "female"), ("O", "other"), ("U", "unknown"),
                                              ("A", "other"), ("N", "other"), ("m", "male")])
def test_gender_codes_uk_and_table_0001(code: str, gender: str) -> None:
    assert dt.table_code(code, codes.GENDER) == gender


# --- identifiers, practitioners, organisations, places -----------------------------------------------


def test_cx_identifier() -> None:
    assert dt.cx_identifier(Field("12345^^^RR8^MR^^20200101")) == {
        "type": {"coding": [{"system": dt.V2_0203, "code": "MR", "display": "Medical record number"}]},
        "value": "12345", "period": {"start": "2020-01-01"}, "assigner": {"display": "RR8"}}


def test_cx_system_from_hd_oid() -> None:
    assert dt.cx_identifier(Field("A1^^^&2.16.840.1.113883.3.1&ISO"))["system"] == "urn:oid:2.16.840.1.113883.3.1"


@pytest.mark.parametrize(("raw", "system"), [
    ("C1234567^HOUSE^GREGORY^^^DR^^^GMC", "https://fhir.hl7.org.uk/Id/gmc-number"),
    ("G8234567^WELBY^MARCUS^^^DR^^^GMP", "https://fhir.hl7.org.uk/Id/gmp-number"),
    ("12345678^NURSE^ANN^^^^^^^^^^NMC", "https://fhir.hl7.org.uk/Id/nmc-number"),
    ("S1^X^Y^^^^^^https://example.org/staff", "https://example.org/staff"),
    ("S1^X^Y^^^^^^RR8", None),
])
def test_xcn_registers(raw: str, system: str | None) -> None:
    assert dt.xcn_system(Field(raw)) == system


def test_practitioner_from_xcn_local_staff_number_uses_the_assigner() -> None:
    practitioner, ref = dt.practitioner_from_xcn(Field("S1^KILDARE^JAMES^^^DR^^^RR8"), SENDER)
    assert practitioner["identifier"] == [{"system": "https://fhir.sharedcare.dev/Id/RR8/practitioner", "value": "S1"}]
    assert ref == {"reference": f"Practitioner/{practitioner['id']}", "display": "DR JAMES KILDARE"}


def test_practitioner_from_xcn_name_only_is_a_display_reference() -> None:
    assert dt.practitioner_from_xcn(Field("^KILDARE^JAMES"), SENDER) == (None, {"display": "JAMES KILDARE"})
    assert dt.practitioner_from_xcn(Field(""), SENDER) == (None, None)


def test_xon_ods_code_prefers_xon10() -> None:
    assert dt.xon_ods_code(Field("LEEDS CITY MEDICAL PRACTICE^^B86001")) == "B86001"
    assert dt.xon_ods_code(Field("PRACTICE^^123^^^^^^^B86002")) == "B86002"


def test_pl_location_most_granular_level() -> None:
    parts = dt.pl_parts(Field("RR801^WARD 12^BED 4^RR8"))
    location = dt.pl_location(parts)
    assert location["name"] == "RR8 / RR801 / WARD 12 / BED 4"
    assert location["physicalType"]["coding"][0]["code"] == "bd"
    assert dt.pl_location(dt.pl_parts(Field("WARD1")))["physicalType"]["coding"][0]["code"] == "wa"
    assert dt.pl_location(dt.pl_parts(Field(""))) is None


# --- resource plumbing ----------------------------------------------------------------------------


def test_finish_resource_prunes_and_labels() -> None:
    label = SecurityLabel("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")
    out = dt.finish_resource({"resourceType": "Patient", "name": [{"given": [""]}], "gender": None}, "p1", [label])
    assert out == {"resourceType": "Patient", "id": "p1",
                   "meta": {"security": [{"system": label.system, "code": "R"}]}}


def test_apply_field_maps_repeats_and_dotted_paths() -> None:
    from adapters.hl7v2.parser import parse_message

    pv1 = parse_message("MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.4\rPV1|1|I" + "|" * 12 + "19~29").first("PV1")
    table = (dt.FieldMap(14, "hospitalization.admitSource", dt.first_text, repeats=True),
             dt.FieldMap(2, "class", dt.first_text))
    assert dt.apply_field_maps(pv1, table, {}) == {"hospitalization": {"admitSource": ["19", "29"]}, "class": "I"}
    assert dt.fields_read(table) == {14, 2}


# --- NHS number -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("number", "valid"), [("9912003888", True), ("9449305552", True), ("9434765919", True),
                                               ("4123456879", False), ("9912003814", False), ("991200388", False),
                                               ("99120038880", False), ("991 200 3888", False), ("", False)])
def test_nhs_number_check_digit(number: str, valid: bool) -> None:
    assert nhs_number_is_valid(number) is valid


@pytest.mark.parametrize("raw", ["3333333333^^^NHS", "9219068409^^^NHS^NH", "2269030303^^^^NHSNMBR",
                                 "^^^NHSNMBR", "1^^^&NHS", "1^^^RR8^NHSNBR"])
def test_nhs_number_cx_recognised(raw: str) -> None:
    assert is_nhs_number_cx(Field(raw))


@pytest.mark.parametrize("raw", ["12067204^^^R0A^MR", "8000002^^^RMW00^MR", "123", "1^^^NHSX^MR"])
def test_local_cx_not_nhs(raw: str) -> None:
    assert not is_nhs_number_cx(Field(raw))


def test_verification_codes() -> None:
    assert [verification_code(f"NSTS0{i}") for i in range(1, 9)] == [f"0{i}" for i in range(1, 9)]
    assert verification_code("NSTS09") is None
    assert verification_code("nsts02") == "02"


def test_mask_never_echoes_more_than_four_characters() -> None:
    assert mask("9912003814") == "******3814"
    assert mask("") == "(empty)"


@pytest.mark.parametrize("module", [dt, nhs], ids=lambda m: m.__name__)
def test_docstring_examples(module: object) -> None:
    failures, tried = doctest.testmod(module)  # type: ignore[arg-type]
    assert tried and not failures
