"""Every path through the gate is audited: reads and searches before the answer, writes with their data,
refusals as denied attempts, break-glass as a security alert for review; IG officers can ask why."""

from __future__ import annotations

from typing import Any

from tests.access.test_access_http import FHIR, REASON, obs

IG = {"role": "R8012", "org": "RR8", "user": "ig-officer"}


def audit_events(client, ig, **params: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/AuditEvent", params={"_count": "200", **params}, headers=ig)
    assert bundle.status_code == 200, bundle.text
    return [e["resource"] for e in bundle.json().get("entry", [])]


def subtypes(events: list[dict[str, Any]]) -> list[str]:
    return [s["code"] for e in events for s in e.get("subtype", [])]


def test_reads_searches_and_refusals_are_audited(record, as_user) -> None:
    rr8 = as_user("RR8", user="dr-rr8")
    assert record.get("/fhir/Observation/obs-alice-hr", headers=rr8).status_code == 200
    assert record.get("/fhir/Observation?patient=alice", headers=rr8).status_code == 200
    assert record.get("/fhir/Observation/obs-bob-hr", headers=rr8).status_code == 403
    events = audit_events(record, as_user(**IG), agent="dr-rr8")
    assert sorted(subtypes(events)) == ["read", "read", "search"]
    refused = [e for e in events if e["outcome"] != "0"]
    assert len(refused) == 1 and refused[0]["outcome"] == "4"
    patients = {ent["what"]["reference"] for e in events for ent in e.get("entity", []) if "what" in ent}
    assert {"Patient/alice", "Patient/bob", "Observation/obs-alice-hr"} <= patients


def test_a_write_commits_its_audit_with_its_data(record, as_user) -> None:
    rr8 = {**as_user("RR8", user="dr-writer"), "Content-Type": FHIR}
    assert record.post("/fhir/Observation", json=obs("x", "alice", "RR8", "8310-5"), headers=rr8).status_code == 201
    assert record.post("/fhir/Observation", json=obs("x", "bob", "RR8", "8310-5"), headers=rr8).status_code == 403
    events = audit_events(record, as_user(**IG), agent="dr-writer")
    assert sorted((s, e["outcome"]) for e in events for s in subtypes([e])) == [("create", "0"), ("create", "4")]


def test_a_conditional_create_that_finds_the_resource_audits_reading_it(record, as_user) -> None:
    rr8 = {**as_user("RR8", user="dr-conditional"), "Content-Type": FHIR}
    existing = obs("obs-cond", "alice", "RR8", "8310-5")
    existing["identifier"] = [{"system": "https://example.org/obs", "value": "cond-1"}]
    assert record.put("/fhir/Observation/obs-cond", json=existing, headers={"Content-Type": FHIR}).status_code == 201
    again = {k: v for k, v in existing.items() if k != "id"}
    found = record.post("/fhir/Observation", json=again,
                        headers={**rr8, "If-None-Exist": "identifier=https://example.org/obs|cond-1"})
    assert found.status_code == 200 and found.json()["id"] == "obs-cond"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": again, "request": {"method": "POST", "url": "Observation",
                                        "ifNoneExist": "identifier=https://example.org/obs|cond-1"}}]}
    assert record.post("/fhir", json=bundle, headers=rr8).status_code == 200
    events = audit_events(record, as_user(**IG), agent="dr-conditional")
    reads = [e for e in events if subtypes([e]) == ["read"]]
    assert len(reads) == 2
    assert all("Observation/obs-cond" in str(e["entity"]) for e in reads)


def test_break_glass_raises_an_alert_for_review(record, as_user) -> None:
    glass = as_user("RR8", user="ed-doctor", **{"X-Break-Glass-Reason": REASON})
    assert record.get("/fhir/Observation/obs-bob-hr", headers=glass).status_code == 200
    assert record.get("/fhir/Observation/obs-bob-hr", headers=glass).status_code == 200  # one grant, one alert
    queue = record.get("/ig/break-glass", headers=as_user(**IG))
    assert queue.status_code == 200, queue.text
    items = queue.json()["entries"]
    assert len(items) == 1 and REASON in str(items[0])
    btg = audit_events(record, as_user(**IG), purpose="BTG")
    assert btg and all(e["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "BTG" for e in btg)


def test_the_patient_sees_who_looked_at_their_record(record, as_user, make_token) -> None:
    record.get("/fhir/Observation/obs-alice-hr", headers=as_user("RR8", user="dr-rr8"))
    alice = {"Authorization": "Bearer " + make_token("patient/*.rs", role="", org="", patient="alice",
                                                     fhirUser="Patient/alice")}
    log = record.get("/fhir/Patient/alice/$access-log", headers=alice)
    assert log.status_code == 200, log.text
    assert any(entry["organisation"] == "RR8" for entry in log.json()["entries"])
    assert record.get("/fhir/Patient/bob/$access-log", headers=alice).status_code == 403


def test_ig_officers_can_ask_why(record, as_user) -> None:
    answer = record.get("/fhir/Patient/alice/$access-explain", params={"role": "R8000", "org": "RR8"},
                        headers=as_user(**IG))
    assert answer.status_code == 200, answer.text
    decided = {}
    for parameter in answer.json()["parameter"]:
        if parameter["name"] == "resource":
            parts = {p["name"]: p for p in parameter["part"]}
            decided[parts["reference"]["valueReference"]["reference"]] = (parts["effect"]["valueCode"],
                                                                         parts["rule"]["valueCode"])
    assert decided["Observation/obs-alice-psy"] == ("withhold", "sensitive")
    assert decided["Observation/obs-alice-hr"][0] == "permit"
    clinician = record.get("/fhir/Patient/alice/$access-explain", params={"role": "R8000"}, headers=as_user("RR8"))
    assert clinician.status_code == 403


def test_the_chain_verifies_after_traffic(record, as_user, database_url) -> None:
    import asyncio

    from engine.audit.log import verify_database
    from engine.db.database import open_database

    for _ in range(3):
        record.get("/fhir/Observation?patient=alice", headers=as_user("RR8"))

    async def check() -> bool:
        db = open_database(database_url)
        try:
            return (await verify_database(db)).ok
        finally:
            await db.dispose()

    assert asyncio.run(check())


def test_the_command_line_explains_too(record, database_url, monkeypatch, capsys) -> None:
    from engine.cli import main

    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", database_url)
    assert main(["access", "explain", "--patient", "alice", "--role", "R8000", "--org", "RR8"]) == 0
    lines = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert lines["Observation/obs-alice-psy"] == ["withhold", "sensitive"]
    assert lines["Observation/obs-alice-hr"][0] == "permit"
    assert main(["access", "explain", "--patient", "nobody", "--role", "R8000"]) == 1
