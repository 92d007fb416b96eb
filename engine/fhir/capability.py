"""The CapabilityStatement: exactly what this server supports (https://hl7.org/fhir/R4/capabilitystatement.html).

Built from what the handlers themselves use, so it cannot claim what the server does not honour:
the search-parameter registry and result parameters of the store's search (engine/search), the
audit log's AuditEvent parameters (engine/audit/query.py), and `OPERATIONS`, which
tests/api/test_capability.py holds to the application's `$` routes, both ways.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from engine.audit import query as audit_query
from engine.search.params import RESULT_PARAMS as STORE_RESULT_PARAMS
from engine.search.registry import SUPPORTED_TYPES, get_param, params_for

SERVER_VERSION = "0.1.0"
OWN_CANONICAL = "https://fhir.sharedcare.dev/OperationDefinition/"
AUDIT_LOG_TYPE = "AuditEvent"
STORE_TYPES = SUPPORTED_TYPES - {AUDIT_LOG_TYPE}
"""The types kept in the resource store and searched by engine/search (AuditEvents live in the audit log)."""

_STORE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create",
                       "search-type"]
_COMMON_PARAMS = [
    ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
    ("_lastUpdated", "date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
]
# Accepted but not advertised: `_cursor` is the paging position in the Bundle's links, and `_pretty` is
# accepted for clients that send it, but the JSON is never pretty-printed.
RESULT_PARAMS = sorted(STORE_RESULT_PARAMS - {"_cursor", "_pretty"})
_STORE_SEARCH_NOTE = ("Unknown parameters are rejected with 400 unless the request says Prefer: "
                      "handling=lenient.")


class Operation(NamedTuple):
    """An operation served under /fhir: on instances of `resource_type`, or system-wide when it is None."""

    resource_type: str | None
    name: str
    definition: str
    documentation: str


OPERATIONS = (
    Operation(None, "export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
              "GET, answered at once as NDJSON (_type, _since); backend services with system/ scopes; "
              "patients who opted out of secondary use are left out."),
    Operation(None, "submit-document", OWN_CANONICAL + "submit-document",
              "POST a document Bundle made elsewhere; 201 with the DocumentReference that indexes it."),
    Operation("Patient", "everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything",
              "GET Patient/[id]/$everything: the patient's record as the requester may see it."),
    Operation("Patient", "access-explain", OWN_CANONICAL + "Patient-access-explain",
              "GET Patient/[id]/$access-explain?role=&user=&org=&break-glass=: which rule decides each resource "
              "of the record for that user (information-governance officers)."),
    Operation("Patient", "access-log", OWN_CANONICAL + "Patient-access-log",
              "GET Patient/[id]/$access-log: who has looked at the record, newest first (the patient themself "
              "or an information-governance officer; _count)."),
    Operation("Encounter", "transfer-of-care", OWN_CANONICAL + "Encounter-transfer-of-care",
              "POST Encounter/[id]/$transfer-of-care?type=: builds and stores a transfer-of-care document."),
    Operation("Composition", "document", "http://hl7.org/fhir/OperationDefinition/Composition-document",
              "GET Composition/[id]/$document: the stored document Bundle."),
    Operation("Composition", "render", OWN_CANONICAL + "Composition-render",
              "GET Composition/[id]/$render: the document as printable HTML."),
    Operation("DocumentReference", "render", OWN_CANONICAL + "DocumentReference-render",
              "GET DocumentReference/[id]/$render: the document as printable HTML."),
    Operation("Task", "receive", OWN_CANONICAL + "Task-receive",
              "POST Task/[id]/$receive: the receiving organisation has received the transfer of care."),
    Operation("Task", "accept", OWN_CANONICAL + "Task-accept",
              "POST Task/[id]/$accept: the receiving organisation accepts the transfer of care."),
    Operation("Task", "reject", OWN_CANONICAL + "Task-reject",
              "POST Task/[id]/$reject: the receiving organisation rejects it (reason required)."),
)


def _operations(resource_type: str | None) -> list[dict[str, str]]:
    return [{"name": op.name, "definition": op.definition, "documentation": op.documentation}
            for op in OPERATIONS if op.resource_type == resource_type]


def _result_note(params: list[str] | tuple[str, ...]) -> str:
    """The result parameters a type's search honours, in a form tests/api/test_capability.py reads back."""
    return f"Result parameters: {', '.join(params) if params else 'none'}."


