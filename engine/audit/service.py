"""The IG officer's and the patient's views of the audit log, independent of the web framework.

Each handler takes a `FhirRequest`, checks who is asking, does its work and audits the look
itself (successful or refused) before it answers: an officer's searches are accountable too, and
if that audit cannot be committed the caller gets an error, never data.

Who may ask: the IG roles (`IG_ROLES`, R8012 Information Officer) for everything; a patient-facing
token of the patient themself (fhirUser `Patient/<id>` = launch patient `id`) for
`Patient/{id}/$access-log`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from consent.policy import load_policy
from engine import outcomes
from engine.audit import alerts as alert_rules
from engine.audit import reports
from engine.audit.events import MINOR_FAILURE, UPDATE, AuditRecord, record_for, to_audit_event
from engine.audit.log import AuditWriter, record_now
from engine.audit.query import (
    SEARCH_PARAMS,
    AuditFilter,
    FilterError,
    parse_count,
    parse_cursor,
    parse_filter,
    parse_instant,
    read_entry,
    search_page,
)
from engine.auth import Principal
from engine.config import access_policy_path
from engine.db.database import Database
from engine.db.repository import utc_now
from engine.fhir.bundles import Entry, bundle_bytes
from engine.fhir.rest import FhirRequest, FhirResponse
from engine.outcomes import FhirError

# Roles that may read the audit log: those the consent policy's role table lets read AuditEvents
# (R8012 Information Officer by default; consent/policy.json).
_POLICY = load_policy(access_policy_path())
IG_ROLES = frozenset(code for code, grant in _POLICY.roles.items()
                     if grant.allows("read", "AuditEvent", _POLICY.governance_types))
JSON = "application/json"
_PERIOD_PARAMS = frozenset({"since", "until", "_format", "_pretty"})


@dataclass
class _Looked:
    """What a handler returns: the response and what the look touched (for its audit record)."""

    response: FhirResponse
    patients: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()


def is_ig_officer(who: Principal) -> bool:
    return who.role in IG_ROLES


def is_patient_facing(who: Principal, patient_id: str) -> bool:
    """The patient themself: SMART fhirUser `Patient/<id>` matching the launch patient `patient_id`."""
    return who.own_patient == patient_id


def _require_ig(who: Principal) -> None:
    if not is_ig_officer(who):
        raise outcomes.forbidden("not-ig-officer", "The audit log is for information-governance officers")


def _bad(exc: FilterError) -> FhirError:
    return outcomes.bad_request(exc.message, (exc.param,), "bad-search-parameter")


class AuditService:
    """AuditEvent search and read, CSV export, reports, alerts, break-glass reviews and access logs."""

    def __init__(self, db: Database, *, writer: AuditWriter | None = None,
                 alert_config: alert_rules.AlertConfig | None = None, default_count: int = 50,
                 max_count: int = 1000, environ: Mapping[str, str] | None = None) -> None:
        self.db = db
        self.writer = writer
        self.alert_config = alert_config or alert_rules.config_from(os.environ if environ is None else environ)
        self.default_count = default_count
        self.max_count = max_count

    # -- auditing the look itself ----------------------------------------------------------------

    async def _audited(self, req: FhirRequest, subtype: str, operation: str, work: Callable[[], Awaitable[_Looked]],
                       *, allowed: Callable[[Principal], None] = _require_ig) -> FhirResponse:
        now = utc_now()
        query = urlencode(req.query) if req.query else None
        try:
            allowed(req.principal)
            looked = await work()
        except FhirError as error:
            await self._refused(req, now, subtype, operation, error)
            raise
        await self._record(record_for(req.principal, recorded=now, subtype=subtype, query=query, operation=operation,
                                      patient_ids=looked.patients, entities=looked.entities))
        return looked.response

    async def _refused(self, req: FhirRequest, now: datetime, subtype: str, operation: str,
                       error: FhirError) -> None:
        """Audit a look that was refused (403: `denied_reason` is the refusal's code) or failed (`failure`)."""
        refused = error.status == 403
        await self._record(record_for(
            req.principal, recorded=now, subtype=subtype, outcome=MINOR_FAILURE,
            query=urlencode(req.query) if req.query else None, operation=operation,
            denied_reason=(error.issues[0].details_code or "forbidden") if refused else None,
            failure=None if refused else f"{error.status} {error.issues[0].details_code or error.issues[0].code}"))

    async def _record(self, record: AuditRecord) -> None:
        await record_now(self.db, [record], self.writer)

    # -- FHIR AuditEvent -------------------------------------------------------------------------

    async def search(self, req: FhirRequest, items: list[tuple[str, str]] | None = None) -> FhirResponse:
        """GET /fhir/AuditEvent: a searchset Bundle of AuditEvents, newest first, with a `next` link."""
        items = req.query if items is None else items

        async def work() -> _Looked:
            try:
                found = parse_filter(items)
                count = parse_count(_param(items, "_count"), self.default_count, self.max_count)
                before = parse_cursor(_param(items, "_cursor"))
            except FilterError as exc:
                raise _bad(exc) from None
            async with self.db.read() as conn:
                page = await search_page(conn, found, count=count, before=before)
            base = f"{req.base_url}/AuditEvent"
            kept = [(k, v) for k, v in items if k not in {"_cursor", "_format", "_pretty"}]
            links = [("self", _url(base, items))]
            if page.next_cursor is not None:
                links.append(("next", _url(base, kept + [("_cursor", str(page.next_cursor))])))
            entries = [_audit_entry(req.base_url, seq, record) for seq, record in page.entries]
            return _Looked(FhirResponse(200, bundle_bytes("searchset", entries, total=page.total, links=links)),
                           patients=tuple(found.patients))

        return await self._audited(req, "search", "AuditEvent search", work)

    async def read(self, req: FhirRequest, res_id: str) -> FhirResponse:
        """GET /fhir/AuditEvent/{id}."""
        async def work() -> _Looked:
            entry = None
            if res_id.isdigit():
                async with self.db.read() as conn:
                    entry = await read_entry(conn, int(res_id))
            if entry is None:
                raise outcomes.not_found("AuditEvent", res_id)
            seq, record = entry
            return _Looked(FhirResponse(200, orjson.dumps(to_audit_event(record, seq))),
                           patients=record.patient_ids, entities=(f"AuditEvent/{seq}",))

        return await self._audited(req, "read", "AuditEvent read", work)

    async def not_allowed(self, req: FhirRequest) -> FhirResponse:
        raise outcomes.not_allowed("AuditEvents are written by the server only: the audit log is append-only")

    # -- IG endpoints ---------------------------------------------------------------------------

    async def csv_filter(self, req: FhirRequest) -> AuditFilter:
        """Authorise and audit a CSV export, returning its filter; the caller streams `csv_chunks`."""
        found: list[AuditFilter] = []

        async def work() -> _Looked:
            try:
                found.append(_period_filter(req.query, SEARCH_PARAMS | _PERIOD_PARAMS))
            except FilterError as exc:
                raise _bad(exc) from None
            return _Looked(FhirResponse(200), patients=tuple(found[0].patients))

        await self._audited(req, "operation", "audit CSV export", work)
        return found[0]

    def csv_chunks(self, found: AuditFilter) -> AsyncIterator[str]:
        return reports.csv_chunks(self.db, found)

    async def user_activity(self, req: FhirRequest) -> FhirResponse:
        async def work() -> _Looked:
            user = _required(req, "user")
            since, until = _period(req, {"user", "_count"})
            limit = _limit(req, self.max_count)
            report = await reports.user_activity(self.db, user, since=since, until=until, limit=limit)
            return _Looked(_json(report))

        return await self._audited(req, "operation", "user-activity report", work)

    async def patient_access(self, req: FhirRequest) -> FhirResponse:
        async def work() -> _Looked:
            patient = _required(req, "patient").removeprefix("Patient/")
            since, until = _period(req, {"patient"})
            report = await reports.patient_access(self.db, patient, since=since, until=until)
            return _Looked(_json(report), patients=(patient,))

        return await self._audited(req, "operation", "patient-access report", work)

    async def break_glass_report(self, req: FhirRequest) -> FhirResponse:
        async def work() -> _Looked:
            since, until = _period(req, {"status"})
            status = _status(req)
            report = await reports.break_glass_log(self.db, status=status, since=since, until=until)
            return _Looked(_json(report))

        return await self._audited(req, "operation", "break-glass report", work)

    async def review_queue(self, req: FhirRequest) -> FhirResponse:
        """GET /ig/break-glass?status=pending|reviewed|all (default pending), oldest first."""
        async def work() -> _Looked:
            since, until = _period(req, {"status"})
            report = await reports.break_glass_log(self.db, status=_status(req, "pending"), since=since,
                                                   until=until)
            report["report"] = "break-glass-queue"
            report["entries"].reverse()
            return _Looked(_json(report))

        return await self._audited(req, "operation", "break-glass review queue", work)

    async def review(self, req: FhirRequest, seq: str) -> FhirResponse:
        """POST /ig/break-glass/{seq}/review {"outcome": …, "note": …}: the review and its own audit
        record commit in one transaction; a refused or malformed review is audited as a failure."""
        now = utc_now()
        try:
            _require_ig(req.principal)
            outcome, note = _review_body(req.body)
            if not seq.isdigit():
                raise reports.not_an_alert(seq)
            audit = record_for(req.principal, recorded=now, subtype="update", action=UPDATE,
                               operation="break-glass review", entities=(f"AuditEvent/{seq}",))
            async with self.db.write() as conn:
                result = await reports.record_review(conn, int(seq), reviewer=req.principal.user_id,
                                                     outcome=outcome, note=note, now=now, audit=audit)
        except FhirError as error:
            await self._refused(req, now, "update", "break-glass review", error)
            raise
        return _json(result)

    async def alerts(self, req: FhirRequest) -> FhirResponse:
        """GET /ig/alerts?since=&until= (default: the last 24 hours)."""
        async def work() -> _Looked:
            since, until = _period(req, set())
            until = until or utc_now()
            since = since or until - timedelta(days=1)
            return _Looked(_json(await reports.alerts(self.db, since=since, until=until, config=self.alert_config)))

        return await self._audited(req, "operation", "unusual-access alerts", work)

    # -- the patient's view -----------------------------------------------------------------------

    async def access_log(self, req: FhirRequest, patient_id: str) -> FhirResponse:
        """GET /fhir/Patient/{id}/$access-log: who looked at the record, newest first (docs/audit.md)."""
        def allowed(who: Principal) -> None:
            if not (is_patient_facing(who, patient_id) or is_ig_officer(who)):
                raise outcomes.forbidden("not-your-record",
                                         "Only the patient (a patient token for this record) or an "
                                         "information-governance officer may see this access log")

        async def work() -> _Looked:
            try:
                _only(req.query, {"_count", "_cursor", "_format", "_pretty"})
                count = parse_count(req.param("_count"), self.default_count, self.max_count)
                before = parse_cursor(req.param("_cursor"))
            except FilterError as exc:
                raise _bad(exc) from None
            async with self.db.read() as conn:
                page = await search_page(conn, reports.patient_log_filter(patient_id), count=count, before=before)
            body: dict[str, Any] = {
                "patient": f"Patient/{patient_id}", "total": page.total,
                "entries": [reports.patient_log_entry(seq, record) for seq, record in page.entries],
            }
            if page.next_cursor is not None:
                body["next"] = _url(f"{req.base_url}/Patient/{patient_id}/$access-log",
                                    [("_count", str(count)), ("_cursor", str(page.next_cursor))])
            return _Looked(_json(body), patients=(patient_id,))

        return await self._audited(req, "operation", "$access-log", work, allowed=allowed)


# -- helpers ------------------------------------------------------------------------------------------


def _audit_entry(base_url: str, seq: int, record: AuditRecord) -> Entry:
    return Entry({"fullUrl": f"{base_url}/AuditEvent/{seq}", "search": {"mode": "match"}},
                 orjson.dumps(to_audit_event(record, seq)))


def _param(items: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in items if k == name), None)


