"""The transfer tables and the store reads transfers need, inside the caller's transaction.

Outbox protocol (docs/transfers.md, "Delivery"):
- `enqueue` writes one row per (event, destination) in the event's own transaction; the row's
  `delivery_key` (uuid5 of the event and destination) is UNIQUE, so writing an event twice is harmless.
- `claim` takes due rows for one worker: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
  workers never take the same row; SQLite's write transactions are serial already. A claim is a
  lease (`claimed_until`): if the worker dies, the row is due again when the lease ends.
- `record_attempt` writes the attempt and the row's new state (delivered, retry at, dead) in one
  transaction: a 2xx that was recorded is never sent again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Text, and_, cast, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db import repository
from engine.db.direct import fetch_all_on_driver
from engine.db.schema import resources
from engine.search.params import SearchError, parse_search
from engine.search.query import criteria_clause, search
from engine.transfers.backoff import RetryPolicy, next_attempt_at
from engine.transfers.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    transfer_delivery_attempts,
    transfer_endpoints,
    transfer_outbox,
    transfer_subscriptions,
)
from engine.transfers.subscriptions import Channel, parse_criteria
from engine.transfers.tasks import OPEN_STATUSES, owner_ods, requester_ods
from mappings.ids import resource_id

JSON = dict[str, Any]
TASK_REQUESTED = "task-requested"  # a new transfer: to the owner
TASK_STATUS = "task-status"  # the owner received, accepted or rejected it: to the requester
SUBSCRIPTION, ENDPOINT = "subscription", "endpoint"
LIVE_SUBSCRIPTIONS = ("requested", "active")


# -- resources -------------------------------------------------------------------------------------------


async def read_resource(conn: AsyncConnection, res_type: str, res_id: str) -> JSON | None:
    """The current content of `res_type/res_id`, or None (never stored, or deleted)."""
    stored = await repository.read(conn, res_type, res_id)
    return orjson.loads(stored.content) if stored is not None and stored.content else None


async def read_resources(conn: AsyncConnection, res_type: str, ids: Iterable[str]) -> dict[str, JSON]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = (select(resources.c.res_id, cast(resources.c.content, Text))
             .where(resources.c.res_type == res_type, resources.c.res_id.in_(wanted), resources.c.deleted.is_(False)))
    return {res_id: orjson.loads(content) for res_id, content in (await conn.execute(query)).all() if content}


async def compartment_of(conn: AsyncConnection, patient_id: str, res_type: str) -> list[JSON]:
    """Live `res_type` resources in the patient's compartment, oldest first."""
    query = (select(cast(resources.c.content, Text))
             .where(resources.c.patient_id == patient_id, resources.c.res_type == res_type,
                    resources.c.deleted.is_(False))
             .order_by(resources.c.pk))
    return [orjson.loads(c) for c in (await conn.execute(query)).scalars() if c]


# -- the outbox: writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    kind: str  # subscription | endpoint
    ref: str  # Subscription id, or ODS code
    channel: Channel


def delivery_key(task_id: str, version: int, destination: Destination) -> str:
    return resource_id("Notification", task_id, str(version), destination.kind, destination.ref)


