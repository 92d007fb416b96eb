"""Consent, relationships, sensitive labels, roles and break-glass through the FHIR API, end to end.

A small Leeds record, loaded by a backend service: Alice is registered with a GP practice (B86001)
and had an admission at the hospital (RR8) and care from the mental health trust (RGD); Bob has no
relationship with the hospital. Users of each organisation and role ask for it through every path.
"""

from __future__ import annotations

from typing import Any

import pytest

from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, ODS_SYSTEM, owner_tag

FHIR = "application/fhir+json"
REASON = "Unconscious patient in ED, need medication history"


def org(res_id: str, ods: str, name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": res_id, "identifier": [{"system": ODS_SYSTEM, "value": ods}],
            "name": name}


def person(res_id: str, family: str, gp: str | None) -> dict[str, Any]:
    document: dict[str, Any] = {"resourceType": "Patient", "id": res_id, "name": [{"family": family}],
                                "meta": {"tag": [owner_tag("B86001")]}}
    if gp:
        document["generalPractitioner"] = [{"reference": f"Organization/{gp}"}]
    return document


def encounter(res_id: str, patient: str, provider: str, owner: str, start: str, end: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": res_id, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{patient}"}, "serviceProvider": {"reference": f"Organization/{provider}"},
            "period": {"start": start, "end": end}, "meta": {"tag": [owner_tag(owner)]}}


def obs(res_id: str, patient: str, owner: str, code: str, *labels: tuple[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"tag": [owner_tag(owner)]}
    if labels:
        meta["security"] = [{"system": s, "code": c} for s, c in labels]
    return {"resourceType": "Observation", "id": res_id, "status": "final", "meta": meta,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-10-01T10:00:00Z"}


PSY = (ACT_CODE_SYSTEM, "PSY")
RESTRICTED = (CONFIDENTIALITY_SYSTEM, "R")

RECORD = [
    org("org-rr8", "RR8", "Leeds Teaching Hospitals"),
    org("org-gp", "B86001", "Oakwood Surgery"),
    org("org-rgd", "RGD", "Leeds and York Partnership"),
    person("alice", "Hughes", "org-gp"),
    person("bob", "Khan", "org-gp"),
    encounter("enc-alice-rr8", "alice", "org-rr8", "RR8", "2026-09-01T09:00:00Z", "2026-09-10T12:00:00Z"),
    encounter("enc-alice-rgd", "alice", "org-rgd", "RGD", "2026-08-01T09:00:00Z", "2026-08-01T10:00:00Z"),
    obs("obs-alice-hr", "alice", "RR8", "8867-4"),
    obs("obs-alice-gp-bp", "alice", "B86001", "85354-9"),
    obs("obs-alice-psy", "alice", "RGD", "72133-2", PSY, RESTRICTED),
    obs("obs-bob-hr", "bob", "B86001", "8867-4"),
]


def ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode}


def withheld(bundle: dict[str, Any]) -> bool:
    return any(e.get("search", {}).get("mode") == "outcome" for e in bundle.get("entry", []))


def details(response) -> str:
    return response.json()["issue"][0]["details"]["coding"][0]["code"]


# -- relationships ---------------------------------------------------------------------------------


def test_a_relationship_opens_the_record_and_its_absence_is_a_403(record, as_user) -> None:
    rr8 = as_user("RR8")
    assert record.get("/fhir/Observation/obs-alice-hr", headers=rr8).status_code == 200
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=rr8).status_code == 200
    refused = record.get("/fhir/Observation/obs-bob-hr", headers=rr8)
    assert refused.status_code == 403 and details(refused) == "no-relationship"
    assert "X-Break-Glass-Reason" in refused.json()["issue"][0]["diagnostics"]
    assert record.get("/fhir/Observation?patient=bob", headers=rr8).status_code == 403
    assert record.get("/fhir/Patient/bob/$everything", headers=rr8).status_code == 403


