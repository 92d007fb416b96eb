"""The FHIR RESTful interactions, independent of the web framework.

Each handler takes a `FhirRequest` (method, path parts, query items, headers, body, principal)
and returns a `FhirResponse` of bytes, or raises `FhirError`. The web layer (engine/api) only
authenticates, builds the request and renders the response. Reads and searches go through the
access gate; writes through engine/fhir/writes.py, which asks the same gate.

https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from engine import outcomes
from engine.access import AccessGate
from engine.auth import Principal
from engine.db.database import Database
from engine.db.repository import Stored, format_instant, utc_now
from engine.fhir import negotiation, writes
from engine.fhir.bundles import Entry, bundle_bytes, resource_summary, resource_with_elements
from engine.fhir.negotiation import FHIR_JSON
from engine.outcomes import FhirError
from engine.search.normalise import parse_fhir_date_range
from engine.search.paging import decode_cursor
from engine.search.params import SearchError, SearchRequest, parse_search
from engine.search.registry import SUPPORTED_TYPES


@dataclass
class FhirRequest:
    method: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes
    principal: Principal
    base_url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


@dataclass
class FhirResponse:
    status: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = FHIR_JSON


# Accepted and ignored on every request: formatting, and `_totalMethod`, a non-standard hint that
# widely used clients (fhirpy's count()) send; `total` is always accurate here anyway.
_CONTROL_PARAMS = {"_format", "_pretty", "_totalMethod"}


# A search that matched data the requester may not see says so, never how much (https://hl7.org/fhir/R4/
# search.html#errors: an OperationOutcome entry with search.mode "outcome").
WITHHELD_OUTCOME = orjson.dumps(outcomes.operation_outcome([outcomes.OutcomeIssue(
    code="suppressed", severity="information", details_code="withheld-by-policy",
    diagnostics="Some results were withheld by policy (the patient's sharing preferences or the data's "
                "sensitivity)")]))


class FhirService:
    """The FHIR interactions over one store, gate and configuration."""

    def __init__(self, db: Database, gate: AccessGate, *, max_body_bytes: int, default_count: int,
                 max_count: int) -> None:
        self.db = db
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        self.default_count = default_count
        self.max_count = max_count

    # -- reads --------------------------------------------------------------------------------

    async def read(self, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
        writes.check_type(res_type)
        stored = await self.gate.read(req.principal, res_type, res_id)
        return self._resource_response(req, stored, 200)

    async def vread(self, req: FhirRequest, res_type: str, res_id: str, version: str) -> FhirResponse:
        writes.check_type(res_type)
        stored = await self.gate.vread(req.principal, res_type, res_id, negotiation.parse_version(version))
        return self._resource_response(req, stored, 200)

    async def search(self, req: FhirRequest, res_type: str, items: Sequence[tuple[str, str]]) -> FhirResponse:
        writes.check_type(res_type)
        request = self._parse_search(req, res_type, items)
        page = await self.gate.search(req.principal, request)
        base = f"{req.base_url}/{res_type}"
        links = [("self", _link(base, request.items, None))]
        if page.next_cursor:
            links.append(("next", _link(base, request.items, page.next_cursor)))
        if page.prev_cursor:
            links.append(("previous", _link(base, request.items, page.prev_cursor)))
        entries = [self._search_entry(req, row, "match", request) for row in page.rows]
        entries += [self._search_entry(req, row, "include", None) for row in page.included]
        if page.withheld:
            entries.append(Entry({"search": {"mode": "outcome"}}, WITHHELD_OUTCOME))
        body = bundle_bytes("searchset", entries, total=page.total, links=links)
        return FhirResponse(200, body)

    def _parse_search(self, req: FhirRequest, res_type: str, items: Sequence[tuple[str, str]]) -> SearchRequest:
        lenient = negotiation.prefer_lenient(req.header("prefer"))
        honoured = [(k, v) for k, v in items if k not in _CONTROL_PARAMS]
        try:
            request = parse_search(res_type, honoured, lenient=lenient, default_count=self.default_count,
                                   max_count=self.max_count)
            if request.cursor:
                decode_cursor(request.cursor, request)  # refused here, before the gate runs the search
            return request
        except SearchError as exc:
            raise outcomes.bad_request(exc.message, (exc.param,), "bad-search-parameter") from None

    def _search_entry(self, req: FhirRequest, row: Any, mode: str, request: SearchRequest | None) -> Entry:
        content: str | bytes = row.content
        if request is not None and request.elements:
            content = resource_with_elements(row.content, request.elements)
        elif request is not None and request.summary in {"true", "text", "data"}:
            content = resource_summary(row.content, request.summary)
        return Entry({"fullUrl": f"{req.base_url}/{row.res_type}/{row.res_id}", "search": {"mode": mode}}, content)

    async def history(self, req: FhirRequest, res_type: str | None, res_id: str | None) -> FhirResponse:
        if res_type:
            writes.check_type(res_type)
        allowed = {"_count", "_since", "_at", "_cursor", "_format", "_pretty"}
        unknown = [k for k, _ in req.query if k not in allowed]
        if unknown and not negotiation.prefer_lenient(req.header("prefer")):
            raise outcomes.bad_request(f"Unknown history parameter {unknown[0]}", (unknown[0],), "bad-parameter")
        count = _count(req.param("_count"), self.default_count, self.max_count)
        since = parse_instant(req.param("_since"), "_since")
        at = parse_instant(req.param("_at"), "_at", high=True)
        after = _decode_history_cursor(req.param("_cursor"))
        page, total = await self.gate.history(
            req.principal, res_type, res_id, since=since, at=at, count=count, after=after
        )
        path = "/".join(p for p in (req.base_url, res_type, res_id, "_history") if p)
        kept = [(k, v) for k, v in req.query if k in {"_count", "_since", "_at"}]
        links = [("self", _link(path, kept, req.param("_cursor")))]
        if page.next_cursor:
            links.append(("next", _link(path, kept, _encode_history_cursor(page.next_cursor))))
        entries = [self._history_entry(req, version) for version in page.versions]
        return FhirResponse(200, bundle_bytes("history", entries, total=total, links=links))

    def _history_entry(self, req: FhirRequest, version: Stored) -> Entry:
        url = f"{req.base_url}/{version.res_type}/{version.res_id}"
        request_url = f"{version.res_type}/{version.res_id}" if version.method != "POST" else version.res_type
        fields: dict[str, Any] = {"fullUrl": url, "request": {"method": version.method, "url": request_url}}
        status = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}.get(version.method, "200 OK")
        fields["response"] = {
            "status": status,
            "etag": version.etag,
            "lastModified": format_instant(version.last_updated),
        }
        return Entry(fields, version.content)

    async def everything(self, req: FhirRequest, patient_id: str) -> FhirResponse:
        """Patient/[id]/$everything with `_since`, `_type`, `_count` and paging links."""
        allowed = {"_count", "_since", "_type", "_cursor", "_format", "_pretty", "start", "end"}
        unknown = [k for k, _ in req.query if k not in allowed]
        if unknown and not negotiation.prefer_lenient(req.header("prefer")):
            raise outcomes.bad_request(f"Unknown $everything parameter {unknown[0]}", (unknown[0],), "bad-parameter")
        count = _count(req.param("_count"), self.default_count, self.max_count)
        since = parse_instant(req.param("_since"), "_since")
        types = _types(req.param("_type"))
        after_pk, snapshot = _decode_pk_cursor(req.param("_cursor"))
        page, next_pk, snapshot, withheld = await self.gate.everything(
            req.principal, patient_id, types=types, since=since, count=count, after_pk=after_pk, snapshot_pk=snapshot
        )
        entries = [
            Entry({"fullUrl": f"{req.base_url}/{s.res_type}/{s.res_id}", "search": {"mode": "match"}}, s.content)
            for s in page
            if not (s.res_type == "Patient" and s.res_id == patient_id and after_pk is not None)
        ]
        path = f"{req.base_url}/Patient/{patient_id}/$everything"
        kept = [(k, v) for k, v in req.query if k in {"_count", "_since", "_type"}]
        links = [("self", _link(path, kept, req.param("_cursor")))]
        if next_pk is not None:
            links.append(("next", _link(path, kept, _encode_pk_cursor(next_pk, snapshot))))
        if withheld:
            entries.append(Entry({"search": {"mode": "outcome"}}, WITHHELD_OUTCOME))
        return FhirResponse(200, bundle_bytes("searchset", entries, links=links))

    async def access_explain(self, req: FhirRequest, patient_id: str) -> FhirResponse:
        """`Patient/[id]/$access-explain?user=&role=&org=[&break-glass=true]` for IG officers."""
        from engine.access_explain import Subject, explain_access

        role = req.param("role")
        if not role:
            raise outcomes.bad_request("Say whose access to explain: role= (and user=, org=)", ("role",),
                                       "missing-parameter")
        subject = Subject(user_id=req.param("user") or "(any user)", role=role, org=req.param("org"),
                          break_glass=(req.param("break-glass") or "").lower() == "true")
        return FhirResponse(200, orjson.dumps(await explain_access(self.gate, req.principal, patient_id, subject)))

    # -- writes -------------------------------------------------------------------------------

    async def create(self, req: FhirRequest, res_type: str) -> FhirResponse:
        return await self._refusal_audited(req, "create", res_type, self._create(req, res_type))

    async def _create(self, req: FhirRequest, res_type: str) -> FhirResponse:
        writes.check_type(res_type)
        body = negotiation.parse_body(req.header("content-type"), req.body, self.max_body_bytes)
        resource = writes.validated(body, res_type)
        async with self.db.write() as conn:
            result = await writes.create(
                conn, self.gate, req.principal, resource, now=utc_now(), if_none_exist=req.header("if-none-exist")
            )
        return self._write_response(req, result)

    async def update(self, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
        return await self._refusal_audited(req, "update", f"{res_type}/{res_id}", self._update(req, res_type, res_id))

    async def _update(self, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
        writes.check_type(res_type)
        body = negotiation.parse_body(req.header("content-type"), req.body, self.max_body_bytes)
        resource = writes.validated(body, res_type)
        if_match = negotiation.parse_if_match(req.header("if-match"))
        async with self.db.write() as conn:
            result = await writes.update(conn, self.gate, req.principal, resource, res_id, now=utc_now(),
                                         if_match=if_match)
        return self._write_response(req, result)

    async def conditional_update(self, req: FhirRequest, res_type: str) -> FhirResponse:
        return await self._refusal_audited(req, "update", res_type, self._conditional_update(req, res_type))

    async def _conditional_update(self, req: FhirRequest, res_type: str) -> FhirResponse:
        writes.check_type(res_type)
        criteria = urlencode([(k, v) for k, v in req.query if k not in _CONTROL_PARAMS])
        body = negotiation.parse_body(req.header("content-type"), req.body, self.max_body_bytes)
        resource = writes.validated(body, res_type)
        if_match = negotiation.parse_if_match(req.header("if-match"))
        async with self.db.write() as conn:
            result = await writes.conditional_update(conn, self.gate, req.principal, resource, criteria,
                                                     now=utc_now(), if_match=if_match)
        return self._write_response(req, result)

    async def delete(self, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
        return await self._refusal_audited(req, "delete", f"{res_type}/{res_id}", self._delete(req, res_type, res_id))

    async def _delete(self, req: FhirRequest, res_type: str, res_id: str) -> FhirResponse:
        writes.check_type(res_type)
        async with self.db.write() as conn:
            result = await writes.delete(conn, self.gate, req.principal, res_type, res_id, now=utc_now())
        return _delete_response(result)

    async def conditional_delete(self, req: FhirRequest, res_type: str) -> FhirResponse:
        return await self._refusal_audited(req, "delete", res_type, self._conditional_delete(req, res_type))

    async def _conditional_delete(self, req: FhirRequest, res_type: str) -> FhirResponse:
        writes.check_type(res_type)
        criteria = urlencode([(k, v) for k, v in req.query if k not in _CONTROL_PARAMS])
        async with self.db.write() as conn:
            result = await writes.conditional_delete(conn, self.gate, req.principal, res_type, criteria,
                                                     now=utc_now())
        return _delete_response(result)

    async def bundle(self, req: FhirRequest) -> FhirResponse:
        from engine.fhir.transaction import process_bundle

        body = negotiation.parse_body(req.header("content-type"), req.body, self.max_body_bytes)
        response = await process_bundle(self, req, body)
        return FhirResponse(200, orjson.dumps(response))

    async def _refusal_audited(self, req: FhirRequest, subtype: str, target: str,
                               work: Awaitable[FhirResponse]) -> FhirResponse:
        """A write that fails is audited on its own (a successful one commits its record with the data)."""
        try:
            return await work
        except FhirError as error:
            await self.gate.audit_refusal(req.principal, subtype, target, error)
            raise

    # -- responses ----------------------------------------------------------------------------

    def _resource_response(self, req: FhirRequest, stored: Stored, status: int) -> FhirResponse:
        headers = {"ETag": stored.etag, "Last-Modified": stored.last_modified}
        body = (stored.content or "").encode()
        elements = req.param("_elements")
        summary = req.param("_summary")
        if elements:
            body = resource_with_elements(stored.content or "{}", [e.strip() for e in elements.split(",")])
        elif summary in {"true", "text", "data"}:
            body = resource_summary(stored.content or "{}", summary)
        return FhirResponse(status, body, headers)

    def _write_response(self, req: FhirRequest, result: writes.WriteResult) -> FhirResponse:
        stored = result.stored
        assert stored is not None
        location = f"{req.base_url}/{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"
        headers = {"ETag": stored.etag, "Last-Modified": stored.last_modified, "Location": location}
        if result.created:
            headers["Content-Location"] = location
        mode = negotiation.prefer_return(req.header("prefer"))
        if mode == "minimal":
            return FhirResponse(result.status, None, headers)
        if mode == "OperationOutcome":
            outcome = result.outcome or outcomes.informational(
                f"{stored.res_type}/{stored.res_id} stored as version {stored.version_id}"
            )
            return FhirResponse(result.status, orjson.dumps(outcome), headers)
        return FhirResponse(result.status, (stored.content or "").encode(), headers)


def _delete_response(result: writes.WriteResult) -> FhirResponse:
    if result.stored is None:
        return FhirResponse(204)
    body = orjson.dumps(outcomes.informational(
        f"{result.stored.res_type}/{result.stored.res_id} deleted (version {result.stored.version_id})"
    ))
    return FhirResponse(200, body, {"ETag": result.stored.etag})


# -- small parsers --------------------------------------------------------------------------------


def _link(base: str, items: Sequence[tuple[str, str]], cursor: str | None) -> str:
    params = list(items) + ([("_cursor", cursor)] if cursor else [])
    return f"{base}?{urlencode(params)}" if params else base


def _count(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise outcomes.bad_request(f"_count must be a whole number, not {value!r}", ("_count",), "bad-count")
    return min(int(value), maximum)


def parse_instant(value: str | None, name: str, *, high: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        low, top = parse_fhir_date_range(value)
    except ValueError:
        raise outcomes.bad_request(f"{name} must be a FHIR instant or date, not {value!r}", (name,),
                                   "bad-date") from None
    return top if high else low


def _types(value: str | None) -> list[str] | None:
    if not value:
        return None
    types = [t.strip() for t in value.split(",") if t.strip()]
    for res_type in types:
        if res_type not in SUPPORTED_TYPES:
            raise outcomes.bad_request(f"_type names an unsupported resource type {res_type!r}", ("_type",),
                                       "bad-type")
    return types


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_history_cursor(cursor: tuple[datetime, int, int]) -> str:
    moment, pk, version = cursor
    return _b64(orjson.dumps([moment.isoformat(), pk, version]))


def _decode_history_cursor(value: str | None) -> tuple[datetime, int, int] | None:
    if not value:
        return None
    try:
        moment, pk, version = orjson.loads(_unb64(value))
        return datetime.fromisoformat(moment), int(pk), int(version)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise outcomes.bad_request("The paging cursor is not one this server issued", ("_cursor",),
                                   "bad-cursor") from None


def _encode_pk_cursor(after_pk: int, snapshot: int) -> str:
    return _b64(orjson.dumps([after_pk, snapshot]))


def _decode_pk_cursor(value: str | None) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    try:
        after_pk, snapshot = orjson.loads(_unb64(value))
        return int(after_pk), int(snapshot)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise outcomes.bad_request("The paging cursor is not one this server issued", ("_cursor",),
                                   "bad-cursor") from None

