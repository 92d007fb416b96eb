"""The document endpoints end to end through the ASGI app, with real tokens, on the test backend."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from tests.documents.conftest import ALICE_ADMISSION, FHIR

TOC = f"/fhir/Encounter/{ALICE_ADMISSION}/$transfer-of-care"


def issue(client, doc_type: str = "inpatient-discharge", encounter: str = ALICE_ADMISSION, **headers: str):
    return client.post(f"/fhir/Encounter/{encounter}/$transfer-of-care", params={"type": doc_type}, headers=headers)


def local(url: str) -> str:
    """An absolute URL of the test server as a path for the TestClient."""
    return url.removeprefix("http://testserver")


def composition_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return bundle["entry"][0]["resource"]


def issues_of(response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]


# -- $transfer-of-care -----------------------------------------------------------------------------


def test_transfer_of_care_returns_a_valid_stored_document(demo_client) -> None:
    response = issue(demo_client)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR)
    bundle = response.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "document"
    composition = composition_of(bundle)
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0]["code"] == "373942005"
    assert composition["encounter"] == {"reference": f"Encounter/{ALICE_ADMISSION}"}
    assert composition["custodian"]["reference"] == "Organization/org-rr8"
    assert composition["author"][0]["display"] == "Test User"  # no Practitioner with the token's SDS user id
    location = response.headers["location"]
    assert "/DocumentReference/" in location and location.endswith("/_history/1")
    docref = demo_client.get(local(location)).json()
    assert docref["status"] == "current"
    assert docref["content"][0]["attachment"] == {
        "contentType": FHIR, "url": f"Bundle/{bundle['id']}", "title": "Inpatient discharge summary",
        "creation": bundle["timestamp"]}
    assert docref["context"]["encounter"] == [{"reference": f"Encounter/{ALICE_ADMISSION}"}]
    assert docref["subject"]["reference"] == "Patient/pat-alice-hughes"
    # the Composition is readable on its own and the DocumentReference is found by patient search
    assert demo_client.get(f"/fhir/Composition/{composition['id']}").status_code == 200
    found = demo_client.get("/fhir/DocumentReference", params={"patient": "pat-alice-hughes", "type": "373942005"})
    assert docref["id"] in {e["resource"]["id"] for e in found.json()["entry"]}
    assert demo_client.get(f"/fhir/Bundle/{bundle['id']}").json()["id"] == bundle["id"]


def test_every_document_type_can_be_issued(demo_client) -> None:
    for doc_type in ("inpatient-discharge", "mental-health-discharge", "emergency-care-discharge",
                     "outpatient-letter", "care-home-to-hospital"):
        response = issue(demo_client, doc_type)
        assert response.status_code == 201, (doc_type, response.text)
        Bundle.model_validate(response.json())


def test_unknown_type_is_400_naming_the_allowed_types(demo_client) -> None:
    response = issue(demo_client, "discharge-letter")
    assert response.status_code == 400
    diagnostics = issues_of(response)[0]["diagnostics"]
    for allowed in ("inpatient-discharge", "care-home-to-hospital", "outpatient-letter"):
        assert allowed in diagnostics
    assert demo_client.post(TOC).status_code == 400  # no type at all


def test_unknown_encounter_is_404(demo_client) -> None:
    response = issue(demo_client, encounter="no-such-encounter")
    assert response.status_code == 404
    assert issues_of(response)[0]["code"] == "not-found"


def test_without_a_token_401_and_without_create_scope_403(demo_client, make_token) -> None:
    assert issue(demo_client, Authorization="").status_code == 401
    reader = f"Bearer {make_token('user/*.rs')}"
    response = issue(demo_client, Authorization=reader)
    assert response.status_code == 403
    assert "DocumentReference" in issues_of(response)[0]["diagnostics"]


def test_a_principal_who_may_not_read_the_record_gets_no_document(demo_client, make_token) -> None:
    token = f"Bearer {make_token('user/DocumentReference.c user/Encounter.r user/Patient.r')}"
    response = issue(demo_client, Authorization=token)
    assert response.status_code == 403  # may not read Conditions, Observations, …: nothing is disclosed


def test_a_patient_scoped_app_cannot_issue_for_another_patient(demo_client, make_token) -> None:
    token = f"Bearer {make_token('patient/*.cruds', patient='pat-bilal-hussain')}"
    response = issue(demo_client, Authorization=token)
    assert response.status_code == 404  # Alice's encounter does not exist for Bilal's app


def test_reissue_versions_the_document_reference_and_keeps_the_old_document(demo_client) -> None:
    first, second = issue(demo_client), issue(demo_client)
    assert first.status_code == second.status_code == 201
    old, new = first.json(), second.json()
    assert old["id"] != new["id"]
    assert first.headers["location"].rsplit("/_history/", 1) == [second.headers["location"].rsplit("/_history/")[0],
                                                                 "1"]
    assert second.headers["location"].endswith("/_history/2")
    docref_path = local(second.headers["location"]).split("/_history")[0]
    current = demo_client.get(docref_path).json()
    assert current["meta"]["versionId"] == "2"
    assert current["content"][0]["attachment"]["url"] == f"Bundle/{new['id']}"
    previous = demo_client.get(f"{docref_path}/_history/1").json()
    assert previous["content"][0]["attachment"]["url"] == f"Bundle/{old['id']}"
    # both documents stay readable, unchanged
    again = demo_client.get(f"/fhir/Composition/{composition_of(old)['id']}/$document")
    assert again.status_code == 200
    assert again.json() == old


# -- $document and $render -------------------------------------------------------------------------


def test_composition_document_returns_the_stored_bundle(demo_client) -> None:
    bundle = issue(demo_client).json()
    response = demo_client.get(f"/fhir/Composition/{composition_of(bundle)['id']}/$document")
    assert response.status_code == 200
    assert response.json() == bundle
    assert demo_client.get("/fhir/Composition/nope/$document").status_code == 404


def test_document_needs_read_on_composition_and_bundle(demo_client, make_token) -> None:
    composition_id = composition_of(issue(demo_client).json())["id"]
    only_composition = {"Authorization": f"Bearer {make_token('user/Composition.r')}"}
    response = demo_client.get(f"/fhir/Composition/{composition_id}/$document", headers=only_composition)
    assert response.status_code == 403


def test_render_is_printable_html_with_every_heading(demo_client) -> None:
    bundle = issue(demo_client).json()
    composition = composition_of(bundle)
    response = demo_client.get(f"/fhir/Composition/{composition['id']}/$render", headers={"Accept": "text/html"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "@media print" in page
    assert "Alice Mary Hughes" in page and "999 234 5675" in page
    for section in composition["section"]:
        assert f"<h2>{section['title']}</h2>" in page
    docref_id = demo_client.get("/fhir/DocumentReference", params={"patient": "pat-alice-hughes",
                                                                    "type": "373942005", "_count": "50"}).json()
    ours = [e["resource"]["id"] for e in docref_id["entry"] if e["resource"].get("masterIdentifier")]
    by_reference = demo_client.get(f"/fhir/DocumentReference/{ours[0]}/$render")
    assert by_reference.status_code == 200 and "<h1>Inpatient discharge summary</h1>" in by_reference.text


def test_render_refuses_a_client_that_accepts_only_json_fhir_errors_stay_json(demo_client) -> None:
    response = demo_client.get("/fhir/Composition/nope/$render", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(FHIR)


# -- escaping --------------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_stored_markup_comes_out_escaped_in_narrative_and_page(demo_client) -> None:
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"text": HOSTILE},
        "note": [{"text": HOSTILE}],
        "subject": {"reference": "Patient/pat-alice-hughes"},
        "encounter": {"reference": f"Encounter/{ALICE_ADMISSION}"},
    }
    created = demo_client.post("/fhir/Condition", json=condition, headers={"Content-Type": FHIR})
    assert created.status_code == 201, created.text
    bundle = issue(demo_client).json()
    diagnoses = next(s for s in composition_of(bundle)["section"] if s["title"] == "Diagnoses")
    div = diagnoses["text"]["div"]
    assert "<script" not in div and "<img" not in div
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in div
    page = demo_client.get(f"/fhir/Composition/{bundle['id']}/$render").text
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


# -- receiving --------------------------------------------------------------------------------------


def received(bundle: dict[str, Any]) -> dict[str, Any]:
    """A document as another system would send it: its own ids, no server meta."""
    copied = copy.deepcopy(bundle)
    copied.pop("meta", None)
    copied["id"] = str(uuid.uuid4())
    copied["identifier"] = {"system": "https://other-trust.example.org/Id/document", "value": str(uuid.uuid4())}
    return copied


def submit(client, bundle: dict[str, Any], **headers: str):
    return client.post("/fhir/$submit-document", content=json.dumps(bundle),
                       headers={"Content-Type": FHIR, **headers})


def test_a_complete_received_document_is_stored(demo_client) -> None:
    document = received(issue(demo_client).json())
    response = submit(demo_client, document)
    assert response.status_code == 201, response.text
    docref = response.json()
    assert docref["resourceType"] == "DocumentReference"
    assert docref["masterIdentifier"] == document["identifier"]
    assert docref["subject"] == {"reference": "Patient/pat-alice-hughes"}  # matched by NHS number
    bundle_id = docref["content"][0]["attachment"]["url"].split("/")[1]
    stored = demo_client.get(f"/fhir/Bundle/{bundle_id}").json()
    assert stored["identifier"] == document["identifier"]
    assert stored["entry"] == document["entry"]
    rendered = demo_client.get(f"/fhir/DocumentReference/{docref['id']}/$render")
    assert rendered.status_code == 200
    again = submit(demo_client, document)  # re-sent: the same DocumentReference, a new version
    assert again.status_code == 201 and again.json()["id"] == docref["id"]
    assert again.json()["meta"]["versionId"] == "2"


def test_a_received_document_missing_mandatory_headings_is_rejected_naming_them(demo_client) -> None:
    """UK-REFERENCE test 8."""
    document = received(issue(demo_client).json())
    sections = composition_of(document)["section"]
    composition_of(document)["section"] = [
        s for s in sections if s["title"] not in {"Allergies and adverse reactions", "Diagnoses"}
    ]
    response = submit(demo_client, document)
    assert response.status_code == 422
    problems = issues_of(response)
    named = " | ".join(i["diagnostics"] for i in problems)
    assert "Allergies and adverse reactions" in named and "Diagnoses" in named
    assert {i["details"]["coding"][0]["code"] for i in problems} == {"missing-heading"}
    assert len(problems) == 2
    assert demo_client.get("/fhir/DocumentReference", params={"identifier": document["identifier"]["value"]}
                           ).json().get("total", 0) == 0


def test_headings_are_recognised_by_code_or_title(demo_client) -> None:
    document = received(issue(demo_client).json())
    for section in composition_of(document)["section"]:
        if section["title"] == "Allergies and adverse reactions":
            section.pop("code")  # title alone still names the heading
        if section["title"] == "Diagnoses":
            section["title"] = "Diagnoses made"  # code alone still names it
    assert submit(demo_client, document).status_code == 201


def test_received_emergency_care_document_is_checked_against_its_own_headings(demo_client) -> None:
    document = received(issue(demo_client, "emergency-care-discharge").json())
    composition = composition_of(document)
    composition.pop("category")  # told apart from an inpatient discharge by its title alone
    composition["section"] = [s for s in composition["section"] if s["title"] != "Presenting complaints or issues"]
    response = submit(demo_client, document)
    assert response.status_code == 422
    assert "Presenting complaints or issues" in issues_of(response)[0]["diagnostics"]


def test_received_bundles_that_are_not_documents_or_not_r4_are_refused(demo_client) -> None:
    document = received(issue(demo_client).json())
    not_a_document = {**document, "type": "collection"}
    assert submit(demo_client, not_a_document).status_code == 422
    unknown_type = copy.deepcopy(document)
    composition_of(unknown_type)["type"] = {"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]}
    response = submit(demo_client, unknown_type)
    assert response.status_code == 422 and "373942005" in issues_of(response)[0]["diagnostics"]
    invalid = copy.deepcopy(document)
    composition_of(invalid)["date"] = "yesterday"
    assert submit(demo_client, invalid).status_code == 400
    hostile = copy.deepcopy(document)
    composition_of(hostile)["section"][0]["text"]["div"] = f'<div xmlns="http://www.w3.org/1999/xhtml">{HOSTILE}</div>'
    assert submit(demo_client, hostile).status_code == 400


def test_submitting_needs_create_on_document_reference(demo_client, make_token) -> None:
    document = received(issue(demo_client).json())
    response = submit(demo_client, document, Authorization=f"Bearer {make_token('user/*.rs')}")
    assert response.status_code == 403


def test_received_labels_travel_with_the_document(demo_client) -> None:
    document = received(issue(demo_client).json())
    psy = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
    document["entry"][3]["resource"].setdefault("meta", {})["security"] = [psy]
    response = submit(demo_client, document)
    assert response.status_code == 201, response.text
    docref = response.json()
    assert psy in docref["meta"]["security"]
    composition_id = docref["context"]["related"][0]["reference"].split("/")[1]
    assert psy in demo_client.get(f"/fhir/Composition/{composition_id}").json()["meta"]["security"]


def test_documents_follow_the_gate_for_relationship_and_role(demo_client, make_token) -> None:
    """Whatever the gate decides for reading the record (relationship, consent) decides the document too."""
    elsewhere = {"Authorization": f"Bearer {make_token(org='X99', user='elsewhere')}"}
    may_read = demo_client.get(f"/fhir/Encounter/{ALICE_ADMISSION}", headers=elsewhere).status_code == 200
    assert (issue(demo_client, **elsewhere).status_code == 201) == may_read
    bundle = issue(demo_client).json()
    may_read_composition = demo_client.get(f"/fhir/Composition/{bundle['id']}", headers=elsewhere).status_code == 200
    for path in (f"/fhir/Composition/{bundle['id']}/$document", f"/fhir/Bundle/{bundle['id']}",
                 f"/fhir/Composition/{bundle['id']}/$render"):
        assert (demo_client.get(path, headers=elsewhere).status_code == 200) == may_read_composition, path
    receptionist = {"Authorization": f"Bearer {make_token(role='R8009', org='RR8', user='reception')}"}
    may_read_clinical = demo_client.get("/fhir/Condition/cond-alice-af", headers=receptionist).status_code == 200
    assert (issue(demo_client, **receptionist).status_code == 201) == may_read_clinical


def test_procedures_of_the_encounter_fill_their_heading(demo_client) -> None:
    procedure = {"resourceType": "Procedure", "id": "proc-alice-cxr", "status": "completed",
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "399208008",
                                      "display": "Plain chest X-ray"}]},
                 "subject": {"reference": "Patient/pat-alice-hughes"},
                 "encounter": {"reference": f"Encounter/{ALICE_ADMISSION}"},
                 "performedDateTime": "2025-01-06T11:00:00+00:00"}
    stored = demo_client.put("/fhir/Procedure/proc-alice-cxr", json=procedure, headers={"Content-Type": FHIR})
    assert stored.status_code == 201, stored.text
    bundle = issue(demo_client).json()
    section = next(s for s in composition_of(bundle)["section"] if s["title"] == "Procedures")
    assert section["entry"] == [{"reference": "Procedure/proc-alice-cxr"}]
    assert "Plain chest X-ray" in section["text"]["div"]


def test_a_document_reads_and_discloses_only_what_it_can_use(demo_client, database_url) -> None:
    """A procedure of the patient's other encounter and a completed order cannot enter the discharge summary:
    they are neither read for it nor audited as disclosed by it. What it uses is (and an active Flag, whose
    type has no status search parameter, is still read in full)."""
    def procedure(res_id: str, encounter: str) -> dict[str, Any]:
        return {"resourceType": "Procedure", "id": res_id, "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "399208008",
                                     "display": "Plain chest X-ray"}]},
                "subject": {"reference": "Patient/pat-alice-hughes"},
                "encounter": {"reference": f"Encounter/{encounter}"}, "performedDateTime": "2025-01-06T11:00:00+00:00"}

    done = {"resourceType": "ServiceRequest", "id": "sr-alice-done", "status": "completed", "intent": "order",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "26604007", "display": "FBC"}]},
            "subject": {"reference": "Patient/pat-alice-hughes"}}
    for resource in (procedure("proc-alice-this", ALICE_ADMISSION), procedure("proc-alice-other",
                                                                               "enc-alice-community-2025-02"), done):
        stored = demo_client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                                 headers={"Content-Type": FHIR})
        assert stored.status_code == 201, stored.text
    before = _audit_records(database_url)
    bundle = issue(demo_client).json()
    sections = {s["title"]: s for s in composition_of(bundle)["section"]}
    assert sections["Procedures"]["entry"] == [{"reference": "Procedure/proc-alice-this"}]
    assert "Flag/flag-alice-lpa" in json.dumps(sections)
    disclosed = " ".join(_audit_records(database_url)[len(before):])
    assert "Procedure/proc-alice-this" in disclosed and "Flag/flag-alice-lpa" in disclosed
    assert "Procedure/proc-alice-other" not in disclosed and "ServiceRequest/sr-alice-done" not in disclosed


def _audit_records(database_url: str) -> list[str]:
    """Every audit record's text, oldest first."""
    if database_url.startswith("postgresql"):
        import psycopg

        from tests.conftest import _pg_conninfo

        with psycopg.connect(_pg_conninfo(database_url)) as conn:
            return [row[0] for row in conn.execute("SELECT record FROM audit_log ORDER BY seq")]
    import sqlite3

    with sqlite3.connect(database_url.split(":///", 1)[1]) as conn:
        return [row[0] for row in conn.execute("SELECT record FROM audit_log ORDER BY seq")]
