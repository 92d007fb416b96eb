"""Legitimate relationships (UK-REFERENCE §4) read from the resources the store holds.

Registered GP (Patient.generalPractitioner), encounters (Encounter.serviceProvider), episodes and care-home
residency (EpisodeOfCare.managingOrganization), referrals (ServiceRequest.performer) and care teams
(CareTeam.managingOrganization, participant.member). Organisations are keys as `fhir_values.organisation_key`
gives them: "Organization/<id>" or an ODS code from an identifier-only reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from consent.fhir_values import organisation_key, parse_fhir_datetime, period_bounds
from consent.model import Relationship, RelationshipKind, patient_of
from consent.vocabulary import CARE_HOME_EPISODE_PHRASES

JSON = Mapping[str, Any]


def relationships_from(
    document: JSON,
    patient_id: str | None = None,
    care_home_phrases: Iterable[str] = CARE_HOME_EPISODE_PHRASES,
) -> list[Relationship]:
    """The relationships one resource establishes for `patient_id` (default: the patient it names), sorted.
    Resource types that establish none give []."""
    patient = patient_id if patient_id is not None else patient_of(document)
    reader = _READERS.get(str(document.get("resourceType")))
    if patient is None or reader is None:
        return []
    found = reader(document, patient, tuple(p.lower() for p in care_home_phrases))
    return sorted(set(found), key=relationship_sort_key)


def _from_patient(doc: JSON, patient: str, _: tuple[str, ...]) -> list[Relationship]:
    """Patient.generalPractitioner Organization references: the registered GP practice (open-ended)."""
    return [Relationship(patient, org, "registered-gp") for org in _orgs(doc.get("generalPractitioner"))]


def _from_encounter(doc: JSON, patient: str, _: tuple[str, ...]) -> list[Relationship]:
    """Encounter.serviceProvider over Encounter.period (none when cancelled or entered-in-error)."""
    if doc.get("status") in {"cancelled", "entered-in-error"}:
        return []
    return _periodic(patient, _orgs(doc.get("serviceProvider")), "encounter", doc.get("period"))


def _from_episode(doc: JSON, patient: str, care_home_phrases: tuple[str, ...]) -> list[Relationship]:
    """EpisodeOfCare.managingOrganization over its period: care-home residency when its type's text or
    display contains a care-home phrase (`vocabulary.CARE_HOME_EPISODE_PHRASES`), else an episode."""
    if doc.get("status") in {"cancelled", "entered-in-error"}:
        return []
    kind: RelationshipKind = "care-home" if _is_care_home(doc, care_home_phrases) else "episode"
    return _periodic(patient, _orgs(doc.get("managingOrganization")), kind, doc.get("period"))


def _from_referral(doc: JSON, patient: str, _: tuple[str, ...]) -> list[Relationship]:
    """ServiceRequest.performer Organization references: a referral from authoredOn until the end of
    occurrencePeriod (if any). Revoked or entered-in-error requests give none."""
    if doc.get("status") in {"revoked", "entered-in-error"}:
        return []
    start = parse_fhir_datetime(doc.get("authoredOn"))
    _, end = period_bounds(doc.get("occurrencePeriod"))
    return [Relationship(patient, org, "referral", start, end) for org in _orgs(doc.get("performer"))]


def _from_care_team(doc: JSON, patient: str, _: tuple[str, ...]) -> list[Relationship]:
    """CareTeam.managingOrganization and participant.member Organization references over CareTeam.period."""
    if doc.get("status") in {"inactive", "entered-in-error"}:
        return []
    members = [p.get("member") for p in doc.get("participant") or [] if isinstance(p, Mapping)]
    return _periodic(
        patient, _orgs(doc.get("managingOrganization")) + _orgs(members), "care-team", doc.get("period")
    )


_READERS: dict[str, Callable[[JSON, str, tuple[str, ...]], list[Relationship]]] = {
    "Patient": _from_patient,
    "Encounter": _from_encounter,
    "EpisodeOfCare": _from_episode,
    "ServiceRequest": _from_referral,
    "CareTeam": _from_care_team,
}


def _orgs(references: object) -> list[str]:
    items = references if isinstance(references, list) else [references]
    return [key for ref in items if (key := organisation_key(ref)) is not None]


def _periodic(patient: str, orgs: list[str], kind: RelationshipKind, period: object) -> list[Relationship]:
    start, end = period_bounds(period)
    return [Relationship(patient, org, kind, start, end) for org in orgs]


def _is_care_home(doc: JSON, phrases: tuple[str, ...]) -> bool:
    concepts = doc.get("type") or []
    texts = [c.get("text", "") for c in concepts if isinstance(c, Mapping)]
    texts += [
        c.get("display", "")
        for concept in concepts
        for c in (concept.get("coding") or [])
        if isinstance(concept, Mapping) and isinstance(c, Mapping)
    ]
    # No national code for care-home residency is known (UK-REFERENCE §6 is unverified): text match only.
    return any(phrase in str(text).lower() for text in texts for phrase in phrases)


def relationship_sort_key(relationship: Relationship) -> tuple[str, str, str, str]:
    """A total order on relationships, so that lists of them never depend on input order."""
    r = relationship
    return r.kind, r.org, r.start.isoformat() if r.start else "", r.end.isoformat() if r.end else ""
