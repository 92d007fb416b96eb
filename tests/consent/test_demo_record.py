"""The demo shared care record (fixtures/demo) through the pure decision: UK-REFERENCE tests 9-12."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consent.decide import decide
from consent.labels import apply_labels
from consent.model import AccessRequest, Requester, ResourceFacts, parse_consent
from consent.relationships import relationships_from
from consent.vocabulary import owner_tag
from tests.consent.builders import POLICY, demo_resources, fixture

NOW = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
RESOURCES = {r["id"]: r for r in demo_resources()}
RELATIONSHIPS = [rel for doc in RESOURCES.values() for rel in relationships_from(doc)]
OWNERS = {"cond-chloe-gad": "RGD", "enc-chloe-mh-2025-06": "RGD", "cond-alice-dementia": "B86901",
          "cond-bilal-t2dm": "B86901", "enc-alice-admission-2025-01": "RR8"}


def user(role: str, ods: str, org_id: str) -> Requester:
    return Requester(user_id="demo", role=role, orgs=frozenset({ods, f"Organization/{org_id}"}))


KAREN = user("R8009", "B86901", "org-b86901")  # receptionist, Chapel Allerton Park Surgery
AISHA = user("R8000", "B86901", "org-b86901")  # GP, Chapel Allerton Park Surgery
TOM = user("R8000", "B86902", "org-b86902")  # GP, Headingley Lane (Chloe's practice)
JAMES = user("R8001", "RR8", "org-rr8")  # nurse, LTHT
ADEBAYO = user("R8000", "RGD", "org-rgd")  # psychiatrist, LYPFT
MARK = user("R8012", "RR8", "org-rr8")  # IG officer, LTHT


def facts(resource_id: str) -> ResourceFacts:
    doc = apply_labels(RESOURCES[resource_id], POLICY)
    if resource_id in OWNERS:
        doc.setdefault("meta", {})["tag"] = [owner_tag(OWNERS[resource_id])]
    return ResourceFacts.from_document(doc)


@pytest.mark.parametrize(
    ("who", "resource_id", "expected"),
    [
        (KAREN, "pat-alice-hughes", ("permit", "relationship")),
        (KAREN, "cond-alice-dementia", ("deny", "role")),
        (AISHA, "cond-alice-dementia", ("permit", "relationship")),
        (JAMES, "cond-alice-dementia", ("permit", "relationship")),  # admission Jan 2025, within the window
        (JAMES, "cond-bilal-t2dm", ("deny", "no-relationship")),
        (TOM, "cond-chloe-gad", ("withhold", "sensitive")),  # PSY, R owned by LYPFT
        (ADEBAYO, "cond-chloe-gad", ("permit", "relationship")),
        (JAMES, "enc-chloe-mh-2025-06", ("withhold", "sensitive")),
        (MARK, "pat-bilal-hussain", ("permit", "relationship")),
        (MARK, "cond-bilal-t2dm", ("deny", "role")),
        (KAREN, "org-rr8", ("permit", "non-patient-data")),
    ],
)
def test_demo_users(who: Requester, resource_id: str, expected: tuple[str, str]) -> None:
    decision = decide(AccessRequest(who, "read"), facts(resource_id), [], RELATIONSHIPS, NOW, POLICY)
    assert (decision.effect, decision.rule) == expected, decision.reason


def test_bilal_s_objection_hides_his_record_from_the_hospital_but_not_from_his_practice() -> None:
    objection = parse_consent(fixture("consent-objection-basic.json"))
    assert objection is not None
    admission = {"resourceType": "Encounter", "id": "e", "status": "in-progress",
                 "subject": {"reference": "Patient/pat-bilal-hussain"},
                 "serviceProvider": {"reference": "Organization/org-rr8"}, "period": {"start": "2025-08-31"}}
    relationships = [*RELATIONSHIPS, *relationships_from(admission)]
    rr8 = Requester("demo", "R8001", frozenset({"RR8", "Organization/org-rr8"}))
    hospital = decide(AccessRequest(rr8, "read"), facts("cond-bilal-t2dm"), [objection], relationships, NOW, POLICY)
    practice = decide(AccessRequest(AISHA, "read"), facts("cond-bilal-t2dm"), [objection], relationships, NOW, POLICY)
    assert (hospital.effect, hospital.rule) == ("withhold", "objection")
    assert (practice.effect, practice.rule) == ("permit", "relationship")