def test_the_registered_gp_practice_has_a_relationship(record, as_user) -> None:
    gp = as_user("B86001")
    assert record.get("/fhir/Observation/obs-bob-hr", headers=gp).status_code == 200
    assert record.get("/fhir/Patient/bob", headers=gp).status_code == 200


def test_a_search_across_patients_shows_only_related_patients(record, as_user) -> None:
    bundle = record.get("/fhir/Observation?code=8867-4", headers=as_user("RR8")).json()
    assert ids(bundle) == {"obs-alice-hr"}
    assert bundle["total"] == 1


def test_directory_data_needs_no_relationship(record, as_user) -> None:
    assert record.get("/fhir/Organization/org-gp", headers=as_user("X26")).status_code == 200


# -- sensitive labels --------------------------------------------------------------------------------


def test_labelled_data_is_visible_to_its_owner_only(record, as_user) -> None:
    assert record.get("/fhir/Observation/obs-alice-psy", headers=as_user("RGD")).status_code == 200
    hidden = record.get("/fhir/Observation/obs-alice-psy", headers=as_user("RR8"))
    assert hidden.status_code == 404  # withheld reads answer 404 by default (policy)


def test_a_search_says_data_was_withheld_without_counting_it(record, as_user) -> None:
    bundle = record.get("/fhir/Observation?patient=alice", headers=as_user("RR8")).json()
    assert ids(bundle) == {"obs-alice-hr", "obs-alice-gp-bp"}
    assert bundle["total"] == 2
    assert withheld(bundle)
    count = record.get("/fhir/Observation?patient=alice&_summary=count", headers=as_user("RR8")).json()
    assert count["total"] == 2
    owner = record.get("/fhir/Observation?patient=alice", headers=as_user("RGD")).json()
    assert ids(owner) == {"obs-alice-hr", "obs-alice-gp-bp", "obs-alice-psy"} and not withheld(owner)


def test_everything_and_history_hide_labelled_data_too(record, as_user) -> None:
    everything = record.get("/fhir/Patient/alice/$everything", headers=as_user("RR8")).json()
    assert "obs-alice-psy" not in ids(everything) and "obs-alice-hr" in ids(everything)
    history = record.get("/fhir/Observation/_history", headers=as_user("RR8")).json()
    assert "obs-alice-psy" not in {e["resource"]["id"] for e in history.get("entry", []) if "resource" in e}
    assert record.get("/fhir/Observation/obs-alice-psy/_history/1", headers=as_user("RR8")).status_code == 404


def test_includes_are_released_one_by_one(record, as_user) -> None:
    bundle = record.get("/fhir/Patient?_id=alice&_revinclude=Observation:subject", headers=as_user("RR8")).json()
    assert ids(bundle, "include") == {"obs-alice-hr", "obs-alice-gp-bp"}


# -- roles ------------------------------------------------------------------------------------------


def test_roles_decide_which_types_are_open(record, as_user) -> None:
    receptionist = as_user("RR8", "R8009")
    assert record.get("/fhir/Patient/alice", headers=receptionist).status_code == 200
    assert record.get("/fhir/Encounter/enc-alice-rr8", headers=receptionist).status_code == 200
    refused = record.get("/fhir/Observation/obs-alice-hr", headers=receptionist)
    assert refused.status_code == 403 and details(refused) == "role"
    ig = as_user("RR8", "R8012")
    assert record.get("/fhir/Observation/obs-alice-hr", headers=ig).status_code == 403
    assert record.get("/fhir/Consent", headers=ig).status_code == 200


# -- objection and consent --------------------------------------------------------------------------


def objection(patient: str) -> dict[str, Any]:
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "dateTime": "2026-11-01T10:00:00Z",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                       "code": "OPTOUT"}]},
            "provision": {"type": "deny"}}


