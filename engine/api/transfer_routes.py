"""Transfer tracking endpoints: Task actions, outstanding transfers, Subscriptions, endpoints, dead letters.

- `POST /fhir/Task/{id}/$receive | $accept | $reject` — the receiving organisation acts on its
  transfer (engine/transfers/actions.py); `$reject` needs a reason (Parameters `reason`, or `?reason=`).
- `GET /transfers/outstanding?org=ODS` (transfers the organisation must act on) or `?requester=ODS`
  (transfers it raised): open transfers, oldest first, with how long each has waited (JSON; with
  `view=bundle`, a FHIR searchset Bundle of the Tasks in the same order).
- `POST/GET/DELETE /fhir/Subscription[/{id}]` — FHIR R4 rest-hook Subscriptions on Tasks.
- `PUT/GET/DELETE /transfers/endpoints/{ods}` — an organisation's own notification endpoint.
- `GET /transfers/deliveries`, `GET /transfers/dead-letters`, `POST /transfers/dead-letters/{id}/$retry`.

Every route authenticates through `handle` and answers errors as OperationOutcome. An organisation
sees and configures only its own; the roles in SHAREDCARE_TRANSFERS_ADMIN_ROLES see all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from engine import outcomes
from engine.access import SEARCH
from engine.audit.events import record_for
from engine.auth import Principal
from engine.db.repository import format_instant, new_id, utc_now
from engine.fhir.bundles import Entry, bundle_bytes
from engine.fhir.rest import FhirRequest, FhirResponse
from engine.outcomes import FhirError
from engine.search.params import SearchError, parse_search
from engine.transfers import actions, store
from engine.transfers.config import TransfersConfig, process_config
from engine.transfers.receivers import org_for_ods
from engine.transfers.schema import DEAD
from engine.transfers.subscriptions import (
    Channel,
    SubscriptionError,
    check_endpoint,
    check_payload,
    names_organization,
    parse_header,
    parse_subscription,
    stored_subscription,
)
from engine.transfers.tasks import ACTIONS, waiting_seconds

Handle = Callable[[Request, Callable[[FhirRequest], Awaitable[FhirResponse]]], Awaitable[Response]]
JSON_TYPE = "application/json"


def install(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any]) -> None:
    """Add this module's routes; `handle` authenticates and renders like every /fhir route."""
    config = process_config()
    _install_task_actions(app, handle, state_of)
    _install_tracking(app, handle, state_of, config)
    _install_subscriptions(app, handle, state_of, config)
    _install_endpoints(app, handle, state_of, config)


# -- Task actions -----------------------------------------------------------------------------------------


def _install_task_actions(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any]) -> None:
    for action in ACTIONS:
        _install_action(app, handle, state_of, action)


def _install_action(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any], action: str) -> None:
    @app.post(f"/fhir/Task/{{id}}/${action}", tags=["transfers"], summary=f"transfer of care: {action}")
    async def task_action(request: Request, id: str) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            gate = state_of(request).gate
            try:
                result = await actions.act(gate, r.principal, id, action, _reason(r), utc_now())
            except FhirError as error:
                await gate.audit_refusal(r.principal, "update", f"Task/{id}", error, operation=f"${action}")
                raise
            stored = result.stored
            return FhirResponse(200, (stored.content or "").encode(), {"ETag": stored.etag,
                                                                       "Last-Modified": stored.last_modified})
        return await handle(request, call)


def _patient(task: dict[str, Any]) -> str | None:
    reference = (task.get("for") or {}).get("reference") or ""
    return reference.removeprefix("Patient/") if reference.startswith("Patient/") else None


def _reason(request: FhirRequest) -> str | None:
    """The reason: `?reason=`, or a Parameters body's `reason` (valueString, or a CodeableConcept's text)."""
    if request.param("reason"):
        return request.param("reason")
    if not request.body:
        return None
    body = _json_body(request)
    if body.get("resourceType") != "Parameters":
        raise outcomes.bad_request("The body must be a Parameters resource", ("body",), "bad-parameters")
    for parameter in body.get("parameter") or ():
        if parameter.get("name") == "reason":
            concept = parameter.get("valueCodeableConcept") or {}
            return parameter.get("valueString") or concept.get("text") or _first_display(concept)
    return None


