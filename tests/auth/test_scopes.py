"""SMART scope parsing and decisions: truth tables plus properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.auth.scopes import (
    INTERACTIONS,
    Scope,
    ScopeError,
    granting_scopes,
    parse_scope,
    parse_scopes,
    scope_filters,
    scopes_permit,
)

VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


@pytest.mark.parametrize(
    ("text", "context", "resource_type", "interactions"),
    [
        ("user/*.cruds", "user", "*", "cruds"),
        ("user/Observation.rs", "user", "Observation", "rs"),
        ("patient/*.rs", "patient", "*", "rs"),
        ("system/*.r", "system", "*", "r"),
        ("system/Patient.cud", "system", "Patient", "cud"),
        ("user/*.s", "user", "*", "s"),
        # v1 forms
        ("user/*.read", "user", "*", "rs"),
        ("user/*.write", "user", "*", "cud"),
        ("patient/*.*", "patient", "*", "cruds"),
        ("user/Observation.read", "user", "Observation", "rs"),
    ],
)
def test_parse_valid_scopes(text: str, context: str, resource_type: str, interactions: str) -> None:
    scope = parse_scope(text)
    assert (scope.context, scope.resource_type) == (context, resource_type)
    assert scope.interactions == frozenset(interactions)
    assert scope.params == ()


def test_query_restriction_is_kept_verbatim() -> None:
    scope = parse_scope(f"user/Observation.rs?category={VITAL_SIGNS}")
    assert scope.params == (("category", VITAL_SIGNS),)
    assert str(scope) == f"user/Observation.rs?category={VITAL_SIGNS}"


def test_query_restriction_params_are_sorted_and_percent_decoded() -> None:
    scope = parse_scope("user/Observation.rs?status=final&category=laboratory%7Cx")
    assert scope.params == (("category", "laboratory|x"), ("status", "final"))


@pytest.mark.parametrize(
    ("text", "reason_fragment"),
    [
        ("user/Observation.sr", "in-order"),
        ("user/Observation.rr", "in-order"),
        ("user/Observation.x", "in-order"),
        ("user/Observation.", "not a SMART resource scope"),
        ("practitioner/*.rs", "unknown context"),
        ("user/observation.rs", "not a SMART resource scope"),
        ("user/Observation", "not a SMART resource scope"),
        ("Observation.rs", "not a SMART resource scope"),
        ("user/*.read?category=vital-signs", "v2 permissions"),
        ("user/Observation.rs?category=", "non-empty"),
        ("user/Observation.rs?", "non-empty"),
        ("user/Observation.rs?=x", "non-empty"),
        ("user/Observation.rs?category", "name=value"),
        ("nationalrbacaccess", "not a SMART resource scope"),
    ],
)
def test_invalid_scopes_are_rejected_with_a_reason(text: str, reason_fragment: str) -> None:
    with pytest.raises(ScopeError) as caught:
        parse_scope(text)
    assert reason_fragment in caught.value.reason
    scopes, rejected = parse_scopes(text)
    assert scopes == ()
    assert [r.text for r in rejected] == [text]


def test_non_resource_scopes_are_ignored_silently() -> None:
    scopes, rejected = parse_scopes("openid fhirUser profile launch launch/patient offline_access user/*.rs")
    assert scopes == (parse_scope("user/*.rs"),)
    assert rejected == ()


def test_parse_scopes_accepts_a_list_and_drops_duplicates() -> None:
    scopes, rejected = parse_scopes(["user/*.rs", "user/*.read", "patient/*.r", 7])  # type: ignore[list-item]
    assert scopes == (parse_scope("user/*.rs"), parse_scope("patient/*.r"))
    assert [r.reason for r in rejected] == ["scope entries must be strings"]


def test_parse_scopes_of_nothing() -> None:
    assert parse_scopes(None) == ((), ())
    assert parse_scopes("   ") == ((), ())


# (granted scopes, interaction, resource type) -> permitted?
PERMIT_TABLE = [
    ("user/*.cruds", "c", "Patient", True),
    ("user/*.cruds", "d", "Observation", True),
    ("user/*.rs", "r", "Observation", True),
    ("user/*.rs", "s", "Observation", True),
    ("user/*.rs", "u", "Observation", False),
    ("user/*.rs", "c", "Observation", False),
    ("user/Observation.rs", "r", "Observation", True),
    ("user/Observation.rs", "r", "Condition", False),
    ("user/Observation.r", "s", "Observation", False),
    ("user/Observation.s", "r", "Observation", False),
    ("patient/*.read", "s", "Condition", True),
    ("patient/*.read", "u", "Condition", False),
    ("user/*.write", "u", "Condition", True),
    ("user/*.write", "r", "Condition", False),
    ("system/*.*", "d", "Encounter", True),
    ("user/Observation.rs user/Condition.c", "c", "Condition", True),
    ("user/Observation.rs user/Condition.c", "c", "Observation", False),
    (f"user/Observation.rs?category={VITAL_SIGNS}", "r", "Observation", True),
    ("openid fhirUser", "r", "Patient", False),
    ("", "r", "Patient", False),
]


@pytest.mark.parametrize(("granted", "interaction", "resource_type", "expected"), PERMIT_TABLE)
def test_scopes_permit_truth_table(granted: str, interaction: str, resource_type: str, expected: bool) -> None:
    scopes, _ = parse_scopes(granted)
    assert scopes_permit(scopes, interaction, resource_type) is expected


@pytest.mark.parametrize("interaction", ["x", "", "rs", "read", "R"])
def test_unknown_interaction_is_a_programming_error(interaction: str) -> None:
    with pytest.raises(ValueError):
        scopes_permit(parse_scopes("user/*.cruds")[0], interaction, "Patient")


def test_filters_empty_when_an_unrestricted_scope_grants() -> None:
    scopes, _ = parse_scopes(f"user/Observation.rs?category={VITAL_SIGNS} user/*.rs")
    assert scope_filters(scopes, "r", "Observation") == []


def test_filters_are_alternatives_from_each_restricted_scope() -> None:
    scopes, _ = parse_scopes(
        f"user/Observation.rs?category={VITAL_SIGNS} user/Observation.s?code=http://loinc.org|1234-5 "
        "user/Condition.rs"
    )
    assert scope_filters(scopes, "s", "Observation") == [
        (("category", VITAL_SIGNS),),
        (("code", "http://loinc.org|1234-5"),),
    ]
    assert scope_filters(scopes, "r", "Observation") == [(("category", VITAL_SIGNS),)]
    assert scope_filters(scopes, "r", "Condition") == []


def test_filters_fail_closed_when_nothing_grants() -> None:
    scopes, _ = parse_scopes("user/Observation.rs")
    with pytest.raises(PermissionError):
        scope_filters(scopes, "r", "Condition")


# --- properties -----------------------------------------------------------------------------

RESOURCE_TYPES = ["*", "Patient", "Observation", "Condition"]
PARAMS = [(), (("category", "vital-signs"),), (("category", "laboratory"),), (("code", "x"), ("status", "final"))]

scope_strategy = st.builds(
    Scope,
    context=st.sampled_from(["user", "patient", "system"]),
    resource_type=st.sampled_from(RESOURCE_TYPES),
    interactions=st.frozensets(st.sampled_from(list(INTERACTIONS)), min_size=1),
    params=st.sampled_from(PARAMS),
)
interaction_strategy = st.sampled_from(list(INTERACTIONS))
type_strategy = st.sampled_from(RESOURCE_TYPES[1:])


@given(st.lists(scope_strategy, max_size=5), scope_strategy, interaction_strategy, type_strategy)
def test_adding_a_scope_never_removes_a_permission(
    scopes: list[Scope], extra: Scope, interaction: str, resource_type: str
) -> None:
    before = scopes_permit(scopes, interaction, resource_type)
    after = scopes_permit([*scopes, extra], interaction, resource_type)
    assert after or not before


@given(st.lists(scope_strategy, max_size=5), scope_strategy, interaction_strategy, type_strategy)
def test_adding_a_scope_never_narrows_the_filters(
    scopes: list[Scope], extra: Scope, interaction: str, resource_type: str
) -> None:
    if not scopes_permit(scopes, interaction, resource_type):
        return
    before = scope_filters(scopes, interaction, resource_type)
    after = scope_filters([*scopes, extra], interaction, resource_type)
    if before == []:
        assert after == []  # unrestricted stays unrestricted
    else:
        assert after == [] or set(before) <= set(after)


@given(st.permutations(["user/*.rs", "patient/Observation.c", "system/Condition.d", "user/Patient.u"]),
       interaction_strategy, type_strategy)
def test_order_of_scopes_never_matters(order: list[str], interaction: str, resource_type: str) -> None:
    reference, _ = parse_scopes("user/*.rs patient/Observation.c system/Condition.d user/Patient.u")
    shuffled, _ = parse_scopes(" ".join(order))
    assert scopes_permit(shuffled, interaction, resource_type) == scopes_permit(reference, interaction, resource_type)


@given(scope_strategy)
def test_str_round_trips(scope: Scope) -> None:
    assert parse_scope(str(scope)) == scope


def test_granting_scopes_keep_context_for_the_gate() -> None:
    scopes, _ = parse_scopes(f"patient/*.rs user/Observation.rs?category={VITAL_SIGNS} user/Patient.c")
    granting = granting_scopes(scopes, "r", "Observation")
    assert [s.context for s in granting] == ["patient", "user"]
    assert granting_scopes(scopes, "c", "Observation") == ()