def test_an_objection_keeps_data_within_the_organisation_that_holds_it(record, make_token, as_user) -> None:
    alice = {"Authorization": "Bearer " + make_token("patient/*.rs patient/Consent.cu", role="", org="",
                                                     patient="alice", fhirUser="Patient/alice")}
    created = record.post("/fhir/Consent", json=objection("alice"), headers={**alice, "Content-Type": FHIR})
    assert created.status_code == 201, created.text
    rr8 = as_user("RR8")
    bundle = record.get("/fhir/Observation?patient=alice", headers=rr8).json()
    assert ids(bundle) == {"obs-alice-hr"}  # the hospital's own data only
    assert withheld(bundle) and "total" not in bundle
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=rr8).status_code == 404
    # The GP practice holds the rest.
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=as_user("B86001")).status_code == 200
    # Break-glass overrides an objection.
    glass = as_user("RR8", user="ed-doctor", **{"X-Break-Glass-Reason": REASON})
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=glass).status_code == 200
    # Withdrawn: shared again.
    consent = created.json()
    consent["status"] = "inactive"
    assert record.put(f"/fhir/Consent/{consent['id']}", json=consent,
                      headers={**alice, "Content-Type": FHIR}).status_code == 200
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=rr8).status_code == 200


def test_patients_see_their_own_record_including_sensitive_data(record, make_token) -> None:
    alice = {"Authorization": "Bearer " + make_token("patient/*.rs", role="", org="", patient="alice",
                                                     fhirUser="Patient/alice")}
    assert record.get("/fhir/Observation/obs-alice-psy", headers=alice).status_code == 200
    assert ids(record.get("/fhir/Observation", headers=alice).json()) == {"obs-alice-hr", "obs-alice-gp-bp",
                                                                         "obs-alice-psy"}
    assert record.get("/fhir/Observation/obs-bob-hr", headers=alice).status_code == 404


# -- break-glass -------------------------------------------------------------------------------------


def test_break_glass_opens_a_record_for_a_time_box(record, as_user) -> None:
    glass = as_user("RR8", user="ed-doctor", **{"X-Break-Glass-Reason": REASON})
    assert record.get("/fhir/Observation/obs-bob-hr", headers=glass).status_code == 200
    # The grant holds for this user and patient without repeating the header…
    assert record.get("/fhir/Observation?patient=bob", headers=as_user("RR8", user="ed-doctor")).status_code == 200
    # …but not for a colleague.
    assert record.get("/fhir/Observation/obs-bob-hr", headers=as_user("RR8", user="colleague")).status_code == 403
    # Break-glass does not lift a sensitivity label.
    assert record.get("/fhir/Observation/obs-alice-psy", headers=glass).status_code == 404


def test_a_break_glass_grant_ends_with_its_time_box(record, as_user, database_url) -> None:
    from datetime import timedelta

    from sqlalchemy import create_engine, select, update

    from engine.config import sync_database_url
    from engine.db.access_schema import break_glass_grants as grants

    glass = as_user("RR8", user="ed-doctor", **{"X-Break-Glass-Reason": REASON})
    assert record.get("/fhir/Observation/obs-bob-hr", headers=glass).status_code == 200
    engine = create_engine(sync_database_url(database_url))
    try:
        with engine.begin() as conn:
            started, expires = conn.execute(select(grants.c.started, grants.c.expires)).one()
            assert timedelta(hours=3, minutes=59) < expires - started <= timedelta(hours=4)  # the policy's default
            shift = timedelta(hours=4, seconds=1)  # four hours later
            conn.execute(update(grants).values(started=started - shift, expires=expires - shift))
    finally:
        engine.dispose()
    refused = record.get("/fhir/Observation/obs-bob-hr", headers=as_user("RR8", user="ed-doctor"))
    assert refused.status_code == 403 and details(refused) == "no-relationship"


@pytest.mark.parametrize("reason", ["", "test", "n/a", "x" * 3])
def test_a_trivial_break_glass_reason_is_refused(record, as_user, reason: str) -> None:
    response = record.get("/fhir/Observation/obs-bob-hr", headers=as_user("RR8", **{"X-Break-Glass-Reason": reason}))
    assert response.status_code == 400 and details(response) == "break-glass-reason"


