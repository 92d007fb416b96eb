"""Properties of the decision (issue 4 "Proof"): adding a deny never grants; order never matters; an
objection never hides the owner's own data; break-glass never lifts a sensitive label."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consent.decide import combine, decide, explain
from consent.model import (
    AccessRequest,
    Actor,
    PatientConsent,
    Provision,
    Relationship,
    Requester,
    ResourceFacts,
)
from consent.vocabulary import (
    ACT_CODE_SYSTEM,
    CONFIDENTIALITY_SYSTEM,
    RBAC_ROLE_SYSTEM,
    RESOURCE_TYPES_SYSTEM,
)
from tests.consent.builders import NOW, PATIENT, POLICY, PRIVACY_SCOPE

ORGS = ["RR8", "RGD", "B86902"]
ROLES = ["R8000", "R8001", "R8009", "R8012", "R8014"]
TYPES = ["Condition", "Observation", "Encounter", "Patient", "Organization", "Consent", "AuditEvent"]
LABELS = [(ACT_CODE_SYSTEM, "PSY"), (ACT_CODE_SYSTEM, "HIV"), (CONFIDENTIALITY_SYSTEM, "R"),
          (CONFIDENTIALITY_SYSTEM, "N")]
CODES = [("http://snomed.info/sct", "21897009"), ("http://snomed.info/sct", "38341003")]
TIMES = [NOW - timedelta(days=d) for d in (900, 400, 100, 1)]
RESTRICTING = {label for label in LABELS if label in POLICY.restricting_labels}



def small_sets(items: list) -> st.SearchStrategy[frozenset]:
    return st.frozensets(st.sampled_from(items), max_size=2)


def often_empty(items: list) -> st.SearchStrategy[frozenset]:
    """A criterion that is usually absent, so that random provisions often match."""
    return st.one_of(st.just(frozenset()), st.just(frozenset()), small_sets(items))



requesters = st.builds(
    Requester,
    user_id=st.just("u1"),
    role=st.sampled_from(["R8000"] * 4 + ROLES),
    orgs=st.sampled_from(ORGS).map(lambda o: frozenset({o})),
    purpose=st.sampled_from(["TREAT", "HOPERAT"]),
    break_glass=st.booleans(),
    patient=st.sampled_from([None] * 8 + [PATIENT, "p2"]),
)
any_requests = st.builds(AccessRequest, requester=requesters,
                         interaction=st.sampled_from(["read", "search", "read", "create"]),
                         secondary_use=st.booleans())
clinicians = st.builds(Requester, user_id=st.just("u1"), role=st.sampled_from(["R8000", "R8001"]),
                       orgs=st.sampled_from(ORGS).map(lambda o: frozenset({o})), break_glass=st.booleans())
clinical_reads = st.builds(AccessRequest, requester=clinicians, interaction=st.sampled_from(["read", "search"]))
requests = st.one_of(any_requests, clinical_reads)
resources = st.builds(
    ResourceFacts,
    res_type=st.sampled_from(["Condition"] * 4 + ["Observation"] * 2 + TYPES),
    res_id=st.sampled_from(["r1", "r2"]),
    patient_id=st.sampled_from([PATIENT] * 5 + [None]),
    owner_org=st.sampled_from([*ORGS, None]),
    labels=small_sets(LABELS),
    codes=small_sets(CODES),
    data_time=st.sampled_from([*TIMES, None]),
)
random_relationships = st.lists(st.builds(
    Relationship,
    patient_id=st.sampled_from([PATIENT] * 4 + ["p2"]),
    org=st.sampled_from(ORGS),
    kind=st.sampled_from(["registered-gp", "encounter", "referral", "care-team"]),
    start=st.sampled_from([None, None, *TIMES]),
    end=st.sampled_from([None, None, *TIMES]),
), max_size=4)
everyone_registered = st.just([Relationship(PATIENT, org, "care-team") for org in ORGS])
relationships = st.one_of(random_relationships, everyone_registered)

actors = st.builds(
    Actor,
    roles=st.sampled_from(["R8000", "R8014"]).map(lambda r: frozenset({(RBAC_ROLE_SYSTEM, r)}))
    | st.just(frozenset()),
    reference=st.sampled_from([None, None, *ORGS]),
)


def provisions(kind: str | None = None, depth: int = 2) -> st.SearchStrategy[Provision]:
    """Random provisions over small domains, so that criteria often match."""
    children = st.lists(provisions(kind, depth - 1), max_size=2).map(tuple) if depth > 0 else st.just(())
    return st.builds(
        Provision,
        type=st.just(kind) if kind else st.sampled_from(["deny", "permit"]),
        actors=st.one_of(st.just(frozenset()), st.frozensets(actors, min_size=1, max_size=1)),
        security_labels=often_empty(LABELS),
        purposes=st.sampled_from([frozenset(), frozenset(), frozenset({("", "TREAT")})]),
        classes=often_empty([(RESOURCE_TYPES_SYSTEM, t) for t in TYPES[:3]]),
        codes=often_empty(CODES),
        data_start=st.sampled_from([None, None, TIMES[1]]),
        data_refs=st.sampled_from([frozenset(), frozenset(), frozenset({"Condition/r1"})]),
        provisions=children,
    )


def consents_of(kind: str | None = None) -> st.SearchStrategy[list[PatientConsent]]:
    ids = st.sampled_from(["c1", "c2", "c3"])
    bare = st.just(Provision(kind or "deny"))  # objection shapes, often
    roots = st.one_of(bare, provisions(kind))
    return st.lists(st.builds(PatientConsent, consent_id=ids, patient_id=st.just(PATIENT), root=roots,
                              scopes=st.just(PRIVACY_SCOPE)), max_size=3)


def _reordered(provision: Provision) -> Provision:
    children = tuple(_reordered(p) for p in reversed(provision.provisions))
    return replace(provision, provisions=children)


def _with_child(provision: Provision, child: Provision, path: list[int]) -> Provision:
    """`provision` with `child` added below the node that `path` leads to (indices wrap)."""
    if not path or not provision.provisions:
        return replace(provision, provisions=(*provision.provisions, child))
    index = path[0] % len(provision.provisions)
    nested = list(provision.provisions)
    nested[index] = _with_child(nested[index], child, path[1:])
    return replace(provision, provisions=tuple(nested))


NOT_PERMIT = {"deny", "withhold"}
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(requests, resources, consents_of(), relationships, consents_of("deny"))
def test_adding_deny_consents_never_grants(req, res, consents, rels, denies) -> None:  # type: ignore[no-untyped-def]
    before = decide(req, res, consents, rels, NOW, POLICY)
    after = decide(req, res, consents + denies, rels, NOW, POLICY)
    if before.effect in NOT_PERMIT:
        assert after.effect in NOT_PERMIT, (before, after)


@SETTINGS
@given(requests, resources, consents_of(), relationships, provisions("deny", depth=1),
       st.integers(0, 2), st.lists(st.integers(0, 3), max_size=3))
def test_adding_a_deny_provision_never_grants(req, res, consents, rels, deny, which, path) -> None:  # type: ignore[no-untyped-def]
    if not consents:
        return
    before = decide(req, res, consents, rels, NOW, POLICY)
    index = which % len(consents)
    target = consents[index]
    changed = PatientConsent(target.consent_id, target.patient_id, _with_child(target.root, deny, path), target.scopes)
    after = decide(req, res, [*consents[:index], changed, *consents[index + 1:]], rels, NOW, POLICY)
    if before.effect in NOT_PERMIT:
        assert after.effect in NOT_PERMIT, (before, after)


@SETTINGS
@given(requests, resources, consents_of(), relationships, st.randoms(use_true_random=False))
def test_order_of_consents_provisions_and_relationships_never_matters(req, res, consents, rels, rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled_consents = [PatientConsent(c.consent_id, c.patient_id, _reordered(c.root), c.scopes) for c in consents]
    rnd.shuffle(shuffled_consents)
    shuffled_rels = list(rels)
    rnd.shuffle(shuffled_rels)
    assert decide(req, res, consents, rels, NOW, POLICY) == decide(
        req, res, shuffled_consents, shuffled_rels, NOW, POLICY)
    assert explain(req, res, consents, rels, NOW, POLICY) == explain(
        req, res, shuffled_consents, shuffled_rels, NOW, POLICY)


@SETTINGS
@given(requests, resources, consents_of(), relationships)
def test_decide_is_the_combination_of_explain(req, res, consents, rels) -> None:  # type: ignore[no-untyped-def]
    assert decide(req, res, consents, rels, NOW, POLICY) == combine(explain(req, res, consents, rels, NOW, POLICY))


@SETTINGS
@given(requests, resources, consents_of(), relationships)
def test_an_objection_never_hides_the_owner_s_own_data(req, res, consents, rels) -> None:  # type: ignore[no-untyped-def]
    if res.owner_org not in req.requester.orgs:
        return
    objection = PatientConsent("objection", PATIENT, Provision("deny"), PRIVACY_SCOPE)
    assert decide(req, res, [*consents, objection], rels, NOW, POLICY) == decide(req, res, consents, rels, NOW, POLICY)


@SETTINGS
@given(requests, resources, consents_of(), relationships)
def test_break_glass_never_lifts_a_sensitive_label(req, res, consents, rels) -> None:  # type: ignore[no-untyped-def]
    plain = AccessRequest(replace(req.requester, break_glass=False), req.interaction,
                          req.secondary_use)
    glass = AccessRequest(replace(req.requester, break_glass=True), req.interaction,
                          req.secondary_use)
    without = {v.rule: v.effect for v in explain(plain, res, consents, rels, NOW, POLICY)}
    with_glass = {v.rule: v.effect for v in explain(glass, res, consents, rels, NOW, POLICY)}
    for rule in ("sensitive", "consent-deny", "role", "patient-compartment", "opt-out"):
        if without[rule] in NOT_PERMIT:
            assert with_glass[rule] == without[rule], rule
    if without["sensitive"] == "withhold":
        assert decide(glass, res, consents, rels, NOW, POLICY).effect != "permit"


@SETTINGS
@given(requests, resources, relationships)
def test_labelled_data_is_withheld_from_other_orgs_without_a_permit(req, res, rels) -> None:  # type: ignore[no-untyped-def]
    if not (res.labels & RESTRICTING) or res.owner_org in req.requester.orgs or req.interaction == "create":
        return
    if req.requester.patient == res.patient_id and res.patient_id is not None:
        return
    assert decide(req, res, [], rels, NOW, POLICY).effect != "permit"
