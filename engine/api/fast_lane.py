"""The FHIR read and search interactions as a plain ASGI handler, in front of the framework's router.

`GET /fhir/{type}/{id}` and `GET /fhir/{type}?…` are most of what clinical systems send. Routing
them through FastAPI — route matching, dependency solving, Request objects, the exception
middleware — costs more per request than the database takes to answer, so this middleware
answers them itself with the same code the routed endpoints use: `authenticate` (token and
break-glass), `FhirService.read`/`search` (the access gate, consent and audit), the same
OperationOutcome on every error. Everything else, including any path it does not recognise
exactly, goes on to the application unchanged, and so do the types that have routes of their own
(`/fhir/AuditEvent`, `/fhir/Bundle/{id}`, …, found from the application's routes at start).

It sits inside `ObservabilityMiddleware`, so each request is still logged and counted under its
route template (`/fhir/{type}/{id}`, `/fhir/{type}`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import outcomes
from engine.fhir import negotiation
from engine.fhir.negotiation import FHIR_JSON
from engine.fhir.rest import FhirRequest, FhirResponse
from engine.outcomes import FhirError

log = logging.getLogger("sharedcare.api")

# What the routed endpoints accept: a type name, and an id the read route's parameter allows (a FHIR
# id, https://hl7.org/fhir/R4/datatypes.html#id); anything else is left to the router and its errors.
_PATH = re.compile(r"/fhir/([A-Z][A-Za-z]+)(?:/([A-Za-z0-9\-.]{1,64}))?")
_FHIR_JSON = FHIR_JSON.encode()


@dataclass(frozen=True)
class RouteTemplate:
    """What the request log and metrics read from `scope["route"]`."""

    path: str


READ_ROUTE = RouteTemplate("/fhir/{type}/{id}")
SEARCH_ROUTE = RouteTemplate("/fhir/{type}")


def types_with_own_routes(route_paths: Iterable[str]) -> frozenset[str]:
    """Types whose `GET /fhir/T` or `GET /fhir/T/{id}` another route answers (those stay with the router)."""
    own = set()
    for path in route_paths:
        parts = path.split("/")
        if len(parts) in (3, 4) and parts[1] == "fhir" and not parts[2].startswith("{"):
            own.add(parts[2])
    return frozenset(own)


class FhirFastLane:
    """Answers GET read and search itself; passes every other request to `app`.

    `state` returns the running application's State (engine.api.app), `authenticate` is the
    application's token and break-glass check, `routes` the GET route paths of the application.
    """

    def __init__(self, app: ASGIApp, *, state: Callable[[], Any], authenticate: Callable[..., Any],
                 routes: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._state = state
        self._authenticate = authenticate
        self._routes = routes
        self._own: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        res_type, res_id = target
        scope["route"] = READ_ROUTE if res_id else SEARCH_ROUTE
        status, headers, body = await self._answer(scope, res_type, res_id)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _target(self, scope: Scope) -> tuple[str, str | None] | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        if self._own is None:
            self._own = types_with_own_routes(self._routes())
        return None if match.group(1) in self._own else (match.group(1), match.group(2))

    async def _answer(self, scope: Scope, res_type: str, res_id: str | None) -> tuple[int, list, bytes]:
        state = self._state()
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            negotiation.check_format(_last(query, "_format"), headers.get("accept"))
            principal = await self._authenticate(state, headers, scope)
            request = FhirRequest("GET", query, headers, b"", principal, state.settings.base_url)
            if res_id is None:
                result = await state.service.search(request, res_type, request.query)
            else:
                result = await state.service.read(request, res_type, res_id)
            return _rendered(result)
        except FhirError as error:
            return _rendered_error(error)
        except Exception as exc:  # answered as the application answers the unexpected
            request_id = scope.get("state", {}).get("request_id", "unknown")
            log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
            return _rendered_error(outcomes.internal_error(request_id))


def _last(query: list[tuple[str, str]], name: str) -> str | None:
    found = None
    for key, value in query:
        if key == name:
            found = value
    return found


def _rendered_error(error: FhirError) -> tuple[int, list, bytes]:
    """The OperationOutcome the application's error handlers answer `error` with (engine.api.app)."""
    return _rendered(FhirResponse(error.status, orjson.dumps(error.outcome()), dict(error.headers or {})))


def _rendered(result: FhirResponse) -> tuple[int, list, bytes]:
    """Status, headers and body as the routed endpoints' `Response` would send them."""
    body = result.body or b""
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in result.headers.items()]
    headers.append((b"content-length", str(len(body)).encode()))
    if result.body:
        headers.append((b"content-type", result.media_type.encode() if result.media_type != FHIR_JSON else _FHIR_JSON))
    return result.status, headers, body
