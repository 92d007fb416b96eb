"""Transfer-of-care document endpoints: $transfer-of-care, Composition $document, HTML rendering, receiving documents.

Thin: each route authenticates through `handle` and calls engine/documents/service.py.

- POST /fhir/Encounter/{id}/$transfer-of-care?type=…   → 201, the document Bundle; Location: the DocumentReference
- GET  /fhir/Composition/{id}/$document                → the stored document Bundle
- GET  /fhir/Composition/{id}/$render, /fhir/DocumentReference/{id}/$render → text/html, printable
- GET  /fhir/Bundle/{id}                               → a stored document Bundle (DocumentReference attachment url)
- POST /fhir/$submit-document                          → 201, a DocumentReference for a document made elsewhere
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.responses import Response

from engine.db.repository import Stored, utc_now
from engine.documents import service
from engine.documents.html_page import render_document
from engine.fhir import negotiation
from engine.fhir.rest import FhirRequest, FhirResponse

Handle = Callable[[Request, Callable[[FhirRequest], Awaitable[FhirResponse]]], Awaitable[Response]]
ResourceId = Annotated[str, Path(description="A FHIR logical id", max_length=64)]

HTML = "text/html; charset=utf-8"
# The rendering is a page of text and tables: no script, no frame, no form, nothing fetched.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def install(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any]) -> None:
    """Add this module's routes; `handle` authenticates and renders like every /fhir route."""

    @app.post("/fhir/Encounter/{id}/$transfer-of-care", tags=["documents"],
              summary="Generate a transfer-of-care document for an encounter")
    async def transfer_of_care(request: Request, id: ResourceId) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            doc_type = r.param("type")
            if not doc_type:
                service.definition_for("")  # 400 naming the allowed types
            state = state_of(request)
            issued = await service.issue_document(state.db, state.gate, r.principal, id, doc_type or "",
                                                  now=utc_now(), base_url=r.base_url)
            location = f"{r.base_url}/DocumentReference/{issued.document_reference_id}/_history/" \
                       f"{issued.reference_version}"
            return FhirResponse(201, issued.bundle_json.encode(), {"Location": location})
        return await handle(request, call)

    @app.get("/fhir/Composition/{id}/$document", tags=["documents"], summary="The stored document Bundle")
    async def composition_document(request: Request, id: ResourceId) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            stored = await service.document_bundle(state_of(request).gate, r.principal, id)
            return _bundle_response(stored)
        return await handle(request, call)

    @app.get("/fhir/Bundle/{id}", tags=["documents"], summary="Read a stored document Bundle")
    async def read_bundle(request: Request, id: ResourceId) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            return _bundle_response(await service.read_bundle(state_of(request).gate, r.principal, id))
        return await handle(request, call)

    @app.get("/fhir/Composition/{id}/$render", tags=["documents"], summary="A document as printable HTML")
    async def composition_render(request: Request, id: ResourceId) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            return _html(await service.document_bundle(state_of(request).gate, r.principal, id))
        return await handle(_accepting_html(request), call)

    @app.get("/fhir/DocumentReference/{id}/$render", tags=["documents"], summary="A document as printable HTML")
    async def reference_render(request: Request, id: ResourceId) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            return _html(await service.document_for_reference(state_of(request).gate, r.principal, id))
        return await handle(_accepting_html(request), call)

    @app.post("/fhir/$submit-document", tags=["documents"], summary="Receive a document Bundle made elsewhere")
    async def submit_document(request: Request) -> Response:
        async def call(r: FhirRequest) -> FhirResponse:
            state = state_of(request)
            body = negotiation.parse_body(r.header("content-type"), r.body, state.settings.max_body_bytes)
            issued = await service.submit_document(state.db, state.gate, r.principal, body, now=utc_now())
            location = f"{r.base_url}/DocumentReference/{issued.document_reference_id}/_history/" \
                       f"{issued.reference_version}"
            return FhirResponse(201, issued.reference_json.encode(), {"Location": location})
        return await handle(request, call)


def _bundle_response(stored: Stored) -> FhirResponse:
    return FhirResponse(200, (stored.content or "").encode(), {"ETag": stored.etag,
                                                               "Last-Modified": stored.last_modified})


def _html(stored: Stored) -> FhirResponse:
    page = render_document(orjson.loads(stored.content or "{}"))
    return FhirResponse(200, page.encode("utf-8"), dict(HTML_HEADERS), media_type=HTML)


def _accepting_html(request: Request) -> Request:
    """The render routes answer HTML: an Accept that allows text/html passes the FHIR format check.

    `handle` negotiates FHIR JSON for every route; here the representation is HTML, so an Accept
    naming text/html (or nothing) is replaced by */* before it, and anything else still gets 406.
    """
    accept = request.headers.get("accept") or ""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if accept and not types & {"text/html", "text/*", "*/*"}:
        return request
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"accept"] + [(b"accept", b"*/*")]
    return Request({**request.scope, "headers": headers}, request.receive)

