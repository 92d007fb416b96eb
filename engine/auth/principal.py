"""Who is asking: the verified token's claims turned into one immutable `Principal`.

Two claim vocabularies are understood, ours winning where both are present:

* development tokens (``sharedcare token``): ``sub``, ``name``, ``role`` (RBAC job role code,
  e.g. ``R8000``), ``org`` (ODS code), ``scope``, ``patient``, ``purpose_of_use``, ``role_profile_id``;
* NHS CIS2 (Care Identity Service 2) tokens: ``nhsid_useruid``, ``name``, ``selected_roleid`` and the
  ``nhsid_nrbac_roles[]`` entry whose ``person_roleid`` matches it (``role_code`` such as
  ``S8000:G8000:R8000`` gives the job role ``R8000``, ``org_code`` the organisation).

Pure: no I/O and no clock; the verifier has already checked signature and lifetime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from engine.auth.scopes import QueryParams, RejectedScope, Scope, parse_scopes, scope_filters, scopes_permit

ROLE_CODE_RE = re.compile(r"^R\d{4}$")
PATIENT_ROLE = "patient"  # the role of a patient using their own record (SMART fhirUser Patient/<id>)


class ClaimsError(ValueError):
    """The token verified but its claims do not describe a usable principal."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True)
class Principal:
    """The authenticated user (or system) behind a request.

    `role` is a national RBAC job role code (UK-REFERENCE §4, e.g. ``R8000`` Clinical Practitioner);
    `org` the ODS code of the organisation they act for; `patient` the SMART launch patient,
    without which patient/ scopes are dropped (into `ignored_scopes`) and grant nothing.
    """

    user_id: str
    name: str
    role: str
    org: str | None
    scopes: tuple[Scope, ...]
    patient: str | None
    purpose_of_use: str | None
    expires_at: int
    claims: Mapping[str, Any] = field(compare=False, repr=False)
    role_profile_id: str | None = None
    ignored_scopes: tuple[RejectedScope, ...] = ()
    # SMART `fhirUser`: "Patient/<id>" when the user is that patient (a patient-facing app).
    fhir_user: str | None = None
    # The request's X-Break-Glass-Reason (purpose of use BTG), set per request by the HTTP layer.
    break_glass_reason: str | None = None

    @property
    def own_patient(self) -> str | None:
        """The patient this user is (fhirUser Patient/<id> matching the launch patient), else None."""
        if self.patient and self.fhir_user == f"Patient/{self.patient}":
            return self.patient
        return None

    @property
    def is_system(self) -> bool:
        """A backend service (only system/ scopes): no person and no patient in the loop."""
        return bool(self.scopes) and all(s.context == "system" for s in self.scopes)

    def permits(self, interaction: str, resource_type: str) -> bool:
        """`scopes_permit` over this principal's scopes."""
        return scopes_permit(self.scopes, interaction, resource_type)

    def filters(self, interaction: str, resource_type: str) -> list[QueryParams]:
        """`scope_filters` over this principal's scopes (raises PermissionError if not permitted)."""
        return scope_filters(self.scopes, interaction, resource_type)


def claims_to_principal(claims: Mapping[str, Any]) -> Principal:
    """Map verified JWT claims (ours or NHS CIS2) to a `Principal`.

    Raises `ClaimsError` when there is no user id, no usable RBAC job role, or no numeric ``exp``.
    """
    cis2_role = _selected_cis2_role(claims)
    user_id = _text(claims, "sub") or _text(claims, "nhsid_useruid")
    if not user_id:
        raise ClaimsError("missing-user", "token names no user (sub or nhsid_useruid)")
    role = _text(claims, "role") or _rbac_job_role(cis2_role)
    patient = _text(claims, "patient")
    fhir_user = _text(claims, "fhirUser")
    if not role and patient and fhir_user == f"Patient/{patient}":
        role = PATIENT_ROLE  # the patient themself: no RBAC job role
    if not role:
        raise ClaimsError("missing-role", _missing_role_reason(claims))
    if role != PATIENT_ROLE and not ROLE_CODE_RE.match(role):
        raise ClaimsError("bad-role", f"role {role!r} is not an RBAC job role code like R8000")
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
        raise ClaimsError("missing-claim", "token has no numeric exp")
    scopes, ignored = _effective_scopes(claims.get("scope"), patient)
    return Principal(
        user_id=user_id,
        name=_text(claims, "name") or _joined_name(claims) or user_id,
        role=role,
        org=_text(claims, "org") or _text(cis2_role or {}, "org_code"),
        scopes=scopes,
        patient=patient,
        purpose_of_use=_text(claims, "purpose_of_use"),
        expires_at=int(expires_at),
        claims=_freeze(claims),
        role_profile_id=_text(claims, "role_profile_id") or _text(claims, "selected_roleid"),
        ignored_scopes=ignored,
        fhir_user=fhir_user,
    )


def _effective_scopes(
    value: Any, patient: str | None
) -> tuple[tuple[Scope, ...], tuple[RejectedScope, ...]]:
    scopes, rejected = parse_scopes(value if isinstance(value, str | list | tuple) else None)
    if patient:
        return scopes, rejected
    # SMART: patient/ scopes are relative to the launch patient; with none they mean nothing.
    kept = tuple(s for s in scopes if s.context != "patient")
    dropped = tuple(RejectedScope(str(s), "patient/ scope without a patient claim") for s in scopes
                    if s.context == "patient")
    return kept, rejected + dropped


def _selected_cis2_role(claims: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The nhsid_nrbac_roles[] entry chosen by selected_roleid (or the only entry, if just one)."""
    roles = [r for r in claims.get("nhsid_nrbac_roles") or () if isinstance(r, Mapping)]
    selected = _text(claims, "selected_roleid")
    if selected:
        return next((r for r in roles if str(r.get("person_roleid", "")) == selected), None)
    return roles[0] if len(roles) == 1 else None


def _rbac_job_role(cis2_role: Mapping[str, Any] | None) -> str | None:
    """The R-code part of a CIS2 role_code such as ``S8000:G8000:R8000``."""
    code = _text(cis2_role or {}, "role_code") or ""
    return next((part for part in code.split(":") if ROLE_CODE_RE.match(part)), None)


def _missing_role_reason(claims: Mapping[str, Any]) -> str:
    selected = _text(claims, "selected_roleid")
    if selected and claims.get("nhsid_nrbac_roles"):
        return f"selected_roleid {selected!r} matches no nhsid_nrbac_roles entry with an R-code job role"
    if claims.get("nhsid_nrbac_roles"):
        return "several nhsid_nrbac_roles and no selected_roleid to choose between them"
    return "token carries no role (role, or CIS2 selected_roleid + nhsid_nrbac_roles)"


def _joined_name(claims: Mapping[str, Any]) -> str | None:
    parts = [_text(claims, "given_name"), _text(claims, "family_name")]
    return " ".join(p for p in parts if p) or None


def _text(claims: Mapping[str, Any], key: str) -> str | None:
    value = claims.get(key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        return str(value).strip() or None
    return None


def _freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def system_principal(user_id: str, name: str) -> Principal:
    """A principal for the engine's own writers (bulk loader, HL7 v2 ingest): `system/*.cruds`,
    RBAC role R8015 (Systems Support), no patient context, never expiring."""
    scopes, _ = parse_scopes("system/*.cruds")
    return Principal(user_id=user_id, name=name, role="R8015", org=None, scopes=tuple(scopes), patient=None,
                     purpose_of_use=None, expires_at=2**62, claims=MappingProxyType({}))
