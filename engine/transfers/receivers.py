"""Who receives a discharge: the registered GP practice, the care home, the community team referred to.

Pure: FHIR JSON in, `Receiver`s out; the caller reads the resources (engine/transfers/discharge.py).

- GP practice: `Patient.generalPractitioner` entries that are Organizations (PD1-3, UK-REFERENCE §3).
- Care home: only when the discharge destination (PV1-37 → `Encounter.hospitalization.dischargeDisposition`,
  UKCore-DischargeDestinationEngland) is a care home — 54, 65, 85 (UK-REFERENCE §1). The care home
  is the `managingOrganization` of the patient's current care-home residency `EpisodeOfCare`
  (UK-REFERENCE §6: residency → EpisodeOfCare with the care home's ODS code), else the managing
  Organization of `Encounter.hospitalization.destination`'s Location when a map supplies one. PV1-37
  carries only the destination code, not the home, so without either the care-home transfer is still
  raised, with no owner and business status `receiver-not-identified`, for the hospital to resolve.
- Community team: the performer Organization of each active referral (`ServiceRequest`, status
  active, intent order/plan/proposal) in the patient's record.

The discharging hospital itself never receives a transfer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mappings.ids import resource_id

JSON = dict[str, Any]
ODS_ORGANIZATION = "https://fhir.nhs.uk/Id/ods-organization-code"
ODS_SITE = "https://fhir.nhs.uk/Id/ods-site-code"
ODS_SYSTEMS = (ODS_ORGANIZATION, ODS_SITE)
DISCHARGE_DESTINATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"
CARE_HOME_DESTINATIONS = frozenset({"54", "65", "85"})
EPISODE_TYPE_SYSTEM = "https://fhir.sharedcare.dev/CodeSystem/episode-of-care-type"
CARE_HOME_RESIDENCY = "care-home-residency"
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})  # v3-ActCode inpatient encounter classes
REFERRAL_INTENTS = frozenset({"order", "plan", "proposal", "original-order"})

GP_PRACTICE = "gp-practice"
CARE_HOME = "care-home"
COMMUNITY_TEAM = "community-team"
ROLE_DISPLAY = {GP_PRACTICE: "Registered GP practice", CARE_HOME: "Care home", COMMUNITY_TEAM: "Community team"}


@dataclass(frozen=True, slots=True)
class OrgRef:
    """An organisation as a Task names it: the store's Organization id and its ODS code (either may be None)."""

    id: str | None
    ods: str | None
    display: str | None = None

    def reference(self) -> JSON:
        """A FHIR Reference carrying both the literal reference and the ODS identifier."""
        ref: JSON = {}
        if self.id:
            ref["reference"] = f"Organization/{self.id}"
        ref["type"] = "Organization"
        if self.ods:
            ref["identifier"] = {"system": ODS_ORGANIZATION, "value": self.ods}
        if self.display:
            ref["display"] = self.display
        return ref


def org_for_ods(ods: str, display: str | None = None) -> OrgRef:
    """The Organization our maps create for an ODS code (`resource_id("Organization", ods)`)."""
    return OrgRef(resource_id("Organization", ods), ods, display)


@dataclass(frozen=True, slots=True)
class Receiver:
    """One organisation that takes over care, in one role."""

    role: str
    org: OrgRef | None  # None: a care home the record does not identify

    @property
    def key(self) -> str:
        """What makes the Task id: the receiver's ODS code (else org id), or the role when unidentified."""
        if self.org is None:
            return f"{self.role}:unidentified"
        return self.org.ods or f"Organization/{self.org.id}"


# -- reading references -----------------------------------------------------------------------------


def reference_id(ref: Any, res_type: str) -> str | None:
    """The id in a relative (or absolute) literal reference to `res_type`, else None."""
    if not isinstance(ref, Mapping):
        return None
    text = ref.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == res_type and parts[-1] else None


def ods_code(organization: Mapping[str, Any] | None) -> str | None:
    """An Organization's ODS code (organisation code first, then site code)."""
    identifiers = list((organization or {}).get("identifier") or ())
    for system in ODS_SYSTEMS:
        for identifier in identifiers:
            if identifier.get("system") == system and identifier.get("value"):
                return str(identifier["value"])
    return None


def org_ref(ref: Any, organizations: Mapping[str, JSON]) -> OrgRef | None:
    """An Organization Reference resolved against the stored `organizations` (by id) to (id, ODS, name)."""
    if not isinstance(ref, Mapping):
        return None
    org_id = reference_id(ref, "Organization")
    identifier = ref.get("identifier") or {}
    ods = identifier.get("value") if identifier.get("system") in ODS_SYSTEMS else None
    stored = organizations.get(org_id) if org_id else None
    ods = ods or ods_code(stored)
    if org_id is None and ods:
        org_id = resource_id("Organization", ods)
    if org_id is None:
        return None
    display = ref.get("display") or (stored or {}).get("name")
    return OrgRef(org_id, ods, display)


