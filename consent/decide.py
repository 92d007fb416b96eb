"""The access decision: (request, resource facts, consents, relationships, now, policy) → effect.

Every rule is evaluated on its own (`explain`), then the verdicts are combined by a fixed precedence
(`combine`): deny over withhold over permit, ties broken by `RULE_PRECEDENCE`. Neither the effect nor
the reported rule depends on the order of rules, consents, provisions or relationships.

Rules (names are stable: the gate, the audit and `$access-explain` report them):

- `role` (deny): the RBAC job role (or the patient profile) may not do this interaction on this type.
- `patient-compartment` (deny): a patient token asks for another patient's data.
- `non-patient-data` (permit): directory types (Organization, Practitioner …) or data without a patient.
- `own-record` (permit): the requester is the patient (patients see their own record, sensitive data too).
- `relationship` (permit) / `no-relationship` (deny): an active legitimate relationship between one of the
  requester's organisations and the patient (UK-REFERENCE §4), within the policy's window for its kind.
- `break-glass` (permit): overrides a missing relationship or an objection; never a label or a deny provision.
- `objection` (withhold): an objection hides data owned by other organisations (the owner still sees its own).
- `consent-deny` (withhold): a deny provision of an active consent matches (break-glass does not lift it).
- `consent-permit` (permit): a permit provision matches; a specific one lifts the sensitive-label restriction.
- `sensitive` (withhold): restricting labels (PSY, HIV, R …): only the owner organisation sees the data,
  unless a consent permits.
- `opt-out` (withhold): the national data opt-out, for secondary use only (UK-REFERENCE §5).

Consents govern disclosure (read and search) to organisations other than the data owner; writes are decided
by role and relationship alone. Recognised consent shapes (`consent.model`): an *objection* is an active
patient-privacy Consent whose root provision is `deny` and narrows nothing (nested permits are its
exceptions, e.g. "except my GP practice"); a *national data opt-out* is what `Policy.opt_out` recognises
(default: scope consentscope#research with root deny); every other provision is matched criterion by
criterion, the deepest matching provision of each branch deciding (R4 nested provisions are exceptions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from consent.fhir_values import Coding, as_utc, within
from consent.model import (
    AccessRequest,
    Decision,
    Effect,
    PatientConsent,
    Provision,
    ProvisionType,
    Relationship,
    ResourceFacts,
    RuleVerdict,
)
from consent.policy import Policy, RoleGrant, normal_coding
from consent.relationships import relationship_sort_key
from consent.vocabulary import (
    BREAK_GLASS,
    CONSENT_ACTION_SYSTEM,
    CONSENT_SCOPE_SYSTEM,
    PATIENT_PRIVACY,
    RBAC_ROLE_SYSTEM,
    RESOURCE_TYPES_SYSTEM,
    SDS_USER_SYSTEM,
    TREATMENT,
)

EFFECT_RANK: dict[Effect, int] = {"deny": 0, "withhold": 1, "permit": 2}
# Tie-break among verdicts of the same effect: the first listed names the decision.
RULE_PRECEDENCE = (
    "role",
    "patient-compartment",
    "no-relationship",
    "consent-deny",
    "sensitive",
    "objection",
    "opt-out",
    "own-record",
    "non-patient-data",
    "consent-permit",
    "break-glass",
    "relationship",
)
DISCLOSURES = frozenset({"read", "search"})
# consentaction codes (R4 Consent.provision.action) that a read or a search is an instance of.
DISCLOSURE_ACTIONS = frozenset({"access", "use", "disclose"})


# --------------------------------------------------------------------------------------------------
# What the rules look at


@dataclass(frozen=True)
class ProvisionMatch:
    """A decisive provision of one consent: the deepest matching provision on its branch."""

    consent_id: str
    effect: ProvisionType
    provision: Provision
    objection: bool  # the unnarrowed root of an objection consent decided
    labels: frozenset[Coding]  # security labels named on the path from the root
    names_resource: bool  # a code or a data reference named on the path

    def sort_key(self) -> tuple[str, str]:
        return self.consent_id, self.provision.describe()


class Context:
    """One request's facts, with the relationship and consent evaluations every rule shares (computed once,
    eagerly: a search decides for every row)."""

    def __init__(
        self,
        request: AccessRequest,
        res_type: str,
        patient_id: str | None,
        resource: ResourceFacts | None,
        consents: Sequence[PatientConsent],
        relationships: Sequence[Relationship],
        now: datetime,
        policy: Policy,
    ) -> None:
        self.request, self.requester = request, request.requester
        self.res_type, self.patient_id, self.resource = res_type, patient_id, resource
        self.now, self.policy = as_utc(now), policy
        self._normalised: dict[frozenset[Coding], frozenset[Coding]] = {}
        requester = self.requester
        self.grant: RoleGrant | None = (
            policy.patient_grant if requester.patient is not None else policy.roles.get(requester.role)
        )
        self.non_patient_data = res_type in policy.directory_types or patient_id is None
        self.own_record = requester.patient is not None and requester.patient == patient_id
        # Relationship, consent and opt-out rules: patient data asked for by someone other than the patient.
        self.patient_rules_apply = not self.non_patient_data and requester.patient is None
        self.disclosure = resource is not None and request.interaction in DISCLOSURES
        self.consent_applies = self.patient_rules_apply and self.disclosure
        owner = resource.owner_org if resource else None
        self.owner_is_requester = owner is not None and owner in requester.orgs
        self.restricting_labels = (
            resource.labels & policy.restricting_labels if resource is not None else frozenset()
        )
        self.active_relationships = sorted(
            (
                r
                for r in relationships
                if r.patient_id == patient_id
                and r.org in requester.orgs
                and relationship_active(r, self.now, policy)
            ),
            key=relationship_sort_key,
        )
        self._evaluate_consents(consents)

    def _evaluate_consents(self, consents: Sequence[PatientConsent]) -> None:
        in_force = [c for c in consents if c.patient_id == self.patient_id and c.in_force(self.now)]
        opt_outs = [c for c in in_force if self.policy.opt_out.recognises(c)]
        self.opt_outs = sorted({c.consent_id for c in opt_outs})
        privacy = [
            c for c in in_force if (CONSENT_SCOPE_SYSTEM, PATIENT_PRIVACY) in c.scopes and c not in opt_outs
        ]
        matches = [m for c in privacy for m in consent_matches(c, self)] if self.consent_applies else []
        self.matches = sorted(matches, key=ProvisionMatch.sort_key)
        self.objection_matches = [m for m in self.matches if m.effect == "deny" and m.objection]
        self.deny_matches = [m for m in self.matches if m.effect == "deny" and not m.objection]
        self.permit_matches = [m for m in self.matches if m.effect == "permit"]
        # The objection itself (a Consent) and the audit of access stay visible: only data is hidden.
        self.objection_would_withhold = (
            bool(self.objection_matches)
            and not self.owner_is_requester
            and self.res_type not in self.policy.governance_types
        )
        self.lifted_labels = self._lifted_labels()

    def _lifted_labels(self) -> frozenset[Coding]:
        """The restricting labels a matching permit releases: those it names, or all when it names the
        resource itself (by code or data reference)."""
        lifted: set[Coding] = set()
        for match in self.permit_matches:
            lifted |= (
                self.restricting_labels if match.names_resource else self.restricting_labels & match.labels
            )
        return frozenset(lifted)

    def normalised(self, codings: frozenset[Coding]) -> frozenset[Coding]:
        """`codings` with code-system aliases and code spelling normalised (memoised per request)."""
        if codings not in self._normalised:
            self._normalised[codings] = frozenset(normal_coding(c, self.policy) for c in codings)
        return self._normalised[codings]

    @property
    def purposes(self) -> frozenset[str]:
        """The requester's purpose of use; break-glass (v3-ActReason BTG) is emergency treatment, so a
        provision about treatment still holds under break-glass."""
        purpose = self.requester.purpose
        return (
            frozenset({purpose, TREATMENT})
            if purpose == BREAK_GLASS or self.requester.break_glass
            else frozenset({purpose})
        )


def relationship_active(relationship: Relationship, now: datetime, policy: Policy) -> bool:
    """Active from its start until its end plus the policy's window for its kind (open bounds: always)."""
    start = as_utc(relationship.start) if relationship.start else None
    end = (
        as_utc(relationship.end) + policy.relationship_windows[relationship.kind]
        if relationship.end
        else None
    )
    return within(as_utc(now), start, end)


