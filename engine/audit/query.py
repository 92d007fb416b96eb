"""Searching the audit log: parameters → filter → SQL, newest first, keyset paging on `seq`.

`AUDIT_EVENT_PARAMS` lists the parameters, one source for the parser and the CapabilityStatement
(engine/fhir/capability.py). They follow the AuditEvent search parameters
(https://hl7.org/fhir/R4/auditevent.html#search) where R4 has one, with `agent` matching the user id,
plus `organization` (the user's ODS code) and `purpose`; the result parameters are `_count` and
`_format`, and `_cursor` pages. Several values in one parameter (comma-separated) are alternatives;
different parameters, and repeated `date`s, must all hold. A token may be written `system|code`; the
code decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import orjson
from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.audit.events import ACTIONS, OUTCOMES, SUBTYPES, AuditRecord, record_from_json
from engine.audit.schema import RefersToEntities, audit_log, audit_patients, break_glass_reviews
from engine.db.database import Database
from engine.search.normalise import parse_fhir_date_range

DATE_PREFIXES = ("ge", "le", "gt", "lt", "eq")


@dataclass(frozen=True, slots=True)
class AuditSearchParam:
    """One AuditEvent search parameter: its FHIR search type (https://hl7.org/fhir/R4/search.html#ptypes),
    the `AuditFilter` list its values go to (None for `date`) and what a value matches."""

    type: str
    field: str | None
    documentation: str


AUDIT_EVENT_PARAMS: Mapping[str, AuditSearchParam] = MappingProxyType({
    "patient": AuditSearchParam("reference", "patients", "The patient whose record was touched: Patient/[id] or [id]"),
    "agent": AuditSearchParam("token", "users", "The user's id (AuditEvent.agent.who.identifier)"),
    "entity": AuditSearchParam("reference", "entities",
                               "A resource touched: [type]/[id] or its URL (any version of it)"),
    "organization": AuditSearchParam("token", "orgs", "The user's organisation (ODS code)"),
    "agent-role": AuditSearchParam("token", "roles", "The user's NHS RBAC job role code"),
    "action": AuditSearchParam("token", "actions", "AuditEvent.action: " + ", ".join(sorted(ACTIONS))),
    "outcome": AuditSearchParam("token", "outcomes", "AuditEvent.outcome: " + ", ".join(sorted(OUTCOMES, key=int))),
    "purpose": AuditSearchParam("token", "purposes", "The purpose of use (v3-ActReason code, e.g. TREAT or BTG)"),
    "subtype": AuditSearchParam("token", "subtypes", "The interaction: " + ", ".join(sorted(SUBTYPES))),
    "date": AuditSearchParam("date", None, "When it was recorded (prefixes " + ", ".join(DATE_PREFIXES)
                             + "); repeat for a range"),
})
RESULT_PARAMS = ("_count", "_format")
"""What shapes the result; `_cursor` (the paging position of `next` links) and `_pretty` are accepted too."""
_LIST_PARAMS = {code: param.field for code, param in AUDIT_EVENT_PARAMS.items() if param.field}
SEARCH_PARAMS = frozenset({*AUDIT_EVENT_PARAMS, *RESULT_PARAMS, "_cursor", "_pretty"})


class FilterError(ValueError):
    """A search parameter this server cannot honour; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass
class AuditFilter:
    """What to select from the log; an empty filter selects everything."""

    patients: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    orgs: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=list)
    subtypes: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    since: datetime | None = None  # recorded >= since
    until: datetime | None = None  # recorded < until
    dates: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # (prefix, low, high)
    reviewed: bool | None = None  # security alerts with (True) or without (False) a break-glass review


@dataclass
class AuditPage:
    entries: list[tuple[int, AuditRecord]]
    next_cursor: int | None
    total: int | None = None


def parse_filter(items: Sequence[tuple[str, str]], *, allowed: frozenset[str] = SEARCH_PARAMS) -> AuditFilter:
    """An `AuditFilter` from query items; raises `FilterError` for unknown or malformed parameters."""
    found = AuditFilter()
    for name, value in items:
        if name not in allowed:
            raise FilterError(name, f"Unknown AuditEvent search parameter {name!r}")
        if name in _LIST_PARAMS:
            getattr(found, _LIST_PARAMS[name]).extend(_values(name, value))
        elif name == "date":
            found.dates.append(_date(value))
    _check_codes(found)
    return found


def _values(name: str, value: str) -> list[str]:
    values = [v.strip().split("|")[-1] for v in value.split(",") if v.strip()]
    if not values:
        raise FilterError(name, f"{name} needs a value")
    if name == "patient":
        values = [v.removeprefix("Patient/") for v in values]
    if name == "entity":
        values = ["/".join(v.split("/_history/")[0].split("/")[-2:]) for v in values]
    return values


