"""engine/api/fast_lane.py: GET read and search answered in front of the router, exactly as the routes would."""

from __future__ import annotations

import pytest

from engine.api.fast_lane import types_with_own_routes

FHIR = "application/fhir+json"


def test_types_with_routes_of_their_own_stay_with_the_router() -> None:
    from engine.api.app import create_app

    app = create_app()
    paths = [r.path for r in app.routes if "GET" in getattr(r, "methods", ())]
    own = types_with_own_routes(paths)
    assert {"AuditEvent", "Bundle", "Subscription"} <= own
    assert not own & {"Patient", "Observation", "{type}"}


def test_read_and_search_are_logged_under_their_route_templates(client) -> None:
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"},
                          headers={"Content-Type": FHIR})
    assert created.status_code == 201
    pid = created.json()["id"]
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.headers["content-type"] == FHIR
    assert read.headers["etag"] == 'W/"1"' and "x-request-id" in read.headers
    assert client.get("/fhir/Patient?gender=male").json()["total"] == 1
    metrics = client.get("/metrics").text
    assert 'route="/fhir/{type}/{id}",status="200"' in metrics
    assert 'route="/fhir/{type}",status="200"' in metrics
    assert pid not in metrics


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/fhir/Patient/_history", 200, None),                   # type history, not a read of id "_history"
    ("/fhir/patient/x", 404, "unknown-type"),                # not a type name: the router's answer
    ("/fhir/Nonsense/x", 404, "unknown-type"),
    ("/fhir/Patient/" + "x" * 65, 400, "bad-id"),            # longer than a FHIR id
    ("/fhir/Patient/missing", 404, "not-found"),
    ("/fhir/Patient?unknown-param=1", 400, "bad-search-parameter"),
    ("/fhir/Patient?_format=xml", 406, "not-acceptable"),
])
def test_every_answer_is_the_routes_answer(client, path: str, status: int, code: str | None) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    if code:
        codings = [c["code"] for i in response.json()["issue"] for c in i.get("details", {}).get("coding", [])]
        assert code in codings


def test_no_token_is_401_with_a_challenge(client) -> None:
    response = client.get("/fhir/Patient/x", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_unexpected_failure_is_a_500_outcome_without_details(client, monkeypatch) -> None:
    state = client.app.state.sharedcare

    async def broken(*_args, **_kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(state.service, "read", broken)
    response = client.get("/fhir/Patient/x")
    assert response.status_code == 500
    assert response.headers["content-type"] == FHIR
    assert "secret detail" not in response.text
    assert response.json()["resourceType"] == "OperationOutcome"
