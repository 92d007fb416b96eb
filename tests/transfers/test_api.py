"""The transfer endpoints through the ASGI app: Task actions, outstanding list, Subscriptions, endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from mappings.ids import resource_id
from tests.ingest.helpers import all_of, ingest
from tests.transfers.conftest import fake_document
from tests.transfers.helpers import CARE_HOME_ODS, GP_ODS, adt

FHIR = "application/fhir+json"
GP_ID = resource_id("Organization", GP_ODS)


@pytest.fixture
def discharged(client, ctx, run, monkeypatch) -> dict[str, dict[str, Any]]:
    """A01 then A03 to a care home not on record: the GP's Task and an unowned care-home Task, by owner ODS."""
    from engine.transfers import discharge

    monkeypatch.setattr(discharge, "document_issuer", lambda: fake_document([]))  # documents are tested elsewhere
    assert run(ingest(ctx, adt("A01", "ADM1"))).code == "AA"
    assert run(ingest(ctx, adt("A03", "DIS1", destination="85"))).code == "AA"
    return {((t.get("owner") or {}).get("identifier") or {}).get("value", "none"): t
            for t in run(all_of(ctx.db, "Task"))}


def as_org(make_token, org: str, role: str = "R8000") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('user/*.cruds', org=org, role=role)}"}


def act(client, task_id: str, action: str, headers: dict[str, str], body: Any = None):
    return client.post(f"/fhir/Task/{task_id}/${action}", json=body, headers={**headers, "Content-Type": FHIR})


def details(response) -> str:
    return response.json()["issue"][0]["details"]["coding"][0]["code"]


def test_the_receiving_practice_receives_then_accepts(client, discharged, make_token) -> None:
    gp = as_org(make_token, GP_ODS)
    task_id = discharged[GP_ODS]["id"]
    received = act(client, task_id, "receive", gp)
    assert received.status_code == 200 and received.json()["status"] == "received"
    assert received.headers["etag"] == 'W/"2"'
    accepted = act(client, task_id, "accept", gp)
    assert accepted.json()["status"] == "accepted" and accepted.json()["businessStatus"]["coding"][0]["code"] == "accepted"
    again = act(client, task_id, "accept", gp)  # a repeat is harmless and makes no new version
    assert again.status_code == 200 and again.headers["etag"] == 'W/"3"'
    found = client.get(f"/fhir/Task?owner=Organization/{GP_ID}&status=accepted").json()
    assert [e["resource"]["id"] for e in found["entry"]] == [task_id]


def test_refusals_speak_operation_outcome(client, discharged, make_token) -> None:
    task_id = discharged[GP_ODS]["id"]
    other = act(client, task_id, "accept", as_org(make_token, "Y99999"))
    assert other.status_code == 403 and details(other) == "not-task-owner"
    assert act(client, "no-such-task", "accept", as_org(make_token, GP_ODS)).status_code == 404
    no_reason = act(client, task_id, "reject", as_org(make_token, GP_ODS))
    assert no_reason.status_code == 422 and details(no_reason) == "reason-required"
    reason = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Not our patient"}]}
    rejected = act(client, task_id, "reject", as_org(make_token, GP_ODS), reason)
    assert rejected.status_code == 200 and rejected.json()["statusReason"] == {"text": "Not our patient"}
    late = act(client, task_id, "accept", as_org(make_token, GP_ODS))
    assert late.status_code == 409 and details(late) == "invalid-transition"
    assert late.json()["resourceType"] == "OperationOutcome"
    unowned = act(client, discharged["none"]["id"], "accept", as_org(make_token, CARE_HOME_ODS))
    assert unowned.status_code == 403


def test_a_token_without_task_update_scope_cannot_act(client, discharged, make_token) -> None:
    headers = {"Authorization": f"Bearer {make_token('user/Task.rs', org=GP_ODS)}"}
    response = act(client, discharged[GP_ODS]["id"], "accept", headers)
    assert response.status_code == 403 and details(response) == "insufficient-scope"


def test_outstanding_transfers_oldest_first_with_their_wait(client, discharged, make_token) -> None:
    listing = client.get(f"/transfers/outstanding?org={GP_ODS}", headers=as_org(make_token, GP_ODS))
    assert listing.status_code == 200
    body = listing.json()
    assert body["total"] == 1 and body["transfers"][0]["task"] == f"Task/{discharged[GP_ODS]['id']}"
    assert body["transfers"][0]["receiverRole"] == "gp-practice" and body["transfers"][0]["waitingSeconds"] >= 0
    hospital = client.get("/transfers/outstanding?requester=RR8", headers=as_org(make_token, "RR8")).json()
    assert sorted(str(t["owner"]) for t in hospital["transfers"]) == sorted([GP_ODS, "None"])
    assert any(t["businessStatus"].startswith("Receiving organisation not identified") for t in hospital["transfers"])
    bundle = client.get("/transfers/outstanding?requester=RR8&view=bundle", headers=as_org(make_token, "RR8"))
    assert bundle.json()["resourceType"] == "Bundle" and bundle.json()["total"] == 2
    act(client, discharged[GP_ODS]["id"], "accept", as_org(make_token, GP_ODS))
    assert client.get(f"/transfers/outstanding?org={GP_ODS}", headers=as_org(make_token, GP_ODS)).json()["total"] == 0
    forbidden = client.get(f"/transfers/outstanding?org={GP_ODS}", headers=as_org(make_token, "Y99999"))
    assert forbidden.status_code == 403
    admin = client.get(f"/transfers/outstanding?org={GP_ODS}",  # a systems-support backend service
                       headers={"Authorization": f"Bearer {make_token(org='X26', role='R8015')}"})
    assert admin.status_code == 200
    assert client.get("/transfers/outstanding", headers=as_org(make_token, GP_ODS)).status_code == 400


