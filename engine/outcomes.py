"""Every error the FHIR facade returns, as an OperationOutcome with its HTTP status.

One place for the outcomes and their statuses (https://hl7.org/fhir/R4/operationoutcome.html,
https://hl7.org/fhir/R4/http.html): the router raises `FhirError`, the web layer renders it.
Diagnostics never carry a patient's identifiers or clinical content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class OutcomeIssue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()
    details_code: str | None = None

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.details_code:
            issue["details"] = {
                "coding": [{"system": "https://sharedcare.dev/CodeSystem/error", "code": self.details_code}],
                "text": self.diagnostics,
            }
        issue["diagnostics"] = self.diagnostics
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


@dataclass
class FhirError(Exception):
    """An error that leaves the server as an OperationOutcome with `status`."""

    status: int
    issues: list[OutcomeIssue]
    headers: dict[str, str] = field(default_factory=dict)
    # The patient a refused request was about: recorded in the audit, never sent to the client.
    patient_id: str | None = None

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[OutcomeIssue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_bytes(issues: list[OutcomeIssue]) -> bytes:
    return orjson.dumps(operation_outcome(issues))


def error(status: int, code: str, diagnostics: str, *, expression: tuple[str, ...] = (),
          details_code: str | None = None, headers: dict[str, str] | None = None) -> FhirError:
    issue = OutcomeIssue(code=code, diagnostics=diagnostics, expression=expression, details_code=details_code)
    return FhirError(status, [issue], headers or {})


def bad_request(diagnostics: str, expression: tuple[str, ...] = (), details_code: str = "bad-request") -> FhirError:
    return error(400, "invalid", diagnostics, expression=expression, details_code=details_code)


def not_found(resource_type: str, resource_id: str | None = None) -> FhirError:
    what = f"{resource_type}/{resource_id}" if resource_id else resource_type
    return error(404, "not-found", f"Resource {what} is not known", details_code="not-found")


def unknown_type(resource_type: str) -> FhirError:
    return error(404, "not-supported", f"Resource type '{resource_type}' is not supported by this server",
                 details_code="unknown-type")


def gone(resource_type: str, resource_id: str, version: int) -> FhirError:
    return error(410, "deleted", f"Resource {resource_type}/{resource_id} was deleted (version {version})",
                 details_code="gone", headers={"ETag": f'W/"{version}"'})


def version_conflict(diagnostics: str) -> FhirError:
    return error(409, "conflict", diagnostics, details_code="version-conflict")


def precondition_failed(diagnostics: str) -> FhirError:
    return error(412, "conflict", diagnostics, details_code="precondition-failed")


def not_allowed(diagnostics: str) -> FhirError:
    return error(405, "not-supported", diagnostics, details_code="method-not-allowed")


def unsupported_media_type(content_type: str) -> FhirError:
    return error(415, "not-supported",
                 f"Content type '{content_type}' is not supported: send application/fhir+json",
                 details_code="unsupported-media-type")


def not_acceptable(accept: str) -> FhirError:
    return error(406, "not-supported",
                 f"Cannot produce '{accept}': this server speaks application/fhir+json",
                 details_code="not-acceptable")


def too_large(limit: int) -> FhirError:
    return error(413, "too-costly", f"Request body exceeds the limit of {limit} bytes", details_code="too-large")


def unauthorized(code: str, diagnostics: str, www_authenticate: str) -> FhirError:
    return error(401, "login", diagnostics, details_code=code, headers={"WWW-Authenticate": www_authenticate})


def forbidden(code: str, diagnostics: str) -> FhirError:
    return error(403, "forbidden", diagnostics, details_code=code)


def internal_error(request_id: str) -> FhirError:
    return error(500, "exception", f"Internal error; quote request id {request_id} to the administrator",
                 details_code="internal")


def informational(diagnostics: str) -> dict[str, Any]:
    return operation_outcome([OutcomeIssue(code="informational", diagnostics=diagnostics, severity="information")])