# --------------------------------------------------------------------------------------------------
# Consent provisions (R4 Consent.provision; IHE PCF)


def consent_matches(consent: PatientConsent, ctx: Context) -> list[ProvisionMatch]:
    """The decisive provisions of `consent` for this request: a matching provision decides unless a nested
    provision (an exception) also matches, recursively; sibling exceptions all count."""
    return _decisive(consent.root, consent, ctx, frozenset(), False, root=True)


def _decisive(
    provision: Provision,
    consent: PatientConsent,
    ctx: Context,
    labels: frozenset[Coding],
    named: bool,
    *,
    root: bool = False,
    through_glass: bool = False,
) -> list[ProvisionMatch]:
    """`through_glass`: an enclosing provision matched only because break-glass reads as treatment. A
    permit under it would not match without breaking the glass, so it does not count (fail safe)."""
    if not provision_matches(provision, ctx):
        return []
    through_glass = through_glass or not _declared_purpose_ok(provision, ctx)
    labels = labels | provision.security_labels
    named = named or bool(provision.codes or provision.data_refs)
    below = [m for child in provision.children
             for m in _decisive(child, consent, ctx, labels, named, through_glass=through_glass)]
    if below:
        return below
    if through_glass and provision.type == "permit":
        return []
    objection = root and consent.is_objection
    return [ProvisionMatch(consent.consent_id, provision.type, provision, objection, labels, named)]