def _search_param(res_type: str, name: str, kind: str, documentation: str) -> dict[str, str]:
    """A searchParam, with the R4 definition when the server's parameter is that one."""
    param = get_param(res_type, name)
    definition = {"definition": param.definition} if param and param.type == kind and param.definition else {}
    return {"name": name, "type": kind, **definition, "documentation": documentation}


def _store_entry(res_type: str) -> dict[str, Any]:
    params: list[dict[str, str]] = [{"name": name, "type": kind, "definition": url}
                                    for name, kind, url in _COMMON_PARAMS]
    references = []
    for code, param in sorted(params_for(res_type).items()):
        params.append(_search_param(res_type, code, param.type, param.expression))
        if param.type == "reference":
            references.append(f"{res_type}:{code}")
    operations = _operations(res_type)
    return {
        "type": res_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
        "documentation": f"{_result_note(RESULT_PARAMS)} {_STORE_SEARCH_NOTE}",
        "interaction": [{"code": code} for code in _STORE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local"],
        "searchInclude": ["*", *references],
        # Only store types: an include is resolved in the store, where no AuditEvent is.
        "searchRevInclude": sorted({f"{t}:{c}" for t in STORE_TYPES for c, p in params_for(t).items()
                                    if p.type == "reference" and res_type in (p.targets or [])}),
        "searchParam": params,
        **({"operation": operations} if operations else {}),
    }


def _audit_event_entry() -> dict[str, Any]:
    """AuditEvent: read and search of the append-only audit log (engine/audit), for IG officers."""
    return {
        "type": AUDIT_LOG_TYPE,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{AUDIT_LOG_TYPE}",
        "documentation": "The append-only audit log, for information-governance officers (RBAC role R8012): "
        "read and search only, newest first, paged by the Bundle's next link. "
        f"{_result_note(audit_query.RESULT_PARAMS)} Unknown parameters are rejected with 400, whatever "
        "the Prefer header says.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": False,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": [_search_param(AUDIT_LOG_TYPE, code, param.type, param.documentation)
                        for code, param in audit_query.AUDIT_EVENT_PARAMS.items()],
    }


def _bundle_entry() -> dict[str, Any]:
    return {
        "type": "Bundle",
        "profile": "http://hl7.org/fhir/StructureDefinition/Bundle",
        "documentation": "Stored document Bundles only (transfer-of-care and received documents), read by the "
        "id a DocumentReference's attachment url names.",
        "interaction": [{"code": "read"}],
        "versioning": "no-version",
    }


def _subscription_entry() -> dict[str, Any]:
    return {
        "type": "Subscription",
        "profile": "http://hl7.org/fhir/StructureDefinition/Subscription",
        "documentation": "R4 rest-hook Subscriptions on Task searches that name your organisation as owner or "
        "requester; search lists your organisation's Subscriptions and takes no search parameters. "
        f"{_result_note(('_format',))}",
        "interaction": [{"code": "read"}, {"code": "create"}, {"code": "delete"}, {"code": "search-type"}],
        "versioning": "no-version",
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }


def _resource_entries() -> list[dict[str, Any]]:
    entries = [_store_entry(t) for t in STORE_TYPES]
    entries += [_audit_event_entry(), _bundle_entry(), _subscription_entry()]
    return sorted(entries, key=lambda entry: entry["type"])


def capability_statement(base_url: str, security: dict[str, Any], published: str) -> dict[str, Any]:
    """The server's CapabilityStatement; `security` is the SMART `rest.security` element."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "sharedcare",
        "kind": "instance",
        "software": {"name": "sharedcare", "version": SERVER_VERSION},
        "implementation": {"description": "sharedcare shared care record FHIR facade", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Each resource's documentation names the result parameters its search honours "
            "(\"Result parameters: …\"); searchParam lists its search parameters.",
            "security": security,
            "resource": _resource_entries(),
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "operation": _operations(None),
        }],
    }
