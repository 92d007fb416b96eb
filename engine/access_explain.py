"""`Patient/[id]/$access-explain`: for IG officers, which rule decides each resource of a patient's
record for a given user, role and organisation — and why (every rule's verdict, `consent.decide.explain`).

The answer is a FHIR `Parameters` resource: a `subject` part describing the user asked about, then one
`resource` part per resource (Patient first, then its compartment in store order) with the decision's
effect, rule and reason and each rule's verdict. It names resources by type and id only: an IG officer
sees how the policy treats the record, never its clinical content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from consent.decide import combine, explain
from consent.model import AccessRequest, Requester, ResourceFacts, RuleVerdict
from consent.vocabulary import BREAK_GLASS, TREATMENT
from engine import outcomes
from engine.access import AccessGate, role_permits
from engine.access_data import PatientContext, load_contexts
from engine.audit.events import record_for
from engine.auth import Principal
from engine.db import repository
from engine.db.repository import Stored
from engine.search.normalise import naive_utc

MAX_EXPLAINED = 5000


@dataclass(frozen=True)
class Subject:
    """The user whose access is explained."""

    user_id: str
    role: str
    org: str | None
    break_glass: bool = False


async def explain_access(gate: AccessGate, who: Principal, patient_id: str, subject: Subject) -> dict[str, Any]:
    """The `$access-explain` Parameters for `subject` on `patient_id`'s record (IG officers only; audited)."""
    if not role_permits(gate.policy, who, "read", "AuditEvent"):
        error = outcomes.forbidden("role", "Only information governance roles may ask why access was decided")
        await gate.audit_refusal(who, "operation", f"Patient/{patient_id}", error, operation="$access-explain")
        raise error
    now = gate.clock()
    async with gate.db.read() as conn:
        patient = await repository.read(conn, "Patient", patient_id)
        if patient is None or patient.deleted:
            raise outcomes.not_found("Patient", patient_id)
        rows, _ = await repository.compartment_page(conn, patient_id, types=None, since=None, count=MAX_EXPLAINED,
                                                    after_pk=None, snapshot_pk=None)
        orgs = await gate.org_keys.keys(conn, subject.org)
        context = (await load_contexts(conn, [patient_id], user_id=subject.user_id, orgs=orgs,
                                       now=naive_utc(now)))[patient_id]
    glass = subject.break_glass or context.break_glass
    request = AccessRequest(Requester(subject.user_id, subject.role, orgs, BREAK_GLASS if glass else TREATMENT,
                                      glass), "read")
    explained = [_resource_part(row, patient_id, request, context, now, gate)
                 for row in [patient, *(r for r in rows if r.pk != patient.pk)]]
    await gate.audit([record_for(who, recorded=now, subtype="operation", operation="$access-explain",
                                 patient_ids=(patient_id,), entities=(f"Patient/{patient_id}",))])
    return {"resourceType": "Parameters", "parameter": [_subject_part(subject, orgs, context), *explained]}


def _resource_part(row: Stored, patient_id: str, request: AccessRequest, context: PatientContext, now: datetime,
                   gate: AccessGate) -> dict[str, Any]:
    facts = ResourceFacts.from_document(orjson.loads(row.content or "{}"), patient_id=patient_id)
    verdicts = explain(request, facts, context.consents, context.relationships, now, gate.policy)
    decision = combine(verdicts)
    return {"name": "resource", "part": [
        {"name": "reference", "valueReference": {"reference": f"{row.res_type}/{row.res_id}"}},
        {"name": "effect", "valueCode": decision.effect},
        {"name": "rule", "valueCode": decision.rule},
        {"name": "reason", "valueString": decision.reason},
        *(_verdict_part(v) for v in verdicts if v.applies),
    ]}


def _verdict_part(verdict: RuleVerdict) -> dict[str, Any]:
    return {"name": "verdict", "part": [
        {"name": "rule", "valueCode": verdict.rule},
        {"name": "effect", "valueCode": verdict.effect or "none"},
        {"name": "reason", "valueString": verdict.reason},
    ]}


def _subject_part(subject: Subject, orgs: frozenset[str], context: PatientContext) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "user", "valueString": subject.user_id},
        {"name": "role", "valueCode": subject.role},
        *({"name": "organization", "valueString": key} for key in sorted(orgs)),
        {"name": "break-glass", "valueBoolean": subject.break_glass or context.break_glass},
        *({"name": "relationship", "valueString": f"{r.kind} with {r.org}"} for r in context.relationships),
        *({"name": "consent", "valueReference": {"reference": f"Consent/{c.consent_id}"}} for c in context.consents),
    ]
    return {"name": "subject", "part": parts}