def _first_display(concept: dict[str, Any]) -> str | None:
    return next((c.get("display") or c.get("code") for c in concept.get("coding") or ()), None)


def _json_body(request: FhirRequest) -> dict[str, Any]:
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise outcomes.bad_request("The body is not JSON", ("body",), "bad-json") from None
    if not isinstance(body, dict):
        raise outcomes.bad_request("The body must be a JSON object", ("body",), "bad-json")
    return body


# -- access -------------------------------------------------------------------------------------------------


def _is_admin(principal: Principal, config: TransfersConfig) -> bool:
    return principal.role in config.admin_roles


def _check_org(principal: Principal, ods: str, config: TransfersConfig) -> None:
    """403 unless the principal acts for `ods` or holds an administrator role."""
    if _is_admin(principal, config):
        return
    if not principal.org or principal.org.upper() != ods.upper():
        raise outcomes.forbidden("other-organisation", "You may only see and configure your own organisation's")


def _check_admin(principal: Principal, config: TransfersConfig) -> None:
    if not _is_admin(principal, config):
        raise outcomes.forbidden("not-administrator", "This needs an administrator role")


def _json(value: Any, status: int = 200) -> FhirResponse:
    return FhirResponse(status, orjson.dumps(value), media_type=JSON_TYPE)


# -- tracking and dead letters ---------------------------------------------------------------------------------


def outstanding_entry(task: dict[str, Any], now: Any) -> dict[str, Any]:
    """One open transfer as the outstanding list shows it."""
    waited = waiting_seconds(task, now)
    role = next((c.get("code") for t in task.get("performerType") or () for c in t.get("coding") or ()), None)
    return {
        "task": f"Task/{task['id']}", "status": task.get("status"),
        "businessStatus": (task.get("businessStatus") or {}).get("text"), "receiverRole": role,
        "owner": ((task.get("owner") or {}).get("identifier") or {}).get("value"),
        "requester": ((task.get("requester") or {}).get("identifier") or {}).get("value"),
        "patient": (task.get("for") or {}).get("reference"), "encounter": (task.get("encounter") or {}).get("reference"),
        "focus": (task.get("focus") or {}).get("reference"), "authoredOn": task.get("authoredOn"),
        "waitingSeconds": waited, "waiting": human_duration(waited),
    }


