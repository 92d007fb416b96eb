"""SMART App Launch scopes: parse them once, then answer "may this token do X to type Y?".

Grammar (SMART App Launch v2.2, "Scopes and Launch Context", https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

    ( 'patient' | 'user' | 'system' ) '/' ( resource-type | '*' ) '.' permissions [ '?' query ]

where v2 ``permissions`` is a non-empty, in-order subset of ``cruds`` (create, read, update,
delete, search) and the v1 forms ``read``, ``write`` and ``*`` are read as ``rs``, ``cud`` and
``cruds``. A ``?query`` (v2 only) restricts the grant to resources matching those FHIR search
parameters, e.g. ``user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs``.

Pure: no I/O, no clock. The access gate applies the query restrictions; this module only reports them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode

Context = Literal["user", "patient", "system"]
Interaction = Literal["c", "r", "u", "d", "s"]
QueryParams = tuple[tuple[str, str], ...]

CONTEXTS: frozenset[str] = frozenset({"user", "patient", "system"})
INTERACTIONS = "cruds"  # canonical order, which v2 requires permissions to follow
V1_PERMISSIONS: dict[str, str] = {"read": "rs", "write": "cud", "*": "cruds"}

# Scopes that carry no resource permission. They are expected in tokens and ignored silently
# (SMART App Launch v2, "Scopes for requesting context data" and "identity data").
NON_RESOURCE_SCOPES: frozenset[str] = frozenset(
    {
        "openid",
        "profile",
        "fhirUser",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

_SCOPE_RE = re.compile(
    r"^(?P<context>[a-z]+)/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<perms>[A-Za-z*]+)(?:\?(?P<query>.*))?$"
)
_V2_PERMS_RE = re.compile(r"^c?r?u?d?s?$")


class ScopeError(ValueError):
    """A scope string that does not follow the SMART grammar; `reason` says why."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Scope:
    """One parsed resource scope.

    `resource_type` is a FHIR resource type or ``"*"``; `interactions` holds letters of ``cruds``;
    `params` are the ``?query`` restrictions as sorted ``(name, value)`` pairs (empty: unrestricted).
    """

    context: Context
    resource_type: str
    interactions: frozenset[str]
    params: QueryParams = ()

    def grants(self, interaction: str, resource_type: str) -> bool:
        """True if this scope names the interaction on the type (ignoring its query restriction)."""
        return interaction in self.interactions and self.resource_type in ("*", resource_type)

    def __str__(self) -> str:
        perms = "".join(i for i in INTERACTIONS if i in self.interactions)
        query = urlencode(self.params, safe=":/|")
        return f"{self.context}/{self.resource_type}.{perms}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class RejectedScope:
    """A scope string that was ignored, and why (kept for diagnostics and audit)."""

    text: str
    reason: str


def parse_scope(text: str) -> Scope:
    """Parse one SMART resource scope (v2 or v1 form).

    >>> str(parse_scope("patient/*.read"))
    'patient/*.rs'

    Raises `ScopeError` (a ValueError) with a reason for anything outside the grammar.
    """
    match = _SCOPE_RE.match(text)
    if match is None:
        raise ScopeError(text, "not a SMART resource scope (context/Type.permissions)")
    context = match["context"]
    if context not in CONTEXTS:
        raise ScopeError(text, f"unknown context {context!r}; expected patient, user or system")
    perms = match["perms"]
    query = match["query"]
    if perms in V1_PERMISSIONS:
        if query is not None:
            raise ScopeError(text, "query restrictions need v2 permissions (e.g. .rs), not v1 .read/.write")
        letters = V1_PERMISSIONS[perms]
    elif perms and _V2_PERMS_RE.match(perms):
        letters = perms
    else:
        raise ScopeError(text, f"permissions {perms!r} are not an in-order subset of 'cruds' or read/write/*")
    return Scope(
        context=context,  # type: ignore[arg-type]  # checked against CONTEXTS above
        resource_type=match["type"],
        interactions=frozenset(letters),
        params=_parse_query(text, query),
    )