def _insert_ignore(conn: AsyncConnection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(transfer_outbox).on_conflict_do_nothing(index_elements=[transfer_outbox.c.delivery_key])


async def enqueue(conn: AsyncConnection, task: JSON, event: str, now: datetime) -> int:
    """Write the notifications of one Task event (the stored Task, with meta) to every destination.

    Destinations: Subscriptions whose criteria match the Task as stored now, and the endpoint of
    the organisation the event is for (the owner for a new transfer, the requester for a status
    change). Returns how many rows were written.
    """
    return await enqueue_many(conn, [task], event, now)


async def enqueue_many(conn: AsyncConnection, tasks: Sequence[JSON], event: str, now: datetime) -> int:
    """`enqueue` for several Tasks of one event: the Subscriptions and endpoints are read once, the
    rows written by one statement (in Task order, each Task's Subscriptions before its endpoint)."""
    if not tasks:
        return 0
    orgs = {task["id"]: owner_ods(task) if event == TASK_REQUESTED else requester_ods(task) for task in tasks}
    subscriptions, endpoints = await _delivery_configuration(conn, {org for org in orgs.values() if org})
    rows = []
    for task in tasks:
        version = int((task.get("meta") or {}).get("versionId") or 1)
        destinations = [Destination(SUBSCRIPTION, sub_id, _channel(content)) for sub_id, content in subscriptions
                        if await task_matches(conn, task["id"], content.get("criteria", ""))]
        endpoint = endpoints.get(orgs[task["id"]] or "")
        if endpoint is not None:
            destinations.append(endpoint)
        body = orjson.dumps(task).decode()
        rows.extend(_outbox_row(task, version, event, d, body, now) for d in destinations)
    if rows:
        await conn.execute(_insert_ignore(conn), rows)
    return len(rows)


def _outbox_row(task: JSON, version: int, event: str, destination: Destination, body: str,
                now: datetime) -> JSON:
    method, url = destination.channel.request_for("Task", task["id"])
    return {
        "delivery_key": delivery_key(task["id"], version, destination), "event": event, "task_id": task["id"],
        "task_version": version, "owner_ods": owner_ods(task), "target_kind": destination.kind,
        "target_ref": destination.ref, "method": method, "url": url,
        "headers": [list(h) for h in destination.channel.headers],
        "body": body if destination.channel.payload else None, "status": PENDING, "attempts": 0,
        "created_at": now, "retry_from": now, "next_attempt_at": now,
    }


_PG_DELIVERY_CONFIGURATION = text(
    "SELECT 'subscription' AS kind, id AS key, CAST(content AS text) AS content, NULL AS address,"
    " NULL AS headers, NULL AS payload FROM transfer_subscriptions WHERE status IN ('requested', 'active')"
    " UNION ALL SELECT 'endpoint', ods_code, NULL, address, CAST(headers AS text), payload FROM transfer_endpoints"
    " WHERE ods_code = ANY(CAST(:codes AS text[])) AND active ORDER BY 1 DESC, 2"
)


async def _delivery_configuration(conn: AsyncConnection, ods_codes: Iterable[str],
                                  ) -> tuple[list[tuple[str, JSON]], dict[str, Destination]]:
    """The live Subscriptions (`live_subscriptions`) and these organisations' endpoints
    (`endpoint_destinations`); on PostgreSQL in one prepared statement."""
    if conn.dialect.name != "postgresql":
        return await live_subscriptions(conn), await endpoint_destinations(conn, ods_codes)
    rows = await fetch_all_on_driver(conn, _PG_DELIVERY_CONFIGURATION, {"codes": sorted(set(ods_codes))})
    subscriptions = [(row.key, _json(row.content)) for row in rows if row.kind == SUBSCRIPTION]
    endpoints = {row.key: Destination(ENDPOINT, row.key, Channel(row.address, _headers(_json_list(row.headers)),
                                                                 row.payload))
                 for row in rows if row.kind == ENDPOINT}
    return subscriptions, endpoints


def _json_list(value: Any) -> list[Any]:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else list(value or ())


async def live_subscriptions(conn: AsyncConnection) -> list[tuple[str, JSON]]:
    """(id, content) of the requested and active Subscriptions, by id."""
    rows = (await conn.execute(select(transfer_subscriptions.c.id, transfer_subscriptions.c.content)
                               .where(transfer_subscriptions.c.status.in_(LIVE_SUBSCRIPTIONS))
                               .order_by(transfer_subscriptions.c.id))).all()
    return [(sub_id, _json(content)) for sub_id, content in rows]


async def task_matches(conn: AsyncConnection, task_id: str, criteria: str) -> bool:
    """Whether the stored Task matches `criteria` (`Task?…`), evaluated as a search restricted to its id."""
    try:
        _, items = parse_criteria(criteria)
        request = parse_search("Task", [*items, ("_id", task_id)])
    except (ValueError, SearchError):
        return False
    found = await conn.execute(select(resources.c.pk).where(criteria_clause(request)).limit(1))
    return found.first() is not None


def _channel(content: JSON) -> Channel:
    channel = content.get("channel") or {}
    headers = []
    for line in channel.get("header") or ():
        name, _, value = str(line).partition(":")
        headers.append((name.strip(), value.strip()))
    return Channel(channel.get("endpoint", ""), tuple(headers), channel.get("payload") or None)


def _json(value: Any) -> JSON:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else dict(value)


# -- per-organisation endpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    ods_code: str
    channel: Channel
    active: bool = True

    def to_json(self) -> JSON:
        return {"ods": self.ods_code, "address": self.channel.endpoint, "payload": self.channel.payload,
                "header": [f"{n}: {v}" for n, v in self.channel.headers], "active": self.active}


async def endpoint_destinations(conn: AsyncConnection, ods_codes: Iterable[str]) -> dict[str, Destination]:
    """The active endpoints of these organisations (by ODS code), in one query."""
    wanted = sorted(set(ods_codes))
    if not wanted:
        return {}
    e = transfer_endpoints.c
    rows = (await conn.execute(select(e.ods_code, e.address, e.headers, e.payload)
                               .where(e.ods_code.in_(wanted), e.active.is_(True)))).all()
    return {row.ods_code: Destination(ENDPOINT, row.ods_code, Channel(row.address, _headers(row.headers), row.payload))
            for row in rows}


def _headers(stored: Any) -> tuple[tuple[str, str], ...]:
    """Headers as stored ([[name, value], …]) → pairs."""
    return tuple((str(n), str(v)) for n, v in stored or ())


async def put_endpoint(conn: AsyncConnection, config: EndpointConfig, now: datetime) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"ods_code": config.ods_code, "address": config.channel.endpoint, "payload": config.channel.payload,
              "headers": [list(h) for h in config.channel.headers], "active": config.active, "updated_at": now}
    statement = dialect.insert(transfer_endpoints).values(**values)
    statement = statement.on_conflict_do_update(index_elements=[transfer_endpoints.c.ods_code],
                                                set_={k: v for k, v in values.items() if k != "ods_code"})
    await conn.execute(statement)


