"""`transaction` and `batch` Bundles (https://hl7.org/fhir/R4/http.html#transaction).

A transaction is all-or-nothing in one database transaction. Entries are processed in the order
the specification sets — DELETE, POST, PUT, GET — after every `urn:uuid:` fullUrl, conditional
create (`ifNoneExist`), conditional update (`PUT Type?criteria`) and conditional reference
(`Practitioner?identifier=…`) has been resolved to a concrete id, so references between entries
are rewritten before anything is stored. A batch runs each entry on its own and reports each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.db import repository
from engine.db.repository import Stored, format_instant, new_id, utc_now
from engine.fhir import negotiation, writes
from engine.outcomes import FhirError

if TYPE_CHECKING:
    from engine.fhir.rest import FhirRequest, FhirService

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}


@dataclass
class Operation:
    index: int
    method: str
    res_type: str
    res_id: str | None
    criteria: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None = None
    if_match: int | None = None
    url: str = ""
    matched_existing: bool = False
    result: dict[str, Any] = field(default_factory=dict)


async def process_bundle(service: FhirService, req: FhirRequest, body: Any) -> dict[str, Any]:
    bundle_type = body.get("type") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise outcomes.bad_request("POST to the base URL takes a Bundle", ("Bundle",), "not-a-bundle")
    if bundle_type not in {"transaction", "batch"}:
        raise outcomes.bad_request(f"Bundle.type must be transaction or batch, not {bundle_type!r}",
                                   ("Bundle.type",), "bad-bundle-type")
    entries = body.get("entry") or []
    if not isinstance(entries, list):
        raise outcomes.bad_request("Bundle.entry must be a list", ("Bundle.entry",), "bad-bundle")
    if bundle_type == "transaction":
        return await _transaction(service, req, entries)
    return await _batch(service, req, entries)


# -- parsing ----------------------------------------------------------------------------------------


def parse_entry(index: int, entry: Any) -> Operation:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise outcomes.bad_request(f"{where} has no request", (f"{where}.request",), "bad-entry")
    request = entry["request"]
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", "")).strip()
    if method not in _ORDER:
        raise outcomes.bad_request(f"{where}.request.method {method!r} is not supported",
                                   (f"{where}.request.method",), "bad-method")
    if not url:
        raise outcomes.bad_request(f"{where}.request.url is missing", (f"{where}.request.url",), "bad-entry")
    path, _, query = url.partition("?")
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise outcomes.bad_request(f"{where}.request.url {url!r} names no resource type",
                                   (f"{where}.request.url",), "bad-entry")
    res_type = parts[0]
    writes.check_type(res_type)
    res_id = parts[1] if len(parts) > 1 else None
    resource = entry.get("resource")
    if method in {"POST", "PUT"}:
        if not isinstance(resource, dict):
            raise outcomes.bad_request(f"{where}.resource is required for {method}", (f"{where}.resource",),
                                       "bad-entry")
        resource = _validated_entry(resource, res_type, where)
    if_match = None
    if request.get("ifMatch"):
        if_match = negotiation.parse_if_match(str(request["ifMatch"]))
    return Operation(
        index=index, method=method, res_type=res_type, res_id=res_id, criteria=query or None,
        resource=resource, full_url=entry.get("fullUrl"), if_none_exist=request.get("ifNoneExist"),
        if_match=if_match, url=url,
    )


def _validated_entry(resource: dict[str, Any], res_type: str, where: str) -> dict[str, Any]:
    try:
        return writes.validated(resource, res_type)
    except FhirError as exc:
        raise _at_entry(exc, where) from None


def _at_entry(exc: FhirError, where: str) -> FhirError:
    """Re-address an error's expressions to the Bundle entry it came from."""
    issues = []
    for issue in exc.issues:
        expressions = tuple(_entry_expression(where, e) for e in issue.expression) or (where,)
        issues.append(replace(issue, expression=expressions, diagnostics=f"{where}: {issue.diagnostics}"))
    return FhirError(exc.status, issues, exc.headers)


def _entry_expression(where: str, expression: str) -> str:
    head, _, rest = expression.partition(".")
    if head[:1].isupper() and rest:
        return f"{where}.resource.{rest}"
    return f"{where}.{expression}" if not expression.startswith("Bundle") else expression


# -- transaction --------------------------------------------------------------------------------------