def provision_matches(provision: Provision, ctx: Context) -> bool:
    """Every criterion the provision carries matches (R4: criteria are ANDed; values within one are ORed).
    A dataPeriod on a resource without a clinical date matches a deny and not a permit (fail safe)."""
    for check in _CRITERIA:
        if not check(provision, ctx):
            return False
    return True


def _in_period(p: Provision, ctx: Context) -> bool:
    return (p.period_start is None and p.period_end is None) or within(ctx.now, p.period_start, p.period_end)


def _actor_ok(p: Provision, ctx: Context) -> bool:
    if not p.actors:
        return True
    requester = ctx.requester
    people = {f"Practitioner/{requester.user_id}", f"{SDS_USER_SYSTEM}|{requester.user_id}"}
    for actor in p.actors:
        job_roles = {code for system, code in actor.roles if system == RBAC_ROLE_SYSTEM}
        role_ok = not job_roles or requester.role in job_roles
        who_ok = actor.reference is None or actor.reference in requester.orgs or actor.reference in people
        if role_ok and who_ok:
            return True
    return False


def _action_ok(p: Provision, ctx: Context) -> bool:
    actions = {code for system, code in p.actions if system in {CONSENT_ACTION_SYSTEM, ""}}
    return not p.actions or bool(actions & DISCLOSURE_ACTIONS)


def _label_ok(p: Provision, ctx: Context) -> bool:
    labels = ctx.resource.labels if ctx.resource else frozenset()
    return not p.security_labels or bool(p.security_labels & labels)


def _purpose_ok(p: Provision, ctx: Context) -> bool:
    """A deny reads break-glass as treatment (fail safe); a permit sees only the declared purpose, so
    breaking the glass never makes a permit match that would not match without it."""
    purposes = ctx.purposes if p.type == "deny" else frozenset({ctx.requester.purpose})
    return not p.purposes or bool(purposes & {code for _, code in p.purposes})


