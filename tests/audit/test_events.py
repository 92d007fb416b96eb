"""The IHE BALP AuditEvents built from audit records are valid FHIR R4 (checked with fhir.resources.R4B)."""

from __future__ import annotations

import ast
import base64
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from engine.audit.events import (
    CREATE,
    DCM_SYSTEM,
    EXECUTE,
    SECURITY_ALERT,
    AuditRecord,
    break_glass_alert,
    record_bytes,
    record_for,
    record_from_json,
    to_audit_event,
)
from engine.auth.principal import Principal
from tests.audit.conftest import a_record

REPO = Path(__file__).resolve().parents[2]


def _valid(event: dict) -> AuditEvent:
    return AuditEvent.model_validate(event)


def test_a_read_is_a_balp_rest_event_with_user_patient_and_data() -> None:
    record = a_record(entities=("Patient/p1", "Observation/o1/_history/2"))
    event = to_audit_event(record, 42)
    _valid(event)
    assert event["id"] == "42"
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0] == {"system": "http://hl7.org/fhir/restful-interaction", "code": "read",
                                   "display": "read"}
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["recorded"] == "2026-01-05T10:00:00.000Z"
    user = event["agent"][0]
    assert user["who"]["identifier"]["value"] == "u1" and user["who"]["display"] == "User u1"
    assert user["role"][0]["coding"][0]["code"] == "R8000"
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert event["agent"][1]["who"]["identifier"] == {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                      "value": "RR8"}
    assert event["source"]["observer"]["display"] == "sharedcare"
    patient, data = event["entity"]
    assert patient["what"]["reference"] == "Patient/p1"
    assert (patient["type"]["code"], patient["role"]["code"]) == ("1", "1")
    assert data["what"]["reference"] == "Observation/o1/_history/2" and data["type"]["code"] == "2"


def test_a_search_carries_its_query_base64_encoded() -> None:
    record = a_record(action=EXECUTE, subtype="search", entities=(), query="code=1234&_count=10")
    event = to_audit_event(record, 1)
    _valid(event)
    query = event["entity"][-1]
    assert query["role"]["code"] == "24"
    assert base64.b64decode(query["query"]).decode() == "code=1234&_count=10"


def test_a_denied_attempt_says_why() -> None:
    event = to_audit_event(a_record(outcome="4", denied_reason="no-relationship"), 3)
    _valid(event)
    assert event["outcome"] == "4" and event["outcomeDesc"] == "no-relationship"


def test_break_glass_access_and_its_security_alert() -> None:
    access = a_record(purpose="BTG", break_glass_reason="Unconscious in ED, no relationship on record")
    event = to_audit_event(access, 5)
    _valid(event)
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert event["agent"][0]["purposeOfUse"][0]["text"] == access.break_glass_reason
    assert event["entity"][0]["detail"][0]["valueString"] == access.break_glass_reason

    alert = break_glass_alert(access)
    assert alert.kind == SECURITY_ALERT and alert.break_glass
    alert_event = to_audit_event(alert, 6)
    _valid(alert_event)
    assert alert_event["type"] == {"system": DCM_SYSTEM, "code": "110113", "display": "Security Alert"}
    assert alert_event["subtype"][0]["code"] == "110127"
    with pytest.raises(ValueError):
        break_glass_alert(a_record())


@pytest.mark.parametrize("subtype", ["read", "vread", "search", "create", "update", "delete", "history",
                                     "operation"])
def test_every_subtype_gives_a_valid_event(subtype: str) -> None:
    principal = Principal(user_id="u9", name="Nurse N", role="R8001", org=None, scopes=(), patient=None,
                          purpose_of_use=None, expires_at=0, claims=MappingProxyType({}))
    record = record_for(principal, recorded=datetime(2026, 1, 5, 10, tzinfo=UTC), subtype=subtype,
                        patient_ids=("p1",), query="x=1" if subtype == "search" else None,
                        operation="$everything" if subtype == "operation" else None)
    _valid(to_audit_event(record, 1))
    assert record.org is None and record.recorded.tzinfo is None


def test_record_for_takes_purpose_from_break_glass_or_token() -> None:
    principal = Principal(user_id="u", name="U", role="R8000", org="RR8", scopes=(), patient=None,
                          purpose_of_use="TREAT", expires_at=0, claims=MappingProxyType({}))
    assert record_for(principal, recorded=datetime(2026, 1, 1), subtype="create").action == CREATE
    bg = record_for(principal, recorded=datetime(2026, 1, 1), subtype="read", break_glass_reason="emergency")
    assert bg.purpose == "BTG"


def test_storage_form_round_trips_and_is_canonical() -> None:
    record = a_record(query="a=1", break_glass_reason="r", purpose="BTG", extra={"client": "app"})
    assert record_from_json(__import__("orjson").loads(record_bytes(record))) == record
    assert record_bytes(record) == record_bytes(replace(record))


@pytest.mark.parametrize("bad", [{"action": "X"}, {"outcome": "1"}, {"subtype": "peek"}])
def test_bad_codes_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        a_record(**bad)


def test_pure_modules_stay_pure() -> None:
    forbidden = {"sqlalchemy", "fastapi", "starlette", "httpx", "socket", "psycopg", "aiosqlite", "asyncio", "os"}
    for name in ("events.py", "alerts.py"):
        tree = ast.parse((REPO / "engine" / "audit" / name).read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert not roots & forbidden, name
        calls = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 and node.attr in {"now", "utcnow", "today", "environ", "getenv"}]
        assert not calls, name


def test_an_aware_time_becomes_naive_utc() -> None:
    record = AuditRecord(recorded=datetime(2026, 6, 1, 12, tzinfo=UTC), user_id="u", user_name="U", role="R8000",
                         org="RR8", action="R", subtype="read")
    assert record.recorded == datetime(2026, 6, 1, 12)


def test_a_patient_agent_and_the_requests_break_glass_reason() -> None:
    patient = Principal(user_id="pt", name="Pat", role="patient", org=None, scopes=(), patient="p1",
                        purpose_of_use=None, expires_at=0, claims=MappingProxyType({}), fhir_user="Patient/p1")
    event = to_audit_event(record_for(patient, recorded=datetime(2026, 1, 1), subtype="read"), 1)
    _valid(event)
    assert event["agent"][0]["role"][0]["coding"][0]["code"] == "PAT"

    clinician = Principal(user_id="u", name="U", role="R8000", org="RR8", scopes=(), patient=None,
                          purpose_of_use="BTG", expires_at=0, claims=MappingProxyType({}),
                          break_glass_reason="Unconscious, no history available")
    record = record_for(clinician, recorded=datetime(2026, 1, 1), subtype="read", patient_ids=("p1",))
    assert record.purpose == "BTG" and record.break_glass_reason == "Unconscious, no history available"
    assert break_glass_alert(record).break_glass_reason == record.break_glass_reason