def subscription(criteria: str, endpoint: str = "https://gp.example/hook") -> dict[str, Any]:
    return {"resourceType": "Subscription", "status": "requested", "reason": "transfers of care to us",
            "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint}}


def test_subscriptions_are_created_requested_and_only_for_your_organisation(client, make_token) -> None:
    gp = as_org(make_token, GP_ODS)
    created = client.post("/fhir/Subscription", json=subscription(f"Task?owner=Organization/{GP_ID}"),
                          headers={**gp, "Content-Type": FHIR})
    assert created.status_code == 201 and created.json()["status"] == "requested"
    sub_id = created.json()["id"]
    assert created.headers["location"].endswith(f"/Subscription/{sub_id}")
    assert client.get(f"/fhir/Subscription/{sub_id}", headers=gp).json()["criteria"].startswith("Task?owner=")
    assert client.get(f"/fhir/Subscription/{sub_id}", headers=as_org(make_token, "Y99999")).status_code == 404
    assert [e["resource"]["id"] for e in client.get("/fhir/Subscription", headers=gp).json()["entry"]] == [sub_id]
    others = client.post("/fhir/Subscription", json=subscription(f"Task?owner=Organization/{resource_id('Organization', 'Y1')}"),
                         headers={**gp, "Content-Type": FHIR})
    assert others.status_code == 403
    bad = client.post("/fhir/Subscription", json=subscription(f"Task?nonsense=1&owner=Organization/{GP_ID}"),
                      headers={**gp, "Content-Type": FHIR})
    assert bad.status_code == 422 and bad.json()["issue"][0]["expression"] == ["Subscription.criteria"]
    assert client.delete(f"/fhir/Subscription/{sub_id}", headers=gp).status_code == 204
    assert client.get(f"/fhir/Subscription/{sub_id}", headers=gp).status_code == 404


def test_an_organisation_sets_its_own_endpoint(client, make_token) -> None:
    gp = as_org(make_token, GP_ODS)
    body = {"address": "https://gp.example/transfers", "header": ["X-Api-Key: k1"], "payload": "application/fhir+json"}
    assert client.put(f"/transfers/endpoints/{GP_ODS}", json=body, headers=gp).status_code == 200
    listed = client.get("/transfers/endpoints", headers=gp).json()["endpoints"]
    assert listed == [{"ods": GP_ODS, "address": body["address"], "payload": "application/fhir+json",
                       "header": ["X-Api-Key: k1"], "active": True}]
    assert client.put("/transfers/endpoints/Y99999", json=body, headers=gp).status_code == 403
    bad = client.put(f"/transfers/endpoints/{GP_ODS}", json={"address": "nowhere"}, headers=gp)
    assert bad.status_code == 422
    assert client.delete(f"/transfers/endpoints/{GP_ODS}", headers=gp).status_code == 204
    assert client.delete(f"/transfers/endpoints/{GP_ODS}", headers=gp).status_code == 404


def test_dead_letters_are_for_administrators(client, make_token) -> None:
    assert client.get("/transfers/dead-letters", headers=as_org(make_token, GP_ODS)).status_code == 403
    admin = as_org(make_token, "X26", role="R8015")
    assert client.get("/transfers/dead-letters", headers=admin).json() == {"total": 0, "deliveries": []}
    assert client.post("/transfers/dead-letters/42/$retry", headers=admin).status_code == 404
    own = client.get(f"/transfers/deliveries?org={GP_ODS}", headers=as_org(make_token, GP_ODS))
    assert own.status_code == 200 and own.json()["total"] == 0


def test_a_transfer_moves_only_through_its_operations(client, discharged, make_token) -> None:
    task = discharged[GP_ODS]
    edited = {**task, "status": "completed"}
    headers = {**as_org(make_token, GP_ODS), "Content-Type": "application/fhir+json"}
    response = client.put(f"/fhir/Task/{task['id']}", json=edited, headers=headers)
    assert response.status_code == 409 and details(response) == "use-transfer-operations"
    assert client.delete(f"/fhir/Task/{task['id']}", headers=headers).status_code in {403, 409}  # role, or 409