# -- writes ------------------------------------------------------------------------------------------


def test_writing_needs_a_relationship_and_tags_the_writer_as_owner(record, as_user) -> None:
    rr8 = {**as_user("RR8"), "Content-Type": FHIR}
    refused = record.post("/fhir/Observation", json=obs("x", "bob", "RR8", "8867-4"), headers=rr8)
    assert refused.status_code == 403
    written = record.post("/fhir/Observation", json=obs("x", "alice", "B86001", "8310-5"), headers=rr8)
    assert written.status_code == 201
    tags = written.json()["meta"]["tag"]
    assert tags == [owner_tag("RR8")]  # the writer's organisation owns what it writes


# -- national data opt-out -------------------------------------------------------------------------------


def test_the_national_opt_out_applies_to_exports_not_to_direct_care(record, as_user) -> None:
    opt_out = {"resourceType": "Consent", "id": "opt-out-alice", "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "research"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": "Patient/alice"}, "dateTime": "2026-11-01T10:00:00Z",
               "provision": {"type": "deny"}}
    assert record.put("/fhir/Consent/opt-out-alice", json=opt_out, headers={"Content-Type": FHIR}).status_code == 201
    # Direct care: unchanged.
    assert record.get("/fhir/Observation/obs-alice-hr", headers=as_user("RR8")).status_code == 200
    # Secondary use: Alice is absent, Bob present.
    exported = record.get("/fhir/$export?_type=Patient,Observation")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/fhir+ndjson")
    lines = [line for line in exported.text.splitlines() if line]
    ids = {orjson_id(line) for line in lines}
    assert "bob" in ids and "obs-bob-hr" in ids
    assert not {"alice", "obs-alice-hr", "obs-alice-gp-bp", "obs-alice-psy"} & ids
    # A person's token is for direct care, not bulk export.
    assert record.get("/fhir/$export", headers=as_user("RR8")).status_code == 403


def orjson_id(line: str) -> str:
    import json

    return json.loads(line)["id"]


def test_care_team_membership_is_a_relationship(record, as_user) -> None:
    assert record.get("/fhir/Observation/obs-bob-hr", headers=as_user("RR8")).status_code == 403
    team = {"resourceType": "CareTeam", "id": "team-bob", "status": "active",
            "subject": {"reference": "Patient/bob"}, "period": {"start": "2026-01-01T00:00:00Z"},
            "participant": [{"member": {"reference": "Organization/org-rr8"}}]}
    assert record.put("/fhir/CareTeam/team-bob", json=team, headers={"Content-Type": FHIR}).status_code == 201
    assert record.get("/fhir/Observation/obs-bob-hr", headers=as_user("RR8")).status_code == 200


def test_a_privacy_consent_that_cannot_be_applied_fails_closed(record, as_user) -> None:
    unclear = {**objection("alice"), "id": "unclear"}
    del unclear["policyRule"]
    unclear["provision"] = {"period": {"start": "2026-01-01"}}  # no type, no policy rule: deny or permit?
    assert record.put("/fhir/Consent/unclear", json=unclear, headers={"Content-Type": FHIR}).status_code == 201
    # Read as an objection: the hospital keeps its own data, the GP's is withheld.
    assert record.get("/fhir/Observation/obs-alice-hr", headers=as_user("RR8")).status_code == 200
    assert record.get("/fhir/Observation/obs-alice-gp-bp", headers=as_user("RR8")).status_code == 404


# -- paths that could reveal withheld data indirectly -------------------------------------------------


