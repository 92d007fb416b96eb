"""The CapabilityStatement: exactly what this server supports (https://hl7.org/fhir/R4/capabilitystatement.html).

Built from the same search-parameter registry the index and the query parser use, so it cannot
claim a parameter the server does not honour.
"""

from __future__ import annotations

from typing import Any

from engine.search.registry import SUPPORTED_TYPES, params_for

SERVER_VERSION = "0.1.0"
_TYPE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create",
                      "search-type"]
_COMMON_PARAMS = [
    ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
    ("_lastUpdated", "date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
]
RESULT_PARAMS = ["_count", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude", "_format"]


def _resource_entry(res_type: str) -> dict[str, Any]:
    params = [{"name": name, "type": kind, "definition": url} for name, kind, url in _COMMON_PARAMS]
    references = []
    for code, param in sorted(params_for(res_type).items()):
        params.append({
            "name": code,
            "type": param.type,
            "definition": f"http://hl7.org/fhir/SearchParameter/{res_type}-{code.lstrip('_')}",
            "documentation": param.expression,
        })
        if param.type == "reference":
            references.append(f"{res_type}:{code}")
    return {
        "type": res_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
        "interaction": [{"code": code} for code in _TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local"],
        "searchInclude": ["*", *references],
        "searchRevInclude": sorted({f"{t}:{c}" for t in SUPPORTED_TYPES for c, p in params_for(t).items()
                                    if p.type == "reference" and res_type in (p.targets or [])}),
        "searchParam": params,
        **({"operation": [{
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }]} if res_type == "Patient" else {}),
    }


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
            "documentation": "Result parameters honoured on every search: " + ", ".join(RESULT_PARAMS)
            + ". Unknown parameters are rejected with 400 unless the request says Prefer: handling=lenient.",
            "security": security,
            "resource": [_resource_entry(t) for t in sorted(SUPPORTED_TYPES)],
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        }],
    }
