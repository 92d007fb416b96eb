"""The FastAPI application: authentication, routing and rendering around `FhirService`.

This layer only turns HTTP into `FhirRequest`s and `FhirResponse`s back into HTTP; FHIR
semantics live in engine/fhir, access decisions in engine/access. Every error leaves as an
OperationOutcome with the right status — including the framework's own 404/405/422 and
anything unexpected, which is logged with its request id and answered 500 without details.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from consent.policy import check_break_glass_reason
from consent.vocabulary import BREAK_GLASS
from engine import outcomes
from engine.access import AccessGate
from engine.api import document_routes, ig_routes, transfer_routes
from engine.api.fast_lane import FhirFastLane
from engine.audit.log import AuditWriter
from engine.auth import (
    AuthError,
    Principal,
    TokenVerifier,
    capability_security,
    public_jwks,
    smart_configuration,
)
from engine.config import Settings, load_settings
from engine.db.database import Database, open_database
from engine.export import export_ndjson
from engine.fhir import negotiation
from engine.fhir.capability import SERVER_VERSION, capability_statement
from engine.fhir.negotiation import FHIR_JSON
from engine.fhir.rest import FhirRequest, FhirResponse, FhirService, parse_instant
from engine.observability import ObservabilityMiddleware, configure_logging, metrics_text
from engine.outcomes import FhirError
from engine.transfers.config import load_transfers_config
from engine.transfers.delivery import delivery_worker

log = logging.getLogger("sharedcare.api")

ResourceType = Annotated[str, Path(description="A FHIR resource type, e.g. Patient", pattern=r"^[A-Z][A-Za-z]+$")]
ResourceId = Annotated[str, Path(description="A FHIR logical id", max_length=64)]


class State:
    """What the running application holds: settings, store, gate, FHIR service, token verifier."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.gate = AccessGate(db)
        # Reads are audited through one group-committing writer per process (engine/audit).
        self.audit_writer = self.gate.audit_writer = AuditWriter(db)
        self.service = FhirService(db, self.gate, max_body_bytes=settings.max_body_bytes,
                                   default_count=settings.default_page_size, max_count=settings.max_page_size)
        self.verifier = TokenVerifier(settings)
        self.started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.capability = orjson.dumps(
            capability_statement(settings.base_url, capability_security(settings), self.started)
        )


def error_response(error: FhirError) -> Response:
    return Response(orjson.dumps(error.outcome()), status_code=error.status, media_type=FHIR_JSON,
                    headers=error.headers)


def render(result: FhirResponse) -> Response:
    return Response(result.body, status_code=result.status, media_type=result.media_type if result.body else None,
                    headers=result.headers)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    """The ASGI application; `db` may be passed in by tests that own the database."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not logging.getLogger("sharedcare").handlers:
            configure_logging()  # uvicorn worker processes start without the CLI's logging set-up
        database = db or open_database(settings.database_url)
        state = app.state.sharedcare = State(settings, database)
        state.audit_writer.start()
        log.info("ready", extra={"fields": {"base_url": settings.base_url,
                                            "key_source": app.state.sharedcare.verifier.key_source}})
        try:
            # Transfers of care: the outbox delivery worker (SHAREDCARE_DELIVERY_ENABLED=0 turns it off).
            async with delivery_worker(database, load_transfers_config()):
                yield
        finally:
            await state.audit_writer.stop()
            if db is None:
                await database.dispose()

    app = FastAPI(
        title="sharedcare FHIR R4 facade",
        version=SERVER_VERSION,
        description="Shared care record: FHIR R4 REST API (application/fhir+json). "
        "Every /fhir request except metadata needs a bearer token; see /.well-known/smart-configuration.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    _install_error_handlers(app)
    for routes in (ig_routes, document_routes, transfer_routes):
        routes.install(app, _handle, _state)  # before the generic /fhir/{type}/{id} routes
    _install_routes(app)
    # GET read and search answered without the router (the same handlers; engine/api/fast_lane.py).
    app.add_middleware(FhirFastLane, state=lambda: app.state.sharedcare, authenticate=authenticate,
                       routes=lambda: [r.path for r in app.routes if "GET" in getattr(r, "methods", ())])
    app.add_middleware(ObservabilityMiddleware)
    return app


def _state(request: Request) -> State:
    return request.app.state.sharedcare


async def _handle(request: Request, call: Callable[[FhirRequest], Awaitable[FhirResponse]]) -> Response:
    """Authenticate, check formats, read the body and run one FHIR interaction."""
    state = _state(request)
    query = list(request.query_params.multi_items())
    try:
        negotiation.check_format(request.query_params.get("_format"), request.headers.get("accept"))
        principal = await authenticate(state, request.headers, request.scope)
        body = b""
        if request.method in {"POST", "PUT", "PATCH"}:
            body = await _read_body(request, state.settings.max_body_bytes)
        fhir_request = FhirRequest(request.method, query, request.headers, body, principal, state.settings.base_url)
        result = await call(fhir_request)
        return result if isinstance(result, Response) else render(result)
    except FhirError as error:
        return error_response(error)


async def authenticate(state: State, headers: Mapping[str, str], scope: MutableMapping[str, Any]) -> Principal:
    """The request's principal from its bearer token and X-Break-Glass-Reason (`headers` keys in lower
    case); the user id goes into the ASGI scope's state for the request log. Raises FhirError."""
    try:
        principal = await state.verifier.averify(headers.get("authorization"))
    except AuthError as exc:
        if exc.status == 401:
            raise outcomes.unauthorized(exc.code, exc.description, exc.www_authenticate) from None
        raise outcomes.error(exc.status, exc.fhir_issue_type, exc.description, details_code=exc.code) from None
    scope.setdefault("state", {})["user_id"] = principal.user_id
    return with_break_glass(principal, headers.get("x-break-glass-reason"), state.gate)


