"""A real server on a real socket: a third-party FHIR client, and concurrent conditional creates."""

from __future__ import annotations

import asyncio

import httpx
import pytest

NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR = "application/fhir+json"

pytestmark = pytest.mark.integration


def test_fhirpy_creates_reads_searches_and_pages(live_server, make_token) -> None:
    """fhirpy (beda-software), unmodified, against the running server."""
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(live_server.base_url, authorization=f"Bearer {make_token()}")
    patient = client.resource(
        "Patient",
        identifier=[{"system": NHS, "value": "9912003888"}],
        name=[{"family": "Fhirpy", "given": ["Flora"]}],
        gender="female",
        birthDate="1961-02-03",
    )
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    for value in range(23):
        client.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            subject=patient.to_reference(),
            effectiveDateTime=f"2025-02-{value % 28 + 1:02d}T09:00:00Z",
            valueQuantity={"value": 60 + value, "unit": "/min", "system": "http://unitsofmeasure.org",
                           "code": "/min"},
        ).save()

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Fhirpy"

    found = client.resources("Patient").search(family="fhirpy").fetch()
    assert [p.id for p in found] == [patient.id]

    observations = client.resources("Observation").search(patient=patient.id).limit(5)
    assert observations.count() == 23
    every = observations.fetch_all()  # follows the server's next links page by page
    assert len(every) == 23 == len({o.id for o in every})

    patient["name"][0]["family"] = "Fhirpy-Updated"
    patient.save()
    assert client.reference("Patient", patient.id).to_resource()["meta"]["versionId"] == "2"


def test_concurrent_conditional_creates_make_exactly_one(live_server, make_token) -> None:
    """20 clients racing If-None-Exist with the same identifier leave one Patient (and 1 × 201)."""
    headers = {"Authorization": f"Bearer {make_token()}", "Content-Type": FHIR,
               "If-None-Exist": f"identifier={NHS}|9449305552"}
    body = {"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9449305552"}],
            "name": [{"family": "Race"}]}

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/Patient", json=body, headers=headers) for _ in range(20)))

    responses = asyncio.run(race())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code not in (200, 201)]
    assert len({r.json()["id"] for r in responses}) == 1
    search = httpx.get(f"{live_server.base_url}/Patient", params={"identifier": f"{NHS}|9449305552"},
                       headers={"Authorization": headers["Authorization"]})
    assert search.json()["total"] == 1


def test_concurrent_transactions_with_conditional_creates_make_exactly_one(live_server, make_token) -> None:
    """The same race through transaction Bundles (`request.ifNoneExist`)."""
    auth = {"Authorization": f"Bearer {make_token()}", "Content-Type": FHIR}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:8c4f6a52-1d7e-4c55-9d0a-3b7a2b0c9e11",
            "resource": {"resourceType": "Organization",
                         "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RR8"}],
                         "name": "Leeds Teaching Hospitals NHS Trust"},
            "request": {"method": "POST", "url": "Organization",
                        "ifNoneExist": "identifier=https://fhir.nhs.uk/Id/ods-organization-code|RR8"},
        }],
    }

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=60) as http:
            return await asyncio.gather(*(http.post("", json=bundle, headers=auth) for _ in range(20)))

    responses = asyncio.run(race())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in responses)
    assert statuses == ["200 OK"] * 19 + ["201 Created"]