def referenced_organizations(patient: JSON, encounter: JSON, episodes: Iterable[JSON],
                             referrals: Iterable[JSON]) -> set[str]:
    """Ids of every Organization the receivers may be — for the caller to read in one go."""
    refs = [*(patient.get("generalPractitioner") or ())]
    refs += [e.get("managingOrganization") for e in episodes]
    refs += [p for r in referrals for p in (r.get("performer") or ())]
    refs.append(encounter.get("serviceProvider"))
    return {i for i in (reference_id(r, "Organization") for r in refs) if i}


# -- the decision -------------------------------------------------------------------------------------


def is_inpatient_discharge(trigger: str, encounter: Mapping[str, Any]) -> bool:
    """An A03 that finished an inpatient Encounter (HL7 v2 §3.3.3; PV1-2 I → class IMP)."""
    klass = (encounter.get("class") or {}).get("code")
    return trigger == "A03" and encounter.get("status") == "finished" and klass in INPATIENT_CLASSES


def discharge_destination(encounter: Mapping[str, Any]) -> str | None:
    """The NHS discharge destination code (PV1-37) of the Encounter, if it carries one."""
    concept = (encounter.get("hospitalization") or {}).get("dischargeDisposition") or {}
    codings = list(concept.get("coding") or ())
    for coding in codings:
        if coding.get("system") == DISCHARGE_DESTINATION_SYSTEM and coding.get("code"):
            return str(coding["code"])
    return next((str(c["code"]) for c in codings if c.get("code")), None)


def discharged_to_care_home(encounter: Mapping[str, Any], codes: frozenset[str] = CARE_HOME_DESTINATIONS) -> bool:
    """Whether the discharge destination means a care home (UK-REFERENCE §1: 54, 65, 85)."""
    return discharge_destination(encounter) in codes


def _active(resource: Mapping[str, Any], statuses: frozenset[str]) -> bool:
    return resource.get("status") in statuses


def _residency(episode: Mapping[str, Any]) -> bool:
    return any(c.get("system") == EPISODE_TYPE_SYSTEM and c.get("code") == CARE_HOME_RESIDENCY
               for t in episode.get("type") or () for c in t.get("coding") or ())


def care_home(episodes: Sequence[JSON], encounter: JSON, organizations: Mapping[str, JSON],
              locations: Mapping[str, JSON]) -> OrgRef | None:
    """The care home the patient goes to: current residency episode, else the destination Location's owner."""
    current = [e for e in episodes if _residency(e) and _active(e, frozenset({"active", "planned", "waitlist"}))]
    current.sort(key=lambda e: str((e.get("period") or {}).get("start") or ""), reverse=True)
    for episode in current:
        found = org_ref(episode.get("managingOrganization"), organizations)
        if found is not None:
            return found
    location_id = reference_id((encounter.get("hospitalization") or {}).get("destination"), "Location")
    location = locations.get(location_id) if location_id else None
    return org_ref((location or {}).get("managingOrganization"), organizations)


def community_teams(referrals: Iterable[JSON], organizations: Mapping[str, JSON]) -> list[OrgRef]:
    """Performer Organizations of active referrals, in record order, each once."""
    found: dict[str, OrgRef] = {}
    for referral in referrals:
        if referral.get("status") != "active" or referral.get("intent") not in REFERRAL_INTENTS:
            continue
        for performer in referral.get("performer") or ():
            org = org_ref(performer, organizations) if _is_organization(performer) else None
            if org is not None and org.id and org.id not in found:
                found[org.id] = org
    return list(found.values())


def gp_practices(patient: JSON, organizations: Mapping[str, JSON]) -> list[OrgRef]:
    """The registered GP practice(s): Organizations in Patient.generalPractitioner."""
    refs = [r for r in patient.get("generalPractitioner") or () if _is_organization(r)]
    return [org for org in (org_ref(r, organizations) for r in refs) if org is not None]


def _is_organization(ref: Mapping[str, Any]) -> bool:
    return reference_id(ref, "Organization") is not None or ref.get("type") == "Organization"


def discharge_receivers(*, patient: JSON, encounter: JSON, episodes: Sequence[JSON], referrals: Sequence[JSON],
                        organizations: Mapping[str, JSON], locations: Mapping[str, JSON], sender_ods: str,
                        care_home_codes: frozenset[str] = CARE_HOME_DESTINATIONS) -> list[Receiver]:
    """Everyone who takes over care after this discharge, each organisation once (first role wins).

    Order: GP practice, care home (only for a care-home destination), community teams.
    """
    receivers = [Receiver(GP_PRACTICE, org) for org in gp_practices(patient, organizations)]
    if discharged_to_care_home(encounter, care_home_codes):
        receivers.append(Receiver(CARE_HOME, care_home(episodes, encounter, organizations, locations)))
    receivers += [Receiver(COMMUNITY_TEAM, org) for org in community_teams(referrals, organizations)]
    seen: set[str] = {sender_ods}
    unique = []
    for receiver in receivers:
        if receiver.org is not None and (receiver.org.ods in seen or receiver.org.id in seen):
            continue
        if receiver.org is not None:
            seen.update(x for x in (receiver.org.ods, receiver.org.id) if x)
        unique.append(receiver)
    return unique
