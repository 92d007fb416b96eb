"""The IG officer's and the patient's HTTP views of the audit log, with real tokens."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

import engine.audit.schema  # noqa: F401 - registers the audit tables for the clean store
from engine.audit.events import break_glass_alert
from engine.audit.log import append, verify_database
from engine.db.database import Database
from tests.audit.conftest import a_record

IG_USER = "ig-officer-1"


@pytest.fixture
def api(client, make_token):
    """The test client on a clean store, authenticated as an information-governance officer (R8012)."""
    client.headers["Authorization"] = f"Bearer {make_token('user/*.rs', role='R8012', org='RR8', user=IG_USER)}"
    return client


@pytest.fixture
def seeded(api, db: Database, run) -> Iterator[object]:
    """Six records: reads by u1 (p1, p2), a search by u2, a denied read, a break-glass access and its alert."""
    bg = a_record(5, user="u3", patient="p1", org="RY6", purpose="BTG",
                  break_glass_reason="Collapsed in clinic, records needed now")
    records = [
        a_record(0, patient="p1", entities=("Patient/p1", "Observation/o1/_history/1")),
        a_record(1, patient="p2"),
        a_record(2, user="u2", patient="p1", action="E", subtype="search", entities=(), query="patient=p1&code=x"),
        a_record(3, user="u2", patient="p2", outcome="4", denied_reason="no-relationship"),
        bg,
        break_glass_alert(bg),
    ]

    async def seed() -> None:
        async with db.write() as conn:
            await append(conn, records)

    run(seed())
    yield api


def _bearer(make_token, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(**claims)}"}


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_search_returns_valid_audit_events_newest_first(seeded) -> None:
    response = seeded.get("/fhir/AuditEvent")
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:
        AuditEvent.model_validate(entry["resource"])
    assert bundle["type"] == "searchset" and bundle["total"] == 6
    assert _ids(bundle) == ["6", "5", "4", "3", "2", "1"]
    assert bundle["entry"][0]["fullUrl"] == "http://testserver/fhir/AuditEvent/6"


@pytest.mark.parametrize(("query", "expected"), [
    ("patient=p1", ["6", "5", "3", "1"]),
    ("patient=Patient/p2", ["4", "2"]),
    ("agent=u2", ["4", "3"]),
    ("entity=Observation/o1", ["1"]),
    ("action=E", ["6", "3"]),
    ("outcome=4", ["4"]),
    ("purpose=BTG", ["6", "5"]),
    ("purpose=http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG", ["6", "5"]),
    ("subtype=search", ["3"]),
    ("organization=RY6", ["6", "5"]),
    ("agent-role=R8000", ["6", "5", "4", "3", "2", "1"]),
    ("date=ge2026-01-05T10:02:00Z&date=lt2026-01-05T10:04:00Z", ["4", "3"]),
    ("date=2026-01-05", ["6", "5", "4", "3", "2", "1"]),
    ("date=le2026-01-04", []),
    ("patient=p1&agent=u1", ["1"]),
    ("action=C,E&patient=p1", ["6", "3"]),
])
def test_search_parameters(seeded, query: str, expected: list[str]) -> None:
    response = seeded.get(f"/fhir/AuditEvent?{query}")
    assert response.status_code == 200, response.text
    assert _ids(response.json()) == expected


def test_keyset_paging_follows_next_links(seeded) -> None:
    seen, url = [], "/fhir/AuditEvent?_count=4"
    while url:
        bundle = seeded.get(url).json()
        seen += _ids(bundle)
        url = next((link["url"].replace("http://testserver", "") for link in bundle.get("link", [])
                    if link["relation"] == "next"), None)
    assert seen == ["6", "5", "4", "3", "2", "1"]


@pytest.mark.parametrize("query", ["colour=blue", "date=yesterday", "action=X", "outcome=2", "_count=0",
                                   "_cursor=abc", "subtype=peek", "patient="])
def test_bad_parameters_are_400_operation_outcomes(seeded, query: str) -> None:
    response = seeded.get(f"/fhir/AuditEvent?{query}")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_read_one_audit_event_and_the_query_it_carries(seeded) -> None:
    event = seeded.get("/fhir/AuditEvent/3").json()
    AuditEvent.model_validate(event)
    query = next(e for e in event["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "patient=p1&code=x"
    assert seeded.get("/fhir/AuditEvent/999").status_code == 404
    assert seeded.get("/fhir/AuditEvent/abc").status_code == 404


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/fhir/AuditEvent"), ("PUT", "/fhir/AuditEvent/1"), ("DELETE", "/fhir/AuditEvent/1"),
    ("PATCH", "/fhir/AuditEvent/1"), ("PUT", "/fhir/AuditEvent"), ("GET", "/fhir/AuditEvent/1/_history"),
    ("GET", "/fhir/AuditEvent/_history"),
])
def test_audit_events_cannot_be_written_over_rest(seeded, method: str, path: str) -> None:
    response = seeded.request(method, path, content=b'{"resourceType":"AuditEvent"}',
                              headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"


def test_post_search_works_like_get(seeded) -> None:
    response = seeded.post("/fhir/AuditEvent/_search", content=b"agent=u2",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert _ids(response.json()) == ["4", "3"]


def test_a_clinician_is_refused_and_the_refusal_is_audited(seeded, make_token) -> None:
    clinician = _bearer(make_token, scope="user/*.cruds", user="dr-who", role="R8000")
    for path in ("/fhir/AuditEvent", "/fhir/AuditEvent/1", "/ig/audit.csv", "/ig/reports/break-glass",
                 "/ig/alerts", "/ig/break-glass", "/ig/reports/user-activity?user=u1"):
        response = seeded.get(path, headers=clinician)
        assert response.status_code == 403, path
        assert response.json()["issue"][0]["details"]["coding"][0]["code"] == "not-ig-officer"
    assert seeded.post("/ig/break-glass/6/review", json={"outcome": "appropriate"},
                       headers=clinician).status_code == 403
    refused = seeded.get("/fhir/AuditEvent?agent=dr-who").json()
    assert refused["total"] == 8
    assert {e["resource"]["outcome"] for e in refused["entry"]} == {"4"}
    assert {e["resource"]["outcomeDesc"] for e in refused["entry"]} == {"not-ig-officer"}
    assert seeded.get("/fhir/AuditEvent").status_code == 200
    assert seeded.get("/fhir/AuditEvent", headers={"Authorization": ""}).status_code == 401


def test_the_officers_own_searches_are_audited(seeded) -> None:
    seeded.get("/fhir/AuditEvent?patient=p2&outcome=4")
    mine = seeded.get(f"/fhir/AuditEvent?agent={IG_USER}").json()
    first = mine["entry"][-1]["resource"]
    assert first["subtype"][0]["code"] == "search" and first["action"] == "E"
    assert first["agent"][0]["role"][0]["coding"][0]["code"] == "R8012"
    assert any(e.get("what", {}).get("reference") == "Patient/p2" for e in first["entity"])
    query = next(e for e in first["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "patient=p2&outcome=4"


def test_csv_export(seeded) -> None:
    response = seeded.get("/ig/audit.csv?patient=p1&since=2026-01-05T10:01:00Z", headers={"Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["seq"] for r in rows] == ["3", "5", "6", "7"]
    assert rows[-1]["user_id"] == IG_USER and rows[-1]["operation"] == "audit CSV export"  # the export itself
    assert rows[1]["break_glass_reason"] == "Collapsed in clinic, records needed now"
    assert rows[0]["query"] == "patient=p1&code=x"
    assert seeded.get("/ig/audit.csv?since=nonsense").status_code == 400
    everything = list(csv.DictReader(io.StringIO(seeded.get("/ig/audit.csv").text)))
    assert len(everything) >= 6


def test_user_activity_report(seeded) -> None:
    report = seeded.get("/ig/reports/user-activity?user=u2").json()
    assert report["total"] == 2 and report["denied"] == 1 and report["distinctPatients"] == 2
    assert report["byAction"] == {"R": 1, "E": 1}
    assert [e["auditEvent"] for e in report["entries"]] == ["AuditEvent/4", "AuditEvent/3"]
    assert seeded.get("/ig/reports/user-activity").status_code == 400


def test_patient_access_report(seeded) -> None:
    report = seeded.get("/ig/reports/patient-access?patient=p1").json()
    assert report["total"] == 3
    by_user = {a["user"]: a for a in report["accessors"]}
    assert set(by_user) == {"u1", "u2", "u3"}
    assert by_user["u3"]["breakGlassReasons"] == ["Collapsed in clinic, records needed now"]
    assert by_user["u3"]["organisation"] == "RY6" and by_user["u3"]["purposes"] == ["BTG"]


def test_break_glass_review_queue(seeded) -> None:
    queue = seeded.get("/ig/break-glass").json()
    assert queue["pending"] == 1 and [e["auditEvent"] for e in queue["entries"]] == ["AuditEvent/6"]
    assert queue["entries"][0]["breakGlassReason"] == "Collapsed in clinic, records needed now"

    assert seeded.post("/ig/break-glass/6/review", json={"outcome": "maybe"}).status_code == 400
    assert seeded.post("/ig/break-glass/6/review", content=b"not json").status_code == 400
    assert seeded.post("/ig/break-glass/1/review", json={"outcome": "appropriate"}).status_code == 404
    response = seeded.post("/ig/break-glass/6/review", json={"outcome": "appropriate", "note": "ED attendance"})
    assert response.status_code == 200, response.text
    assert response.json()["reviewer"] == IG_USER

    assert seeded.get("/ig/break-glass").json()["entries"] == []
    reviewed = seeded.get("/ig/break-glass?status=reviewed").json()["entries"]
    assert reviewed[0]["status"] == "reviewed"
    assert reviewed[0]["reviews"][0]["note"] == "ED attendance"
    report = seeded.get("/ig/reports/break-glass").json()
    assert report["total"] == 1 and report["byOutcome"] == {"appropriate": 1} and report["byUser"] == {"u3": 1}
    audited = seeded.get(f"/fhir/AuditEvent?agent={IG_USER}&action=U").json()
    assert [e["resource"]["outcome"] for e in audited["entry"]] == ["0", "4", "4", "4"]  # failures audited too
    assert [e["resource"].get("outcomeDesc") for e in audited["entry"]] == [None, "404 not-found", "400 bad-review",
                                                                            "400 bad-review"]
    review = audited["entry"][0]["resource"]
    assert {e["what"]["reference"] for e in review["entity"] if "what" in e} == {"Patient/p1", "AuditEvent/6"}
    assert seeded.get("/ig/break-glass?status=odd").status_code == 400


def test_alerts_over_a_period(api, db: Database, run) -> None:
    denials = [a_record(i, user="probe", outcome="4", denied_reason="no-relationship", patient=f"p{i}")
               for i in range(5)]
    night = [a_record(0, user="owl", start=__import__("datetime").datetime(2026, 1, 5, 23, 30))]

    async def seed() -> None:
        async with db.write() as conn:
            await append(conn, denials + night)

    run(seed())
    report = api.get("/ig/alerts?since=2026-01-05&until=2026-01-06").json()
    assert sorted((a["rule"], a["user"]) for a in report["alerts"]) == [("out-of-hours", "owl"),
                                                                        ("repeated-denials", "probe")]
    assert api.get("/ig/alerts?since=2026-02-01&until=2026-02-02").json()["total"] == 0
    assert api.get("/ig/alerts?since=bad").status_code == 400


def test_a_patient_sees_who_looked_at_their_record(seeded, make_token) -> None:
    patient = _bearer(make_token, scope="patient/*.rs", patient="p1", user="patient-p1", role=None,
                      fhirUser="Patient/p1")
    response = seeded.get("/fhir/Patient/p1/$access-log", headers=patient)
    assert response.status_code == 200, response.text
    log = response.json()
    assert log["patient"] == "Patient/p1"
    assert [e["auditEvent"] for e in log["entries"]] == ["AuditEvent/5", "AuditEvent/3", "AuditEvent/1"]
    bg = log["entries"][0]
    assert bg["organisation"] == "RY6" and bg["roleName"] == "Clinical Practitioner" and bg["purpose"] == "BTG"
    assert bg["breakGlassReason"] == "Collapsed in clinic, records needed now"
    assert log["entries"][2]["what"] == ["Observation/o1/_history/1"]

    paged = seeded.get("/fhir/Patient/p1/$access-log?_count=2", headers=patient).json()
    own_look = paged["entries"][0]  # looking at the log is itself an access, and shows
    assert own_look["action"] == "operation" and own_look["roleName"] == "Patient" and own_look["role"] == "patient"
    assert [e["auditEvent"] for e in paged["entries"]] == ["AuditEvent/7", "AuditEvent/5"] and "next" in paged
    rest = seeded.get(paged["next"].replace("http://testserver", ""), headers=patient).json()
    assert [e["auditEvent"] for e in rest["entries"]] == ["AuditEvent/3", "AuditEvent/1"]

    assert seeded.get("/fhir/Patient/p2/$access-log", headers=patient).status_code == 403
    for not_the_patient in (_bearer(make_token, scope="user/*.rs", patient="p1"),  # a clinician in context
                            _bearer(make_token, scope="patient/*.rs", patient="p1"),  # an app, not the patient
                            _bearer(make_token, scope="patient/*.rs", patient="p1", role=None, fhirUser="Patient/p2")):
        assert seeded.get("/fhir/Patient/p1/$access-log", headers=not_the_patient).status_code in {401, 403}
    assert seeded.get("/fhir/Patient/p1/$access-log").status_code == 200  # the IG officer


def test_the_chain_is_intact_after_all_that(seeded, db: Database, run) -> None:
    seeded.get("/fhir/AuditEvent")
    seeded.post("/ig/break-glass/6/review", json={"outcome": "follow-up"})
    assert run(verify_database(db)).ok


def test_with_the_applications_group_commit_writer(settings, clean_store, make_token) -> None:
    """How the lead wires it: an `AuditWriter` on the state, started in the lifespan; IG looks go through it."""
    from fastapi.testclient import TestClient

    from engine.api.app import create_app
    from engine.audit.log import AuditWriter

    app = create_app(settings)
    with TestClient(app) as client:
        state = app.state.sharedcare
        state.audit_writer = AuditWriter(state.db)
        client.portal.call(state.audit_writer.start)
        client.headers["Authorization"] = f"Bearer {make_token('user/*.rs', role='R8012', user=IG_USER)}"
        try:
            assert client.get("/fhir/AuditEvent").status_code == 200
            assert client.get("/fhir/AuditEvent").json()["total"] == 1
        finally:
            client.portal.call(state.audit_writer.stop)
        assert state.audit_writer.commits == 2