def _declared_purpose_ok(p: Provision, ctx: Context) -> bool:
    """The provision's purposes match the requester's declared purpose (break-glass not read as treatment)."""
    return not p.purposes or ctx.requester.purpose in {code for _, code in p.purposes}


def _class_ok(p: Provision, ctx: Context) -> bool:
    if not p.classes:
        return True
    types = {code for system, code in p.classes if system == RESOURCE_TYPES_SYSTEM}
    others = {c for c in p.classes if c[0] != RESOURCE_TYPES_SYSTEM}
    return ctx.res_type in types or bool(ctx.normalised(frozenset(others)) & _resource_codes(ctx))


def _code_ok(p: Provision, ctx: Context) -> bool:
    return not p.codes or bool(ctx.normalised(p.codes) & _resource_codes(ctx))


def _data_period_ok(p: Provision, ctx: Context) -> bool:
    if p.data_start is None and p.data_end is None:
        return True
    moment = ctx.resource.data_time if ctx.resource else None
    return p.type == "deny" if moment is None else within(as_utc(moment), p.data_start, p.data_end)


def _data_ok(p: Provision, ctx: Context) -> bool:
    return not p.data_refs or (ctx.resource is not None and ctx.resource.reference in p.data_refs)


_CRITERIA: tuple[Callable[[Provision, Context], bool], ...] = (
    _in_period,
    _actor_ok,
    _action_ok,
    _label_ok,
    _purpose_ok,
    _class_ok,
    _code_ok,
    _data_period_ok,
    _data_ok,
)


def _resource_codes(ctx: Context) -> frozenset[Coding]:
    return ctx.normalised(ctx.resource.codes) if ctx.resource else frozenset()


# --------------------------------------------------------------------------------------------------
# Rules: each looks at the context alone and says whether it applies, with which effect and why.


def _verdict(rule: str, effect: Effect | None, reason: str) -> RuleVerdict:
    return RuleVerdict(rule=rule, applies=effect is not None, effect=effect, reason=reason)


def rule_role(ctx: Context) -> RuleVerdict:
    interaction, res_type, grant = ctx.request.interaction, ctx.res_type, ctx.grant
    who = "the patient" if ctx.requester.patient is not None else f"role {ctx.requester.role or '(none)'}"
    if interaction in DISCLOSURES and res_type in ctx.policy.directory_types:
        return _verdict("role", None, f"{res_type} is directory data: every role may {interaction} it")
    if grant is None:
        return _verdict("role", "deny", f"{who} is not in the policy's role table")
    if not grant.allows(interaction, res_type, ctx.policy.governance_types):
        return _verdict("role", "deny", f"{who} ({grant.name}) may not {interaction} {res_type}")
    return _verdict("role", None, f"{who} ({grant.name}) may {interaction} {res_type}")


def rule_patient_compartment(ctx: Context) -> RuleVerdict:
    patient = ctx.requester.patient
    if patient is None or ctx.non_patient_data or ctx.own_record:
        return _verdict("patient-compartment", None, "not a patient asking for another patient's data")
    return _verdict(
        "patient-compartment", "deny", f"a patient token for {patient} sees only that patient's record"
    )


def rule_non_patient_data(ctx: Context) -> RuleVerdict:
    if ctx.res_type in ctx.policy.directory_types:
        return _verdict("non-patient-data", "permit", f"{ctx.res_type} is directory data, not patient data")
    if ctx.patient_id is None:
        return _verdict("non-patient-data", "permit", f"this {ctx.res_type} belongs to no patient")
    return _verdict("non-patient-data", None, f"patient data of Patient/{ctx.patient_id}")


