"""The CapabilityStatement against the running server: what it advertises is served, and nothing more.

For every resource type listed, each advertised interaction is performed and must succeed, each
advertised search and result parameter (and each `_include`/`_revinclude` value) must be accepted;
the interactions and parameters it does not advertise must be refused. The operations listed must be
exactly the application's `$` routes.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from engine.fhir.capability import capability_statement
from engine.search.params import RESULT_PARAMS
from engine.search.registry import params_for
from engine.transfers.receivers import org_for_ods

FHIR = "application/fhir+json"
STATEMENT = capability_statement("http://testserver/fhir", {}, "2026-01-01T00:00:00Z")
LISTED_TYPES = sorted(entry["type"] for entry in STATEMENT["rest"][0]["resource"])

P = {"reference": "Patient/p1"}
CODE = {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}
# A small valid instance of each type that can be created over REST.
SAMPLES: dict[str, dict[str, Any]] = {
    "AllergyIntolerance": {"patient": P},
    "Appointment": {"status": "booked", "participant": [{"actor": P, "status": "accepted"}]},
    "CareTeam": {"subject": P},
    "Composition": {"status": "final", "type": CODE, "subject": P, "date": "2025-01-01",
                    "author": [{"reference": "Practitioner/x"}], "title": "Letter"},
    "Condition": {"subject": P},
    "Consent": {"status": "active", "patient": P,
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                      "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]},
    "DiagnosticReport": {"status": "final", "code": CODE, "subject": P},
    "DocumentReference": {"status": "current", "subject": P,
                          "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]},
    "Encounter": {"status": "finished", "subject": P,
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
    "EpisodeOfCare": {"status": "active", "patient": P},
    "Flag": {"status": "active", "code": CODE, "subject": P},
    "HealthcareService": {"name": "Clinic"},
    "Immunization": {"status": "completed", "vaccineCode": CODE, "patient": P, "occurrenceDateTime": "2025-01-01"},
    "Location": {"name": "Ward"},
    "MedicationAdministration": {"status": "completed", "medicationCodeableConcept": CODE, "subject": P,
                                 "effectiveDateTime": "2025-01-01"},
    "MedicationRequest": {"status": "active", "intent": "order", "medicationCodeableConcept": CODE, "subject": P},
    "MedicationStatement": {"status": "active", "medicationCodeableConcept": CODE, "subject": P},
    "Observation": {"status": "final", "code": CODE, "subject": P},
    "Organization": {"name": "Org"},
    "Patient": {"name": [{"family": "Smith"}]},
    "Practitioner": {"name": [{"family": "Jones"}]},
    "PractitionerRole": {"active": True},
    "Procedure": {"status": "completed", "subject": P},
    "Provenance": {"target": [P], "recorded": "2025-01-01T00:00:00Z",
                   "agent": [{"who": {"reference": "Practitioner/x"}}]},
    "RelatedPerson": {"patient": P},
    "ServiceRequest": {"status": "active", "intent": "order", "subject": P},
    "Task": {"status": "requested", "intent": "order", "for": P},
    "Subscription": {"status": "requested", "reason": "capability test",
                     "criteria": f"Task?owner=Organization/{org_for_ods('RR8').id}",
                     "channel": {"type": "rest-hook", "endpoint": "https://gp.example/hook"}},
}
# One value of each search parameter type; codes from closed value sets where the server checks them.
VALUES = {"token": "x", "reference": "x", "string": "x", "date": "2025-01-01", "uri": "http://example.org/x",
          "quantity": "5", "number": "5"}
CODES = {("AuditEvent", "action"): "R", ("AuditEvent", "outcome"): "0", ("AuditEvent", "subtype"): "read"}
RESULT_VALUES = {"_count": "1", "_sort": "-_lastUpdated", "_total": "accurate", "_summary": "count",
                 "_elements": "id", "_include": "*", "_revinclude": "Provenance:target", "_format": "json"}
CANDIDATE_RESULT_PARAMS = sorted(RESULT_PARAMS - {"_cursor", "_pretty"})
# Instance interactions in an order that ends with the instance deleted.
ORDER = ["create", "read", "vread", "update", "history-instance", "history-type", "search-type", "delete"]


def entry_for(res_type: str) -> dict[str, Any]:
    return next(e for e in STATEMENT["rest"][0]["resource"] if e["type"] == res_type)


def result_params(entry: dict[str, Any]) -> list[str]:
    """The result parameters the entry's documentation names ("Result parameters: _count, _format.")."""
    text = entry.get("documentation", "")
    if "Result parameters: " not in text:
        return []
    listed = text.split("Result parameters: ", 1)[1].split(".", 1)[0]
    return [] if listed == "none" else listed.split(", ")