def human_duration(seconds: int) -> str:
    """`3d 4h`, `5h 12m`, `7m` — delays at a glance."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def _install_tracking(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any],
                      config: TransfersConfig) -> None:
    @app.get("/transfers/outstanding", tags=["transfers"], summary="open transfers of an organisation, oldest first")
    async def outstanding(request: Request) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            owner, requester = r.param("org"), r.param("requester")
            if bool(owner) == bool(requester):
                raise outcomes.bad_request("Give exactly one of org (receiving) or requester (discharging) "
                                           "as an ODS code", ("org",), "bad-parameter")
            ods = (owner or requester or "").strip()
            _check_org(r.principal, ods, config)
            gate = state_of(request).gate
            gate.authorise(r.principal, SEARCH, "Task")
            org_id = org_for_ods(ods).id
            async with state_of(request).db.read() as conn:
                tasks = await store.open_tasks(conn, owner_id=org_id if owner else None,
                                               requester_id=org_id if requester else None)
            now = utc_now()
            await gate.audit([record_for(
                r.principal, recorded=now, subtype="search", query=f"{'org' if owner else 'requester'}={ods}",
                patient_ids=tuple(p for p in (_patient(t) for t in tasks) if p),
                entities=tuple(f"Task/{t.get('id')}" for t in tasks))])
            entries = sorted((outstanding_entry(t, now) for t in tasks),
                             key=lambda e: (-e["waitingSeconds"], e["task"]))
            if r.param("view") == "bundle":
                return _task_bundle(r, tasks, entries)
            return _json({"organization": ods, "as": "owner" if owner else "requester", "generated": format_instant(now),
                          "total": len(entries), "transfers": entries})
        return await handle(request, call)

    @app.get("/transfers/deliveries", tags=["transfers"], summary="notifications and their attempts")
    async def deliveries(request: Request) -> Response:
        return await handle(request, lambda r: _deliveries(r, state_of(request), config, None))

    @app.get("/transfers/dead-letters", tags=["transfers"], summary="notifications that were never acknowledged")
    async def dead_letters(request: Request) -> Response:
        return await handle(request, lambda r: _deliveries(r, state_of(request), config, DEAD))

    @app.post("/transfers/dead-letters/{outbox_id}/$retry", tags=["transfers"], summary="retry a dead letter now")
    async def retry(request: Request, outbox_id: int) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            _check_admin(r.principal, config)
            async with state_of(request).db.write() as conn:
                if not await store.retry_dead(conn, outbox_id, utc_now()):
                    raise outcomes.error(404, "not-found", f"No dead letter {outbox_id}", details_code="not-found")
            return _json({"id": outbox_id, "status": "pending"})
        return await handle(request, call)


def _task_bundle(r: FhirRequest, tasks: list[dict[str, Any]], entries: list[dict[str, Any]]) -> FhirResponse:
    by_id = {f"Task/{t['id']}": t for t in tasks}
    rows = [Entry({"fullUrl": f"{r.base_url}/{e['task']}", "search": {"mode": "match"}},
                  orjson.dumps(by_id[e["task"]]).decode()) for e in entries]
    return FhirResponse(200, bundle_bytes("searchset", rows, total=len(rows)))


async def _deliveries(r: FhirRequest, state: Any, config: TransfersConfig, status: str | None) -> FhirResponse:
    org = r.param("org")
    if org:
        _check_org(r.principal, org, config)
    else:
        _check_admin(r.principal, config)
    limit = r.param("_count") or "100"
    if not limit.isdigit():
        raise outcomes.bad_request("_count must be a whole number", ("_count",), "bad-count")
    async with state.db.read() as conn:
        rows = await store.list_deliveries(conn, status=status or r.param("status"), owner=org,
                                           task_id=r.param("task"), limit=min(int(limit), 1000))
    return _json({"total": len(rows), "deliveries": rows})


# -- Subscriptions -----------------------------------------------------------------------------------------------


def _install_subscriptions(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any],
                           config: TransfersConfig) -> None:
    @app.post("/fhir/Subscription", tags=["transfers"], summary="create a rest-hook Subscription on Tasks")
    async def create_subscription(request: Request) -> Response:
        return await handle(request, lambda r: _create_subscription(r, state_of(request), config))

    @app.get("/fhir/Subscription", tags=["transfers"], summary="your organisation's Subscriptions")
    async def list_subscriptions(request: Request) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            unknown = [name for name, _ in r.query if name not in {"_format", "_pretty"}]
            if unknown:  # the list has no search parameters: refuse a filter it would ignore
                raise outcomes.bad_request(f"Unknown Subscription search parameter {unknown[0]!r}", (unknown[0],),
                                           "bad-search-parameter")
            owner = None if _is_admin(r.principal, config) else (r.principal.org or "")
            async with state_of(request).db.read() as conn:
                found = await store.list_subscriptions(conn, owner=owner)
            entries = [Entry({"fullUrl": f"{r.base_url}/Subscription/{s.id}", "search": {"mode": "match"}},
                             orjson.dumps(s.content).decode()) for s in found]
            return FhirResponse(200, bundle_bytes("searchset", entries, total=len(entries)))
        return await handle(request, call)

    @app.get("/fhir/Subscription/{sub_id}", tags=["transfers"], summary="read a Subscription")
    async def read_subscription(request: Request, sub_id: str) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            async with state_of(request).db.read() as conn:
                found = await _own_subscription(conn, r.principal, sub_id, config)
            return FhirResponse(200, orjson.dumps(found.content), {"ETag": f'W/"{found.version_id}"'})
        return await handle(request, call)

    @app.delete("/fhir/Subscription/{sub_id}", tags=["transfers"], summary="delete a Subscription")
    async def delete_subscription(request: Request, sub_id: str) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            async with state_of(request).db.write() as conn:
                await _own_subscription(conn, r.principal, sub_id, config)
                await store.delete_subscription(conn, sub_id)
            return FhirResponse(204)
        return await handle(request, call)


async def _own_subscription(conn: Any, principal: Principal, sub_id: str,
                            config: TransfersConfig) -> store.StoredSubscription:
    found = await store.get_subscription(conn, sub_id)
    if found is None or not (_is_admin(principal, config) or (found.owner_ods and found.owner_ods == principal.org)):
        raise outcomes.not_found("Subscription", sub_id)
    return found


async def _create_subscription(r: FhirRequest, state: Any, config: TransfersConfig) -> FhirResponse:
    body = _json_body(r)
    try:
        spec = parse_subscription(body)
        parse_search("Task", list(spec.items))
    except SubscriptionError as exc:
        raise outcomes.error(422, "invalid", exc.message, expression=(exc.expression,),
                             details_code="bad-subscription") from None
    except SearchError as exc:
        raise outcomes.error(422, "invalid", f"criteria: {exc.message}", expression=("Subscription.criteria",),
                             details_code="bad-subscription") from None
    org = r.principal.org
    if not _is_admin(r.principal, config) and not (org and names_organization(spec.items, org_for_ods(org).id or "")):
        raise outcomes.forbidden("other-organisation", "criteria must name your organisation as owner or "
                                 f"requester, e.g. Task?owner=Organization/{org_for_ods(org or 'ODS').id}")
    now = utc_now()
    content = stored_subscription(body, new_id(), "requested", 1, format_instant(now))
    async with state.db.write() as conn:
        await store.insert_subscription(conn, content, org, now)
    location = f"{r.base_url}/Subscription/{content['id']}"
    return FhirResponse(201, orjson.dumps(content), {"Location": location, "ETag": 'W/"1"'})


# -- per-organisation endpoints -------------------------------------------------------------------------------------


def endpoint_from_json(ods: str, body: dict[str, Any]) -> store.EndpointConfig:
    """`{"address": url, "header": ["Name: value"], "payload": "application/fhir+json" | null, "active": true}`."""
    try:
        headers = tuple(parse_header(h, "header") for h in body.get("header") or ())
        channel = Channel(check_endpoint(body.get("address"), "address"), headers,
                          check_payload(body.get("payload"), "payload"))
    except SubscriptionError as exc:
        raise outcomes.error(422, "invalid", exc.message, expression=(exc.expression,),
                             details_code="bad-endpoint") from None
    return store.EndpointConfig(ods.upper(), channel, bool(body.get("active", True)))


def _install_endpoints(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any],
                       config: TransfersConfig) -> None:
    @app.put("/transfers/endpoints/{ods}", tags=["transfers"], summary="set an organisation's notification endpoint")
    async def put_endpoint(request: Request, ods: str) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            _check_org(r.principal, ods, config)
            endpoint = endpoint_from_json(ods, _json_body(r))
            async with state_of(request).db.write() as conn:
                await store.put_endpoint(conn, endpoint, utc_now())
            return _json(endpoint.to_json())
        return await handle(request, call)

    @app.get("/transfers/endpoints", tags=["transfers"], summary="notification endpoints")
    async def list_endpoints(request: Request) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            only = None if _is_admin(r.principal, config) else (r.principal.org or "")
            async with state_of(request).db.read() as conn:
                found = await store.list_endpoints(conn, only)
            return _json({"endpoints": [e.to_json() for e in found]})
        return await handle(request, call)

    @app.delete("/transfers/endpoints/{ods}", tags=["transfers"], summary="remove an organisation's endpoint")
    async def delete_endpoint(request: Request, ods: str) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            _check_org(r.principal, ods, config)
            async with state_of(request).db.write() as conn:
                if not await store.delete_endpoint(conn, ods.upper()):
                    raise outcomes.error(404, "not-found", f"No endpoint for {ods}", details_code="not-found")
            return FhirResponse(204)
        return await handle(request, call)
