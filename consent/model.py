"""What a consent decision is made of: the requester, the resource's facts, relationships, parsed consents.

All values are frozen; building them from FHIR JSON is pure (no I/O, no clock). The engine resolves what
only it can know (the requester's organisations, the patient a stored row belongs to) and passes it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from consent.fhir_values import (
    Coding,
    codings_of,
    first_present,
    organisation_key,
    parse_fhir_datetime,
    period_bounds,
    reference_key,
    within,
)
from consent.vocabulary import (
    ACT_CODE_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    OPT_IN,
    OPT_OUT,
    OWNER_TAG_SYSTEM,
    PATIENT_PRIVACY,
    RESEARCH,
    TREATMENT,
)

Interaction = Literal["read", "search", "create", "update", "delete"]
INTERACTIONS: tuple[Interaction, ...] = ("read", "search", "create", "update", "delete")
Effect = Literal["permit", "deny", "withhold"]
ProvisionType = Literal["deny", "permit"]
RelationshipKind = Literal["registered-gp", "encounter", "episode", "referral", "care-home", "care-team"]
RELATIONSHIP_KINDS: tuple[RelationshipKind, ...] = (
    "registered-gp",
    "encounter",
    "episode",
    "referral",
    "care-home",
    "care-team",
)


@dataclass(frozen=True)
class Requester:
    """Who asks. `orgs` holds the user's ODS code(s) and the "Organization/<id>" references known to be
    that organisation; `patient` is set when the requester is that patient (a patient-facing token)."""

    user_id: str
    role: str
    orgs: frozenset[str]
    purpose: str = TREATMENT
    break_glass: bool = False
    patient: str | None = None


@dataclass(frozen=True)
class AccessRequest:
    """One interaction by a requester; `secondary_use` for research, planning and exports (where the national
    data opt-out applies)."""

    requester: Requester
    interaction: Interaction
    secondary_use: bool = False


# --------------------------------------------------------------------------------------------------
# Resource facts

# The elements that carry what a resource is about (R4 resource pages; `class` is Encounter's Coding).
CODE_ELEMENTS = (
    "code",
    "category",
    "type",
    "class",
    "valueCodeableConcept",
    "reasonCode",
    "medicationCodeableConcept",
    "vaccineCode",
    "serviceType",
    "conclusionCode",
)
# The main clinical date, first present wins (R4: effective[x], onset[x], performed[x], occurrence[x] …).
DATA_TIME_PATHS = (
    "effectiveDateTime",
    "effectivePeriod.start",
    "effectiveInstant",
    "onsetDateTime",
    "onsetPeriod.start",
    "performedDateTime",
    "performedPeriod.start",
    "occurrenceDateTime",
    "occurrencePeriod.start",
    "recordedDate",
    "authoredOn",
    "period.start",
    "issued",
    "date",
    "start",
    "created",
    "recorded",
)
# Where a resource names its patient (R4 Patient compartment, the common cases).
PATIENT_REFERENCE_PATHS = ("subject", "patient", "beneficiary")


@dataclass(frozen=True)
class ResourceFacts:
    """The metadata of one stored resource that the decision needs, never its content."""

    res_type: str
    res_id: str
    patient_id: str | None
    owner_org: str | None
    labels: frozenset[Coding] = frozenset()
    codes: frozenset[Coding] = frozenset()
    data_time: datetime | None = None

    @property
    def reference(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], patient_id: str | None = None) -> ResourceFacts:
        """Facts of a FHIR R4 resource: owner from `meta.tag` (`vocabulary.OWNER_TAG_SYSTEM`), labels from
        `meta.security`, codes from its main CodeableConcepts, the main clinical date; `patient_id` as the
        store knows it, else derived from subject/patient (or the Patient's own id)."""
        meta = doc.get("meta") if isinstance(doc.get("meta"), Mapping) else {}
        owners = sorted(code for system, code in codings_of(meta.get("tag")) if system == OWNER_TAG_SYSTEM)
        return cls(
            res_type=str(doc.get("resourceType", "")),
            res_id=str(doc.get("id", "")),
            patient_id=patient_id if patient_id is not None else patient_of(doc),
            owner_org=owners[0] if owners else None,
            labels=frozenset(codings_of(meta.get("security"))),
            codes=resource_codes(doc),
            data_time=parse_fhir_datetime(first_present(doc, DATA_TIME_PATHS)),
        )


def resource_codes(doc: Mapping[str, Any]) -> frozenset[Coding]:
    """(system, code) of the resource's main CodeableConcepts and Codings (`CODE_ELEMENTS`)."""
    found: set[Coding] = set()
    for element in CODE_ELEMENTS:
        if element in doc:  # most resources have two or three of them: no walk for the absent ones
            found.update(codings_of(doc[element]))
    return frozenset(found)


def patient_of(doc: Mapping[str, Any]) -> str | None:
    """The id of the Patient a resource belongs to: its own id for a Patient, else subject/patient."""
    if doc.get("resourceType") == "Patient":
        return str(doc["id"]) if doc.get("id") else None
    for path in PATIENT_REFERENCE_PATHS:
        key = reference_key(doc.get(path))
        if key and key.startswith("Patient/"):
            return key.removeprefix("Patient/")
    return None


# --------------------------------------------------------------------------------------------------
# Relationships


@dataclass(frozen=True)
class Relationship:
    """A legitimate relationship (UK-REFERENCE §4) between a patient and an organisation: `org` is an ODS
    code or "Organization/<id>"; start/end None are open bounds."""

    patient_id: str
    org: str
    kind: RelationshipKind
    start: datetime | None = None
    end: datetime | None = None


# --------------------------------------------------------------------------------------------------
# Consents (FHIR R4 Consent, IHE Privacy Consent on FHIR)


class ConsentError(ValueError):
    """A Consent that claims to be a privacy consent but cannot be applied as written."""


@dataclass(frozen=True)
class Actor:
    """`Consent.provision.actor`: `roles` are its role codings (an RBAC job role matches the requester's
    role; participation types such as v3-ParticipationType#IRCP only say "recipient"); `reference` is an
    organisation key (see `fhir_values.organisation_key`), another literal "Type/id", or None."""

    roles: frozenset[Coding] = frozenset()
    reference: str | None = None


@dataclass(frozen=True)
class Provision:
    """`Consent.provision` (R4): a rule of type deny|permit that applies when every criterion it carries
    matches; nested provisions are exceptions within it (https://hl7.org/fhir/R4/consent.html)."""

    type: ProvisionType
    period_start: datetime | None = None
    period_end: datetime | None = None
    actors: frozenset[Actor] = frozenset()
    actions: frozenset[Coding] = frozenset()
    security_labels: frozenset[Coding] = frozenset()
    purposes: frozenset[Coding] = frozenset()
    classes: frozenset[Coding] = frozenset()
    codes: frozenset[Coding] = frozenset()
    data_start: datetime | None = None
    data_end: datetime | None = None
    data_refs: frozenset[str] = frozenset()
    provisions: tuple[Provision, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Nested provisions are a set (their order never matters); identity and description are computed
        # once, as every decision hashes and sorts them.
        children = frozenset(self.provisions)
        identity = (
            self.type,
            self.period_start,
            self.period_end,
            self.actors,
            self.actions,
            self.security_labels,
            self.purposes,
            self.classes,
            self.codes,
            self.data_start,
            self.data_end,
            self.data_refs,
            children,
        )
        object.__setattr__(self, "_children", children)
        object.__setattr__(self, "_identity", identity)
        object.__setattr__(self, "_hash", hash(identity))
        object.__setattr__(self, "_description", self._build_description())

    @property
    def narrows(self) -> bool:
        """Does it restrict to whom, what or why (anything but its own period)?"""
        return bool(
            self.actors
            or self.actions
            or self.security_labels
            or self.purposes
            or self.classes
            or self.codes
            or self.data_refs
            or self.data_start
            or self.data_end
        )

    @property
    def children(self) -> frozenset[Provision]:
        """Nested provisions as a set: their order never matters."""
        return self._children  # type: ignore[attr-defined,no-any-return]

    def describe(self) -> str:
        """A stable, human description (sorted criteria) used in reasons and as a tie-break key."""
        return self._description  # type: ignore[attr-defined,no-any-return]

    def _build_description(self) -> str:
        parts = [self.type]
        for name in ("actors", "actions", "security_labels", "purposes", "classes", "codes", "data_refs"):
            values = getattr(self, name)
            if values:
                parts.append(f"{name}={sorted(_describe_value(v) for v in values)}")
        if self.data_start or self.data_end:
            parts.append(f"dataPeriod={_iso(self.data_start)}..{_iso(self.data_end)}")
        if self.period_start or self.period_end:
            parts.append(f"period={_iso(self.period_start)}..{_iso(self.period_end)}")
        return " ".join(parts)

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Provision) and self._identity == other._identity  # type: ignore[attr-defined]


def _describe_value(value: object) -> str:
    if isinstance(value, Actor):
        roles = ",".join(sorted(code for _, code in value.roles))
        return f"{value.reference or '*'}[{roles}]"
    if isinstance(value, tuple):
        return "|".join(value)
    return str(value)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


@dataclass(frozen=True)
class PatientConsent:
    """An active patient-privacy (or research-scope, for the national data opt-out) Consent, parsed."""

    consent_id: str
    patient_id: str
    root: Provision
    scopes: frozenset[Coding] = frozenset()
    policy_rules: frozenset[Coding] = frozenset()
    policy_uris: frozenset[str] = frozenset()

    def in_force(self, now: datetime) -> bool:
        """Consent.provision.period bounds the whole consent (R4 Consent.provision.period)."""
        if self.root.period_start is None and self.root.period_end is None:
            return True
        return within(now, self.root.period_start, self.root.period_end)

    @property
    def is_objection(self) -> bool:
        """The recognised objection shape: root provision type deny that narrows nothing (no actor, action,
        label, purpose, class, code, data or dataPeriod). Nested permits are exceptions to it."""
        return self.root.type == "deny" and not self.root.narrows


RECOGNISED_SCOPES = frozenset({(CONSENT_SCOPE_SYSTEM, PATIENT_PRIVACY), (CONSENT_SCOPE_SYSTEM, RESEARCH)})
_ROOT_TYPE_BY_POLICY_RULE: dict[str, ProvisionType] = {OPT_OUT: "deny", OPT_IN: "permit"}
_OPPOSITE: dict[ProvisionType, ProvisionType] = {"deny": "permit", "permit": "deny"}


def parse_consent(doc: Mapping[str, Any]) -> PatientConsent | None:
    """An R4 Consent as a `PatientConsent`, or None when it does not apply: status other than `active`, or a
    scope other than consentscope#patient-privacy / #research (research is kept only so that the national
    data opt-out can be recognised by `Policy.opt_out`).

    Raises `ConsentError` for an active privacy consent that cannot be applied: no patient, or no
    determinable provision type. A root provision without `type` takes it from `policyRule`
    (v3-ActCode OPTOUT → deny, OPTIN → permit), as does a missing provision; a nested provision without
    `type` is an exception to its parent and takes the opposite type (IHE PCF always states it).
    """
    if doc.get("resourceType") != "Consent":
        raise ConsentError(f"expected a Consent, got {doc.get('resourceType')!r}")
    scopes = frozenset(codings_of(doc.get("scope")))
    if doc.get("status") != "active" or not scopes & RECOGNISED_SCOPES:
        return None
    patient = reference_key(doc.get("patient"))
    if not patient or not patient.startswith("Patient/"):
        raise ConsentError(f"Consent/{doc.get('id')}: Consent.patient must reference a Patient")
    policy_rules = frozenset(codings_of(doc.get("policyRule")))
    root = _parse_provision(doc.get("provision") or {}, _root_type(doc, policy_rules), doc.get("id"))
    return PatientConsent(
        consent_id=str(doc.get("id", "")),
        patient_id=patient.removeprefix("Patient/"),
        root=root,
        scopes=scopes,
        policy_rules=policy_rules,
        policy_uris=frozenset(
            p["uri"] for p in doc.get("policy") or [] if isinstance(p, Mapping) and p.get("uri")
        ),
    )


def _root_type(doc: Mapping[str, Any], policy_rules: frozenset[Coding]) -> ProvisionType:
    stated = (doc.get("provision") or {}).get("type")
    if stated is not None:
        return _checked_type(stated, doc.get("id"))
    implied = {
        _ROOT_TYPE_BY_POLICY_RULE[code]
        for system, code in policy_rules
        if system in {ACT_CODE_SYSTEM, ""} and code in _ROOT_TYPE_BY_POLICY_RULE
    }
    if len(implied) != 1:
        raise ConsentError(
            f"Consent/{doc.get('id')}: provision.type is missing and policyRule does not say OPTIN or OPTOUT"
        )
    return implied.pop()


def _checked_type(value: object, consent_id: object) -> ProvisionType:
    if value not in _OPPOSITE:
        raise ConsentError(f"Consent/{consent_id}: provision.type must be deny or permit, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_provision(raw: Mapping[str, Any], kind: ProvisionType, consent_id: object) -> Provision:
    period_start, period_end = period_bounds(raw.get("period"))
    data_start, data_end = period_bounds(raw.get("dataPeriod"))
    nested = tuple(
        _parse_provision(child, _child_type(child, kind, consent_id), consent_id)
        for child in raw.get("provision") or []
        if isinstance(child, Mapping)
    )
    return Provision(
        type=kind,
        period_start=period_start,
        period_end=period_end,
        actors=frozenset(_parse_actor(a) for a in raw.get("actor") or [] if isinstance(a, Mapping)),
        actions=frozenset(codings_of(raw.get("action"))),
        security_labels=frozenset(codings_of(raw.get("securityLabel"))),
        purposes=frozenset(codings_of(raw.get("purpose"))),
        classes=frozenset(codings_of(raw.get("class"))),
        codes=frozenset(codings_of(raw.get("code"))),
        data_start=data_start,
        data_end=data_end,
        data_refs=frozenset(
            key
            for d in raw.get("data") or []
            if isinstance(d, Mapping) and (key := reference_key(d.get("reference")))
        ),
        provisions=nested,
    )


def _child_type(child: Mapping[str, Any], parent: ProvisionType, consent_id: object) -> ProvisionType:
    stated = child.get("type")
    return _OPPOSITE[parent] if stated is None else _checked_type(stated, consent_id)


def _parse_actor(raw: Mapping[str, Any]) -> Actor:
    reference = raw.get("reference")
    key = organisation_key(reference) or reference_key(reference)
    if key is None and isinstance(reference, Mapping) and isinstance(reference.get("identifier"), Mapping):
        identifier = reference["identifier"]
        key = f"{identifier.get('system', '')}|{identifier.get('value', '')}"
    return Actor(roles=frozenset(codings_of(raw.get("role"))), reference=key)


# --------------------------------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True)
class Decision:
    """The gate's answer: `permit`; `deny` (the request may not be made: 403); `withhold` (this resource is
    hidden by consent or sensitivity: 403/404 by `Policy.withheld_read_status`, dropped from searches).
    `rule` names the rule that decided (see `consent.decide.RULES`)."""

    effect: Effect
    rule: str
    reason: str


class RuleVerdict(NamedTuple):
    """One rule's view of one request: whether it applied, with which effect, and why (for `$access-explain`).
    A NamedTuple: every decision builds one per rule."""

    rule: str
    applies: bool
    effect: Effect | None
    reason: str
