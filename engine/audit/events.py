"""Audit records and the IHE BALP AuditEvents built from them (pure: no I/O, no clock).

An `AuditRecord` is what the access gate knows about one interaction: who (user, RBAC job role,
organisation, purpose of use), what they did (BALP subtype and action), with which outcome, to
which patient and which data or query. It is stored as canonical JSON (`record_bytes`), which is
what the hash chain covers, and rendered on demand as an R4 AuditEvent (`to_audit_event`).

Shapes follow IHE Basic Audit Log Patterns (https://profiles.ihe.net/ITI/BALP) on FHIR R4
AuditEvent (https://hl7.org/fhir/R4/auditevent.html); UK-REFERENCE §4–5 for roles and purposes.

    >>> from datetime import datetime
    >>> r = AuditRecord(recorded=datetime(2026, 1, 5, 9, 30), user_id="u1", user_name="Dr A", role="R8000",
    ...                 org="RR8", action=READ, subtype="read", patient_ids=("p1",), entities=("Patient/p1",))
    >>> to_audit_event(r, 7)["entity"][0]["what"]
    {'reference': 'Patient/p1'}
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from consent.vocabulary import ACT_REASON_SYSTEM, BREAK_GLASS, ODS_SYSTEM, RBAC_ROLE_SYSTEM, TREATMENT

if TYPE_CHECKING:
    from engine.auth.principal import Principal

# AuditEvent.action (http://hl7.org/fhir/R4/valueset-audit-event-action.html).
CREATE, READ, UPDATE, DELETE, EXECUTE = "C", "R", "U", "D", "E"
ACTIONS = frozenset({CREATE, READ, UPDATE, DELETE, EXECUTE})

# AuditEvent.outcome (http://hl7.org/fhir/R4/valueset-audit-event-outcome.html).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"
OUTCOMES = frozenset({SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE})

# BALP subtypes: FHIR restful interactions (http://hl7.org/fhir/restful-interaction), and the
# action each implies (BALP: R read/vread, E search/operation, C create, U update, D delete).
RESTFUL_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
SUBTYPE_ACTIONS = {
    "read": READ, "vread": READ, "history": READ, "search": EXECUTE, "operation": EXECUTE,
    "create": CREATE, "update": UPDATE, "delete": DELETE,
}
SUBTYPES = frozenset(SUBTYPE_ACTIONS)

# Record kinds: a RESTful interaction, or the security alert raised when someone breaks the glass.
REST = "rest"
SECURITY_ALERT = "security-alert"

AUDIT_EVENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
USER_ID_SYSTEM = "https://fhir.sharedcare.dev/Id/user"
BREAK_GLASS_DETAIL = "break-glass-reason"

# NHS RBAC job role names (UK-REFERENCE §4), for displays a patient can read.
RBAC_ROLE_NAMES = {
    "R8000": "Clinical Practitioner", "R8001": "Nurse", "R8002": "Nurse Manager", "R8003": "Health Professional",
    "R8004": "Healthcare Student", "R8005": "Biomedical Scientist", "R8006": "Medical Secretary",
    "R8007": "Clinical Coder", "R8008": "Admin/Clinical Support", "R8009": "Receptionist", "R8010": "Clerical",
    "R8011": "Clerical Manager", "R8012": "Information Officer", "R8013": "Health Records Manager",
    "R8014": "Social Worker", "R8015": "Systems Support", "R8016": "Midwife", "R8017": "Midwife Manager",
    "R8024": "Bank",
}
PATIENT_ROLE = "patient"  # engine.auth.principal.PATIENT_ROLE: the patient using their own record
PURPOSE_DISPLAYS = {TREATMENT: "treatment", BREAK_GLASS: "break the glass"}
OUTCOME_DISPLAYS = {SUCCESS: "success", MINOR_FAILURE: "minor failure", SERIOUS_FAILURE: "serious failure",
                    MAJOR_FAILURE: "major failure"}


@dataclass(frozen=True)
class AuditRecord:
    """One audited interaction, as the access gate saw it.

    `recorded` is naive UTC (or aware; it is normalised to naive UTC). `entities` are references to
    the data touched (`Observation/1` or `Observation/1/_history/2`); `query` the raw request query
    string of a search; `operation` the name of an operation (`$everything`). A denied attempt
    carries `outcome` "4" and `denied_reason` (the rule that refused, e.g. `no-relationship`); any
    other failure a non-zero outcome and `failure` (what went wrong, without clinical content).
    """

    recorded: datetime
    user_id: str
    user_name: str
    role: str
    org: str | None
    action: str
    subtype: str
    outcome: str = SUCCESS
    purpose: str = TREATMENT
    patient_ids: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    query: str | None = None
    operation: str | None = None
    break_glass_reason: str | None = None
    denied_reason: str | None = None
    failure: str | None = None
    kind: str = REST
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recorded.tzinfo is not None:
            object.__setattr__(self, "recorded", self.recorded.astimezone(UTC).replace(tzinfo=None))
        object.__setattr__(self, "patient_ids", tuple(dict.fromkeys(self.patient_ids)))
        object.__setattr__(self, "entities", tuple(dict.fromkeys(self.entities)))
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {sorted(ACTIONS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {sorted(OUTCOMES, key=int)}")
        if self.kind == REST and self.subtype not in SUBTYPES:
            raise ValueError(f"subtype {self.subtype!r} is not one of {sorted(SUBTYPES)}")

    @property
    def break_glass(self) -> bool:
        return self.purpose == BREAK_GLASS

    @property
    def denied(self) -> bool:
        return self.outcome != SUCCESS and self.denied_reason is not None


def record_for(principal: Principal, *, recorded: datetime, subtype: str, action: str | None = None,
               outcome: str = SUCCESS, patient_ids: tuple[str, ...] = (), entities: tuple[str, ...] = (),
               query: str | None = None, operation: str | None = None, break_glass_reason: str | None = None,
               denied_reason: str | None = None, failure: str | None = None,
               request_id: str | None = None) -> AuditRecord:
    """The record of one interaction by `principal`; the action defaults to the subtype's (BALP).

    The break-glass reason defaults to the request's (`principal.break_glass_reason`, from the
    X-Break-Glass-Reason header). Purpose of use is BTG when there is one, else the token's
    `purpose_of_use`, else TREAT (direct care).
    """
    break_glass_reason = break_glass_reason or getattr(principal, "break_glass_reason", None)
    purpose = BREAK_GLASS if break_glass_reason else (principal.purpose_of_use or TREATMENT)
    return AuditRecord(
        recorded=recorded, user_id=principal.user_id, user_name=principal.name, role=principal.role,
        org=principal.org, action=action or SUBTYPE_ACTIONS[subtype], subtype=subtype, outcome=outcome,
        purpose=purpose, patient_ids=patient_ids, entities=entities, query=query, operation=operation,
        break_glass_reason=break_glass_reason, denied_reason=denied_reason, failure=failure, request_id=request_id,
    )


def break_glass_alert(access: AuditRecord) -> AuditRecord:
    """The security alert (DCM 110113, subtype 110127 "Emergency Override Started") that a
    break-glass access raises for information-governance review; write it with the access."""
    if not access.break_glass_reason:
        raise ValueError("a break-glass alert needs the user's free-text reason")
    return replace(access, kind=SECURITY_ALERT, subtype="emergency-override-started", action=EXECUTE,
                   outcome=SUCCESS, purpose=BREAK_GLASS, query=None, operation=None, denied_reason=None,
                   failure=None)


# -- storage form ---------------------------------------------------------------------------------


def format_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds (naive datetimes are UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def record_to_json(record: AuditRecord) -> dict[str, Any]:
    data = dict(record.__dict__)  # the fields (a shallow copy: cheaper than asdict, the same JSON)
    data["recorded"] = record.recorded.isoformat(timespec="microseconds")
    data["patient_ids"] = list(record.patient_ids)
    data["entities"] = list(record.entities)
    return {k: v for k, v in data.items() if v not in (None, [], {})}


def record_bytes(record: AuditRecord) -> bytes:
    """Canonical JSON of a record (sorted keys, no whitespace): what is stored and hashed."""
    return orjson.dumps(record_to_json(record), option=orjson.OPT_SORT_KEYS)


_FIELD_NAMES = {f.name for f in fields(AuditRecord)}


def record_from_json(data: dict[str, Any]) -> AuditRecord:
    values = {k: v for k, v in data.items() if k in _FIELD_NAMES}
    values["recorded"] = datetime.fromisoformat(values["recorded"])
    values["patient_ids"] = tuple(values.get("patient_ids", ()))
    values["entities"] = tuple(values.get("entities", ()))
    return AuditRecord(**values)


# -- the AuditEvent ------------------------------------------------------------------------------


def to_audit_event(record: AuditRecord, seq: int, *, server: str = "sharedcare") -> dict[str, Any]:
    """The R4 AuditEvent (IHE BALP shape) for `record`, stored as audit-log entry `seq`."""
    event: dict[str, Any] = {"resourceType": "AuditEvent", "id": str(seq)}
    event.update(_type_and_subtype(record))
    event["action"] = record.action
    event["recorded"] = format_instant(record.recorded)
    event["outcome"] = record.outcome
    if record.denied_reason or record.failure:
        event["outcomeDesc"] = record.denied_reason or record.failure
    event["purposeOfEvent"] = [_purpose(record)]
    event["agent"] = _agents(record, server)
    event["source"] = {
        "observer": {"display": server},
        "type": [{"system": SOURCE_TYPE_SYSTEM, "code": "4", "display": "Application Server"}],
    }
    entities = _entities(record)
    if entities:
        event["entity"] = entities
    return event


def _type_and_subtype(record: AuditRecord) -> dict[str, Any]:
    if record.kind == SECURITY_ALERT:
        return {
            "type": {"system": DCM_SYSTEM, "code": "110113", "display": "Security Alert"},
            "subtype": [{"system": DCM_SYSTEM, "code": "110127", "display": "Emergency Override Started"}],
        }
    subtype = {"system": RESTFUL_INTERACTION_SYSTEM, "code": record.subtype, "display": record.subtype}
    return {
        "type": {"system": AUDIT_EVENT_TYPE_SYSTEM, "code": "rest", "display": "Restful Operation"},
        "subtype": [subtype],
    }


def _purpose(record: AuditRecord) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": ACT_REASON_SYSTEM, "code": record.purpose,
                                           **_display(PURPOSE_DISPLAYS.get(record.purpose))}]}
    if record.break_glass_reason:
        concept["text"] = record.break_glass_reason
    return concept


def _display(text: str | None) -> dict[str, str]:
    return {"display": text} if text else {}


def _agents(record: AuditRecord, server: str) -> list[dict[str, Any]]:
    user: dict[str, Any] = {
        "type": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "IRCP", "display": "information recipient"}]},
        "who": {"identifier": {"system": USER_ID_SYSTEM, "value": record.user_id}, "display": record.user_name},
        "requestor": True,
        "role": [{"coding": [_role_coding(record.role)]}],
        "purposeOfUse": [_purpose(record)],
    }
    agents = [user]
    if record.org:
        agents.append({
            "type": {"coding": [{"system": ROLE_CLASS_SYSTEM, "code": "PROV", "display": "healthcare provider"}]},
            "who": {"identifier": {"system": ODS_SYSTEM, "value": record.org}},
            "requestor": False,
        })
    agents.append({
        "type": {"coding": [{"system": DCM_SYSTEM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": server},
        "requestor": False,
    })
    return agents


def _role_coding(role: str) -> dict[str, str]:
    if role == PATIENT_ROLE:
        return {"system": ROLE_CLASS_SYSTEM, "code": "PAT", "display": "patient"}
    return {"system": RBAC_ROLE_SYSTEM, "code": role, **_display(RBAC_ROLE_NAMES.get(role))}


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities = [_patient_entity(patient_id, record) for patient_id in record.patient_ids]
    for reference in record.entities:
        if reference.startswith("Patient/") and reference.split("/")[1] in record.patient_ids:
            continue  # the patient entity already names it
        entities.append({
            "what": {"reference": reference},
            "type": {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE_SYSTEM, "code": "4", "display": "Domain Resource"},
        })
    if record.query is not None:
        entities.append({
            "type": {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE_SYSTEM, "code": "24", "display": "Query"},
            "query": base64.b64encode(record.query.encode()).decode(),
            **({"description": record.operation} if record.operation else {}),
        })
    elif record.operation:
        entities.append({
            "type": {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE_SYSTEM, "code": "24", "display": "Query"},
            "description": record.operation,
        })
    return entities


def _patient_entity(patient_id: str, record: AuditRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"reference": f"Patient/{patient_id}"},
        "type": {"system": ENTITY_TYPE_SYSTEM, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE_SYSTEM, "code": "1", "display": "Patient"},
    }
    if record.break_glass_reason:
        entity["detail"] = [{"type": BREAK_GLASS_DETAIL, "valueString": record.break_glass_reason}]
    return entity