def _url(base: str, items: list[tuple[str, str]]) -> str:
    return f"{base}?{urlencode(items)}" if items else base


def _json(data: Any) -> FhirResponse:
    return FhirResponse(200, orjson.dumps(data), media_type=JSON)


def _only(items: list[tuple[str, str]], allowed: set[str] | frozenset[str]) -> None:
    unknown = [k for k, _ in items if k not in allowed]
    if unknown:
        raise FilterError(unknown[0], f"Unknown parameter {unknown[0]!r}")


def _period_filter(items: list[tuple[str, str]], allowed: frozenset[str]) -> AuditFilter:
    """The search filter plus `since`/`until` (the CSV export's parameters)."""
    found = parse_filter([(k, v) for k, v in items if k not in {"since", "until"}], allowed=allowed)
    found.since = parse_instant("since", _param(items, "since"))
    found.until = parse_instant("until", _param(items, "until"))
    return found


def _period(req: FhirRequest, extra: set[str]) -> tuple[datetime | None, datetime | None]:
    try:
        _only(req.query, extra | _PERIOD_PARAMS | {"_count"})
        return parse_instant("since", req.param("since")), parse_instant("until", req.param("until"))
    except FilterError as exc:
        raise _bad(exc) from None


def _required(req: FhirRequest, name: str) -> str:
    value = (req.param(name) or "").strip()
    if not value:
        raise outcomes.bad_request(f"{name} is required", (name,), "missing-parameter")
    return value


def _limit(req: FhirRequest, maximum: int) -> int:
    try:
        return parse_count(req.param("_count"), 100, maximum)
    except FilterError as exc:
        raise _bad(exc) from None


def _status(req: FhirRequest, default: str = "all") -> str:
    status = req.param("status") or default
    if status not in {"pending", "reviewed", "all"}:
        raise outcomes.bad_request("status must be pending, reviewed or all", ("status",), "bad-status")
    return status


def _review_body(body: bytes) -> tuple[str, str | None]:
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise outcomes.bad_request('The review must be JSON: {"outcome": …, "note": …}', (), "bad-review") from None
    if not isinstance(data, dict):
        raise outcomes.bad_request('The review must be a JSON object', (), "bad-review")
    return reports.check_review(data.get("outcome"), data.get("note"))