def details(response) -> str | None:
    try:
        issue = response.json()["issue"][0]
    except (ValueError, KeyError, IndexError):
        return None
    return issue.get("details", {}).get("coding", [{}])[0].get("code")


def refused(response) -> bool:
    """Not served: 405, no such endpoint or type, or a 400 naming an unknown parameter."""
    return response.status_code == 405 or response.status_code in (400, 404) and details(response) in (
        "no-endpoint", "unknown-type", "bad-search-parameter", "not-found")


@pytest.fixture
def api(client, make_token):
    """`headers_for(type)`: a full-scope token, with the IG officer's role (R8012) for the audit log."""
    officer = {"Authorization": f"Bearer {make_token('system/*.cruds', role='R8012')}"}
    return client, (lambda res_type: officer if res_type == "AuditEvent" else {})


def perform(client, res_type: str, code: str, res_id: str, headers: dict[str, str]):
    base = f"/fhir/{res_type}"
    body = {"resourceType": res_type, **SAMPLES.get(res_type, {})}
    write = {**headers, "Content-Type": FHIR}
    requests = {
        "create": lambda: client.post(base, json=body, headers=write),
        "read": lambda: client.get(f"{base}/{res_id}", headers=headers),
        "vread": lambda: client.get(f"{base}/{res_id}/_history/1", headers=headers),
        "update": lambda: client.put(f"{base}/{res_id}", json={**body, "id": res_id}, headers=write),
        "history-instance": lambda: client.get(f"{base}/{res_id}/_history", headers=headers),
        "history-type": lambda: client.get(f"{base}/_history", headers=headers),
        "search-type": lambda: client.get(base, headers=headers),
        "delete": lambda: client.delete(f"{base}/{res_id}", headers=headers),
    }
    return requests[code]()


