"""ORM^O01 / OML^O21 → ServiceRequest, MDM^T02/T04/T08 → DocumentReference, SIU^S12–S15 → Appointment
(mappings/hl7v2/orders.py, documents.py, scheduling.py): status tables, identity, dates, errors, and a
hypothesis property over SIU timing fields.
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
from mappings.hl7v2.documents import DOCUMENT_MAPS
from mappings.hl7v2.orders import ORDER_MAPS
from mappings.hl7v2.scheduling import SCHEDULING_MAPS
from mappings.ids import resource_id
from mappings.result import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    ErrorLocation,
    MappingError,
    MappingResult,
)

RR8 = SenderConfig(ods_code="RR8", kind="hospital", name="Leeds Teaching Hospitals NHS Trust")
MAPS = {**ORDER_MAPS, **DOCUMENT_MAPS, **SCHEDULING_MAPS}
PID = "PID|1||9912003888^^^NHS^NH~RR81234567^^^RR8^MR||CARTER^OLIVIA||19780412|2"
CONS = "C1234567^JONES^DAVID^^^DR^^^GMC"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def message(kind: str, *segments: str, msh7: str = "20240314112000") -> Message:
    msh = f"MSH|^~\\&|EPR|RR8|SC|SC|{msh7}||{kind}|1|P|2.4"
    return parse_message("\r".join([msh, *segments]))


def run(msg: Message, sender: SenderConfig = RR8) -> MappingResult:
    result = MAPS[f"{msg.message_code}^{msg.trigger}"](msg, sender)
    for resource in result.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return result


def of_type(result: MappingResult, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in result.resources if r["resourceType"] == resource_type]


def failure(msg: Message) -> MappingError:
    with pytest.raises(MappingError) as caught:
        MAPS[f"{msg.message_code}^{msg.trigger}"](msg, RR8)
    return caught.value


# ============================================================================================================
# Orders


def orc(control: str = "NW", **more: str) -> str:
    fields = {1: control, 2: "EPR1^RR8EPR", 9: "202403141120", 12: CONS}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return seg("ORC", {k: v for k, v in fields.items() if v is not None})


def obr(**more: str) -> str:
    fields = {1: "1", 2: "EPR1^RR8EPR", 4: "USABD^US Abdomen^RR8RAD"}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return seg("OBR", {k: v for k, v in fields.items() if v is not None})


def request(*segments: str, kind: str = "ORM^O01") -> dict[str, Any]:
    found = of_type(run(message(kind, PID, *segments)), "ServiceRequest")
    assert len(found) == 1
    return found[0]


def test_new_order() -> None:
    found = request(orc(o7="^^^202403210900^^R"), obr(o31="R10.4^Abdominal pain^I10"), "NTE|1|P|Fast from midnight.")
    assert found["id"] == resource_id("ServiceRequest", "RR8", "EPR1")
    assert (found["status"], found["intent"], found["priority"]) == ("active", "order", "routine")
    assert found["authoredOn"] == "2024-03-14T11:20:00+00:00"
    assert found["code"]["coding"][0]["code"] == "USABD"
    assert found["reasonCode"][0]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    assert found["note"] == [{"text": "Fast from midnight."}]
    assert found["occurrenceTiming"] == {"repeat": {"boundsPeriod": {"start": "2024-03-21T09:00:00+00:00"}}}
    assert found["identifier"][0]["type"]["coding"][0]["code"] == "PLAC"
    assert found["requester"]["display"] == "DR DAVID JONES"


@pytest.mark.parametrize(("control", "order_status", "expected"), [
    ("NW", "", "active"), ("NW", "SC", "active"), ("CA", "", "active"), ("CA", "CA", "revoked"),
    ("OC", "", "revoked"), ("DC", "", "revoked"), ("HD", "HD", "on-hold"), ("SC", "CM", "completed"),
    ("XO", "", "active"), ("SN", "", "unknown"), ("NW", "ZZ", "active"),
])
def test_order_status_from_orc5_then_orc1(control: str, order_status: str, expected: str) -> None:
    assert request(orc(control, o5=order_status), obr())["status"] == expected


def test_authored_on_only_for_a_new_order() -> None:
    assert "authoredOn" not in request(orc("CA", o5="CA"), obr())


def test_cancel_reason_is_the_status_reason_extension() -> None:
    found = request(orc("CA", o5="CA", o16="PTREQ^Patient request^L"), obr())
    assert found["extension"][0]["url"] == "http://hl7.org/fhir/StructureDefinition/request-statusReason"


def test_same_placer_number_same_request_across_new_and_cancel() -> None:
    assert request(orc("NW"), obr())["id"] == request(orc("CA", o5="CA"), obr())["id"]


def test_requester_falls_back_to_obr16_and_placer_to_obr2() -> None:
    found = request(orc("NW", o2="", o12=""), obr(o16="G3456789^PATEL^ANITA^^^DR^^^GMP"))
    assert found["requester"]["display"] == "DR ANITA PATEL"
    assert found["id"] == resource_id("ServiceRequest", "RR8", "EPR1")


def test_filler_only_order() -> None:
    found = request(orc("NW", o2="", o3="F9"), obr(o2=""))
    assert found["id"] == resource_id("ServiceRequest", "RR8", "filler", "F9")


def test_order_without_any_number_is_101() -> None:
    error = failure(message("ORM^O01", PID, orc("NW", o2=""), obr(o2="")))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("ORC", 1, 2))


@pytest.mark.parametrize(("field", "code", "expected"), [("o7", "^^^^^S", "stat"), ("o7", "^^^^^A", "asap"),
                                                         ("o7", "^^^^^P", None)])
def test_priority(field: str, code: str, expected: str | None) -> None:
    assert request(orc("NW", **{field: code}), obr()).get("priority") == expected


def test_reflex_intent() -> None:
    assert request(orc(), obr(o11="G"))["intent"] == "reflex-order"


def test_ask_at_order_entry_obx_is_supporting_info() -> None:
    result = run(message("ORM^O01", PID, orc(), obr(), "OBX|1|CWE|PREG^Pregnancy status^L||N^Not pregnant^L||||||F"))
    observation = of_type(result, "Observation")[0]
    assert of_type(result, "ServiceRequest")[0]["supportingInfo"] == [{"reference": f"Observation/{observation['id']}"}]
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "N"


def test_oml_two_orders() -> None:
    result = run(message("OML^O21", PID, orc(o4="GRP1^ICE"), obr(),
                         orc(o2="EPR2^RR8EPR", o4="GRP1^ICE"), obr(o2="EPR2^RR8EPR", o4="LIPID^Lipids^L")))
    requests = of_type(result, "ServiceRequest")
    assert [r["id"] for r in requests] == [resource_id("ServiceRequest", "RR8", n) for n in ("EPR1", "EPR2")]
    assert all(r["requisition"]["value"] == "GRP1" for r in requests)


def test_order_message_without_orc_is_101() -> None:
    assert failure(message("ORM^O01", PID)).code == REQUIRED_FIELD_MISSING


# ============================================================================================================
# Documents

PDF = b"%PDF-1.4\n%tiny\n"


def txa(**more: str) -> str:
    fields = {1: "1", 2: "DS^Discharge summary^HL70270", 3: "TX", 4: "202403221500", 5: CONS, 6: "202403221545",
              9: "F9988776^BROWN^EMMA^^^DR^^^GMC", 12: "DOC1^RR8EPR", 17: "AU", 19: "AV"}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return seg("TXA", {k: v for k, v in fields.items() if v is not None})


def text_lines(*lines: str) -> list[str]:
    return [f"OBX|{i}|TX|DS^Discharge summary^HL70270||{line}||||||F" for i, line in enumerate(lines, 1)]


def document(trigger: str, txa_segment: str, *obx: str) -> dict[str, Any]:
    result = run(message(f"MDM^{trigger}^MDM_T02", "EVN|" + trigger + "|20240322160000", PID, txa_segment, *obx))
    found = of_type(result, "DocumentReference")
    assert len(found) == 1
    return found[0]


def test_text_document() -> None:
    found = document("T02", txa(), *text_lines("DISCHARGE SUMMARY", "Diagnosis: pneumonia £", "Follow-up: GP."))
    assert found["id"] == resource_id("DocumentReference", "RR8", "DOC1")
    assert found["masterIdentifier"] == {"system": RR8.system_for("document"), "value": "DOC1"}
    attachment = found["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    assert base64.b64decode(attachment["data"]).decode("utf-8") == \
        "DISCHARGE SUMMARY\nDiagnosis: pneumonia £\nFollow-up: GP."
    assert (found["status"], found["docStatus"]) == ("current", "final")
    assert found["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": "DS",
                                          "display": "Discharge summary"}
    assert found["date"] == "2024-03-22T15:45:00+00:00"
    assert found["context"]["period"] == {"start": "2024-03-22T15:00:00+00:00"}
    assert [a["display"] for a in found["author"]] == ["DR EMMA BROWN", "DR DAVID JONES"]
    assert found["custodian"]["display"] == "Leeds Teaching Hospitals NHS Trust"


def test_pdf_document() -> None:
    data = base64.b64encode(PDF).decode()
    found = document("T02", txa(o3="AP"), f"OBX|1|ED|PDF^Clinic letter^L||RR8EPR^application^pdf^Base64^{data}||||||F")
    attachment = found["content"][0]["attachment"]
    assert attachment["contentType"] == "application/pdf"
    assert base64.b64decode(attachment["data"]) == PDF
    assert attachment["title"] == "Clinic letter"


def test_text_and_pdf_are_separate_contents() -> None:
    data = base64.b64encode(PDF).decode()
    found = document("T02", txa(), *text_lines("Cover note"), f"OBX|2|ED|PDF^Letter^L||^AP^PDF^Base64^{data}")
    assert [c["attachment"]["contentType"] for c in found["content"]] == ["text/plain; charset=utf-8",
                                                                           "application/pdf"]


@pytest.mark.parametrize(("completion", "expected"), [("DO", "preliminary"), ("IP", "preliminary"), ("AU", "final"),
                                                      ("LA", "final"), ("", None)])
def test_doc_status_from_txa17(completion: str, expected: str | None) -> None:
    assert document("T02", txa(o17=completion), *text_lines("x")).get("docStatus") == expected


@pytest.mark.parametrize(("availability", "expected"), [("AV", "current"), ("", "current"), ("OB", "superseded"),
                                                        ("CA", "entered-in-error")])
def test_status_from_txa19(availability: str, expected: str) -> None:
    found = document("T02", txa(o19=availability), *text_lines("x"))
    assert found["status"] == expected
    assert ("_status" in found) == (availability in {"OB", "CA"})


def test_status_change_t04_is_the_same_document() -> None:
    first = document("T02", txa(o17="DO"), *text_lines("draft"))
    changed = document("T04", txa(o17="AU", o10=CONS), *text_lines("draft"))
    assert changed["id"] == first["id"]
    assert (first["docStatus"], changed["docStatus"]) == ("preliminary", "final")
    assert changed["authenticator"]["display"] == "DR DAVID JONES"


def test_edit_t08_with_a_new_number_replaces_the_parent() -> None:
    edited = document("T08", txa(o12="DOC1-2^RR8EPR", o13="DOC1^RR8EPR"), *text_lines("edited"))
    assert edited["id"] == resource_id("DocumentReference", "RR8", "DOC1-2")
    assert edited["relatesTo"] == [{"code": "replaces", "target": {
        "reference": f"DocumentReference/{resource_id('DocumentReference', 'RR8', 'DOC1')}"}}]
    assert edited["docStatus"] == "amended"


def test_edit_t08_with_the_same_number_is_a_new_version() -> None:
    edited = document("T08", txa(o13="DOC1^RR8EPR"), *text_lines("edited"))
    assert edited["id"] == resource_id("DocumentReference", "RR8", "DOC1") and "relatesTo" not in edited


def test_restricted_document_is_labelled_restricted() -> None:
    found = document("T02", txa(o18="R"), *text_lines("x"))
    assert {"system": V3_CONFIDENTIALITY, "code": "R", "display": "restricted"} in found["meta"]["security"]
    assert found["securityLabel"][0]["coding"][0]["code"] == "R"


def test_a_stricter_sender_label_is_kept() -> None:
    very = SenderConfig(ods_code="RR8", security_labels=(SecurityLabel(V3_CONFIDENTIALITY, "V"),))
    msg = message("MDM^T02", PID, txa(o18="R"), *text_lines("x"))
    found = of_type(run(msg, very), "DocumentReference")[0]
    assert [c["code"] for c in found["meta"]["security"]] == ["V"]


def test_related_order_from_txa14() -> None:
    found = document("T02", txa(o14="EPR1^RR8EPR"), *text_lines("x"))
    assert found["context"]["related"] == [{"reference": f"ServiceRequest/{resource_id('ServiceRequest', 'RR8', 'EPR1')}"}]


def test_document_errors() -> None:
    error = failure(message("MDM^T02", PID, txa(o12=""), *text_lines("x")))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("TXA", 1, 12))
    assert failure(message("MDM^T02", PID, txa())).code == REQUIRED_FIELD_MISSING
    assert failure(message("MDM^T02", PID)).code == REQUIRED_FIELD_MISSING
    error = failure(message("MDM^T02", PID, txa(), "OBX|1|NM|X^x^L||5"))
    assert (error.code, error.location) == (DATA_TYPE_ERROR, ErrorLocation("OBX", 1, 2))
    error = failure(message("MDM^T02", PID, txa(), "OBX|1|ED|X^x^L||^AP^PDF^Base64^@@@"))
    assert (error.code, error.location) == (DATA_TYPE_ERROR, ErrorLocation("OBX", 1, 5))


# ============================================================================================================
# Scheduling


def sch(status: str = "Booked", **more: str) -> str:
    fields = {1: "P1^EPR", 2: "F1^PAS", 6: "NEW^New^L", 7: "FUP^Follow-up^L", 8: "ROUTINE^Routine^HL70277",
              9: "30", 10: "MIN", 11: "^^30^202404021030^202404021100", 25: status}
    fields.update({int(k[1:]): v for k, v in more.items()})
    return seg("SCH", {k: v for k, v in fields.items() if v is not None})


RESOURCES = ["RGS|1", "AIS|1||CARDFU^Cardiology follow-up^L|202404021030|||30|MIN",
             "AIL|1||CARDOPD^Room 4^^SJUH|||202404021030", f"AIP|1||{CONS}|CON^Consultant^L||202404021030||||||Booked"]


def appointment(trigger: str, sch_segment: str, *resources: str) -> tuple[dict[str, Any], MappingResult]:
    result = run(message(f"SIU^{trigger}^SIU_S12", sch_segment, "NTE|1||Needs hoist.", PID, *(resources or RESOURCES)))
    found = of_type(result, "Appointment")
    assert len(found) == 1
    return found[0], result


def test_booked_appointment() -> None:
    found, result = appointment("S12", sch())
    assert found["id"] == resource_id("Appointment", "RR8", "P1")
    assert (found["status"], found["start"], found["end"], found["minutesDuration"]) == (
        "booked", "2024-04-02T10:30:00+01:00", "2024-04-02T11:00:00+01:00", 30)
    assert found["serviceType"][0]["coding"][0]["code"] == "CARDFU"
    assert found["appointmentType"]["coding"][0]["code"] == "ROUTINE"
    assert found["reasonCode"][0]["coding"][0]["code"] == "FUP"
    assert found["comment"] == "Needs hoist."
    actors = [p["actor"].get("reference", "").split("/")[0] for p in found["participant"]]
    assert actors == ["Patient", "Location", "Practitioner"]
    assert found["participant"][0]["actor"]["reference"] == f"Patient/{result.patient_id}"
    assert {i["type"]["coding"][0]["code"] for i in found["identifier"]} == {"PLAC", "FILL"}


@pytest.mark.parametrize(("trigger", "filler_status", "expected"), [
    ("S12", "Booked", "booked"), ("S12", "", "booked"), ("S12", "Pending", "pending"), ("S13", "Pending", "booked"),
    ("S14", "Complete", "fulfilled"), ("S14", "", "booked"), ("S15", "Booked", "cancelled"), ("S14", "Noshow", "noshow"),
])
def test_status_by_trigger(trigger: str, filler_status: str, expected: str) -> None:
    assert appointment(trigger, sch(filler_status))[0]["status"] == expected


def test_cancellation_reason_only_when_cancelled() -> None:
    cancelled, _ = appointment("S15", sch("Cancelled", o6="PATREQ^Patient request^L"))
    assert cancelled["cancelationReason"]["coding"][0]["code"] == "PATREQ"
    assert "cancelationReason" not in appointment("S12", sch())[0]


def test_reschedule_keeps_the_id_and_moves_the_time() -> None:
    first, _ = appointment("S12", sch())
    moved, _ = appointment("S13", sch(o11="^^30^202404091400^202404091430"))
    assert moved["id"] == first["id"] and moved["start"] == "2024-04-09T14:00:00+01:00"


def test_end_from_duration_when_tq5_is_empty() -> None:
    found, _ = appointment("S12", sch(o11="^^^202404021030", o9="45", o10="MIN"))
    assert (found["end"], found["minutesDuration"]) == ("2024-04-02T11:15:00+01:00", 45)
    found, _ = appointment("S12", sch(o11="", o9="", o10=""))  # AIS-4 start, AIS-7/8 duration
    assert (found["start"], found["end"]) == ("2024-04-02T10:30:00+01:00", "2024-04-02T11:00:00+01:00")


def test_start_without_end_or_duration_is_a_requested_period() -> None:
    found, result = appointment("S12", sch(o11="^^^202404021030", o9="", o10=""), "RGS|1")
    assert "start" not in found and found["requestedPeriod"] == [{"start": "2024-04-02T10:30:00+01:00"}]
    assert result.warnings


def test_filler_id_when_no_placer_id() -> None:
    assert appointment("S12", sch(o1=""))[0]["id"] == resource_id("Appointment", "RR8", "F1")


def test_appointment_without_ids_is_101() -> None:
    error = failure(message("SIU^S12", sch(o1="", o2=""), PID))
    assert (error.code, error.location) == (REQUIRED_FIELD_MISSING, ErrorLocation("SCH", 1, 2))
    assert failure(message("SIU^S12", PID)).code == REQUIRED_FIELD_MISSING


def test_every_trigger_is_registered() -> None:
    assert set(SCHEDULING_MAPS) == {"SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15"}
    assert set(DOCUMENT_MAPS) == {"MDM^T02", "MDM^T04", "MDM^T08"}
    assert set(ORDER_MAPS) == {"ORM^O01", "OML^O21"}


_TIMES = st.sampled_from(["", "2024", "202404", "20240402", "202404021030", "20240402103000+0100", "2024040299",
                          "99991231235959",
                          "garbage", '""'])
_AMOUNTS = st.sampled_from(["", "30", "M30", "H1", "0", "-5", "1.5", "x", "99999999999"])
_UNITS = st.sampled_from(["", "MIN", "H", "S", "D", "furlongs"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=st.sampled_from(["S12", "S13", "S14", "S15"]), start=_TIMES, end=_TIMES, tq3=_AMOUNTS,
       sch9=_AMOUNTS, sch10=_UNITS, ais4=_TIMES, ais7=_AMOUNTS, ais8=_UNITS,
       status=st.sampled_from(["", "Booked", "Cancelled", "Whatever"]))
def test_generated_siu_timings_map_to_valid_r4(trigger: str, start: str, end: str, tq3: str, sch9: str, sch10: str,
                                               ais4: str, ais7: str, ais8: str, status: str) -> None:
    msg = message(f"SIU^{trigger}", sch(status, o11=f"^^{tq3}^{start}^{end}", o9=sch9, o10=sch10), PID, "RGS|1",
                  f"AIS|1||X^x^L|{ais4}|||{ais7}|{ais8}")
    found = of_type(run(msg), "Appointment")[0]
    assert ("start" in found) == ("end" in found)  # app-2