async def list_endpoints(conn: AsyncConnection, ods: str | None = None) -> list[EndpointConfig]:
    e = transfer_endpoints.c
    query = select(e.ods_code, e.address, e.headers, e.payload, e.active).order_by(e.ods_code)
    if ods:
        query = query.where(e.ods_code == ods)
    return [EndpointConfig(r.ods_code, Channel(r.address, _headers(r.headers), r.payload), bool(r.active))
            for r in (await conn.execute(query)).all()]


async def delete_endpoint(conn: AsyncConnection, ods: str) -> bool:
    return await _delete(conn, transfer_endpoints.c.ods_code, ods)


async def _delete(conn: AsyncConnection, key: Any, value: str) -> bool:
    """Delete the row whose `key` column is `value`; whether there was one."""
    return bool((await conn.execute(key.table.delete().where(key == value))).rowcount)


# -- subscriptions -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    id: str
    status: str
    owner_ods: str | None
    version_id: int
    content: JSON


_SUB_COLUMNS = (transfer_subscriptions.c.id, transfer_subscriptions.c.status, transfer_subscriptions.c.owner_ods,
                transfer_subscriptions.c.version_id, transfer_subscriptions.c.content)


def _subscription(row: Any) -> StoredSubscription:
    return StoredSubscription(row.id, row.status, row.owner_ods, row.version_id, _json(row.content))


async def insert_subscription(conn: AsyncConnection, content: JSON, owner: str | None, now: datetime) -> None:
    await conn.execute(transfer_subscriptions.insert().values(
        id=content["id"], status=content["status"], criteria=content["criteria"], owner_ods=owner,
        version_id=int(content["meta"]["versionId"]), created_at=now, updated_at=now, content=content))


async def save_subscription(conn: AsyncConnection, content: JSON, now: datetime) -> None:
    await conn.execute(update(transfer_subscriptions).where(transfer_subscriptions.c.id == content["id"]).values(
        status=content["status"], criteria=content["criteria"], version_id=int(content["meta"]["versionId"]),
        updated_at=now, content=content))