def with_break_glass(principal: Principal, reason: str | None, gate: AccessGate) -> Principal:
    """The principal with the request's X-Break-Glass-Reason (purpose of use BTG); 400 if it is trivial."""
    if reason is None:
        return principal
    problem = check_break_glass_reason(reason, gate.policy)
    if problem:
        raise outcomes.bad_request(problem, ("X-Break-Glass-Reason",), "break-glass-reason")
    return replace(principal, break_glass_reason=reason.strip(), purpose_of_use=BREAK_GLASS)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise outcomes.too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise outcomes.too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _install_routes(app: FastAPI) -> None:
    fhir = "/fhir"

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> Response:
        try:
            async with _state(request).db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
            log.warning("health check failed", extra={"fields": {"error": type(exc).__name__}})
            return Response(b'{"status":"unavailable"}', 503, media_type="application/json")
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/.well-known/smart-configuration", tags=["discovery"])
    @app.get(f"{fhir}/.well-known/smart-configuration", tags=["discovery"])
    async def smart(request: Request) -> Response:
        return Response(orjson.dumps(smart_configuration(_state(request).settings)), media_type="application/json")

    @app.get("/.well-known/jwks.json", tags=["discovery"])
    async def jwks(request: Request) -> Response:
        document = public_jwks(_state(request).settings)
        if document is None:
            return error_response(outcomes.error(404, "not-found", "This server does not publish signing keys"))
        return Response(orjson.dumps(document), media_type="application/json")

    @app.get(f"{fhir}/metadata", tags=["fhir"])
    async def metadata(request: Request) -> Response:
        try:
            negotiation.check_format(request.query_params.get("_format"), request.headers.get("accept"))
        except FhirError as error:
            return error_response(error)
        return Response(_state(request).capability, media_type=FHIR_JSON)

    @app.post(fhir, tags=["fhir"], summary="transaction or batch Bundle")
    @app.post(f"{fhir}/", include_in_schema=False)
    async def system_bundle(request: Request) -> Response:
        return await _handle(request, lambda r: _state(request).service.bundle(r))

    @app.get(f"{fhir}/_history", tags=["fhir"], summary="system history")
    async def system_history(request: Request) -> Response:
        return await _handle(request, lambda r: _state(request).service.history(r, None, None))

    @app.get(f"{fhir}/Patient/{{id}}/$everything", tags=["fhir"], summary="Patient $everything")
    async def everything(request: Request, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.everything(r, id))

    @app.get(f"{fhir}/$export", tags=["fhir"],
             summary="bulk export as NDJSON for secondary use (backend services; national data opt-out applied)")
    async def export(request: Request) -> Response:
        async def call(r: FhirRequest) -> Response:
            types = [t.strip() for t in (r.param("_type") or "").split(",") if t.strip()]
            since = parse_instant(r.param("_since"), "_since")
            lines = await export_ndjson(_state(request).gate, r.principal, types or None, since)
            return StreamingResponse(lines, media_type="application/fhir+ndjson")
        return await _handle(request, call)

    @app.get(f"{fhir}/Patient/{{id}}/$access-explain", tags=["information governance"],
             summary="which rule decides each resource of a patient's record for a user, role and organisation")
    async def access_explain(request: Request, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.access_explain(r, id))

    @app.get(f"{fhir}/{{type}}/_history", tags=["fhir"], summary="type history")
    async def type_history(request: Request, type: ResourceType) -> Response:
        return await _handle(request, lambda r: _state(request).service.history(r, type, None))

    @app.post(f"{fhir}/{{type}}/_search", tags=["fhir"], summary="search (form body)")
    async def search_post(request: Request, type: ResourceType) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            items = list(r.query) + await _form_items(r)
            return await _state(request).service.search(r, type, items)
        return await _handle(request, call)

    @app.get(f"{fhir}/{{type}}", tags=["fhir"], summary="search")
    async def search_get(request: Request, type: ResourceType) -> Response:
        return await _handle(request, lambda r: _state(request).service.search(r, type, r.query))

    @app.post(f"{fhir}/{{type}}", tags=["fhir"], summary="create (If-None-Exist for conditional create)")
    async def create(request: Request, type: ResourceType) -> Response:
        return await _handle(request, lambda r: _state(request).service.create(r, type))

    @app.put(f"{fhir}/{{type}}", tags=["fhir"], summary="conditional update")
    async def conditional_update(request: Request, type: ResourceType) -> Response:
        return await _handle(request, lambda r: _state(request).service.conditional_update(r, type))

    @app.delete(f"{fhir}/{{type}}", tags=["fhir"], summary="conditional delete (single match)")
    async def conditional_delete(request: Request, type: ResourceType) -> Response:
        return await _handle(request, lambda r: _state(request).service.conditional_delete(r, type))

    @app.get(f"{fhir}/{{type}}/{{id}}", tags=["fhir"], summary="read")
    async def read(request: Request, type: ResourceType, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.read(r, type, id))

    @app.put(f"{fhir}/{{type}}/{{id}}", tags=["fhir"], summary="update (or create with this id)")
    async def update(request: Request, type: ResourceType, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.update(r, type, id))

    @app.delete(f"{fhir}/{{type}}/{{id}}", tags=["fhir"], summary="delete")
    async def delete(request: Request, type: ResourceType, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.delete(r, type, id))

    @app.get(f"{fhir}/{{type}}/{{id}}/_history", tags=["fhir"], summary="instance history")
    async def instance_history(request: Request, type: ResourceType, id: ResourceId) -> Response:
        return await _handle(request, lambda r: _state(request).service.history(r, type, id))

    @app.get(f"{fhir}/{{type}}/{{id}}/_history/{{vid}}", tags=["fhir"], summary="vread")
    async def vread(request: Request, type: ResourceType, id: ResourceId, vid: str) -> Response:
        return await _handle(request, lambda r: _state(request).service.vread(r, type, id, vid))