async def _transaction(service: FhirService, req: FhirRequest, entries: list[Any]) -> dict[str, Any]:
    operations = [parse_entry(i, entry) for i, entry in enumerate(entries)]
    _check_distinct(operations)
    now = utc_now()
    gets: list[Operation] = []
    async with service.db.write() as conn:
        id_map = await _resolve_ids(conn, service, req, operations)
        for op in operations:
            if op.resource is not None:
                try:
                    op.resource = await _rewrite_references(conn, service, req, op.resource, id_map)
                except FhirError as exc:
                    raise _at_entry(exc, f"Bundle.entry[{op.index}]") from None
        for op in sorted(operations, key=lambda o: (_ORDER[o.method], o.index)):
            if op.method in {"GET", "HEAD"}:
                gets.append(op)
                continue
            try:
                await _apply(conn, service, req, op, now)
            except FhirError as exc:
                raise _at_entry(exc, f"Bundle.entry[{op.index}]") from None
    for op in gets:
        op.result = await _read_entry(service, req, op)
    return _response_bundle("transaction-response", operations)


def _check_distinct(operations: list[Operation]) -> None:
    seen: dict[str, int] = {}
    for op in operations:
        if op.method in {"PUT", "DELETE"} and op.res_id:
            key = f"{op.res_type}/{op.res_id}"
            if key in seen:
                raise outcomes.bad_request(
                    f"Bundle.entry[{op.index}] and Bundle.entry[{seen[key]}] both change {key}",
                    (f"Bundle.entry[{op.index}].request.url",), "duplicate-entry",
                )
            seen[key] = op.index


async def _resolve_ids(
    conn: AsyncConnection, service: FhirService, req: FhirRequest, operations: list[Operation]
) -> dict[str, str]:
    """fullUrl → `Type/id` for every entry whose resource will exist after the transaction."""
    id_map: dict[str, str] = {}
    for op in operations:
        where = f"Bundle.entry[{op.index}]"
        try:
            if op.method == "POST":
                op.res_id = await _post_target(conn, service, req, op)
            elif op.method == "PUT" and op.criteria and not op.res_id:
                op.res_id = await _conditional_put_target(conn, service, req, op)
            elif op.method == "DELETE" and op.criteria and not op.res_id:
                matches = await _matches(conn, service, req, op.res_type, op.criteria, "request.url")
                if len(matches) > 1:
                    raise outcomes.precondition_failed(f"The criteria matched more than one {op.res_type}")
                op.res_id = matches[0] if matches else None
        except FhirError as exc:
            raise _at_entry(exc, where) from None
        if op.full_url and op.res_id and op.method in {"POST", "PUT"}:
            id_map[op.full_url] = f"{op.res_type}/{op.res_id}"
    return id_map


async def _post_target(conn: AsyncConnection, service: FhirService, req: FhirRequest, op: Operation) -> str:
    if op.if_none_exist:
        matches = await _matches(conn, service, req, op.res_type, op.if_none_exist, "request.ifNoneExist")
        if len(matches) > 1:
            raise outcomes.precondition_failed(f"ifNoneExist matched more than one {op.res_type}")
        if matches:
            op.matched_existing = True
            return matches[0]
    return new_id()


async def _conditional_put_target(
    conn: AsyncConnection, service: FhirService, req: FhirRequest, op: Operation
) -> str:
    matches = await _matches(conn, service, req, op.res_type, op.criteria or "", "request.url")
    if len(matches) > 1:
        raise outcomes.precondition_failed(f"The criteria matched more than one {op.res_type}")
    assert op.resource is not None
    return matches[0] if matches else (op.resource.get("id") or new_id())


async def _matches(
    conn: AsyncConnection, service: FhirService, req: FhirRequest, res_type: str, criteria: str, header: str
) -> list[str]:
    items = writes.parse_criteria(res_type, criteria, header)
    await repository.lock_for(conn, "conditional", res_type, repr(items))
    return await writes.find_matches(conn, service.gate, req.principal, res_type, items)


