"""The access matrix: roles × organisations × consents × labels × endpoints, paging and includes among them.

On the small Leeds record of test_access_http (Alice: registered with B86001, an admission at RR8, care
from RGD, a PSY-labelled Observation held by RGD; Bob: registered with B86001 only), with and without
Alice's objection, every user of every organisation and role must get from every endpoint exactly what
the pure core (`consent.decide`, via test_no_leaks._permitted) lets them read — no more (a leak) and no
less (data kept from a clinician who may see it) — and a refusal where it permits nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.access.test_access_http import FHIR, RECORD, objection
from tests.access.test_no_leaks import _permitted

ORGS = ["RR8", "RGD", "B86001", "X26"]
ROLES = ["R8000", "R8009", "R8012"]  # clinician, receptionist, information officer


def entries(bundle: dict[str, Any], mode: str) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == mode}


def pages(client, path: str, headers: dict[str, str]) -> tuple[int, set[str]]:
    """Every match of a search, following its `next` links (status of the first page, matches)."""
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        return response.status_code, set()
    found: set[str] = set()
    for _ in range(50):
        bundle = response.json()
        found |= entries(bundle, "match")
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not following:
            return 200, found
        url = urlsplit(following[0])
        response = client.get(f"{url.path}?{url.query}", headers=headers)
        assert response.status_code == 200, response.text
    raise AssertionError(f"{path}: more than 50 pages")


@pytest.mark.parametrize("consent", ["none", "objection"])
def test_every_user_gets_exactly_what_the_policy_permits(record, as_user, consent: str) -> None:
    world = [*RECORD]
    if consent == "objection":
        document = {**objection("alice"), "id": "alice-objects"}
        assert record.put("/fhir/Consent/alice-objects", json=document,
                          headers={"Content-Type": FHIR}).status_code == 201
        world.append(document)
    observations = {f"Observation/{d['id']}": d for d in world if d["resourceType"] == "Observation"}
    alices = {key for key, d in observations.items() if d["subject"]["reference"] == "Patient/alice"}
    problems: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    for org in ORGS:
        for role in ROLES:
            user = as_user(org, role, user=f"{org}-{role}-{consent}")
            permitted = _permitted(world, org, role)
            who = f"{org}/{role}/{consent}"
            for document in world:
                key = f"{document['resourceType']}/{document['id']}"
                status = record.get(f"/fhir/{key}", headers=user).status_code
                check((status == 200) == (key in permitted), f"{who}: read {key} -> {status}")
            # A search about Alice, one match a page.
            status, found = pages(record, "/fhir/Observation?patient=alice&_count=1", user)
            expected = alices & permitted
            check(found == expected if status == 200 else not expected,
                  f"{who}: Observation?patient=alice -> {status} {sorted(found)} (expected {sorted(expected)})")
            # Across patients, one match a page, and the count.
            status, found = pages(record, "/fhir/Observation?_count=1", user)
            expected = set(observations) & permitted
            check(found == expected if status == 200 else not expected,
                  f"{who}: Observation -> {status} {sorted(found)} (expected {sorted(expected)})")
            counted = record.get("/fhir/Observation?_summary=count", headers=user)
            if counted.status_code == 200 and "total" in counted.json():
                check(counted.json()["total"] == len(expected), f"{who}: count {counted.json()['total']}")
            # Includes: Alice's Observations beside her Patient.
            response = record.get("/fhir/Patient?_id=alice&_revinclude=Observation:subject", headers=user)
            if response.status_code == 200 and entries(response.json(), "match"):
                included = entries(response.json(), "include")
                check(included == alices & permitted, f"{who}: _revinclude -> {sorted(included)}")
            # $everything.
            response = record.get("/fhir/Patient/alice/$everything", headers=user)
            if response.status_code == 200:
                returned = entries(response.json(), "match")
                check(returned <= permitted, f"{who}: $everything leaks {sorted(returned - permitted)}")
                check(alices & permitted <= returned, f"{who}: $everything misses {sorted(alices & permitted - returned)}")
    assert not problems, "\n".join(problems)