def _check_codes(found: AuditFilter) -> None:
    for param, values, known in (("action", found.actions, ACTIONS), ("outcome", found.outcomes, OUTCOMES),
                                 ("subtype", found.subtypes, SUBTYPES)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise FilterError(param, f"{param} {unknown[0]!r} is not one of {', '.join(sorted(known))}")


def _date(value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        low, high = parse_fhir_date_range(text)
    except ValueError:
        raise FilterError("date", f"date must be a FHIR date or instant with an optional prefix "
                                  f"({', '.join(DATE_PREFIXES)}), not {value!r}") from None
    return prefix, low, high


def parse_instant(name: str, value: str | None) -> datetime | None:
    """The start of the FHIR date or instant `value` (None if absent), for `since`/`until` bounds."""
    if not value:
        return None
    try:
        return parse_fhir_date_range(value)[0]
    except ValueError:
        raise FilterError(name, f"{name} must be a FHIR date or instant, not {value!r}") from None


def parse_count(value: str | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise FilterError("_count", f"_count must be a positive whole number, not {value!r}")
    return min(int(value), maximum)


def parse_cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise FilterError("_cursor", "The paging cursor is not one this server issued")
    return int(value)


def where_clause(found: AuditFilter) -> ColumnElement[bool]:
    c = audit_log.c
    terms: list[ColumnElement[bool]] = []
    for values, column in ((found.users, c.user_id), (found.orgs, c.org), (found.roles, c.role),
                           (found.actions, c.action), (found.outcomes, c.outcome), (found.purposes, c.purpose),
                           (found.subtypes, c.subtype), (found.kinds, c.kind)):
        if values:
            terms.append(column.in_(values))
    if found.patients:
        terms.append(c.seq.in_(select(audit_patients.c.seq).where(audit_patients.c.patient_id.in_(found.patients))))
    if found.entities:
        terms.append(RefersToEntities(list(found.entities)))
    if found.since is not None:
        terms.append(c.recorded >= found.since)
    if found.until is not None:
        terms.append(c.recorded < found.until)
    terms += [_date_term(prefix, low, high) for prefix, low, high in found.dates]
    if found.reviewed is not None:
        reviewed = c.seq.in_(select(break_glass_reviews.c.audit_seq))
        terms.append(reviewed if found.reviewed else ~reviewed)
    return and_(True, *terms)


def _date_term(prefix: str, low: datetime, high: datetime) -> ColumnElement[bool]:
    recorded = audit_log.c.recorded
    return {
        "ge": recorded >= low, "gt": recorded > high, "le": recorded <= high, "lt": recorded < low,
    }.get(prefix, recorded.between(low, high))


def _select(found: AuditFilter, before: int | None) -> Select:
    query = select(audit_log.c.seq, audit_log.c.record).where(where_clause(found))
    if before is not None:
        query = query.where(audit_log.c.seq < before)
    return query.order_by(audit_log.c.seq.desc())


def _entry(seq: int, record: str) -> tuple[int, AuditRecord]:
    return seq, record_from_json(orjson.loads(record))


async def search_page(conn: AsyncConnection, found: AuditFilter, *, count: int, before: int | None = None,
                      with_total: bool = True) -> AuditPage:
    """One page, newest first; `next_cursor` is the `before` of the next page (None on the last)."""
    rows = (await conn.execute(_select(found, before).limit(count + 1))).all()
    entries = [_entry(row.seq, row.record) for row in rows[:count]]
    next_cursor = entries[-1][0] if len(rows) > count else None
    total = None
    if with_total:
        total = (await conn.execute(select(func.count()).select_from(audit_log).where(where_clause(found)))).scalar()
    return AuditPage(entries, next_cursor, total)


async def read_entry(conn: AsyncConnection, seq: int) -> tuple[int, AuditRecord] | None:
    row = (await conn.execute(select(audit_log.c.seq, audit_log.c.record).where(audit_log.c.seq == seq))).first()
    return _entry(row.seq, row.record) if row else None


async def iterate(db: Database, found: AuditFilter, *, page: int = 500,
                  oldest_first: bool = False) -> AsyncIterator[tuple[int, AuditRecord]]:
    """Every matching entry, a page (and a short-lived connection) at a time, newest first by default."""
    cursor: int | None = None
    while True:
        if oldest_first:
            query = (select(audit_log.c.seq, audit_log.c.record).where(where_clause(found))
                     .where(audit_log.c.seq > (cursor or 0)).order_by(audit_log.c.seq))
        else:
            query = _select(found, cursor)
        async with db.read() as conn:
            rows = (await conn.execute(query.limit(page))).all()
        for row in rows:
            yield _entry(row.seq, row.record)
        if len(rows) < page:
            return
        cursor = rows[-1].seq