async def get_subscription(conn: AsyncConnection, sub_id: str) -> StoredSubscription | None:
    row = (await conn.execute(select(*_SUB_COLUMNS).where(transfer_subscriptions.c.id == sub_id))).first()
    return _subscription(row) if row else None


async def list_subscriptions(conn: AsyncConnection, *, owner: str | None = None,
                             statuses: Sequence[str] = ()) -> list[StoredSubscription]:
    query = select(*_SUB_COLUMNS).order_by(transfer_subscriptions.c.created_at, transfer_subscriptions.c.id)
    if owner is not None:
        query = query.where(transfer_subscriptions.c.owner_ods == owner)
    if statuses:
        query = query.where(transfer_subscriptions.c.status.in_(list(statuses)))
    return [_subscription(r) for r in (await conn.execute(query)).all()]


async def delete_subscription(conn: AsyncConnection, sub_id: str) -> bool:
    return await _delete(conn, transfer_subscriptions.c.id, sub_id)


# -- the outbox: delivering -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    delivery_key: str
    event: str
    task_id: str
    task_version: int
    target_kind: str
    target_ref: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    attempts: int
    retry_from: datetime


_OUTBOX_COLUMNS = tuple(transfer_outbox.c[name] for name in OutboxRow.__dataclass_fields__)


def _outbox(row: Any) -> OutboxRow:
    values = dict(row._mapping)
    values["headers"] = _headers(values["headers"])
    return OutboxRow(**values)


def _due(now: datetime) -> Any:
    o = transfer_outbox.c
    return and_(o.status == PENDING, o.next_attempt_at <= now, or_(o.claimed_until.is_(None), o.claimed_until <= now))


async def anything_due(conn: AsyncConnection, now: datetime) -> bool:
    """Whether any notification is due — a read, so an idle worker takes no write lock (SQLite has one)."""
    return (await conn.execute(select(transfer_outbox.c.id).where(_due(now)).limit(1))).first() is not None


async def claim(conn: AsyncConnection, worker: str, now: datetime, lease: float, limit: int) -> list[OutboxRow]:
    """Take up to `limit` due notifications for `worker` until `now + lease` (see the module docstring)."""
    o = transfer_outbox.c
    due = (select(o.id).where(_due(now))
           .order_by(o.next_attempt_at, o.id).limit(limit).with_for_update(skip_locked=True))
    ids = list((await conn.execute(due)).scalars())
    if not ids:
        return []
    await conn.execute(update(transfer_outbox).where(o.id.in_(ids))
                       .values(claimed_by=worker, claimed_until=now + timedelta(seconds=lease)))
    rows = (await conn.execute(select(*_OUTBOX_COLUMNS).where(o.id.in_(ids)).order_by(o.id))).all()
    return [_outbox(r) for r in rows]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    started_at: datetime
    finished_at: datetime
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def record_attempt(conn: AsyncConnection, row: OutboxRow, result: AttemptResult, worker: str,
                         policy: RetryPolicy, draw: float) -> str:
    """Record one attempt and the notification's new state; returns it (delivered, pending, dead).

    The row must still be pending: a row another worker delivered meanwhile is left as it is.
    """
    o = transfer_outbox.c
    attempt = row.attempts + 1
    await conn.execute(transfer_delivery_attempts.insert().values(
        outbox_id=row.id, attempt=attempt, started_at=result.started_at, finished_at=result.finished_at,
        status_code=result.status_code, error=result.error, worker=worker))
    values: JSON = {"attempts": o.attempts + 1, "last_status_code": result.status_code, "last_error": result.error,
                    "claimed_by": None, "claimed_until": None}
    if result.delivered:
        state = DELIVERED
        values.update(status=DELIVERED, delivered_at=result.finished_at)
    else:
        following = next_attempt_at(policy, attempts=attempt, retry_from=row.retry_from, now=result.finished_at,
                                    draw=draw)
        state = DEAD if following is None else PENDING
        values.update(status=state, next_attempt_at=following or result.finished_at)
        if following is None:
            values["dead_at"] = result.finished_at
    await conn.execute(update(transfer_outbox).where(o.id == row.id, o.status == PENDING).values(**values))
    return state


