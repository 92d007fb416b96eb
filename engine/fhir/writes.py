"""Create, update, delete and their conditional forms, inside a caller's write transaction.

https://hl7.org/fhir/R4/http.html#create, #update, #cond-update, #delete. Single requests and
transaction/batch entries both use these, so a conditional create behaves the same whichever
way it arrives. Incoming resources are validated here (DESIGN.md principle 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.access import CREATE, DELETE, SEARCH, UPDATE, AccessGate
from engine.auth import Principal
from engine.db import repository
from engine.db.repository import Stored, VersionConflict
from engine.outcomes import FhirError, OutcomeIssue
from engine.search.params import RESULT_PARAMS, SearchError, parse_search
from engine.search.registry import SUPPORTED_TYPES
from engine.transfers.tasks import TRANSFER_IDENTIFIER
from engine.validation import validate_resource

_ID_PATTERN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the stored version (None for a delete of nothing) and the HTTP status."""

    stored: Stored | None
    status: int
    created: bool = False
    outcome: dict[str, Any] | None = None


def check_type(res_type: str) -> None:
    if res_type not in SUPPORTED_TYPES:
        raise outcomes.unknown_type(res_type)


def check_id(res_id: str) -> None:
    """FHIR ids: 1–64 of [A-Za-z0-9-.] (https://hl7.org/fhir/R4/datatypes.html#id)."""
    if not (1 <= len(res_id) <= 64) or not set(res_id) <= _ID_PATTERN_CHARS:
        raise outcomes.bad_request(f"'{res_id[:70]}' is not a valid FHIR id", ("id",), "bad-id")


def validated(body: Any, res_type: str, *, expression_prefix: str = "") -> dict[str, Any]:
    """The body as a resource of `res_type`, or a 400/422 OperationOutcome naming the fields."""
    result = validate_resource(body, res_type)
    if not result.ok:
        issues = [
            OutcomeIssue(
                code=issue.code,
                diagnostics=issue.diagnostics,
                severity=issue.severity,
                expression=tuple(expression_prefix + e for e in issue.expression),
                details_code="invalid-resource",
            )
            for issue in result.issues
            if issue.severity in {"error", "fatal"}
        ]
        raise FhirError(result.status, issues)
    return body


def parse_criteria(res_type: str, criteria: str, header: str) -> list[tuple[str, str]]:
    """The name/value pairs of conditional `criteria` (https://hl7.org/fhir/R4/http.html#ccreate), or 400
    naming `header`. They must select: a query that is not `name=value&…`, whose values are all empty, or
    that shapes results (`_count`, `_sort`, `_cursor`, …) would match any resource, or fail later."""
    query = criteria.lstrip("?")
    if any("=" not in part for part in query.split("&") if part):
        raise outcomes.bad_request(f"{header} is not a search query (name=value&…)", (header,), "bad-criteria")
    items = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True)
             if name not in ("_format", "_pretty")]
    shaping = [name for name, _ in items if name.partition(":")[0] in RESULT_PARAMS]
    if shaping:
        raise outcomes.bad_request(f"{header}: {shaping[0]} does not select resources", (header,), "bad-criteria")
    try:
        request = parse_search(res_type, items)
    except SearchError as exc:
        raise outcomes.bad_request(f"{header}: {exc.message}", (header,), "bad-criteria") from None
    if not request.criteria:
        raise outcomes.bad_request(f"{header} carries no search criteria", (header,), "bad-criteria")
    return sorted(items)


async def find_matches(
    conn: AsyncConnection, gate: AccessGate, who: Principal, res_type: str, items: list[tuple[str, str]]
) -> list[str]:
    """Ids of up to two current resources matching conditional criteria (under the writer's lock)."""
    gate.authorise(who, SEARCH, res_type)
    request = parse_search(res_type, [*items, ("_count", "2")])
    page = await gate.search(who, request, conn=conn)
    return [row.res_id for row in page.rows]


async def create(
    conn: AsyncConnection, gate: AccessGate, who: Principal, resource: dict[str, Any], *,
    now: datetime, if_none_exist: str | None = None, res_id: str | None = None,
) -> WriteResult:
    """Create, or with `If-None-Exist` return the single existing match (200) — race-safe."""
    res_type = resource["resourceType"]
    gate.authorise(who, CREATE, res_type)
    if if_none_exist:
        items = parse_criteria(res_type, if_none_exist, "If-None-Exist")
        await repository.lock_for(conn, "conditional", res_type, repr(items))
        matches = await find_matches(conn, gate, who, res_type, items)
        if len(matches) > 1:
            raise outcomes.precondition_failed(f"If-None-Exist matched more than one {res_type}")
        if matches:
            existing = await repository.read(conn, res_type, matches[0])
            assert existing is not None  # found by the search in this transaction, under its lock
            await gate.audit_change(conn, who, "read", existing)  # its content is answered: a read
            return WriteResult(existing, 200, outcome=outcomes.informational("Matched an existing resource"))
    resource = gate.prepare(who, {k: v for k, v in resource.items() if k != "id"})
    stored = await repository.create(conn, resource, now=now, res_id=res_id)
    await gate.check_change(conn, who, CREATE, stored)
    return WriteResult(stored, 201, created=True)


