"""No path leaks: for random stores, consents and users, what every endpoint returns is a subset of what
`consent.decide` permits for that user, and a read answers 200 exactly when `decide` permits.

The expected set is computed by the pure core alone (relationships from `consent.relationships`, consents
from `consent.model.parse_consent`), independently of the SQL the gate runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consent.decide import decide
from consent.model import AccessRequest, Requester, ResourceFacts, parse_consent
from consent.policy import load_policy
from consent.relationships import relationships_from
from consent.vocabulary import ACT_CODE_SYSTEM, ODS_SYSTEM, owner_tag
from tests.conftest import truncate_all

FHIR = "application/fhir+json"
POLICY = load_policy()
ORGS = ["RR8", "RGD", "B86001"]
PATIENTS = ["p1", "p2", "p3"]
PRIVACY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}


def _organisations() -> list[dict[str, Any]]:
    return [{"resourceType": "Organization", "id": f"org-{o.lower()}", "identifier": [{"system": ODS_SYSTEM,
             "value": o}], "name": o} for o in ORGS]


def _consent(patient: str, shape: str) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny"}  # an objection
    if shape == "deny-psy-to-rr8":
        provision = {"type": "permit", "provision": [{
            "type": "deny", "securityLabel": [{"system": ACT_CODE_SYSTEM, "code": "PSY"}],
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "PRCP"}]},
                       "reference": {"identifier": {"system": ODS_SYSTEM, "value": "RR8"}}}]}]}
    elif shape == "permit-psy-to-b86001":
        provision = {"type": "permit", "provision": [{
            "type": "permit", "securityLabel": [{"system": ACT_CODE_SYSTEM, "code": "PSY"}],
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "PRCP"}]},
                       "reference": {"identifier": {"system": ODS_SYSTEM, "value": "B86001"}}}]}]}
    return {"resourceType": "Consent", "id": f"consent-{patient}-{shape}", "status": "active", "scope": PRIVACY,
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "dateTime": "2026-01-01T00:00:00Z",
            "provision": provision}


@st.composite
def worlds(draw: st.DrawFn) -> list[dict[str, Any]]:
    documents = _organisations()
    for patient in PATIENTS:
        gp = draw(st.sampled_from([None, *ORGS]))
        document: dict[str, Any] = {"resourceType": "Patient", "id": patient, "meta": {"tag": [owner_tag("B86001")]}}
        if gp:
            document["generalPractitioner"] = [{"reference": f"Organization/org-{gp.lower()}"}]
        documents.append(document)
        for n, org in enumerate(draw(st.lists(st.sampled_from(ORGS), max_size=2))):
            documents.append({"resourceType": "Encounter", "id": f"enc-{patient}-{n}", "status": "finished",
                              "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                              "subject": {"reference": f"Patient/{patient}"}, "meta": {"tag": [owner_tag(org)]},
                              "serviceProvider": {"reference": f"Organization/org-{org.lower()}"},
                              "period": {"start": "2026-06-01T09:00:00Z", "end": "2026-06-01T10:00:00Z"}})
        encounters = [d["id"] for d in documents if d["resourceType"] == "Encounter" and d["id"].startswith(f"enc-{patient}-")]
        for n in range(draw(st.integers(0, 3))):
            owner = draw(st.sampled_from(ORGS))
            meta: dict[str, Any] = {"tag": [owner_tag(owner)]}
            if draw(st.booleans()):
                meta["security"] = [{"system": ACT_CODE_SYSTEM, "code": "PSY"}]
            observation = {"resourceType": "Observation", "id": f"obs-{patient}-{n}", "status": "final",
                           "meta": meta, "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                           "subject": {"reference": f"Patient/{patient}"},
                           "effectiveDateTime": "2026-06-01T09:30:00Z"}
            if encounters and draw(st.booleans()):
                observation["encounter"] = {"reference": f"Encounter/{draw(st.sampled_from(encounters))}"}
            documents.append(observation)
        for shape in draw(st.lists(st.sampled_from(["objection", "deny-psy-to-rr8", "permit-psy-to-b86001"]),
                                   max_size=2, unique=True)):
            documents.append(_consent(patient, shape))
    return documents


def _permitted(documents: list[dict[str, Any]], org: str, role: str) -> set[str]:
    """What `consent.decide` lets a user of `org` with `role` read, by "Type/id"."""
    now = datetime.now(UTC)
    org_ids = [d["id"] for d in documents if d["resourceType"] == "Organization"
               and any(i.get("value") == org for i in d.get("identifier", []))]
    orgs = frozenset({org, *(f"Organization/{i}" for i in org_ids)})
    request = AccessRequest(Requester("u", role, orgs), "read")
    relationships = [r for d in documents for r in relationships_from(d)]
    consents = [c for c in (parse_consent(d) for d in documents if d["resourceType"] == "Consent") if c]
    allowed = set()
    for document in documents:
        facts = ResourceFacts.from_document(document)
        decision = decide(request, facts, [c for c in consents if c.patient_id == facts.patient_id],
                          [r for r in relationships if r.patient_id == facts.patient_id], now, POLICY)
        if decision.effect == "permit":
            allowed.add(f"{document['resourceType']}/{document['id']}")
    return allowed


def _returned(bundle: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"}


def _objecting_patient_seen_by_their_gp() -> list[dict[str, Any]]:
    """p1 objects; their GP (RR8) holds an Observation made in an encounter at RGD, which RR8 may not see."""
    return [*_organisations(),
            {"resourceType": "Patient", "id": "p1", "meta": {"tag": [owner_tag("RR8")]},
             "generalPractitioner": [{"reference": "Organization/org-rr8"}]},
            {"resourceType": "Encounter", "id": "enc-p1-0", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "subject": {"reference": "Patient/p1"}, "meta": {"tag": [owner_tag("RGD")]},
             "serviceProvider": {"reference": "Organization/org-rgd"},
             "period": {"start": "2026-06-01T09:00:00Z", "end": "2026-06-01T10:00:00Z"}},
            {"resourceType": "Observation", "id": "obs-p1-0", "status": "final", "meta": {"tag": [owner_tag("RR8")]},
             "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
             "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/enc-p1-0"},
             "effectiveDateTime": "2026-06-01T09:30:00Z"},
            _consent("p1", "objection")]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(world=worlds(), org=st.sampled_from(ORGS), role=st.sampled_from(["R8000", "R8009"]))
@example(world=_objecting_patient_seen_by_their_gp(), org="RR8", role="R8000")
def test_every_endpoint_returns_a_subset_of_what_decide_permits(client, make_token, database_url, world, org,
                                                                role) -> None:
    truncate_all(database_url)
    for document in world:
        response = client.put(f"/fhir/{document['resourceType']}/{document['id']}", json=document,
                              headers={"Content-Type": FHIR})
        assert response.status_code in {200, 201}, response.text
    allowed = _permitted(world, org, role)
    user = {"Authorization": "Bearer " + make_token("user/*.rs", role=role, org=org, user=f"u-{org}")}

    for document in world:
        reference = f"{document['resourceType']}/{document['id']}"
        status = client.get(f"/fhir/{reference}", headers=user).status_code
        assert (status == 200) == (reference in allowed), (reference, status)

    seen: set[str] = set()
    for path in ["/fhir/Observation", "/fhir/Encounter", "/fhir/Patient?_revinclude=Observation:subject",
                 "/fhir/Encounter?_revinclude=Observation:encounter&_include:iterate=Observation:subject",
                 *(f"/fhir/Observation?patient={p}&_include=Observation:subject" for p in PATIENTS),
                 *(f"/fhir/Patient/{p}/$everything" for p in PATIENTS),
                 "/fhir/Observation?_count=1", "/fhir/Observation?encounter:Encounter.status=finished"]:
        response = client.get(path, headers=user)
        if response.status_code == 200:
            seen |= _returned(response.json())
            if "encounter:Encounter" in path:  # a chain tests only targets the user may see
                for observation in _returned(response.json()):
                    source = next(d for d in world if f"Observation/{d['id']}" == observation)
                    assert source["encounter"]["reference"] in allowed, (observation, source["encounter"])
        else:
            assert response.status_code in {403, 404}, (path, response.status_code)
    assert seen <= allowed, seen - allowed

    # Counts count exactly what a search releases: never what the policy withholds.
    for patient in [None, *PATIENTS]:
        path = "/fhir/Observation?_summary=count" + (f"&patient={patient}" if patient else "")
        response = client.get(path, headers=user)
        if response.status_code != 200:
            assert response.status_code in {403, 404}, (path, response.status_code)
            continue
        expected = {f"Observation/{d['id']}" for d in world if d["resourceType"] == "Observation"
                    and (patient is None or d["subject"]["reference"] == f"Patient/{patient}")} & allowed
        total = response.json().get("total")
        assert total is None or total == len(expected), (path, total, expected)
