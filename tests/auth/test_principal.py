"""Claims → Principal, for our development claims and NHS CIS2 claims."""

from __future__ import annotations

from typing import Any

import pytest

from engine.auth.principal import ClaimsError, Principal, claims_to_principal
from engine.auth.scopes import parse_scope

EXP = 1_700_003_600


def dev_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "sharedcare-dev",
        "aud": "sharedcare",
        "sub": "user-1",
        "name": "Dr Ada Smith",
        "role": "R8000",
        "org": "RR8",
        "scope": "openid user/*.cruds",
        "exp": EXP,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def cis2_claims(**overrides: Any) -> dict[str, Any]:
    """The shape of an NHS CIS2 ID/access token with the selectedrole and nationalrbacaccess scopes."""
    claims: dict[str, Any] = {
        "iss": "https://am.nhsint.auth-ptl.cis2.spineservices.nhs.uk:443/openam/oauth2/realms/root/realms/NHSIdentity/realms/Healthcare",
        "aud": "sharedcare",
        "nhsid_useruid": "555021935107",
        "name": "Nurse Bea Jones",
        "given_name": "Bea",
        "family_name": "Jones",
        "selected_roleid": "555021936108",
        "nhsid_nrbac_roles": [
            {
                "person_roleid": "555021935108",
                "org_code": "A81001",
                "role_code": "S8000:G8000:R8000",
                "role_name": '"Clinical":"Clinical Provision":"Clinical Practitioner Access Role"',
            },
            {
                "person_roleid": "555021936108",
                "org_code": "RR8",
                "role_code": "S8000:G8001:R8001",
                "role_name": '"Clinical":"Clinical Provision":"Nurse Access Role"',
            },
        ],
        "nhsid_user_orgs": [{"org_code": "RR8", "org_name": "LEEDS TEACHING HOSPITALS NHS TRUST"}],
        "scope": "openid user/*.rs",
        "exp": EXP,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_dev_claims() -> None:
    principal = claims_to_principal(dev_claims(patient="pat-9", purpose_of_use="TREAT", scope="patient/*.rs"))
    assert principal.user_id == "user-1"
    assert principal.name == "Dr Ada Smith"
    assert (principal.role, principal.org) == ("R8000", "RR8")
    assert principal.scopes == (parse_scope("patient/*.rs"),)
    assert principal.patient == "pat-9"
    assert principal.purpose_of_use == "TREAT"
    assert principal.expires_at == EXP
    assert principal.role_profile_id is None
    assert principal.claims["sub"] == "user-1"


def test_cis2_claims_pick_the_selected_role() -> None:
    principal = claims_to_principal(cis2_claims())
    assert principal.user_id == "555021935107"
    assert principal.name == "Nurse Bea Jones"
    assert principal.role == "R8001"
    assert principal.org == "RR8"
    assert principal.role_profile_id == "555021936108"
    assert principal.scopes == (parse_scope("user/*.rs"),)


def test_cis2_single_role_needs_no_selection() -> None:
    claims = cis2_claims(selected_roleid=None)
    claims["nhsid_nrbac_roles"] = claims["nhsid_nrbac_roles"][:1]
    principal = claims_to_principal(claims)
    assert (principal.role, principal.org) == ("R8000", "A81001")


def test_cis2_name_falls_back_to_given_and_family() -> None:
    assert claims_to_principal(cis2_claims(name=None)).name == "Bea Jones"


def test_our_claims_win_over_cis2() -> None:
    principal = claims_to_principal(cis2_claims(sub="local-7", role="R8003", org="RXX", role_profile_id="rp-1"))
    assert (principal.user_id, principal.role, principal.org) == ("local-7", "R8003", "RXX")
    assert principal.role_profile_id == "rp-1"


def test_our_role_rescues_an_unmatched_cis2_selection() -> None:
    principal = claims_to_principal(cis2_claims(selected_roleid="999", role="R8000", org="RR8"))
    assert principal.role == "R8000"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (dev_claims(sub=None), "missing-user"),
        (dev_claims(sub="  "), "missing-user"),
        (dev_claims(role=None), "missing-role"),
        (dev_claims(role="S8000:G8000"), "bad-role"),
        (dev_claims(role="Doctor"), "bad-role"),
        (dev_claims(exp=None), "missing-claim"),
        (dev_claims(exp="tomorrow"), "missing-claim"),
        (cis2_claims(nhsid_useruid=None), "missing-user"),
        (cis2_claims(selected_roleid="999"), "missing-role"),
        (cis2_claims(selected_roleid=None), "missing-role"),  # two roles, none chosen
    ],
)
def test_unusable_claims(claims: dict[str, Any], code: str) -> None:
    with pytest.raises(ClaimsError) as caught:
        claims_to_principal(claims)
    assert caught.value.code == code
    assert caught.value.description


def test_cis2_role_code_without_an_r_code_is_missing_role() -> None:
    claims = cis2_claims()
    claims["nhsid_nrbac_roles"][1]["role_code"] = "S8000:G8000"
    with pytest.raises(ClaimsError) as caught:
        claims_to_principal(claims)
    assert caught.value.code == "missing-role"


def test_patient_scopes_without_patient_claim_grant_nothing() -> None:
    principal = claims_to_principal(dev_claims(scope="patient/*.rs user/Observation.r"))
    assert principal.scopes == (parse_scope("user/Observation.r"),)
    assert [s.text for s in principal.ignored_scopes] == ["patient/*.rs"]
    assert not principal.permits("r", "Condition")
    assert principal.permits("r", "Observation")


def test_invalid_scopes_are_recorded_not_granted() -> None:
    principal = claims_to_principal(dev_claims(scope="user/*.sr user/Patient.r"))
    assert principal.scopes == (parse_scope("user/Patient.r"),)
    assert principal.ignored_scopes[0].text == "user/*.sr"


def test_scope_claim_may_be_a_list() -> None:
    principal = claims_to_principal(dev_claims(scope=["user/Patient.r", "openid"]))
    assert principal.scopes == (parse_scope("user/Patient.r"),)


def test_claims_are_a_read_only_copy() -> None:
    source = cis2_claims()
    principal = claims_to_principal(source)
    source["sub"] = "changed"
    with pytest.raises(TypeError):
        principal.claims["sub"] = "x"  # type: ignore[index]
    roles = principal.claims["nhsid_nrbac_roles"]
    assert isinstance(roles, tuple)
    with pytest.raises(TypeError):
        roles[0]["org_code"] = "X"
    assert "sub" not in principal.claims


def test_principal_is_frozen_and_hashable() -> None:
    principal = claims_to_principal(dev_claims())
    with pytest.raises(AttributeError):
        principal.role = "R8009"  # type: ignore[misc]
    assert hash(principal) == hash(claims_to_principal(dev_claims()))
    assert isinstance(principal, Principal)


def test_filters_through_the_principal() -> None:
    principal = claims_to_principal(dev_claims(scope="user/Observation.rs?category=vital-signs"))
    assert principal.filters("s", "Observation") == [(("category", "vital-signs"),)]