def rule_own_record(ctx: Context) -> RuleVerdict:
    if ctx.own_record and not ctx.non_patient_data:
        return _verdict("own-record", "permit", "patients see their own record, sensitive data included")
    return _verdict("own-record", None, "the requester is not this patient")


def rule_relationship(ctx: Context) -> RuleVerdict:
    if not ctx.patient_rules_apply:
        return _verdict("relationship", None, "no relationship needed for this data or requester")
    grant = ctx.grant
    if grant is not None and not grant.needs_relationship:
        return _verdict(
            "relationship", "permit", f"role {ctx.requester.role} ({grant.name}) needs no relationship"
        )
    if ctx.active_relationships:
        first = ctx.active_relationships[0]
        return _verdict("relationship", "permit", f"active {first.kind} relationship with {first.org}")
    if ctx.requester.break_glass:
        return _verdict("no-relationship", None, "no active relationship; overridden by break-glass")
    orgs = ", ".join(sorted(ctx.requester.orgs)) or "(none)"
    return _verdict(
        "no-relationship", "deny", f"no active relationship between {orgs} and Patient/{ctx.patient_id}"
    )


def rule_break_glass(ctx: Context) -> RuleVerdict:
    if not ctx.requester.break_glass or not ctx.patient_rules_apply:
        return _verdict("break-glass", None, "no break-glass for this request")
    overridden = []
    grant = ctx.grant
    if not ctx.active_relationships and (grant is None or grant.needs_relationship):
        overridden.append("missing relationship")
    if ctx.objection_would_withhold and ctx.policy.objection_break_glass_overrides:
        overridden.append("objection")
    if not overridden:
        return _verdict("break-glass", None, "break-glass declared but not needed")
    return _verdict("break-glass", "permit", "break-glass overrides " + " and ".join(overridden))


def rule_objection(ctx: Context) -> RuleVerdict:
    if not ctx.objection_would_withhold:
        return _verdict("objection", None, _objection_not_applying(ctx))
    consents = ", ".join(sorted({f"Consent/{m.consent_id}" for m in ctx.objection_matches}))
    if ctx.requester.break_glass and ctx.policy.objection_break_glass_overrides:
        return _verdict("objection", None, f"objection ({consents}) overridden by break-glass")
    owner = ctx.resource.owner_org if ctx.resource else None
    return _verdict(
        "objection", "withhold", f"the patient objects to sharing ({consents}); data owned by {owner}"
    )


def _objection_not_applying(ctx: Context) -> str:
    if ctx.objection_matches and ctx.owner_is_requester:
        return "objection does not hide the owner organisation's own data"
    return "no objection applies"


def rule_consent_deny(ctx: Context) -> RuleVerdict:
    if not ctx.deny_matches or ctx.owner_is_requester:
        return _verdict("consent-deny", None, "no deny provision applies")
    described = "; ".join(f"Consent/{m.consent_id}: {m.provision.describe()}" for m in ctx.deny_matches)
    return _verdict("consent-deny", "withhold", f"deny provision matches ({described})")


def rule_consent_permit(ctx: Context) -> RuleVerdict:
    if not ctx.permit_matches:
        return _verdict("consent-permit", None, "no permit provision applies")
    described = "; ".join(f"Consent/{m.consent_id}: {m.provision.describe()}" for m in ctx.permit_matches)
    lifted = sorted(code for _, code in ctx.lifted_labels)
    suffix = f"; releases {', '.join(lifted)}" if lifted else ""
    return _verdict("consent-permit", "permit", f"permit provision matches ({described}){suffix}")


def rule_sensitive(ctx: Context) -> RuleVerdict:
    labels = ctx.restricting_labels
    if not labels or not ctx.disclosure or ctx.own_record or ctx.owner_is_requester:
        return _verdict("sensitive", None, "no restricting label, or the requester owns the data")
    held = labels - ctx.lifted_labels
    if not held:
        return _verdict("sensitive", None, "restricting labels released by a permit provision")
    codes = ", ".join(sorted(code for _, code in held))
    owner = ctx.resource.owner_org if ctx.resource else None
    return _verdict(
        "sensitive", "withhold", f"labelled {codes}: visible to the owner organisation ({owner}) only"
    )