def an_instance(client, res_type: str, entry: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The id of an instance to act on: created when the type allows it, else found by a search."""
    codes = {i["code"] for i in entry["interaction"]}
    if "create" in codes:
        created = perform(client, res_type, "create", "", headers)
        assert created.status_code == 201, created.text
        return created.json()["id"]
    if "search-type" in codes:
        perform(client, res_type, "search-type", "", headers)  # an audited search: the audit log has one entry
        found = perform(client, res_type, "search-type", "", headers).json().get("entry", [])
        return found[0]["resource"]["id"] if found else None
    return None


def test_the_statement_is_valid_fhir() -> None:
    CapabilityStatement.model_validate(STATEMENT)


@pytest.mark.parametrize("res_type", LISTED_TYPES)
def test_what_the_statement_says_of_a_type_is_what_the_server_does(api, res_type: str) -> None:
    client, headers_for = api
    check_interactions(client, res_type, headers_for(res_type))
    check_conditional_interactions(client, res_type, headers_for(res_type))
    if "search-type" in {i["code"] for i in entry_for(res_type)["interaction"]}:
        check_search_parameters(client, res_type, headers_for(res_type))


def check_interactions(client, res_type: str, headers: dict[str, str]) -> None:
    """Each advertised interaction succeeds on an instance; the others are refused."""
    entry = entry_for(res_type)
    advertised = {i["code"] for i in entry["interaction"]}
    assert advertised <= set(ORDER), advertised - set(ORDER)
    res_id = an_instance(client, res_type, entry, headers)
    for code in ORDER:
        response = perform(client, res_type, code, res_id or "no-such-id", headers)
        if code not in advertised:
            assert refused(response), (code, response.status_code, response.text)
        elif res_id is None and code != "search-type":
            # Nothing to act on (Bundle: stored documents only): the interaction is served, the id unknown.
            assert response.status_code == 404 and details(response) == "not-found", (code, response.text)
        else:
            assert response.status_code < 400, (code, response.status_code, response.text)


def check_conditional_interactions(client, res_type: str, headers: dict[str, str]) -> None:
    entry = entry_for(res_type)
    res_id = an_instance(client, res_type, entry, headers) if entry.get("conditionalCreate") else None
    body = {"resourceType": res_type, **SAMPLES.get(res_type, {})}
    write = {**headers, "Content-Type": FHIR}
    if res_id is not None:
        again = client.post(f"/fhir/{res_type}", json=body, headers={**write, "If-None-Exist": f"_id={res_id}"})
        assert again.status_code == 200, again.text  # the match, not a second resource
    update = client.put(f"/fhir/{res_type}", params={"_id": res_id or "x"}, json={**body, "id": res_id or "x"},
                        headers=write)
    delete = client.delete(f"/fhir/{res_type}", params={"_id": res_id or "x"}, headers=headers)
    assert (update.status_code < 400) is bool(entry.get("conditionalUpdate")), update.text
    assert (delete.status_code < 400) is (entry.get("conditionalDelete", "not-supported") != "not-supported"), \
        delete.text
    if not entry.get("conditionalUpdate"):
        assert refused(update), update.text
    if entry.get("conditionalDelete", "not-supported") == "not-supported":
        assert refused(delete), delete.text


def check_search_parameters(client, res_type: str, headers: dict[str, str]) -> None:
    """Each advertised search and result parameter and include is accepted; the others answer 400.

    Accepted ones are sent 20 to a request (a 400 names the parameter), refused ones one by one."""
    entry = entry_for(res_type)

    def search(items: list[tuple[str, str]]):
        return client.get(f"/fhir/{res_type}", params=items, headers=headers)

    advertised = {p["name"]: p["type"] for p in entry.get("searchParam", [])}
    honoured = result_params(entry)
    includes = [("_include", v) for v in entry.get("searchInclude", [])]
    includes += [("_revinclude", v) for v in entry.get("searchRevInclude", [])]
    assert not includes or {"_include", "_revinclude"} <= set(honoured), res_type
    criteria = [(name, CODES.get((res_type, name), VALUES[kind])) for name, kind in advertised.items()]
    for batch in (*chunks(criteria), *chunks(includes), *([(name, RESULT_VALUES[name])] for name in honoured)):
        response = search(batch)
        assert response.status_code == 200, (batch, response.text)
    known = {code: p.type for code, p in params_for(res_type).items()} | {"_id": "token", "_lastUpdated": "date"}
    unknown = [(name, CODES.get((res_type, name), VALUES[kind])) for name, kind in known.items()
               if name not in advertised]
    unknown += [(name, "AuditEvent:patient" if name == "_include" else RESULT_VALUES[name])
                for name in CANDIDATE_RESULT_PARAMS if name not in honoured]
    for item in unknown:
        response = search([item])
        assert refused(response) and response.status_code == 400, (item, response.text)


def chunks(items: list[tuple[str, str]], size: int = 20) -> list[list[tuple[str, str]]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def test_includes_name_only_types_the_store_searches() -> None:
    """An `_include`/`_revinclude` is resolved in the store: a type searched elsewhere (the audit log)
    would silently add nothing, so it must not be offered."""
    for entry in STATEMENT["rest"][0]["resource"]:
        for value in entry.get("searchInclude", []) + entry.get("searchRevInclude", []):
            if value == "*":
                continue
            source, code = value.split(":")[:2]
            source_entry = entry_for(source)
            assert "_include" in result_params(source_entry), value
            assert {"name": code, "type": "reference"}.items() <= next(
                p for p in source_entry["searchParam"] if p["name"] == code).items(), value
        assert not any(v.startswith("AuditEvent:") for v in entry.get("searchRevInclude", [])), entry["type"]


def test_the_audit_log_is_advertised_as_read_and_search_with_its_own_parameters() -> None:
    entry = entry_for("AuditEvent")
    assert [i["code"] for i in entry["interaction"]] == ["read", "search-type"]
    assert {p["name"] for p in entry["searchParam"]} == {
        "patient", "agent", "entity", "organization", "agent-role", "action", "outcome", "purpose", "subtype", "date"}
    assert result_params(entry) == ["_count", "_format"]
    assert "searchInclude" not in entry and "searchRevInclude" not in entry


def test_operations_are_exactly_the_served_ones(client) -> None:
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    listed = {(None, op["name"]) for op in rest.get("operation", [])}
    listed |= {(entry["type"], op["name"]) for entry in rest["resource"] for op in entry.get("operation", [])}
    served = set()
    for route in client.app.routes:
        parts = getattr(route, "path", "").split("/")
        if len(parts) > 2 and parts[1] == "fhir" and parts[-1].startswith("$"):
            served.add((parts[2] if len(parts) == 5 else None, parts[-1][1:]))
    assert listed == served
    definitions = {(entry["type"], op["name"]): op["definition"]
                   for entry in rest["resource"] for op in entry.get("operation", [])}
    definitions |= {(None, op["name"]): op["definition"] for op in rest["operation"]}
    assert definitions[(None, "export")] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    assert definitions[("Patient", "everything")] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    assert definitions[("Patient", "access-log")] == \
        "https://fhir.sharedcare.dev/OperationDefinition/Patient-access-log"
    assert all(url.startswith(("http://hl7.org/fhir/", "https://fhir.sharedcare.dev/OperationDefinition/"))
               for url in definitions.values())


def test_the_served_statement_is_the_built_one(client) -> None:
    served = client.get("/fhir/metadata").json()
    assert served["rest"][0]["resource"] == STATEMENT["rest"][0]["resource"]
