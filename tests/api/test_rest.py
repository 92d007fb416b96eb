"""The FHIR REST facade end to end through the ASGI app, on the test backend (SQLite or PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

FHIR = "application/fhir+json"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def patient(family: str = "Smith", nhs: str = "9912003888", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1950-03-04",
        **extra,
    }


# Registered with the test token's organisation (RR8): a legitimate relationship for its users.
REGISTERED_AT_RR8 = {"generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                           "value": "RR8"}}]}


def observation(patient_id: str, value: float = 70.0, when: str = "2025-01-01T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def post(client, path: str, body: Any, **headers: str):
    return client.post(f"/fhir/{path}", json=body, headers={"Content-Type": FHIR, **headers})


def put(client, path: str, body: Any, **headers: str):
    return client.put(f"/fhir/{path}", json=body, headers={"Content-Type": FHIR, **headers})


def outcome_codes(response) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [issue["code"] for issue in body["issue"]]


# -- metadata, auth ------------------------------------------------------------------------------------


def test_metadata_is_public_and_lists_search_parameters(client) -> None:
    response = client.get("/fhir/metadata", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR)
    statement = response.json()
    assert statement["fhirVersion"] == "4.0.1"
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    names = {p["name"] for p in patient_entry["searchParam"]}
    assert {"identifier", "family", "given", "birthdate", "gender", "general-practitioner", "_id"} <= names
    assert statement["rest"][0]["security"]["service"]


def test_requests_without_a_token_get_401_with_a_challenge(client) -> None:
    response = client.get("/fhir/Patient", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert outcome_codes(response) == ["login"]
    garbled = client.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.jwt"})
    assert garbled.status_code == 401


def test_scopes_are_enforced_per_interaction_and_type(client, make_token) -> None:
    reader = {"Authorization": f"Bearer {make_token('user/Patient.rs')}"}
    created = post(client, "Patient", patient(**REGISTERED_AT_RR8))
    assert client.get(f"/fhir/Patient/{created.json()['id']}", headers=reader).status_code == 200
    denied = client.post("/fhir/Patient", json=patient(), headers={**reader, "Content-Type": FHIR})
    assert denied.status_code == 403
    assert outcome_codes(denied) == ["forbidden"]
    assert client.get("/fhir/Observation", headers=reader).status_code == 403


def test_patient_scoped_token_sees_only_its_patient(client, make_token) -> None:
    mine = post(client, "Patient", patient("Mine", **REGISTERED_AT_RR8)).json()["id"]
    other = post(client, "Patient", patient("Other", nhs="9449305552", **REGISTERED_AT_RR8)).json()["id"]
    post(client, "Observation", observation(mine))
    post(client, "Observation", observation(other))
    headers = {"Authorization": f"Bearer {make_token('patient/*.rs', patient=mine)}"}
    assert client.get(f"/fhir/Patient/{mine}", headers=headers).status_code == 200
    assert client.get(f"/fhir/Patient/{other}", headers=headers).status_code == 404
    bundle = client.get("/fhir/Observation", headers=headers).json()
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{mine}"


# -- CRUD, versions, history -------------------------------------------------------------------------------


def test_create_read_update_delete_and_history(client) -> None:
    created = post(client, "Patient", patient())
    assert created.status_code == 201
    body = created.json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")

    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.json() == body
    assert read.headers["etag"] == 'W/"1"' and "last-modified" in read.headers

    body["name"][0]["family"] = "Jones"
    updated = put(client, f"Patient/{pid}", body, **{"If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    stale = put(client, f"Patient/{pid}", body, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412

    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["name"][0]["family"] == "Smith"
    assert client.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404

    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert outcome_codes(gone) == ["deleted"]

    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    type_history = client.get("/fhir/Patient/_history?_count=2").json()
    assert len(type_history["entry"]) == 2
    assert any(link["relation"] == "next" for link in type_history["link"])


def test_update_as_create_and_prefer(client) -> None:
    created = put(client, "Patient/pat-1", {**patient(), "id": "pat-1"})
    assert created.status_code == 201
    unchanged = put(client, "Patient/pat-1", {**patient(), "id": "pat-1"})
    assert unchanged.status_code == 200 and unchanged.headers["etag"] == 'W/"1"'  # nothing new, no new version
    minimal = put(client, "Patient/pat-1", {**patient(), "id": "pat-1", "gender": "other"}, Prefer="return=minimal")
    assert minimal.status_code == 200 and minimal.content == b""
    assert minimal.headers["etag"] == 'W/"2"'
    outcome = post(client, "Patient", patient(), Prefer="return=OperationOutcome")
    assert outcome.status_code == 201 and outcome.json()["resourceType"] == "OperationOutcome"


def test_conditional_create_and_update(client) -> None:
    criteria = {"If-None-Exist": f"identifier={NHS}|9912003888"}
    first = post(client, "Patient", patient(), **criteria)
    second = post(client, "Patient", patient(), **criteria)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]

    changed = patient(family="Changed")
    updated = client.put(f"/fhir/Patient?identifier={NHS}|9912003888", json=changed,
                         headers={"Content-Type": FHIR})
    assert updated.status_code == 200 and updated.json()["id"] == first.json()["id"]
    fresh = client.put(f"/fhir/Patient?identifier={NHS}|9449305552", json=patient(nhs="9449305552"),
                       headers={"Content-Type": FHIR})
    assert fresh.status_code == 201


# -- errors ----------------------------------------------------------------------------------------------------


def test_invalid_nhs_number_is_422_naming_the_field(client) -> None:
    response = post(client, "Patient", patient(nhs="9912003814"))
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Patient.identifier[0].value"]
    assert "9912003814" not in response.text


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        ({"resourceType": "Patient", "gender": 7}, 400, "Patient.gender"),
        ({"resourceType": "Patient", "unknownThing": 1}, 400, "Patient.unknownThing"),
        ({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, 400, "resourceType"),
    ],
)
def test_structural_errors_are_400_naming_the_field(client, body, status, expression) -> None:
    response = post(client, "Patient", body)
    assert response.status_code == status
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith(expression) for e in expressions), expressions


def test_bad_requests_are_operation_outcomes(client) -> None:
    malformed = client.post("/fhir/Patient", content=b"{not json", headers={"Content-Type": FHIR})
    assert malformed.status_code == 400 and outcome_codes(malformed) == ["invalid"]
    wrong_type = client.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"})
    assert wrong_type.status_code == 415
    huge = client.post("/fhir/Patient", content=b"{" + b" " * (11 * 1024 * 1024) + b"}",
                       headers={"Content-Type": FHIR})
    assert huge.status_code == 413
    assert client.get("/fhir/Spaceship/1").status_code == 404
    assert client.get("/fhir/Patient/does-not-exist").status_code == 404
    assert client.get("/fhir/Patient?_format=xml").status_code == 406
    assert client.get("/fhir/Patient", headers={"Accept": "application/fhir+xml"}).status_code == 406
    mismatch = put(client, "Patient/abc", {**patient(), "id": "xyz"})
    assert mismatch.status_code == 400
    assert client.patch("/fhir/Patient/abc", json={}).status_code == 405
    assert client.get("/nowhere").status_code == 404
    assert client.get("/nowhere").json()["resourceType"] == "OperationOutcome"


# -- search ------------------------------------------------------------------------------------------------------


def test_search_by_name_identifier_and_paging(client) -> None:
    pid = post(client, "Patient", patient("Ó'Brien")).json()["id"]
    post(client, "Patient", patient("Smith", nhs="9449305552"))
    assert client.get("/fhir/Patient?family=o'bri").json()["total"] == 1
    assert client.get("/fhir/Patient?family:exact=Ó'Brien").json()["total"] == 1
    assert client.get(f"/fhir/Patient?identifier={NHS}|9912003888").json()["entry"][0]["resource"]["id"] == pid
    for i in range(25):
        post(client, "Observation", observation(pid, value=60 + i, when=f"2025-01-{i + 1:02d}T10:00:00Z"))
    page = client.get(f"/fhir/Observation?patient={pid}&_count=10&_sort=-date").json()
    assert page["total"] == 25 and len(page["entry"]) == 10
    values = [e["resource"]["valueQuantity"]["value"] for e in page["entry"]]
    assert values == sorted(values, reverse=True)
    seen = [e["resource"]["id"] for e in page["entry"]]
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    while next_url:
        page = client.get(next_url.replace("http://testserver", "")).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        next_url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 25 == len(set(seen))


def test_search_result_parameters(client) -> None:
    pid = post(client, "Patient", patient()).json()["id"]
    oid = post(client, "Observation", observation(pid)).json()["id"]
    count = client.get(f"/fhir/Observation?subject=Patient/{pid}&_summary=count").json()
    assert count["total"] == 1 and not count.get("entry")
    included = client.get(f"/fhir/Observation?_id={oid}&_include=Observation:patient").json()
    modes = sorted(e["search"]["mode"] for e in included["entry"])
    assert modes == ["include", "match"]
    rev = client.get(f"/fhir/Patient?_id={pid}&_revinclude=Observation:subject").json()
    assert {e["resource"]["resourceType"] for e in rev["entry"]} == {"Patient", "Observation"}
    elements = client.get(f"/fhir/Observation?_id={oid}&_elements=status").json()["entry"][0]["resource"]
    assert "status" in elements and "valueQuantity" not in elements
    assert any(t["code"] == "SUBSETTED" for t in elements["meta"]["tag"])
    chained = client.get(f"/fhir/Observation?subject:Patient.identifier={NHS}|9912003888").json()
    assert chained["total"] == 1
    by_date = client.get(f"/fhir/Observation?patient={pid}&date=ge2025-01-01&date=lt2025-01-02").json()
    assert by_date["total"] == 1
    missing = client.get("/fhir/Observation?encounter:missing=true").json()
    assert missing["total"] == 1


def test_unknown_search_parameter_is_400_unless_lenient(client) -> None:
    strict = client.get("/fhir/Patient?shoe-size=9")
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["expression"] == ["shoe-size"]
    lenient = client.get("/fhir/Patient?shoe-size=9", headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert client.get("/fhir/Observation?date=not-a-date").status_code == 400


def test_a_search_with_thousands_of_parameters_is_400_not_minutes_of_database_time(client) -> None:
    many = client.get("/fhir/Patient?" + "&".join(f"family=a{i}" for i in range(2000)))
    assert many.status_code == 400 and many.json()["resourceType"] == "OperationOutcome"
    assert many.json()["issue"][0]["expression"] == ["family"]


def test_post_search_takes_a_form(client) -> None:
    post(client, "Patient", patient())
    response = client.post("/fhir/Patient/_search", content=b"family=smith",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and response.json()["total"] == 1


def test_everything_returns_the_compartment_paged(client) -> None:
    pid = post(client, "Patient", patient()).json()["id"]
    other = post(client, "Patient", patient(nhs="9449305552")).json()["id"]
    for i in range(5):
        post(client, "Observation", observation(pid, value=i))
    post(client, "Observation", observation(other))
    bundle = client.get(f"/fhir/Patient/{pid}/$everything?_count=4").json()
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    rest = client.get(next_url.replace("http://testserver", "")).json()
    ids += [e["resource"]["id"] for e in rest["entry"]]
    assert len(ids) == 6 == len(set(ids))
    only_obs = client.get(f"/fhir/Patient/{pid}/$everything?_type=Observation").json()
    assert {e["resource"]["resourceType"] for e in only_obs["entry"]} == {"Observation"}


# -- transaction and batch -------------------------------------------------------------------------------------------


def test_transaction_resolves_urn_uuid_references(client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": observation("placeholder") | {
                "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = post(client, "", bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    pid = result["entry"][0]["response"]["location"].split("/")[1]
    obs = client.get(f"/fhir/Observation?patient={pid}").json()
    assert obs["total"] == 1


def test_transaction_is_all_or_nothing(client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(family="Rollback"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(nhs="9912003814"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = post(client, "", bundle)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"][0].startswith("Bundle.entry[1]")
    assert client.get("/fhir/Patient?family=rollback").json()["total"] == 0


def test_batch_reports_each_entry(client) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(nhs="9912003814"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient?family=smith"}},
        ],
    }
    result = post(client, "", bundle).json()
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[0] == "201 Created" and statuses[1].startswith("422") and statuses[2].startswith("200")
    assert result["entry"][2]["resource"]["total"] == 1


# -- operations --------------------------------------------------------------------------------------------------------


def test_operational_endpoints(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    client.get("/fhir/Patient")
    metrics = client.get("/metrics").text
    assert 'route="/fhir/{type}"' in metrics
    # Latency by route and status, as the counts are.
    assert 'sharedcare_http_request_duration_seconds_count{method="GET",route="/fhir/{type}",status="200"}' in metrics
    smart = client.get("/fhir/.well-known/smart-configuration").json()
    assert "permission-v2" in smart["capabilities"]
    assert client.get("/openapi.json").json()["info"]["title"].startswith("sharedcare")


def test_request_log_carries_no_patient_identifiers(client, caplog) -> None:
    import logging

    logger = logging.getLogger("sharedcare.request")
    logger.propagate = True
    caplog.set_level(logging.INFO, logger="sharedcare.request")
    pid = post(client, "Patient", patient()).json()["id"]
    client.get(f"/fhir/Patient?identifier={NHS}|9912003888")
    client.get(f"/fhir/Patient/{pid}")
    records = [r for r in caplog.records if r.name == "sharedcare.request"]
    assert len(records) >= 3
    for record in records:
        text = str(getattr(record, "fields", {})) + record.getMessage()
        assert "9912003888" not in text and pid not in text
    assert {getattr(r, "fields", {}).get("route") for r in records} >= {"/fhir/{type}", "/fhir/{type}/{id}"}


def test_summary_true_keeps_the_elements_r4_marks_is_summary(client) -> None:
    created = post(client, "Patient", patient(photo=[{"contentType": "image/png", "data": "AA=="}],
                                              communication=[{"language": {"text": "English"}}])).json()
    summary = client.get(f"/fhir/Patient/{created['id']}?_summary=true").json()
    assert {"resourceType", "id", "meta", "identifier", "name", "gender", "birthDate"} <= set(summary)
    assert "photo" not in summary and "communication" not in summary  # not isSummary in R4
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED"} in summary["meta"]["tag"]
    found = client.get(f"/fhir/Patient?_id={created['id']}&_summary=true").json()["entry"][0]["resource"]
    assert "photo" not in found and found["name"] == created["name"]


@pytest.mark.parametrize("cursor", ["garbage", "e30", "not%20base64", "eyJkIjoibiJ9"])
def test_a_search_with_a_cursor_that_is_not_ours_is_400_on_get_and_post(client, cursor) -> None:
    post(client, "Patient", patient())
    answers = [
        client.get(f"/fhir/Patient?family=smith&_cursor={cursor}"),
        client.post("/fhir/Patient/_search", content=f"family=smith&_cursor={cursor}".encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"}),
    ]
    for response in answers:
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == ["_cursor"]


def test_a_cursor_of_another_search_is_400(client) -> None:
    for family in ("Smith", "Smith", "Jones"):
        post(client, "Patient", patient(family))
    page = client.get("/fhir/Patient?family=smith&_count=1").json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    cursor = next_url.partition("_cursor=")[2]
    other = client.get(f"/fhir/Patient?family=jones&_cursor={cursor}")
    assert other.status_code == 400 and other.json()["issue"][0]["expression"] == ["_cursor"]


@pytest.mark.parametrize(("query", "param"), [
    ("family=%00abc", "family"),
    ("identifier=%00|%00", "identifier"),
    ("general-practitioner=Organization/%00", "general-practitioner"),
    ("family=smith,%00", "family"),
])
def test_a_nul_character_in_a_search_value_is_400_naming_the_parameter(client, query, param) -> None:
    post(client, "Patient", patient())
    answers = [
        client.get(f"/fhir/Patient?{query}"),
        client.post("/fhir/Patient/_search", content=query.encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"}),
    ]
    for response in answers:
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == [param]


def test_a_nul_character_in_a_posted_resource_is_400_naming_the_field(client) -> None:
    body = patient(family="Smi\u0000th")
    created = post(client, "Patient", body)
    assert created.status_code == 400, created.text
    assert created.json()["issue"][0]["expression"] == ["Patient.name[0].family"]
    updated = put(client, "Patient/nul-1", {**patient(), "id": "nul-1", "name": [{"given": ["A", "\u0000"]}]})
    assert updated.status_code == 400, updated.text
    assert updated.json()["issue"][0]["expression"] == ["Patient.name[0].given[1]"]
    assert client.get("/fhir/Patient").json()["total"] == 0


@pytest.mark.parametrize(("path", "name", "value", "found"), [
    ("Patient", "family", "a{i}", "smi"),
    ("Patient", "identifier", "http://example.org/mrn|{i}", f"{NHS}|9912003888"),
    ("Patient", "general-practitioner", "http://example.org/fhir/Practitioner/p{i}", "Organization/rr8"),
    ("Observation", "code", "http://loinc.org|{i}-0", "http://loinc.org|8867-4"),
    ("Observation", "subject:Patient.birthdate", "ge20{i:02}-01-01", "le1950-03-04"),
    ("Observation", "_lastUpdated", "lt19{i:02}-01-01", "ge2000-01-01"),
])
def test_a_search_with_as_many_values_as_allowed_is_answered(client, path, name, value, found) -> None:
    from engine.search.params import MAX_VALUES

    gp = {"generalPractitioner": [{"reference": "Organization/rr8"}]}
    pid = post(client, "Patient", patient(**gp)).json()["id"]
    post(client, "Observation", observation(pid))
    values = ",".join([*(value.format(i=i % 100) for i in range(MAX_VALUES - 1)), found])
    response = client.get(f"/fhir/{path}?{name}={values}")
    assert response.status_code == 200, response.text[:500]
    assert response.json()["total"] == 1


def test_a_search_with_too_many_values_in_all_is_400(client) -> None:
    from engine.search.params import MAX_TOTAL_VALUES, MAX_VALUES

    post(client, "Patient", patient())
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    per = MAX_TOTAL_VALUES // MAX_VALUES
    at_limit = "&".join(f"identifier={NHS}|9912003888," + ",".join(f"s|{k}-{i}" for i in range(MAX_VALUES - 1))
                        for k in range(per))
    answered = client.post("/fhir/Patient/_search", content=at_limit.encode(), headers=form)
    assert answered.status_code == 200 and answered.json()["total"] == 1
    over = at_limit + "&family=smith"
    refused = client.post("/fhir/Patient/_search", content=over.encode(), headers=form)
    assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["family"]


@pytest.mark.parametrize("criteria", ["garbage", "family", "family=", "identifier=x&garbage", "_count=1",
                                      "_cursor=garbage", "family=smith&_count=5", "_sort=family"])
def test_if_none_exist_that_is_not_a_search_is_400(client, criteria) -> None:
    existing = post(client, "Patient", patient())
    assert existing.status_code == 201
    response = post(client, "Patient", patient(family="Other", nhs="9449305552"), **{"If-None-Exist": criteria})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["If-None-Exist"]
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_conditional_update_and_delete_without_criteria_are_400(client) -> None:
    post(client, "Patient", patient())
    assert client.delete("/fhir/Patient?family=").status_code == 400
    assert client.delete("/fhir/Patient?_count=1").status_code == 400
    assert client.put("/fhir/Patient?_sort=family", json=patient(), headers={"Content-Type": FHIR}).status_code == 400
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_a_bundle_entry_whose_resource_id_is_not_the_url_id_is_400(client) -> None:
    def bundle(kind: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": patient(family="Kept"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**patient(nhs="9449305552"), "id": "a"}, "request": {"method": "PUT", "url": "Patient/b"}},
        ]}

    transaction = post(client, "", bundle("transaction"))
    assert transaction.status_code == 400, transaction.text
    assert transaction.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.id"]
    assert client.get("/fhir/Patient").json()["total"] == 0
    batch = post(client, "", bundle("batch")).json()
    assert [e["response"]["status"] for e in batch["entry"]] == ["201 Created", "400 Bad Request"]
    assert batch["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.id"]
    assert client.get("/fhir/Patient/a").status_code == 404 and client.get("/fhir/Patient/b").status_code == 404