async def _form_items(request: FhirRequest) -> list[tuple[str, str]]:
    """POST [type]/_search carries its parameters as application/x-www-form-urlencoded."""
    from urllib.parse import parse_qsl

    media_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if request.body and media_type != "application/x-www-form-urlencoded":
        raise outcomes.unsupported_media_type(media_type)
    try:
        return parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise outcomes.bad_request("The search form is not UTF-8", ("body",), "bad-form") from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(outcomes.error(404, "not-found", f"No such endpoint: {request.method} "
                                                 f"{request.url.path}", details_code="no-endpoint"))
        if exc.status_code == 405:
            return error_response(outcomes.not_allowed(f"{request.method} is not allowed here"))
        return error_response(outcomes.error(exc.status_code, "processing", str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in {"path", "query"})
        if where == "type":
            return error_response(outcomes.unknown_type(str(first.get("input", ""))[:64]))
        if where == "id":
            return error_response(outcomes.bad_request("The id in the URL is not a valid FHIR id", ("id",), "bad-id"))
        return error_response(outcomes.bad_request(f"Invalid request: {first.get('msg', 'bad input')}",
                                                   (where,) if where else ()))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.scope.get("state", {}).get("request_id", "unknown")
        log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
        return error_response(outcomes.internal_error(request_id))