def psy_diagnosis(record) -> None:
    """A mental-health diagnosis of Alice held by RGD (labelled), named by an RR8 admission's diagnosis."""
    condition = {"resourceType": "Condition", "id": "cond-alice-psy", "subject": {"reference": "Patient/alice"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32"}]},
                 "asserter": {"reference": "Practitioner/prac-rgd"},
                 "meta": {"tag": [owner_tag("RGD")], "security": [{"system": s, "code": c} for s, c in (PSY, RESTRICTED)]}}
    admission = {**encounter("enc-alice-dx", "alice", "org-rr8", "RR8", "2026-09-01T09:00:00Z", "2026-09-10T12:00:00Z"),
                 "diagnosis": [{"condition": {"reference": "Condition/cond-alice-psy"}}]}
    practitioner = {"resourceType": "Practitioner", "id": "prac-rgd", "name": [{"family": "Osei"}]}
    for document in (practitioner, condition, admission):
        response = record.put(f"/fhir/{document['resourceType']}/{document['id']}", json=document,
                              headers={"Content-Type": FHIR})
        assert response.status_code in {200, 201}, response.text


def test_a_chained_parameter_cannot_test_what_the_user_may_not_see(record, as_user, make_token) -> None:
    psy_diagnosis(record)
    rr8 = as_user("RR8")
    assert record.get("/fhir/Condition/cond-alice-psy", headers=rr8).status_code == 404
    chained = "/fhir/Encounter?diagnosis:Condition.code=F32"
    assert ids(record.get(chained, headers=rr8).json()) == set()
    assert record.get(chained + "&_summary=count", headers=rr8).json()["total"] == 0
    # The diagnosis's owner finds the admission through it.
    assert ids(record.get(chained, headers=as_user("RGD")).json()) == {"enc-alice-dx"}
    # A role that may not read Conditions, or a token without their scope, may not chain to them.
    receptionist = record.get(chained, headers=as_user("RR8", "R8009"))
    assert receptionist.status_code == 403 and details(receptionist) == "role"
    narrow = {"Authorization": "Bearer " + make_token("user/Encounter.rs user/Patient.rs", role="R8000", org="RR8")}
    assert record.get(chained, headers=narrow).status_code == 403


def test_includes_iterate_only_from_what_was_released(record, as_user) -> None:
    psy_diagnosis(record)
    rr8 = as_user("RR8")
    for query in ("/fhir/Patient?_id=alice&_revinclude=Condition:subject&_include:iterate=Condition:asserter",
                  "/fhir/Encounter?_id=enc-alice-dx&_include=Encounter:diagnosis&_include:iterate=Condition:asserter"):
        bundle = record.get(query, headers=rr8).json()
        assert not {"cond-alice-psy", "prac-rgd"} & ids(bundle, "include"), query
        assert withheld(bundle), query
    owner = record.get("/fhir/Encounter?_id=enc-alice-dx&_include=Encounter:diagnosis"
                       "&_include:iterate=Condition:asserter", headers=as_user("RGD")).json()
    assert ids(owner, "include") == {"cond-alice-psy", "prac-rgd"} and not withheld(owner)


def test_everything_says_when_something_was_withheld(record, as_user) -> None:
    everything = record.get("/fhir/Patient/alice/$everything", headers=as_user("RR8")).json()
    assert withheld(everything)
    assert not withheld(record.get("/fhir/Patient/alice/$everything", headers=as_user("RGD")).json())


def test_a_count_never_includes_what_an_objection_withholds(record, make_token, as_user) -> None:
    alice = {"Authorization": "Bearer " + make_token("patient/*.rs patient/Consent.cu", role="", org="",
                                                     patient="alice", fhirUser="Patient/alice")}
    assert record.post("/fhir/Consent", json=objection("alice"),
                       headers={**alice, "Content-Type": FHIR}).status_code == 201
    rr8 = as_user("RR8")
    listed = ids(record.get("/fhir/Observation?patient=alice", headers=rr8).json())
    assert listed == {"obs-alice-hr"}
    for query in ("/fhir/Observation?patient=alice&_summary=count", "/fhir/Observation?patient=alice&_count=0",
                  "/fhir/Observation?_summary=count", "/fhir/Observation?code=85354-9&_summary=count"):
        bundle = record.get(query, headers=rr8).json()
        expected = 0 if "85354-9" in query else 1
        assert bundle["total"] == expected, query