async def _rewrite_references(
    conn: AsyncConnection, service: FhirService, req: FhirRequest, node: Any, id_map: dict[str, str]
) -> Any:
    """A copy of `node` with fullUrl and conditional references replaced by `Type/id`."""
    if isinstance(node, list):
        return [await _rewrite_references(conn, service, req, item, id_map) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten: dict[str, Any] = {}
    for key, value in node.items():
        if key == "reference" and isinstance(value, str):
            rewritten[key] = await _resolve_reference(conn, service, req, value, id_map)
        else:
            rewritten[key] = await _rewrite_references(conn, service, req, value, id_map)
    return rewritten


async def _resolve_reference(
    conn: AsyncConnection, service: FhirService, req: FhirRequest, reference: str, id_map: dict[str, str]
) -> str:
    if reference in id_map:
        return id_map[reference]
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        raise outcomes.bad_request(f"Reference {reference} matches no entry of the transaction",
                                   ("reference",), "unresolved-reference")
    path, sep, criteria = reference.partition("?")
    if sep and "/" not in path and path:
        writes.check_type(path)
        matches = await _matches(conn, service, req, path, criteria, "reference")
        if len(matches) != 1:
            raise outcomes.precondition_failed(
                f"Conditional reference {path}?… matched {len(matches)} resources; it must match exactly one"
            )
        return f"{path}/{matches[0]}"
    return reference


async def _apply(conn: AsyncConnection, service: FhirService, req: FhirRequest, op: Operation, now: Any) -> None:
    who, gate = req.principal, service.gate
    if op.method == "DELETE":
        if op.res_id is None:
            op.result = {"response": {"status": "204 No Content"}}
            return
        result = await writes.delete(conn, gate, who, op.res_type, op.res_id, now=now)
        op.result = {"response": {"status": "204 No Content" if result.stored is None else "200 OK"}}
        return
    assert op.resource is not None and op.res_id is not None
    if op.method == "POST":
        if op.matched_existing:
            stored = await repository.read(conn, op.res_type, op.res_id)
            assert stored is not None  # found by the ifNoneExist search in this transaction, under its lock
            await gate.audit_change(conn, who, "read", stored)  # the entry may carry its content: a read
            op.result = _entry_result(req, stored, "200 OK")
            return
        result = await writes.create(conn, gate, who, op.resource, now=now, res_id=op.res_id)
    else:
        # An id the resource states must be the one the entry targets, as over REST (writes.update checks it).
        resource = op.resource if op.resource.get("id") is not None else {**op.resource, "id": op.res_id}
        result = await writes.update(conn, gate, who, resource, op.res_id, now=now, if_match=op.if_match)
    op.result = _entry_result(req, result.stored, "201 Created" if result.created else "200 OK")


def _entry_result(req: FhirRequest, stored: Stored | None, status: str) -> dict[str, Any]:
    assert stored is not None
    response = {
        "status": status,
        "location": f"{stored.res_type}/{stored.res_id}/_history/{stored.version_id}",
        "etag": stored.etag,
        "lastModified": format_instant(stored.last_updated),
    }
    result: dict[str, Any] = {"fullUrl": f"{req.base_url}/{stored.res_type}/{stored.res_id}", "response": response}
    if negotiation.prefer_return(req.header("prefer")) == "representation" and stored.content:
        result["resource"] = _loads(stored.content)
    return result


def _loads(content: str) -> Any:
    import orjson

    return orjson.loads(content)


async def _read_entry(service: FhirService, req: FhirRequest, op: Operation) -> dict[str, Any]:
    """A GET entry, through the same handlers (and gate) as a plain GET."""
    from engine.fhir.rest import FhirRequest as Request

    path = urlsplit(op.url).path.strip("/").split("/")
    query = parse_qsl(urlsplit(op.url).query, keep_blank_values=True)
    sub = Request("GET", query, req.headers, b"", req.principal, req.base_url)
    if len(path) == 1:
        response = await service.search(sub, path[0], query)
    elif len(path) == 2:
        response = await service.read(sub, path[0], path[1])
    elif len(path) == 4 and path[2] == "_history":
        response = await service.vread(sub, path[0], path[1], path[3])
    else:
        raise outcomes.bad_request(f"GET {op.url} is not supported in a Bundle", ("request.url",), "bad-entry")
    result: dict[str, Any] = {"response": {"status": f"{response.status} OK"}}
    if response.body:
        result["resource"] = _loads(response.body.decode())
    if "ETag" in response.headers:
        result["response"]["etag"] = response.headers["ETag"]
    return result


def _response_bundle(bundle_type: str, operations: list[Operation]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": new_id(),
        "meta": {"lastUpdated": format_instant(utc_now())},
        "type": bundle_type,
        "entry": [op.result for op in operations],
    }


# -- batch -----------------------------------------------------------------------------------------------


async def _batch(service: FhirService, req: FhirRequest, entries: list[Any]) -> dict[str, Any]:
    """Each entry on its own; a failure is reported in its entry and does not stop the others."""
    operations: list[Operation] = []
    for index, entry in enumerate(entries):
        try:
            op = parse_entry(index, entry)
        except FhirError as exc:
            op = Operation(index, "GET", "", None, None, None, None)
            op.result = _error_result(exc)
            operations.append(op)
            continue
        operations.append(op)
        try:
            if op.method in {"GET", "HEAD"}:
                op.result = await _read_entry(service, req, op)
            else:
                async with service.db.write() as conn:
                    id_map = await _resolve_ids(conn, service, req, [op])
                    del id_map
                    if op.resource is not None:
                        op.resource = await _rewrite_references(conn, service, req, op.resource, {})
                    await _apply(conn, service, req, op, utc_now())
        except FhirError as exc:
            op.result = _error_result(_at_entry(exc, f"Bundle.entry[{index}]"))
    return _response_bundle("batch-response", operations)


def _error_result(exc: FhirError) -> dict[str, Any]:
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 410: "Gone",
              412: "Precondition Failed", 422: "Unprocessable Entity"}.get(exc.status, "Error")
    return {"response": {"status": f"{exc.status} {reason}", "outcome": exc.outcome()}}