async def retry_dead(conn: AsyncConnection, outbox_id: int, now: datetime) -> bool:
    """A person's retry of a dead letter: due now, with a fresh retry window."""
    o = transfer_outbox.c
    outcome = await conn.execute(update(transfer_outbox).where(o.id == outbox_id, o.status == DEAD).values(
        status=PENDING, retry_from=now, next_attempt_at=now, dead_at=None, claimed_by=None, claimed_until=None))
    return bool(outcome.rowcount)


_LISTED = (transfer_outbox.c.id, transfer_outbox.c.delivery_key, transfer_outbox.c.event, transfer_outbox.c.task_id,
           transfer_outbox.c.task_version, transfer_outbox.c.owner_ods, transfer_outbox.c.target_kind,
           transfer_outbox.c.target_ref, transfer_outbox.c.method, transfer_outbox.c.url, transfer_outbox.c.status,
           transfer_outbox.c.attempts, transfer_outbox.c.created_at, transfer_outbox.c.next_attempt_at,
           transfer_outbox.c.delivered_at, transfer_outbox.c.dead_at, transfer_outbox.c.last_status_code,
           transfer_outbox.c.last_error)


async def list_deliveries(conn: AsyncConnection, *, status: str | None = None, owner: str | None = None,
                          task_id: str | None = None, limit: int = 100) -> list[JSON]:
    """Notifications (newest first) with every attempt, as plain JSON for the operations endpoints."""
    o = transfer_outbox.c
    query = select(*_LISTED).order_by(o.id.desc()).limit(limit)
    if status:
        query = query.where(o.status == status)
    if owner:
        query = query.where(o.owner_ods == owner)
    if task_id:
        query = query.where(o.task_id == task_id)
    rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
    attempts = await _attempts(conn, [r["id"] for r in rows])
    return [{**_plain(r), "attempt_log": attempts.get(r["id"], [])} for r in rows]


async def _attempts(conn: AsyncConnection, ids: list[int]) -> dict[int, list[JSON]]:
    if not ids:
        return {}
    a = transfer_delivery_attempts.c
    query = (select(a.outbox_id, a.attempt, a.started_at, a.finished_at, a.status_code, a.error, a.worker)
             .where(a.outbox_id.in_(ids)).order_by(a.outbox_id, a.attempt, a.id))
    found: dict[int, list[JSON]] = {}
    for row in (await conn.execute(query)).all():
        item = _plain(dict(row._mapping))
        found.setdefault(item.pop("outbox_id"), []).append(item)
    return found


def _plain(values: JSON) -> JSON:
    """Plain str keys (SQLAlchemy's are str subclasses, which orjson refuses) and FHIR instants."""
    return {str(k): (repository.format_instant(v) if isinstance(v, datetime) else v) for k, v in values.items()}


async def outbox_counts(conn: AsyncConnection) -> dict[str, int]:
    query = select(transfer_outbox.c.status, func.count()).group_by(transfer_outbox.c.status)
    return {status: n for status, n in (await conn.execute(query)).all()}


# -- subscriptions the worker activates -------------------------------------------------------------------


async def requested_subscriptions(conn: AsyncConnection) -> list[StoredSubscription]:
    return await list_subscriptions(conn, statuses=("requested",))


# -- tracking ------------------------------------------------------------------------------------------------


async def open_tasks(conn: AsyncConnection, *, owner_id: str | None = None, requester_id: str | None = None,
                     limit: int = 1000) -> list[JSON]:
    """Open transfers (requested or received) owned by / requested by an Organization, any order."""
    items = [("status", ",".join(OPEN_STATUSES)), ("_count", str(limit))]
    if owner_id:
        items.append(("owner", f"Organization/{owner_id}"))
    if requester_id:
        items.append(("requester", f"Organization/{requester_id}"))
    page = await search(conn, parse_search("Task", items, max_count=limit))
    return [orjson.loads(row.content) for row in page.rows if row.content]

