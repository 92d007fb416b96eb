"""Reports over the audit log for information-governance officers (and the CLI): a user's activity,
a patient's access log, the break-glass log and review queue, alerts, and the CSV export.

Each report is plain JSON-ready data; the HTTP layer (engine/audit/service.py) adds authorisation
and audits the officer's own look, the CLI prints. Rows share one shape, `access_row`.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import outcomes
from engine.audit import alerts as alert_rules
from engine.audit.events import (
    PATIENT_ROLE,
    PURPOSE_DISPLAYS,
    RBAC_ROLE_NAMES,
    REST,
    SECURITY_ALERT,
    SUCCESS,
    AuditRecord,
    format_instant,
)
from engine.audit.log import append
from engine.audit.query import AuditFilter, iterate, read_entry
from engine.audit.schema import REVIEW_OUTCOMES, break_glass_reviews
from engine.db.database import Database
from engine.outcomes import FhirError

Entry = tuple[int, AuditRecord]

CSV_COLUMNS = ("seq", "recorded", "kind", "user_id", "user_name", "role", "org", "purpose", "action", "subtype",
               "outcome", "patients", "entities", "operation", "query", "break_glass_reason", "denied_reason",
               "failure")


def access_row(seq: int, record: AuditRecord) -> dict[str, Any]:
    """One audit entry as a report row (JSON)."""
    row: dict[str, Any] = {
        "auditEvent": f"AuditEvent/{seq}", "recorded": format_instant(record.recorded), "kind": record.kind,
        "user": record.user_id, "userName": record.user_name, "role": record.role,
        "roleName": role_name(record.role), "organisation": record.org,
        "purpose": record.purpose, "purposeName": PURPOSE_DISPLAYS.get(record.purpose, record.purpose),
        "action": record.action, "subtype": record.subtype, "outcome": record.outcome,
        "patients": list(record.patient_ids), "entities": list(record.entities),
    }
    optional = {"operation": record.operation, "breakGlassReason": record.break_glass_reason,
                "deniedReason": record.denied_reason, "failure": record.failure}
    row.update({k: v for k, v in optional.items() if v})
    return row


def role_name(role: str) -> str:
    """A role a reader understands: the RBAC job role name, or "Patient"."""
    return "Patient" if role == PATIENT_ROLE else RBAC_ROLE_NAMES.get(role, role)


def csv_row(seq: int, record: AuditRecord) -> list[str]:
    return [str(seq), format_instant(record.recorded), record.kind, record.user_id, record.user_name, record.role,
            record.org or "", record.purpose, record.action, record.subtype, record.outcome,
            " ".join(record.patient_ids), " ".join(record.entities), record.operation or "", record.query or "",
            record.break_glass_reason or "", record.denied_reason or "", record.failure or ""]


async def csv_chunks(db: Database, found: AuditFilter, *, rows_per_chunk: int = 200) -> AsyncIterator[str]:
    """The CSV export (header first, oldest first), in chunks of text suitable for streaming."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    async for seq, record in iterate(db, found, oldest_first=True):
        writer.writerow([_csv_safe(v) for v in csv_row(seq, record)])
        count += 1
        if count % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas in free text (OWASP CSV injection)."""
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


async def _entries(db: Database, found: AuditFilter) -> list[Entry]:
    return [entry async for entry in iterate(db, found)]


async def user_activity(db: Database, user_id: str, *, since: datetime | None = None,
                        until: datetime | None = None, limit: int = 100) -> dict[str, Any]:
    """What one user did: counts by action, subtype and outcome, patients touched, the latest `limit` rows."""
    entries = await _entries(db, AuditFilter(users=[user_id], since=since, until=until))
    records = [r for _, r in entries]
    patients = {p for r in records for p in r.patient_ids}
    return {
        "report": "user-activity", "user": user_id, "userName": records[0].user_name if records else None,
        "total": len(records), "first": _when(records[-1]) if records else None,
        "last": _when(records[0]) if records else None,
        "byAction": dict(Counter(r.action for r in records)), "bySubtype": dict(Counter(r.subtype for r in records)),
        "byOutcome": dict(Counter(r.outcome for r in records)), "distinctPatients": len(patients),
        "breakGlass": sum(1 for r in records if r.break_glass and r.kind == REST),
        "denied": sum(1 for r in records if r.denied),
        "entries": [access_row(seq, r) for seq, r in entries[:limit]],
    }


async def patient_access(db: Database, patient_id: str, *, since: datetime | None = None,
                         until: datetime | None = None) -> dict[str, Any]:
    """Who accessed a patient's record, grouped by user, organisation and role (IG officers' view)."""
    entries = await _entries(db, AuditFilter(patients=[patient_id], kinds=[REST], since=since, until=until))
    groups: dict[tuple[str, str | None, str], list[Entry]] = {}
    for seq, record in entries:
        groups.setdefault((record.user_id, record.org, record.role), []).append((seq, record))
    return {
        "report": "patient-access", "patient": f"Patient/{patient_id}", "total": len(entries),
        "accessors": [_accessor(group) for group in groups.values()],
    }


def _accessor(group: list[Entry]) -> dict[str, Any]:
    records = [r for _, r in group]
    latest = records[0]
    return {
        "user": latest.user_id, "userName": latest.user_name, "organisation": latest.org, "role": latest.role,
        "roleName": role_name(latest.role), "count": len(records),
        "first": _when(records[-1]), "last": _when(latest), "purposes": sorted({r.purpose for r in records}),
        "denied": sum(1 for r in records if r.denied),
        "breakGlassReasons": sorted({r.break_glass_reason for r in records if r.break_glass_reason}),
    }


def _when(record: AuditRecord) -> str:
    return format_instant(record.recorded)


def patient_log_entry(seq: int, record: AuditRecord) -> dict[str, Any]:
    """One line of a patient's own access log: when, who, which organisation and role, why, what."""
    entry = {
        "when": _when(record), "organisation": record.org, "role": record.role,
        "roleName": role_name(record.role), "user": record.user_name,
        "purpose": record.purpose, "purposeName": PURPOSE_DISPLAYS.get(record.purpose, record.purpose),
        "action": record.subtype, "what": [e for e in record.entities if not e.startswith("Patient/")],
        "auditEvent": f"AuditEvent/{seq}",
    }
    if record.break_glass_reason:
        entry["breakGlassReason"] = record.break_glass_reason
    return entry


