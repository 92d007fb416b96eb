"""Builders for the consent tests: the default policy, requesters, resources and consents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consent.model import (
    AccessRequest,
    PatientConsent,
    Provision,
    Relationship,
    Requester,
    ResourceFacts,
    parse_consent,
)
from consent.policy import Policy, load_policy
from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, CONSENT_SCOPE_SYSTEM, PATIENT_PRIVACY

FIXTURES = Path(__file__).with_name("fixtures")
DEMO = Path(__file__).resolve().parents[2] / "fixtures" / "demo"
NOW = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
PATIENT = "pat-chloe-adeyemi"
OWNER, OTHER = "RGD", "RR8"  # the mental health trust holds the data; the acute trust asks
PSY = (ACT_CODE_SYSTEM, "PSY")
RESTRICTED = (CONFIDENTIALITY_SYSTEM, "R")
PRIVACY_SCOPE = frozenset({(CONSENT_SCOPE_SYSTEM, PATIENT_PRIVACY)})

POLICY: Policy = load_policy()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def consent_fixture(name: str) -> PatientConsent:
    parsed = parse_consent(fixture(name))
    assert parsed is not None
    return parsed


def demo_resources() -> list[dict[str, Any]]:
    return [e["resource"] for path in sorted(DEMO.glob("*.json")) for e in json.loads(path.read_text())["entry"]]


def requester(org: str = OTHER, role: str = "R8000", **kwargs: Any) -> Requester:
    return Requester(user_id="555000000104", role=role, orgs=frozenset({org, f"Organization/org-{org.lower()}"}),
                     **kwargs)


def request(org: str = OTHER, role: str = "R8000", interaction: str = "read", secondary_use: bool = False,
            **kwargs: Any) -> AccessRequest:
    return AccessRequest(requester(org, role, **kwargs), interaction, secondary_use)  # type: ignore[arg-type]


def resource(res_type: str = "Condition", owner: str | None = OWNER, labels: frozenset = frozenset(),
             codes: frozenset = frozenset(), patient: str | None = PATIENT, res_id: str = "cond-1",
             data_time: datetime | None = datetime(2025, 6, 17, tzinfo=UTC)) -> ResourceFacts:
    return ResourceFacts(res_type, res_id, patient, owner, labels, codes, data_time)


def relationship(org: str = OTHER, kind: str = "registered-gp", patient: str = PATIENT,
                 start: datetime | None = None, end: datetime | None = None) -> Relationship:
    return Relationship(patient, org, kind, start, end)  # type: ignore[arg-type]


def consent(root: Provision, consent_id: str = "c1", patient: str = PATIENT,
            scopes: frozenset = PRIVACY_SCOPE) -> PatientConsent:
    return PatientConsent(consent_id, patient, root, scopes)


OBJECTION = consent(Provision("deny"), "objection")
