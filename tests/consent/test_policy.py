"""The default policy loads and says what UK-REFERENCE §4-5 and issue 4 ask; break-glass reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consent.policy import (
    DEFAULT_POLICY_PATH,
    PolicyError,
    break_glass_active,
    check_break_glass_reason,
    load_policy,
    policy_from_dict,
)
from consent.vocabulary import ACT_CODE_SYSTEM, CONFIDENTIALITY_SYSTEM
from tests.consent.builders import POLICY

CLINICAL = ["R8000", "R8001", "R8002", "R8003", "R8014", "R8016", "R8017"]
ADMINISTRATIVE = ["R8006", "R8008", "R8009", "R8010", "R8011"]


def _raw() -> dict:
    return json.loads(DEFAULT_POLICY_PATH.read_text())


@pytest.mark.parametrize("role", CLINICAL)
def test_clinical_roles_read_and_write_clinical_data(role: str) -> None:
    grant = POLICY.roles[role]
    for interaction in ("read", "search", "create", "update"):
        assert grant.allows(interaction, "Condition", POLICY.governance_types)
    assert not grant.allows("read", "AuditEvent", POLICY.governance_types)
    assert grant.needs_relationship


@pytest.mark.parametrize("role", ADMINISTRATIVE)
def test_administrative_roles_see_demographics_appointments_encounters_only(role: str) -> None:
    grant = POLICY.roles[role]
    for res_type in ("Patient", "Appointment", "Encounter"):
        assert grant.allows("read", res_type, POLICY.governance_types)
    for res_type in ("Condition", "Observation", "DocumentReference", "AuditEvent"):
        assert not grant.allows("read", res_type, POLICY.governance_types)


def test_information_officer_sees_audit_and_consent_never_clinical_content() -> None:
    grant = POLICY.roles["R8012"]
    for res_type in ("AuditEvent", "Consent", "Patient"):
        assert grant.allows("search", res_type, POLICY.governance_types)
    for res_type in ("Condition", "Observation", "Encounter"):
        assert not grant.allows("read", res_type, POLICY.governance_types)
    assert not grant.needs_relationship


def test_defaults_of_the_packaged_policy() -> None:
    assert {"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService", "Endpoint"} \
        <= POLICY.directory_types
    assert POLICY.relationship_windows["encounter"] == timedelta(days=730)
    assert POLICY.relationship_windows["registered-gp"] == timedelta(0)
    assert POLICY.break_glass.time_box == timedelta(hours=4)
    assert {(ACT_CODE_SYSTEM, c) for c in ("PSY", "ETH", "HIV", "SDV", "SEX", "STD")} <= POLICY.restricting_labels
    assert {(CONFIDENTIALITY_SYSTEM, "R"), (CONFIDENTIALITY_SYSTEM, "V")} <= POLICY.restricting_labels
    assert POLICY.withheld_read_status == 404
    assert POLICY.objection_break_glass_overrides


def test_load_policy_reads_another_file(tmp_path: Path) -> None:
    raw = _raw()
    raw["withheld_read_status"] = 403
    raw["relationship_windows"]["encounter"]["days_after_end"] = 30
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw))
    policy = load_policy(path)
    assert policy.withheld_read_status == 403
    assert policy.relationship_windows["encounter"] == timedelta(days=30)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.pop("roles"), "missing 'roles'"),
        (lambda raw: raw["roles"]["R8000"].update(profile="nobody"), "unknown profile"),
        (lambda raw: raw["role_profiles"]["clinical"]["grants"].update(patch=["*"]), "unknown interactions"),
        (lambda raw: raw["role_profiles"]["clinical"]["grants"].update(read=["@nothing"]), "unknown resource group"),
        (lambda raw: raw["relationship_windows"].pop("referral"), "no window"),
        (lambda raw: raw.update(withheld_read_status=500), "403 or 404"),
    ],
)
def test_policy_errors_name_the_problem(change, message: str) -> None:  # type: ignore[no-untyped-def]
    raw = _raw()
    change(raw)
    with pytest.raises(PolicyError, match=message):
        policy_from_dict(raw)


def test_unreadable_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "reason",
    [
        "Unconscious patient in ED, no history available",
        "Patient collapsed in clinic; need medication history",
        "Safeguarding concern raised by ward staff",
    ],
)
def test_real_break_glass_reasons_are_accepted(reason: str) -> None:
    assert check_break_glass_reason(reason, POLICY) is None


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (None, "required"),
        ("   ", "required"),
        ("test", "placeholder"),
        ("N/A", "placeholder"),
        ("  Emergency!  ", "placeholder"),
        ("break glass", "placeholder"),
        ("urgent pt", "at least 10"),
        ("Emergencyyyyyy", "different words"),
        ("aaaaaaaaaaaa a", "different words"),
        ("1234567890 12", "different words"),
    ],
)
def test_trivial_break_glass_reasons_are_refused(reason: str | None, message: str) -> None:
    error = check_break_glass_reason(reason, POLICY)
    assert error is not None and message in error


def test_break_glass_is_time_boxed() -> None:
    started = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
    assert break_glass_active(started, started + timedelta(hours=4), POLICY)
    assert not break_glass_active(started, started + timedelta(hours=4, seconds=1), POLICY)
    assert not break_glass_active(started, started - timedelta(seconds=1), POLICY)


def test_every_code_list_label_restricts() -> None:
    """A label that ingest writes but the gate ignores would be a silent leak."""
    for code_list in POLICY.code_lists:
        assert (code_list.label["system"], code_list.label["code"]) in POLICY.restricting_labels, code_list.name
    confidentiality = POLICY.confidentiality_label
    assert (confidentiality["system"], confidentiality["code"]) in POLICY.restricting_labels


def test_every_role_profile_grants_only_known_interactions() -> None:
    for code, grant in POLICY.roles.items():
        assert set(grant.grants) <= {"read", "search", "create", "update", "delete"}, code
        assert not grant.grants.get("delete"), f"{code} may delete: deletes are not granted by default"