def _parse_query(text: str, query: str | None) -> QueryParams:
    if query is None:
        return ()
    # Blank names or values are refused rather than dropped: a restriction that parsed to nothing
    # would otherwise widen the grant to "unrestricted".
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise ScopeError(text, f"query restriction is not name=value[&name=value]: {exc}") from exc
    if not pairs or any(not name or not value for name, value in pairs):
        raise ScopeError(text, "query restriction needs non-empty name=value pairs")
    return tuple(sorted(pairs))


def parse_scopes(value: str | Iterable[str] | None) -> tuple[tuple[Scope, ...], tuple[RejectedScope, ...]]:
    """Parse a space-separated ``scope`` claim (or a list of scope strings, as some issuers send).

    Returns ``(scopes, rejected)``. Non-resource scopes (openid, fhirUser, launch…, offline_access)
    are neither: they are dropped silently. Duplicates are kept once, in first-seen order.
    """
    items = value.split() if isinstance(value, str) else list(value or ())
    scopes: list[Scope] = []
    rejected: list[RejectedScope] = []
    for item in items:
        if not isinstance(item, str):
            rejected.append(RejectedScope(repr(item), "scope entries must be strings"))
            continue
        if item in NON_RESOURCE_SCOPES:
            continue
        try:
            scope = parse_scope(item)
        except ScopeError as exc:
            rejected.append(RejectedScope(item, exc.reason))
            continue
        if scope not in scopes:
            scopes.append(scope)
    return tuple(scopes), tuple(rejected)


def _check_interaction(interaction: str) -> None:
    if len(interaction) != 1 or interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of c, r, u, d, s; got {interaction!r}")


def scopes_permit(scopes: Iterable[Scope], interaction: str, resource_type: str) -> bool:
    """True if any scope grants `interaction` ('c','r','u','d','s') on `resource_type`.

    A grant may still carry query restrictions: ask `scope_filters` for them before serving data.
    The scope's context (patient/user/system) is not judged here; `Principal` drops patient/
    scopes that have no patient claim, and the gate confines patient/ grants to that patient.
    """
    _check_interaction(interaction)
    return any(scope.grants(interaction, resource_type) for scope in scopes)


def granting_scopes(scopes: Iterable[Scope], interaction: str, resource_type: str) -> tuple[Scope, ...]:
    """The scopes that grant `interaction` on `resource_type`, for a gate that must combine them exactly.

    A resource is allowed when ANY granting scope allows it, and a scope allows it when it matches the
    scope's ``params`` AND, for a ``patient/`` scope, lies in the launch patient's compartment. So a
    ``patient/*.rs`` grant next to ``user/Observation.rs?category=…`` is NOT "unrestricted": use this
    when contexts are mixed; `scope_filters` alone ignores context.
    """
    _check_interaction(interaction)
    return tuple(scope for scope in scopes if scope.grants(interaction, resource_type))


def scope_filters(scopes: Iterable[Scope], interaction: str, resource_type: str) -> list[QueryParams]:
    """The query restrictions under which `interaction` on `resource_type` is granted.

    An empty list means unrestricted (some granting scope has no ``?query``). Otherwise a resource
    is allowed when it matches ANY of the returned parameter sets (scopes are alternatives;
    parameters within one set all apply, as in a FHIR search).

    Context is not considered: when patient/ and user/ or system/ scopes both grant, combine
    `granting_scopes` instead.

    Fails closed: raises `PermissionError` when no scope grants the interaction at all, so that a
    caller who forgot `scopes_permit` cannot mistake a denial for "no restriction".
    """
    _check_interaction(interaction)
    granting = [scope for scope in scopes if scope.grants(interaction, resource_type)]
    if not granting:
        raise PermissionError(f"no scope grants {interaction!r} on {resource_type}")
    if any(not scope.params for scope in granting):
        return []
    filters: list[QueryParams] = []
    for scope in granting:
        if scope.params not in filters:
            filters.append(scope.params)
    return filters
