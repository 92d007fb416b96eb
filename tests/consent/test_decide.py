"""Decision truth tables: how verdicts combine, and what each rule decides (UK-REFERENCE tests 9-14)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from consent.decide import RULE_PRECEDENCE, RULES, combine, decide, decide_patient, explain, explain_patient
from consent.model import AccessRequest, Actor, Provision, Requester, RuleVerdict
from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM, CONSENT_SCOPE_SYSTEM, RESEARCH
from tests.consent.builders import (
    NOW,
    OBJECTION,
    OTHER,
    OWNER,
    PATIENT,
    POLICY,
    PSY,
    RESTRICTED,
    consent,
    consent_fixture,
    relationship,
    request,
    resource,
)

SEX = (ACT_CODE_SYSTEM, "SEX")
V = (CONFIDENTIALITY_SYSTEM, "V")


def v(rule: str, effect: str | None) -> RuleVerdict:
    return RuleVerdict(rule, effect is not None, effect, f"{rule} says {effect}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Combination: deny > withhold > permit; ties by RULE_PRECEDENCE; nothing → deny (fail closed)

COMBINATIONS = [
    # verdicts                                                     → effect,     rule
    ([],                                                              ("deny", "default")),
    ([v("role", None), v("relationship", None)],                      ("deny", "default")),
    ([v("relationship", "permit")],                                   ("permit", "relationship")),
    ([v("relationship", "permit"), v("sensitive", "withhold")],       ("withhold", "sensitive")),
    ([v("role", "deny"), v("sensitive", "withhold"), v("relationship", "permit")], ("deny", "role")),
    ([v("no-relationship", "deny"), v("objection", "withhold")],      ("deny", "no-relationship")),
    ([v("role", "deny"), v("no-relationship", "deny")],               ("deny", "role")),
    ([v("objection", "withhold"), v("consent-deny", "withhold")],     ("withhold", "consent-deny")),
    ([v("objection", "withhold"), v("sensitive", "withhold")],        ("withhold", "sensitive")),
    ([v("opt-out", "withhold"), v("objection", "withhold")],          ("withhold", "objection")),
    ([v("consent-permit", "permit"), v("consent-deny", "withhold")],  ("withhold", "consent-deny")),
    ([v("consent-permit", "permit"), v("relationship", "permit")],    ("permit", "consent-permit")),
    ([v("break-glass", "permit"), v("relationship", None)],           ("permit", "break-glass")),
    ([v("own-record", "permit"), v("non-patient-data", "permit")],    ("permit", "own-record")),
    ([v("patient-compartment", "deny"), v("own-record", "permit")],   ("deny", "patient-compartment")),
]


@pytest.mark.parametrize(("verdicts", "expected"), COMBINATIONS)
def test_combination_truth_table(verdicts: list[RuleVerdict], expected: tuple[str, str]) -> None:
    for order in itertools.permutations(verdicts):
        decision = combine(list(order))
        assert (decision.effect, decision.rule) == expected


def test_every_rule_has_a_precedence() -> None:
    names = {verdict.rule for verdict in explain(request(), resource(), [], [], NOW, POLICY)}
    assert names - {"no-relationship"} <= set(RULE_PRECEDENCE)
    assert len(RULES) == len(names)


# --------------------------------------------------------------------------------------------------
# Scenarios: one readable row per rule outcome

GP = relationship(OTHER)  # RR8 has the relationship in most rows
RGD_VISIT = datetime(2025, 6, 17, tzinfo=UTC)
RGD_REL = relationship(OWNER, "encounter", start=RGD_VISIT, end=RGD_VISIT + timedelta(days=1))
PATIENT_TOKEN = {"patient": PATIENT}
DENY_MH_TO_RR8 = consent_fixture("consent-deny-mental-health-to-rr8.json")
PERMIT_PSY_TO_GP = consent_fixture("consent-permit-psy-to-gp.json")
NDOP = consent(Provision("deny"), "ndop", scopes=frozenset({(CONSENT_SCOPE_SYSTEM, RESEARCH)}))

SCENARIOS = [
    # id, request, resource, consents, relationships → (effect, rule)
    # UK test 9: roles
    ("clerical reads Patient", request(role="R8010"), resource("Patient", res_id=PATIENT), [], [GP],
     ("permit", "relationship")),
    ("clerical reads Appointment", request(role="R8010"), resource("Appointment"), [], [GP],
     ("permit", "relationship")),
    ("clerical reads Condition", request(role="R8010"), resource("Condition"), [], [GP], ("deny", "role")),
    ("unknown role", request(role="R8015"), resource("Condition"), [], [GP], ("deny", "role")),
    ("clinician with relationship", request(), resource("Condition"), [], [GP], ("permit", "relationship")),
    ("clinician without relationship", request(), resource("Condition"), [], [], ("deny", "no-relationship")),
    ("relationship of another org", request(), resource("Condition"), [], [relationship("B86902")],
     ("deny", "no-relationship")),
    ("relationship for another patient", request(), resource("Condition"), [], [relationship(patient="p2")],
     ("deny", "no-relationship")),
    # UK test 10: break-glass overrides a missing relationship
    ("break-glass without relationship", request(break_glass=True), resource("Condition"), [], [],
     ("permit", "break-glass")),
    ("break-glass not needed", request(break_glass=True), resource("Condition"), [], [GP],
     ("permit", "relationship")),
    ("break-glass cannot lift role", request(role="R8009", break_glass=True), resource("Condition"), [], [],
     ("deny", "role")),
    # directory data and governance roles
    ("receptionist reads Organization", request(role="R8009"), resource("Organization", patient=None), [], [],
     ("permit", "non-patient-data")),
    ("unknown role reads Location", request(role="R9999"), resource("Location", patient=None), [], [],
     ("permit", "non-patient-data")),
    ("create Organization needs role", request(role="R8009", interaction="create"),
     resource("Organization", patient=None), [], [], ("deny", "role")),
    ("IG officer reads AuditEvent", request(role="R8012"), resource("AuditEvent"), [], [],
     ("permit", "relationship")),
    ("IG officer reads Condition", request(role="R8012"), resource("Condition"), [], [], ("deny", "role")),
    ("clinician reads AuditEvent", request(), resource("AuditEvent"), [], [GP], ("deny", "role")),
    # UK test 11: objection
    ("objection hides others' data", request(), resource(owner=OWNER), [OBJECTION], [GP],
     ("withhold", "objection")),
    ("objection hides unowned data", request(), resource(owner=None), [OBJECTION], [GP],
     ("withhold", "objection")),
    ("objection spares owner", request(OWNER), resource(owner=OWNER), [OBJECTION], [RGD_REL],
     ("permit", "relationship")),
    ("break-glass overrides objection", request(break_glass=True), resource(), [OBJECTION], [GP],
     ("permit", "break-glass")),
    ("objection never blocks writes", request(interaction="create"), resource(), [OBJECTION], [GP],
     ("permit", "relationship")),
    ("objection leaves the Consent visible", request(), resource("Consent"), [OBJECTION], [GP],
     ("permit", "relationship")),
    ("objection of another patient", request(), resource(), [consent(Provision("deny"), patient="p2")], [GP],
     ("permit", "relationship")),
    ("objection not yet in force", request(), resource(),
     [consent(Provision("deny", period_start=NOW + timedelta(days=1)))], [GP], ("permit", "relationship")),
    # UK test 12: sensitive labels
    ("sensitive hidden from others", request(), resource(labels=frozenset({RESTRICTED, SEX})), [], [GP],
     ("withhold", "sensitive")),
    ("sensitive visible to owner", request(OWNER), resource(labels=frozenset({RESTRICTED, SEX})), [], [RGD_REL],
     ("permit", "relationship")),
    ("break-glass never lifts labels", request(break_glass=True), resource(labels=frozenset({PSY})), [], [],
     ("withhold", "sensitive")),
    ("very restricted hidden", request(), resource(labels=frozenset({V})), [], [GP], ("withhold", "sensitive")),
    ("non-restricting label", request(), resource(labels=frozenset({(CONFIDENTIALITY_SYSTEM, "N")})), [], [GP],
     ("permit", "relationship")),
    # consent provisions (IHE PCF shapes, tests/consent/fixtures)
    ("deny provision for RR8", request(), resource(labels=frozenset({PSY, RESTRICTED})), [DENY_MH_TO_RR8], [GP],
     ("withhold", "consent-deny")),
    ("deny provision beats break-glass", request(break_glass=True), resource(labels=frozenset({PSY})),
     [DENY_MH_TO_RR8], [GP], ("withhold", "consent-deny")),
    ("deny provision spares other types", request(), resource("Observation"), [DENY_MH_TO_RR8], [GP],
     ("permit", "consent-permit")),
    ("permit provision lifts PSY for the GP", request("B86902"), resource(labels=frozenset({PSY, RESTRICTED})),
     [PERMIT_PSY_TO_GP], [relationship("B86902")], ("permit", "consent-permit")),
    ("permit provision for another purpose", request("B86902", purpose="HOPERAT"),
     resource(labels=frozenset({PSY, RESTRICTED})), [PERMIT_PSY_TO_GP], [relationship("B86902")],
     ("withhold", "sensitive")),
    ("permit lifts only the labels it names", request("B86902"), resource(labels=frozenset({PSY, SEX})),
     [PERMIT_PSY_TO_GP], [relationship("B86902")], ("withhold", "sensitive")),
    ("deny naming a code the data lacks", request("B86902"), resource(labels=frozenset({PSY})),
     [PERMIT_PSY_TO_GP, consent(Provision("deny", codes=frozenset({("http://snomed.info/sct", "21897009")})), "d")],
     [relationship("B86902")], ("permit", "consent-permit")),
    # UK test 14: national data opt-out
    ("opt-out ignored for direct care", request(), resource(), [NDOP], [GP], ("permit", "relationship")),
    ("opt-out excludes secondary use", request(secondary_use=True), resource(), [NDOP], [GP],
     ("withhold", "opt-out")),
    ("opt-out is not an objection", request(), resource(owner="RY6"), [NDOP], [GP], ("permit", "relationship")),
    # patients
    ("patient reads own sensitive data", request("none", role="", **PATIENT_TOKEN), resource(labels=frozenset({PSY})),
     [DENY_MH_TO_RR8], [], ("permit", "own-record")),
    ("patient reads own audit trail", request("none", role="", **PATIENT_TOKEN), resource("AuditEvent"), [], [],
     ("permit", "own-record")),
    ("patient reads another patient", request("none", role="", patient="p2"), resource(), [], [],
     ("deny", "patient-compartment")),
    ("patient records an objection", request("none", role="", interaction="create", **PATIENT_TOKEN),
     resource("Consent"), [], [], ("permit", "own-record")),
    ("patient cannot delete", request("none", role="", interaction="delete", **PATIENT_TOKEN),
     resource("Condition"), [], [], ("deny", "role")),
]


@pytest.mark.parametrize(("name", "req", "res", "consents", "rels", "expected"), SCENARIOS,
                         ids=[row[0] for row in SCENARIOS])
def test_decision_scenarios(name, req, res, consents, rels, expected) -> None:  # type: ignore[no-untyped-def]
    decision = decide(req, res, consents, rels, NOW, POLICY)
    assert (decision.effect, decision.rule) == expected, decision.reason
    assert decision == combine(explain(req, res, consents, rels, NOW, POLICY))


def test_permit_and_matching_deny_in_two_consents_deny_wins() -> None:
    other = consent(Provision("deny", codes=frozenset({("http://snomed.info/sct", "1")})), "d")
    res = resource(labels=frozenset({PSY}), codes=frozenset({("http://snomed.info/sct", "1")}))
    decision = decide(request("B86902"), res, [PERMIT_PSY_TO_GP, other], [relationship("B86902")], NOW, POLICY)
    assert (decision.effect, decision.rule) == ("withhold", "consent-deny")


# --------------------------------------------------------------------------------------------------
# Relationship windows


@pytest.mark.parametrize(
    ("kind", "ended_days_ago", "permitted"),
    [
        ("encounter", 700, True), ("encounter", 731, False), ("episode", 729, True), ("referral", 800, False),
        ("registered-gp", 1, False), ("care-home", 1, False), ("care-team", 1, False), ("encounter", -10, True),
    ],
)
def test_relationship_windows(kind: str, ended_days_ago: int, permitted: bool) -> None:
    rel = relationship(kind=kind, start=NOW - timedelta(days=800), end=NOW - timedelta(days=ended_days_ago))
    decision = decide(request(), resource(), [], [rel], NOW, POLICY)
    assert (decision.effect == "permit") is permitted


def test_relationship_that_has_not_started_is_not_active() -> None:
    rel = relationship(kind="encounter", start=NOW + timedelta(days=2))
    assert decide(request(), resource(), [], [rel], NOW, POLICY).rule == "no-relationship"


def test_open_relationships_of_every_kind_are_active() -> None:
    for kind in ("registered-gp", "encounter", "episode", "referral", "care-home", "care-team"):
        assert decide(request(), resource(), [], [relationship(kind=kind)], NOW, POLICY).effect == "permit"


# --------------------------------------------------------------------------------------------------
# Provision criteria


DAVID = "pat-david-kowalski"
DAVID_CONSENT = consent_fixture("consent-deny-data-period.json")
COPD = frozenset({("http://snomed.info/sct", "13645005")})


@pytest.mark.parametrize(
    ("role", "res", "expected"),
    [
        ("R8000", resource("Observation", patient=DAVID, codes=COPD, res_id="obs-david-spo2-2024",
                           data_time=datetime(2024, 5, 1, tzinfo=UTC)), "consent-deny"),
        ("R8000", resource("Observation", patient=DAVID, codes=COPD, res_id="obs-david-spo2-2024",
                           data_time=datetime(2025, 5, 1, tzinfo=UTC)), "consent-permit"),
        ("R8000", resource("Observation", patient=DAVID, codes=COPD, res_id="obs-david-spo2-2024", data_time=None),
         "consent-deny"),  # unknown clinical date: a deny with dataPeriod matches (fail safe)
        ("R8000", resource("Observation", patient=DAVID, codes=COPD, res_id="other",
                           data_time=datetime(2024, 5, 1, tzinfo=UTC)), "consent-permit"),
        ("R8014", resource("Observation", patient=DAVID, res_id="other"), "consent-deny"),  # role actor
    ],
)
def test_data_period_data_reference_and_role_actor(role: str, res, expected: str) -> None:  # type: ignore[no-untyped-def]
    decision = decide(request(role=role), res, [DAVID_CONSENT], [relationship(patient=DAVID)], NOW, POLICY)
    assert decision.rule == expected, decision.reason


def test_objection_with_exception_for_the_gp_practice() -> None:
    alice = "pat-alice-hughes"
    objection = consent_fixture("consent-objection-except-gp.json")
    data = resource(owner=OTHER, patient=alice)
    gp = decide(request("B86901"), data, [objection], [relationship("B86901", patient=alice)], NOW, POLICY)
    community = decide(request("RY6"), data, [objection], [relationship("RY6", patient=alice)], NOW, POLICY)
    assert (gp.effect, gp.rule) == ("permit", "consent-permit")
    assert (community.effect, community.rule) == ("withhold", "objection")


def test_actor_by_practitioner_reference_and_action_filter() -> None:
    practitioner = Actor(reference="Practitioner/555000000104")
    deny_me = consent(Provision("deny", actors=frozenset({practitioner})))
    assert decide(request(), resource(), [deny_me], [GP], NOW, POLICY).rule == "consent-deny"
    collect_only = consent(Provision("deny", actions=frozenset({("http://terminology.hl7.org/CodeSystem/consentaction",
                                                                  "collect")})))
    assert decide(request(), resource(), [collect_only], [GP], NOW, POLICY).effect == "permit"


def test_class_by_other_coding_matches_resource_codes() -> None:
    category = ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")
    deny_labs = consent(Provision("deny", classes=frozenset({category})))
    lab = resource("Observation", codes=frozenset({category}))
    vital = resource("Observation", codes=frozenset({("x", "vital-signs")}))
    assert decide(request(), lab, [deny_labs], [GP], NOW, POLICY).rule == "consent-deny"
    assert decide(request(), vital, [deny_labs], [GP], NOW, POLICY).effect == "permit"


# --------------------------------------------------------------------------------------------------
# Request level and explanation


@pytest.mark.parametrize(
    ("req", "res_type", "consents", "rels", "expected"),
    [
        (request(), "Condition", [], [GP], ("permit", "relationship")),
        (request(), "Condition", [], [], ("deny", "no-relationship")),
        (request(break_glass=True), "Condition", [OBJECTION], [], ("permit", "break-glass")),
        (request(role="R8010"), "Condition", [], [GP], ("deny", "role")),
        (request(), "Condition", [OBJECTION], [GP], ("permit", "relationship")),  # per resource, later
        (request(secondary_use=True), "Observation", [NDOP], [GP], ("withhold", "opt-out")),
        (request(role="R8009"), "Practitioner", [], [], ("permit", "non-patient-data")),
    ],
)
def test_decide_patient(req: AccessRequest, res_type: str, consents, rels, expected) -> None:  # type: ignore[no-untyped-def]
    decision = decide_patient(req, res_type, PATIENT, consents, rels, NOW, POLICY)
    assert (decision.effect, decision.rule) == expected, decision.reason


def test_explain_lists_every_rule_with_a_reason() -> None:
    verdicts = explain(request(), resource(labels=frozenset({PSY})), [OBJECTION], [GP], NOW, POLICY)
    assert [v.rule for v in verdicts] == [
        "role", "patient-compartment", "non-patient-data", "own-record", "relationship", "break-glass",
        "objection", "consent-deny", "consent-permit", "sensitive", "opt-out",
    ]
    applying = {v.rule: v.effect for v in verdicts if v.applies}
    assert applying == {"relationship": "permit", "objection": "withhold", "sensitive": "withhold"}
    assert all(v.reason for v in verdicts)


def test_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert decide(request(), resource(), [], [GP], naive, POLICY) == decide(
        request(), resource(), [], [GP], NOW, POLICY)


def test_requester_defaults() -> None:
    who = Requester("u", "R8000", frozenset({"RR8"}))
    assert (who.purpose, who.break_glass, who.patient) == ("TREAT", False, None)


def test_a_deny_for_treatment_still_holds_under_break_glass() -> None:
    """Break-glass (v3-ActReason BTG) is emergency treatment: a provision about TREAT still applies."""
    deny_treatment = consent(Provision("deny", purposes=frozenset({("", "TREAT")}), codes=frozenset({("s", "1")})))
    res = resource(codes=frozenset({("s", "1")}))
    glass = request(break_glass=True, purpose="BTG")
    assert decide(glass, res, [deny_treatment], [], NOW, POLICY).rule == "consent-deny"
    assert decide(request(purpose="HOPERAT"), res, [deny_treatment], [GP], NOW, POLICY).effect == "permit"


def test_break_glass_does_not_reach_a_permit_nested_under_a_treatment_only_provision() -> None:
    """A permit under a provision that matches only because break-glass reads as treatment would not
    match without breaking the glass: it releases no label (the enclosing deny decides)."""
    code = ("http://snomed.info/sct", "21897009")
    nested = Provision("deny", purposes=frozenset({("", "TREAT")}), codes=frozenset({code}),
                       provisions=(Provision("deny", provisions=(Provision("permit"),)),))
    res = resource(labels=frozenset({PSY}), codes=frozenset({code}))
    rels = [relationship("RR8", kind="care-team")]
    plain = decide(request("RR8", purpose="HOPERAT"), res, [consent(nested)], rels, NOW, POLICY)
    glass = decide(request("RR8", purpose="HOPERAT", break_glass=True), res, [consent(nested)], rels, NOW, POLICY)
    assert (plain.effect, plain.rule) == ("withhold", "sensitive")
    assert glass.effect != "permit"


def test_request_level_explanation_leaves_resource_rules_out() -> None:
    verdicts = {v.rule: v for v in explain_patient(request(), "Condition", PATIENT, [OBJECTION], [GP], NOW, POLICY)}
    assert not verdicts["objection"].applies and not verdicts["sensitive"].applies
    assert verdicts["relationship"].effect == "permit"