def patient_log_filter(patient_id: str) -> AuditFilter:
    """What a patient's access log shows: successful interactions with their record."""
    return AuditFilter(patients=[patient_id], kinds=[REST], outcomes=[SUCCESS])


# -- break-glass ------------------------------------------------------------------------------------


def break_glass_filter(status: str, *, since: datetime | None = None, until: datetime | None = None) -> AuditFilter:
    """Security alerts raised by break-glass; `status` pending | reviewed | all."""
    reviewed = {"pending": False, "reviewed": True}.get(status)
    return AuditFilter(kinds=[SECURITY_ALERT], since=since, until=until, reviewed=reviewed)


async def reviews_for(conn: AsyncConnection, seqs: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    if not seqs:
        return {}
    rows = (await conn.execute(select(break_glass_reviews).where(break_glass_reviews.c.audit_seq.in_(seqs))
                               .order_by(break_glass_reviews.c.id))).all()
    found: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row.audit_seq, []).append(_review_json(row))
    return found


def _review_json(row: Any) -> dict[str, Any]:
    return {"reviewer": row.reviewer, "outcome": row.outcome, "note": row.note,
            "reviewedAt": format_instant(row.reviewed_at)}


def break_glass_item(seq: int, record: AuditRecord, reviews: list[dict[str, Any]]) -> dict[str, Any]:
    item = access_row(seq, record)
    item["status"] = "reviewed" if reviews else "pending"
    item["reviews"] = reviews
    return item


async def break_glass_log(db: Database, *, status: str = "all", since: datetime | None = None,
                          until: datetime | None = None) -> dict[str, Any]:
    """Every break-glass alert in the period with its reviews, and counts by review outcome and user."""
    entries = await _entries(db, break_glass_filter(status, since=since, until=until))
    async with db.read() as conn:
        reviews = await reviews_for(conn, [seq for seq, _ in entries])
    items = [break_glass_item(seq, record, reviews.get(seq, [])) for seq, record in entries]
    latest = Counter(item["reviews"][-1]["outcome"] for item in items if item["reviews"])
    return {
        "report": "break-glass", "total": len(items), "pending": sum(1 for i in items if not i["reviews"]),
        "byOutcome": dict(latest), "byUser": dict(Counter(i["user"] for i in items)), "entries": items,
    }


def check_review(outcome: Any, note: Any) -> tuple[str, str | None]:
    """A review's outcome and note, or a 400 OperationOutcome."""
    if outcome not in REVIEW_OUTCOMES:
        raise outcomes.bad_request(f"outcome must be one of {', '.join(REVIEW_OUTCOMES)}", ("outcome",),
                                   "bad-review")
    if note is not None and (not isinstance(note, str) or len(note) > 4000):
        raise outcomes.bad_request("note must be text of at most 4000 characters", ("note",), "bad-review")
    return outcome, (note or None)


def not_an_alert(seq: object) -> FhirError:
    return outcomes.error(404, "not-found", f"AuditEvent/{seq} is not a break-glass alert", details_code="not-found")


async def record_review(conn: AsyncConnection, seq: int, *, reviewer: str, outcome: str, note: str | None,
                        now: datetime, audit: AuditRecord) -> dict[str, Any]:
    """Record a review of break-glass alert `seq` and its audit record in the caller's write transaction."""
    entry = await read_entry(conn, seq)
    if entry is None or entry[1].kind != SECURITY_ALERT:
        raise not_an_alert(seq)
    await conn.execute(insert(break_glass_reviews).values(audit_seq=seq, reviewer=reviewer, outcome=outcome,
                                                          note=note, reviewed_at=now))
    await append(conn, [replace(audit, patient_ids=entry[1].patient_ids)])
    return {"auditEvent": f"AuditEvent/{seq}", "reviewer": reviewer, "outcome": outcome, "note": note,
            "reviewedAt": format_instant(now)}


# -- alerts ------------------------------------------------------------------------------------------


async def alerts(db: Database, *, since: datetime, until: datetime,
                 config: alert_rules.AlertConfig) -> dict[str, Any]:
    """The alert rules over [since, until)."""
    entries = [e async for e in iterate(db, AuditFilter(since=since, until=until), oldest_first=True)]
    found = alert_rules.all_alerts(entries, config)
    return {"report": "alerts", "since": format_instant(since), "until": format_instant(until),
            "total": len(found), "alerts": [a.to_json() for a in found]}