async def update(
    conn: AsyncConnection, gate: AccessGate, who: Principal, resource: dict[str, Any], res_id: str, *,
    now: datetime, if_match: int | None = None,
) -> WriteResult:
    """Update or update-as-create (https://hl7.org/fhir/R4/http.html#upsert)."""
    res_type = resource["resourceType"]
    check_id(res_id)
    if resource.get("id") != res_id:
        raise outcomes.bad_request(
            f"The resource id ({resource.get('id')!r}) must match the id in the URL ({res_id!r})",
            (f"{res_type}.id",), "id-mismatch",
        )
    gate.authorise(who, UPDATE, res_type)
    current = await repository.read(conn, res_type, res_id, for_update=True)
    _check_not_transfer(who, current)
    if current is None:
        gate.authorise(who, CREATE, res_type)
        await repository.lock_for(conn, "create", res_type, res_id)
    elif not current.deleted and current.pk not in await gate.permitted_pks(conn, who, UPDATE, [current]):
        raise outcomes.not_found(res_type, res_id)
    try:
        stored, created = await repository.update(conn, gate.prepare(who, resource), now=now, res_id=res_id,
                                                  if_match=if_match)
    except VersionConflict as exc:
        raise outcomes.precondition_failed(
            f"Version {exc.expected} is not the current version of {res_type}/{res_id} (it is {exc.current})"
        ) from None
    await gate.check_change(conn, who, CREATE if created else UPDATE, stored)
    return WriteResult(stored, 201 if created else 200, created=created)


async def conditional_update(
    conn: AsyncConnection, gate: AccessGate, who: Principal, resource: dict[str, Any], criteria: str, *,
    now: datetime, if_match: int | None = None,
) -> WriteResult:
    """PUT [type]?criteria (https://hl7.org/fhir/R4/http.html#cond-update)."""
    res_type = resource["resourceType"]
    items = parse_criteria(res_type, criteria, "criteria")
    await repository.lock_for(conn, "conditional", res_type, repr(items))
    matches = await find_matches(conn, gate, who, res_type, items)
    if len(matches) > 1:
        raise outcomes.precondition_failed(f"The criteria matched more than one {res_type}")
    if matches:
        if resource.get("id") not in (None, matches[0]):
            raise outcomes.bad_request("The resource id does not match the resource the criteria found",
                                       (f"{res_type}.id",), "id-mismatch")
        return await update(conn, gate, who, {**resource, "id": matches[0]}, matches[0], now=now, if_match=if_match)
    if resource.get("id"):
        return await update(conn, gate, who, resource, resource["id"], now=now)
    return await create(conn, gate, who, resource, now=now)


async def delete(
    conn: AsyncConnection, gate: AccessGate, who: Principal, res_type: str, res_id: str, *, now: datetime
) -> WriteResult:
    """Delete; deleting a missing or already-deleted resource is not an error (204/200)."""
    gate.authorise(who, DELETE, res_type)
    current = await repository.read(conn, res_type, res_id, for_update=True)
    _check_not_transfer(who, current)
    if current is not None and not current.deleted and (
        current.pk not in await gate.permitted_pks(conn, who, DELETE, [current])
    ):
        raise outcomes.not_found(res_type, res_id)
    stored = await repository.delete_resource(conn, res_type, res_id, now=now)
    if stored is not None and current is not None and not current.deleted:
        await gate.audit_change(conn, who, "delete", stored)
    return WriteResult(stored, 204 if stored is None else 200)


def _check_not_transfer(who: Principal, current: Stored | None) -> None:
    """A transfer-of-care Task moves only through its operations ($receive, $accept, $reject), which
    keep its state machine; people may not PUT or DELETE it (the engine's own writers may)."""
    if who.is_system or current is None or current.res_type != "Task" or not current.content:
        return
    if TRANSFER_IDENTIFIER in current.content:
        raise outcomes.error(409, "conflict", "A transfer of care changes only through $receive, $accept or "
                             "$reject", details_code="use-transfer-operations")


async def conditional_delete(
    conn: AsyncConnection, gate: AccessGate, who: Principal, res_type: str, criteria: str, *, now: datetime
) -> WriteResult:
    """DELETE [type]?criteria — single-match only (https://hl7.org/fhir/R4/http.html#2.21.0.13.1)."""
    items = parse_criteria(res_type, criteria, "criteria")
    await repository.lock_for(conn, "conditional", res_type, repr(items))
    matches = await find_matches(conn, gate, who, res_type, items)
    if len(matches) > 1:
        raise outcomes.precondition_failed(f"The criteria matched more than one {res_type}")
    if not matches:
        return WriteResult(None, 204)
    return await delete(conn, gate, who, res_type, matches[0], now=now)
