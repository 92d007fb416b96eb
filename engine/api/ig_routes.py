"""Information governance endpoints: AuditEvent search, CSV export, reports, alerts, break-glass review queue, a patient's access log.

Thin: each route authenticates through `handle` and calls `engine.audit.service.AuditService`,
which checks the role, does the work and audits the look. AuditEvents are never created, changed
or deleted over REST (405); these routes are installed before the generic /fhir routes so that no
AuditEvent request reaches the resource store. docs/audit.md describes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from engine.audit.query import AuditFilter
from engine.audit.service import AuditService
from engine.fhir.rest import FhirRequest, FhirResponse

Handle = Callable[[Request, Callable[[FhirRequest], Awaitable[FhirResponse]]], Awaitable[Response]]
_AUDIT_EVENT = "/fhir/AuditEvent"
_WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]


def audit_service(state: Any) -> AuditService:
    """The application's `AuditService`, made on first use; it records through `state.audit_writer`
    (the group-commit `AuditWriter`) when the application runs one."""
    service = getattr(state, "audit_service", None)
    if service is None:
        service = AuditService(state.db, writer=getattr(state, "audit_writer", None),
                               default_count=state.settings.default_page_size,
                               max_count=state.settings.max_page_size)
        state.audit_service = service
    return service


def install(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any]) -> None:
    """Add this module's routes; `handle` authenticates and renders like every /fhir route."""

    def service(request: Request) -> AuditService:
        return audit_service(state_of(request))

    @app.get(_AUDIT_EVENT, tags=["audit"], summary="AuditEvent search (IG officers)")
    async def search(request: Request) -> Response:
        return await handle(request, lambda r: service(request).search(r))

    @app.post(f"{_AUDIT_EVENT}/_search", tags=["audit"], summary="AuditEvent search (form body)")
    async def search_post(request: Request) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            items = list(r.query) + parse_qsl(r.body.decode("utf-8", "replace"), keep_blank_values=True)
            return await service(request).search(r, items)
        return await handle(request, call)

    async def refuse(request: Request) -> Response:
        return await handle(request, lambda r: service(request).not_allowed(r))

    for path in (_AUDIT_EVENT, f"{_AUDIT_EVENT}/{{id}}", f"{_AUDIT_EVENT}/_history", f"{_AUDIT_EVENT}/{{id}}/_history",
                 f"{_AUDIT_EVENT}/{{id}}/_history/{{vid}}"):
        methods = _WRITE_METHODS if path in (_AUDIT_EVENT, f"{_AUDIT_EVENT}/{{id}}") else ["GET"]
        app.add_api_route(path, refuse, methods=methods, include_in_schema=False)

    @app.get(f"{_AUDIT_EVENT}/{{id}}", tags=["audit"], summary="AuditEvent read (IG officers)")
    async def read(request: Request, id: str) -> Response:
        return await handle(request, lambda r: service(request).read(r, id))

    @app.get("/fhir/Patient/{id}/$access-log", tags=["audit"], summary="who has looked at this patient's record")
    async def access_log(request: Request, id: str) -> Response:
        return await handle(request, lambda r: service(request).access_log(r, id))

    @app.get("/ig/audit.csv", tags=["audit"], summary="audit log as CSV (AuditEvent search parameters, since, until)")
    async def audit_csv(request: Request) -> Response:
        _accept_csv(request)
        chosen: list[AuditFilter] = []

        async def call(r: FhirRequest) -> FhirResponse:
            chosen.append(await service(request).csv_filter(r))
            return FhirResponse(200)

        response = await handle(request, call)
        if not chosen:
            return response  # refused: an OperationOutcome
        return StreamingResponse(_encoded(service(request).csv_chunks(chosen[0])), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="audit.csv"'})

    reports = {
        "/ig/reports/user-activity": AuditService.user_activity,
        "/ig/reports/patient-access": AuditService.patient_access,
        "/ig/reports/break-glass": AuditService.break_glass_report,
        "/ig/alerts": AuditService.alerts,
        "/ig/break-glass": AuditService.review_queue,
    }
    for path, method in reports.items():
        app.add_api_route(path, _report_route(handle, service, method), methods=["GET"], tags=["audit"])

    @app.post("/ig/break-glass/{seq}/review", tags=["audit"], summary="review a break-glass access")
    async def review(request: Request, seq: str) -> Response:
        return await handle(request, lambda r: service(request).review(r, seq))


def _report_route(handle: Handle, service: Callable[[Request], AuditService],
                  method: Callable[[AuditService, FhirRequest], Awaitable[FhirResponse]]) -> Callable[..., Any]:
    async def route(request: Request) -> Response:
        return await handle(request, lambda r: method(service(request), r))
    route.__name__ = method.__name__
    return route


def _accept_csv(request: Request) -> None:
    """Let `Accept: text/csv` through `handle`'s FHIR format check (it accepts JSON or */* only)."""
    accept = request.headers.get("accept", "")
    if "text/csv" in accept.lower():
        request.scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"accept"]
        request.__dict__.pop("_headers", None)  # Starlette caches the parsed headers


async def _encoded(chunks: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk.encode()