def rule_opt_out(ctx: Context) -> RuleVerdict:
    if not ctx.request.secondary_use:
        return _verdict("opt-out", None, "direct care: the national data opt-out does not apply")
    if not ctx.opt_outs or not ctx.patient_rules_apply:
        return _verdict("opt-out", None, "no national data opt-out recorded")
    consents = ", ".join(f"Consent/{c}" for c in ctx.opt_outs)
    return _verdict("opt-out", "withhold", f"national data opt-out ({consents}) excludes secondary use")


RULES: tuple[Callable[[Context], RuleVerdict], ...] = (
    rule_role,
    rule_patient_compartment,
    rule_non_patient_data,
    rule_own_record,
    rule_relationship,
    rule_break_glass,
    rule_objection,
    rule_consent_deny,
    rule_consent_permit,
    rule_sensitive,
    rule_opt_out,
)


# --------------------------------------------------------------------------------------------------
# Public API


def combine(verdicts: Sequence[RuleVerdict]) -> Decision:
    """Deny over withhold over permit; among equals the rule first in `RULE_PRECEDENCE`. Nothing applies →
    deny `default` (fail closed)."""
    applying = [v for v in verdicts if v.applies and v.effect is not None]
    if not applying:
        return Decision("deny", "default", "no rule permits this access")
    best = min(applying, key=lambda v: (EFFECT_RANK[v.effect], _precedence(v.rule), v.reason))  # type: ignore[index]
    return Decision(best.effect, best.rule, best.reason)  # type: ignore[arg-type]


_PRECEDENCE = {rule: index for index, rule in enumerate(RULE_PRECEDENCE)}


def _precedence(rule: str) -> int:
    return _PRECEDENCE.get(rule, len(RULE_PRECEDENCE))


def explain(
    request: AccessRequest,
    resource: ResourceFacts,
    consents: Sequence[PatientConsent],
    relationships: Sequence[Relationship],
    now: datetime,
    policy: Policy,
) -> list[RuleVerdict]:
    """Every rule's verdict on `request` for `resource` (for IG officers' `$access-explain`)."""
    ctx = Context(
        request, resource.res_type, resource.patient_id, resource, consents, relationships, now, policy
    )
    return [rule(ctx) for rule in RULES]


def decide(
    request: AccessRequest,
    resource: ResourceFacts,
    consents: Sequence[PatientConsent],
    relationships: Sequence[Relationship],
    now: datetime,
    policy: Policy,
) -> Decision:
    """May `request` see or change `resource`? `combine(explain(...))`."""
    return combine(explain(request, resource, consents, relationships, now, policy))


def explain_patient(
    request: AccessRequest,
    res_type: str,
    patient_id: str | None,
    consents: Sequence[PatientConsent],
    relationships: Sequence[Relationship],
    now: datetime,
    policy: Policy,
) -> list[RuleVerdict]:
    """The request-level rules before any resource is loaded (role, compartment, relationship, break-glass,
    opt-out); resource-level rules report that they do not apply yet."""
    ctx = Context(request, res_type, patient_id, None, consents, relationships, now, policy)
    return [rule(ctx) for rule in RULES]


def decide_patient(
    request: AccessRequest,
    res_type: str,
    patient_id: str | None,
    consents: Sequence[PatientConsent],
    relationships: Sequence[Relationship],
    now: datetime,
    policy: Policy,
) -> Decision:
    """May `request` do its interaction on `res_type` for `patient_id` at all? (403 when denied.)
    Call it before loading anything; `patient_id=None` (a search across patients) defers the patient rules
    to `decide` for every row, which must still run for each resource returned."""
    return combine(explain_patient(request, res_type, patient_id, consents, relationships, now, policy))
