"""What ingest writes: the message store (`hl7_messages`) and the batched resource writes.

Messages: every inbound message gets a row before its ACK leaves (DESIGN.md principle 1) — a
processed one in the same transaction as its effects, a failed one on its own. The row's insert is
the de-duplication point, `INSERT … ON CONFLICT (sender, control_id) DO NOTHING`, so that of two
copies of one message racing in exactly one is stored and the other finds it: `insert_message` on
its own, or — for a processed message on PostgreSQL — inside the one write statement, with the id
reserved beforehand by `lock_and_reserve` (so that the Provenance can name the message).

Resources: `write_changes` writes a planned message (engine/ingest/apply.py) — new resources, new
versions, their search index and `resource_sources` — in the shape `engine.db.repository` stores
them, batched: one statement on PostgreSQL, a few executemany statements on SQLite.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from engine.db.direct import fetch_one_on_driver, json_parameter
from engine.db.ingest_schema import hl7_messages, resource_sources
from engine.db.repository import stamp
from engine.db.schema import INDEX_TABLES, resource_versions, resources
from engine.ingest.apply import Change, Current
from engine.search.extract import extract_index, patient_compartment
from mappings.result import ErrorLocation


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """What is written for one message (the row minus `id` and `attempts`)."""

    raw: str
    transport: str
    received_at: datetime
    status: str
    ack_code: str
    ack: str | None
    sender: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    error_location: str | None = None
    event_time: datetime | None = None
    processed_at: datetime | None = None
    unmapped: list[str] | None = None
    warnings: list[str] | None = None
    patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of `hl7_messages`."""

    id: int
    sender: str | None
    control_id: str | None
    message_type: str | None
    status: str
    ack_code: str
    error_code: str | None
    error_text: str | None
    error_location: str | None
    raw: str
    ack: str | None
    transport: str
    received_at: datetime
    event_time: datetime | None
    processed_at: datetime | None
    attempts: int
    unmapped: list[str] | None = field(default=None)
    warnings: list[str] | None = field(default=None)
    patient_id: str | None = None


_COLUMNS = tuple(hl7_messages.c[name] for name in StoredMessage.__dataclass_fields__)


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(*row)


def location_text(location: ErrorLocation | None) -> str | None:
    """ERR-2 (ERL) as text, trailing empty parts dropped: `PID^1^3^2` (segment^sequence^field^rep^comp)."""
    if location is None:
        return None
    parts = [location.segment, location.sequence, location.field, location.repetition, location.component]
    text = "^".join("" if p is None else str(p) for p in parts).rstrip("^")
    return text[:64] or None


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


_RECORD_FIELDS = tuple(MessageRecord.__dataclass_fields__)


def _row(record: MessageRecord) -> dict[str, Any]:
    """Column values; empty keys become NULL (never de-duplicated), long ones are cut to the column.
    (A shallow copy: `dataclasses.asdict` copies the lists too, at several times the cost.)"""
    row = {name: getattr(record, name) for name in _RECORD_FIELDS}
    row["sender"] = _clip(record.sender, 64)
    row["control_id"] = _clip(record.control_id, 200)
    row["message_type"] = _clip(record.message_type, 32)
    return row


def _insert_statement(dialect_name: str) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return (
        dialect.insert(hl7_messages)
        .on_conflict_do_nothing(index_elements=[hl7_messages.c.sender, hl7_messages.c.control_id])
        .returning(hl7_messages.c.id)
    )


# Built once: SQLAlchemy caches the compiled form of a statement object it sees again.
_INSERT = {name: _insert_statement(name) for name in ("postgresql", "sqlite")}
_UPDATE_COLUMNS = ("message_type", "status", "ack_code", "ack", "error_code", "error_text", "error_location",
                   "event_time", "processed_at", "unmapped", "warnings", "patient_id")
_UPDATE = (
    update(hl7_messages).where(hl7_messages.c.id == bindparam("b_id"))
    .values(attempts=hl7_messages.c.attempts + 1, **{c: bindparam(f"b_{c}") for c in _UPDATE_COLUMNS})
)


async def insert_message(conn: AsyncConnection, record: MessageRecord) -> int | None:
    """Store a new message; its id, or None when (sender, control_id) is already stored."""
    statement = _INSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    return (await conn.execute(statement, {**_row(record), "attempts": 1})).scalar_one_or_none()


async def _insert_reserved(conn: AsyncConnection, message_id: int, record: MessageRecord) -> None:
    statement = _INSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    stored = (await conn.execute(statement, {**_row(record), "attempts": 1, "id": message_id})).scalar_one_or_none()
    if stored is None:
        raise DuplicateMessage(message_id)


# The per-person advisory locks (identity.lock_patients' statement, in key order) and the ids of the
# messages about to be written, reserved from the table's sequence, in one round trip. PostgreSQL keeps
# the volatile lock calls of the subquery although count(*) does not read them, and calls them after its
# ORDER BY. The transaction's later statements (the read and the write, prepared) take generic plans:
# their plans do not depend on their array and JSON parameters, and PostgreSQL had otherwise re-planned
# them on most executions.
_LOCK_AND_RESERVE = text(
    "SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('hl7_messages', 'id'))"
    " FROM generate_series(1, CAST(:n AS int))), set_config('plan_cache_mode', 'force_generic_plan', true),"
    " (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k) FROM (SELECT CAST(value AS bigint) AS k"
    " FROM jsonb_array_elements_text(CAST(:keys AS jsonb))) AS ks ORDER BY k) AS l)"
)


async def lock_and_reserve(conn: AsyncConnection, lock_keys: Sequence[int]) -> int:
    """PostgreSQL: take the advisory locks `lock_keys` for this transaction and reserve a message id."""
    [message_id] = await lock_and_reserve_many(conn, lock_keys, 1)
    return message_id


async def lock_and_reserve_many(conn: AsyncConnection, lock_keys: Iterable[int], count: int) -> list[int]:
    """`lock_and_reserve` for a batch of messages: every lock in key order, and `count` message ids."""
    row = await fetch_one_on_driver(conn, _LOCK_AND_RESERVE, {"keys": json_parameter(sorted(set(lock_keys))),
                                                              "n": count})
    return [int(i) for i in row[0]]


class DuplicateMessage(Exception):
    """A message row given to `write_changes` or `write_messages` whose (sender, control_id) is stored already.

    `args` are the reserved ids of those rows.
    """


async def update_message(conn: AsyncConnection, message_id: int, record: MessageRecord) -> None:
    """Record another attempt at a stored message (replay): its new status, ACK and details.

    The raw text, transport, receipt time and de-duplication key are those of the original.
    """
    row = _row(record)
    await conn.execute(_UPDATE, {"b_id": message_id, **{f"b_{c}": row[c] for c in _UPDATE_COLUMNS}})


async def get_message(conn: AsyncConnection, message_id: int) -> StoredMessage | None:
    row = (await conn.execute(select(*_COLUMNS).where(hl7_messages.c.id == message_id))).first()
    return _stored(row) if row else None


async def find_message(conn: AsyncConnection, sender: str, control_id: str) -> StoredMessage | None:
    """The stored message with this de-duplication key (MSH-4, MSH-10), if any."""
    query = select(*_COLUMNS).where(hl7_messages.c.sender == sender, hl7_messages.c.control_id == control_id)
    row = (await conn.execute(query)).first()
    return _stored(row) if row else None


async def select_message_ids(
    conn: AsyncConnection, *, ids: Sequence[int] = (), since: datetime | None = None,
    until: datetime | None = None, error_code: str | None = None, statuses: Sequence[str] = (),
    limit: int | None = None,
) -> list[int]:
    """Ids of stored messages matching every criterion given, oldest first (the order to replay them in).

    `since` is inclusive and `until` exclusive, both on `received_at` (naive UTC).
    """
    m = hl7_messages.c
    query = select(m.id)
    if ids:
        query = query.where(m.id.in_(list(ids)))
    if since is not None:
        query = query.where(m.received_at >= since)
    if until is not None:
        query = query.where(m.received_at < until)
    if error_code:
        query = query.where(m.error_code == error_code)
    if statuses:
        query = query.where(m.status.in_(list(statuses)))
    query = query.order_by(m.received_at, m.id)
    if limit is not None:
        query = query.limit(limit)
    return list((await conn.execute(query)).scalars())


# -- resources ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """A version `write_changes` wrote."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    created: bool
    document: dict[str, Any] = field(default_factory=dict, compare=False)  # as stored (meta stamped)


@dataclass(frozen=True, slots=True)
class SourceUpdate:
    """Which resources now reflect `message_id`'s event (`resource_sources`, for staleness)."""

    message_id: int
    event_time: datetime | None
    keys: frozenset[tuple[str, str]]  # (type, id) of changed resources whose event this message sets
    refreshed: tuple[int, ...] = ()  # pks of unchanged resources whose recorded event moves forward


class ConcurrentChange(Exception):
    """Another transaction changed a resource this one planned to update: retry the message."""


@dataclass(slots=True)
class StampedVersion:
    """One version to write: the stamped document and where it goes."""

    document: dict[str, Any]
    version_id: int
    moment: datetime
    current: Current | None  # None: a new resource
    patient_id: str | None  # the Patient compartment it belongs to (`patient_compartment`), found once

    @property
    def res_type(self) -> str:
        return self.document["resourceType"]

    @property
    def res_id(self) -> str:
        return self.document["id"]


def stamped_versions(changes: Sequence[Change], now: datetime) -> list[StampedVersion]:
    """Each change stamped with its new `meta.versionId` / `meta.lastUpdated` (repository.stamp)."""
    versions = []
    for change in changes:
        current = change.current
        version_id = 1 if current is None else current.version_id + 1
        moment = now if current is None else max(now, current.last_updated)
        document = stamp(change.document, change.document["id"], version_id, moment)
        versions.append(StampedVersion(document, version_id, moment, current, patient_compartment(document)))
    return versions


async def write_changes(conn: AsyncConnection, changes: Sequence[Change], now: datetime,
                        sources: SourceUpdate | None = None,
                        message: tuple[int, MessageRecord] | None = None) -> list[Written]:
    """Write `changes` as new versions with their search index (and `sources`), batched.

    The stored shape is the repository's (engine.db.repository.create/update): `meta.versionId`
    and `meta.lastUpdated` stamped, every version kept in `resource_versions`, index rows
    replaced. On PostgreSQL it is one statement (`pg_write_statement`); elsewhere a few executemany
    statements. Raises `ConcurrentChange` when a resource is no longer at the version planned.

    `message` — (reserved id, row) — is inserted too, in the same statement on PostgreSQL; when its
    (sender, control_id) is stored already, `DuplicateMessage` is raised (the caller rolls back).
    """
    if message is not None and (not changes or conn.dialect.name != "postgresql"):
        await _insert_reserved(conn, *message)
    if not changes:
        if sources is not None:
            await record_sources(conn, sources.refreshed, sources.event_time, sources.message_id)
        return []
    versions = stamped_versions(changes, now)
    if conn.dialect.name == "postgresql":
        return await _write_postgresql(conn, versions, [sources] if sources else [], [message] if message else [])
    written = await _write_generic(conn, versions)
    if sources is not None:
        pks = [w.pk for w in written if (w.res_type, w.res_id) in sources.keys] + list(sources.refreshed)
        await record_sources(conn, pks, sources.event_time, sources.message_id)
    return written


_UPDATE_RESOURCE = (
    update(resources)
    .where(resources.c.pk == bindparam("b_pk"), resources.c.version_id == bindparam("b_previous"))
    .values(version_id=bindparam("b_version"), last_updated=bindparam("b_updated"), deleted=False,
            patient_id=bindparam("b_patient"), content=bindparam("b_content"))
)
_INSERT_RESOURCE = insert(resources).returning(resources.c.pk, sort_by_parameter_order=True)


async def _write_generic(conn: AsyncConnection, versions: list[StampedVersion]) -> list[Written]:
    creates = [v for v in versions if v.current is None]
    updates = [v for v in versions if v.current is not None]
    pks: dict[tuple[str, str], int] = {}
    if creates:
        rows = [{"res_type": v.res_type, "res_id": v.res_id, "version_id": 1, "last_updated": v.moment,
                 "deleted": False, "patient_id": v.patient_id, "content": v.document}
                for v in creates]
        new_pks = (await conn.execute(_INSERT_RESOURCE, rows)).scalars().all()
        pks.update(((v.res_type, v.res_id), pk) for v, pk in zip(creates, new_pks))
    if updates:
        params = [{"b_pk": v.current.pk, "b_previous": v.current.version_id, "b_version": v.version_id,
                   "b_updated": v.moment, "b_patient": v.patient_id, "b_content": v.document}
                  for v in updates if v.current is not None]
        outcome = await conn.execute(_UPDATE_RESOURCE, params)
        if outcome.rowcount not in (-1, None) and outcome.rowcount != len(params):
            raise ConcurrentChange("a resource changed while this message was applied")
        pks.update(((v.res_type, v.res_id), v.current.pk) for v in updates if v.current is not None)
        for table in INDEX_TABLES.values():
            await conn.execute(sql_delete(table).where(table.c.res_pk.in_([p["b_pk"] for p in params])))
    await conn.execute(insert(resource_versions), [
        {"res_pk": pks[(v.res_type, v.res_id)], "version_id": v.version_id, "res_type": v.res_type,
         "res_id": v.res_id, "last_updated": v.moment, "deleted": False,
         "method": "POST" if v.current is None else "PUT", "content": v.document} for v in versions])
    for kind, arrays in _index_arrays(versions).items():
        names = _INDEX_VALUES[kind]
        await conn.execute(insert(INDEX_TABLES[kind]), [
            {"res_pk": pks[(res_type, res_id)], "res_type": res_type, **dict(zip(names, values, strict=True))}
            for res_type, res_id, *values in arrays])
    return [Written(pks[(v.res_type, v.res_id)], v.res_type, v.res_id, v.version_id, v.current is None, v.document)
            for v in versions]


# An index row goes to PostgreSQL as a JSON array — its resource's type and id, then its values in this order —
# rather than an object naming every column: the text PostgreSQL parses is about half as long (measured
# replaying 39 batches of the bench: ~3 % less PostgreSQL CPU a write), and the rows are built without copying dicts.
_INDEX_VALUES = {kind: tuple(c.name for c in table.columns if c.name not in ("res_pk", "res_type"))
                 for kind, table in INDEX_TABLES.items()}
_INDEX_VALUES_OF = {kind: itemgetter(*names) if len(names) > 1 else (lambda row, name=names[0]: (row[name],))
                    for kind, names in _INDEX_VALUES.items()}  # each a tuple of the row's values


def _pg_index_insert(kind: str) -> str:
    """The part of the write that inserts `kind`'s index rows (`_index_arrays`), each joined to the pk `a`
    returns for its resource. (OFFSET 0 keeps the subquery apart, so that each value is read from its array once
    whichever join the plan uses.)"""
    table = INDEX_TABLES[kind]
    names = _INDEX_VALUES[kind]
    values = ", ".join(f"CAST(e ->> {i} AS {_PG_TYPES[type(table.c[name].type).__name__]}) AS {name}"
                       for i, name in enumerate(names, start=2))
    return (f"i_{kind} AS (INSERT INTO {table.name} (res_pk, res_type, {', '.join(names)})"
            f" SELECT a.pk, a.res_type, {', '.join(f'x.{name}' for name in names)}"
            f" FROM (SELECT e ->> 0 AS res_type, e ->> 1 AS res_id, {values}"
            f" FROM jsonb_array_elements(CAST(:idx_{kind} AS jsonb)) AS e OFFSET 0) AS x JOIN a USING (res_type, res_id))")


def _index_arrays(versions: Iterable[StampedVersion]) -> dict[str, list[list[Any]]]:
    """Search-index rows of every version by table kind, as `_pg_index_insert` reads them: [type, id, values…]
    (in `_INDEX_VALUES` order; only the kinds with rows)."""
    rows: dict[str, list[list[Any]]] = defaultdict(list)
    for version in versions:
        res_type, res_id = version.res_type, version.res_id
        for kind, kind_rows in extract_index(version.document).items():
            if kind_rows:
                values_of = _INDEX_VALUES_OF[kind]
                rows[kind] += [[res_type, res_id, *values_of(row)] for row in kind_rows]
    return rows


_PG_CREATES = """n AS (INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, patient_id, content)
 SELECT res_type, res_id, 1, last_updated, false, patient_id, content FROM jsonb_to_recordset(:creates)
 AS x(res_type text, res_id text, last_updated timestamp, patient_id text, content jsonb)
 RETURNING pk, res_type, res_id, version_id, last_updated, content)"""
_PG_UPDATES = """u AS (UPDATE resources AS r SET version_id = x.version_id, last_updated = x.last_updated, deleted = false,
 patient_id = x.patient_id, content = x.content FROM jsonb_to_recordset(:updates)
 AS x(pk bigint, previous int, version_id int, last_updated timestamp, patient_id text, content jsonb)
 WHERE r.pk = x.pk AND r.version_id = x.previous
 RETURNING r.pk, r.res_type, r.res_id, r.version_id, r.last_updated, r.content)"""
_PG_VERSIONS = """versions AS (INSERT INTO resource_versions
 (res_pk, version_id, res_type, res_id, last_updated, deleted, method, content)
 SELECT pk, version_id, res_type, res_id, last_updated, false, method, content FROM a)"""
_PG_TRACKED = """SELECT a.pk, t.event_time, t.message_id FROM a JOIN jsonb_to_recordset(:tracked)
 AS t(res_type text, res_id text, event_time timestamp, message_id bigint) USING (res_type, res_id)"""
_PG_REFRESHED = """SELECT pk, event_time, message_id FROM jsonb_to_recordset(:refreshed)
 AS f(pk bigint, event_time timestamp, message_id bigint)"""
_PG_SOURCES = """sources AS (INSERT INTO resource_sources (res_pk, event_time, message_id) {rows}
 ON CONFLICT (res_pk) DO UPDATE
 SET event_time = COALESCE(EXCLUDED.event_time, resource_sources.event_time), message_id = EXCLUDED.message_id)"""
_PG_TYPES = {"String": "text", "Float": "float8", "DateTime": "timestamp"}
_MESSAGE_COLUMNS = ("id", *MessageRecord.__dataclass_fields__, "attempts")
_PG_MESSAGE_TYPES = {"id": "bigint", "attempts": "int", "received_at": "timestamp", "event_time": "timestamp",
                     "processed_at": "timestamp", "unmapped": "json", "warnings": "json"}
_MESSAGE_NAMES = ", ".join(_MESSAGE_COLUMNS)
_MESSAGE_RECORD = ", ".join(f"{c} {_PG_MESSAGE_TYPES.get(c, 'text')}" for c in _MESSAGE_COLUMNS)
_PG_MESSAGES = (f"m AS (INSERT INTO hl7_messages ({_MESSAGE_NAMES}) SELECT {_MESSAGE_NAMES}"
                f" FROM jsonb_to_recordset(:messages) AS x({_MESSAGE_RECORD}) ON CONFLICT (sender, control_id) DO NOTHING"
                " RETURNING id)")


@dataclass(frozen=True, slots=True)
class WriteShape:
    """What one batch's write holds, which decides the statement's parts (`pg_write_statement`)."""

    creates: bool = True
    updates: bool = True
    tracked: bool = True
    refreshed: bool = True
    kinds: tuple[str, ...] = tuple(INDEX_TABLES)  # the index tables it adds rows to
    messages: bool = False


def _pg_write_sql(shape: WriteShape) -> str:
    """One PostgreSQL statement for a whole batch: data-modifying CTEs fed by JSON parameters, with only the
    parts the batch needs (`shape`) — PostgreSQL starts every part of a statement up whether it has rows or
    not: the statement with every part and no rows at all costs it ~250 µs; on the bench's batches, leaving
    out the parts they did not need saved ~1.5 % of the statement's time.

    New resources are inserted (`n`) and updated ones updated (`u`, only if still at the planned
    version); both (`a`) get their versions appended and `resource_sources` recorded; the updated
    ones' index rows are deleted (from every index table) and every new index row inserted, joined on
    (res_type, res_id) to the pks `a` returns; `resource_sources` gets each tracked resource's event time
    and message (several messages' rows in one batch: engine/ingest/group_commit.py). Returns the number
    updated and the (type, id, pk) of those created. Sibling CTEs share one snapshot, so the deletes never
    see the rows the inserts add (https://www.postgresql.org/docs/15/queries-with.html). `shape.messages`
    adds the messages' rows (`m`, ON CONFLICT DO NOTHING: no id back for a duplicate).
    """
    parts = [*([_PG_CREATES] if shape.creates else []), *([_PG_UPDATES] if shape.updates else [])]
    written = [*(["SELECT *, 'POST' AS method FROM n"] if shape.creates else []),
               *(["SELECT *, 'PUT' FROM u"] if shape.updates else [])]
    if written:
        parts += [f"a AS ({' UNION ALL '.join(written)})", _PG_VERSIONS]
    sources = [*([_PG_TRACKED] if shape.tracked and written else []), *([_PG_REFRESHED] if shape.refreshed else [])]
    if sources:
        parts.append(_PG_SOURCES.format(rows=" UNION ALL ".join(sources)))
    for kind, table in INDEX_TABLES.items():
        if shape.updates:
            parts.append(f"d_{kind} AS (DELETE FROM {table.name} WHERE res_pk IN (SELECT pk FROM u))")
        if kind in shape.kinds and written:
            parts.append(_pg_index_insert(kind))
    if shape.messages:
        parts.append(_PG_MESSAGES)
    updated = "(SELECT count(*) FROM u)" if shape.updates else "0"
    created = "(SELECT jsonb_agg(jsonb_build_array(res_type, res_id, pk)) FROM n)" if shape.creates else "NULL::jsonb"
    return (("WITH " + ",\n".join(parts) + "\n" if parts else "") + f"SELECT {updated}, {created}"
            + (", (SELECT array_agg(id) FROM m)" if shape.messages else ""))


@lru_cache(maxsize=512)
def pg_write_statement(shape: WriteShape) -> TextClause:
    """The statement for `shape`, built once: psycopg prepares each text once per connection, and the few
    shapes batches take (which index tables, whether anything is updated) each get their own plan.

    One statement for everything, care relationships included (INDEX_TABLES["relationship"]). With all its
    parts it is longer than psycopg's 4 KB limit for caching a query's parsed form: converting it then
    costs ~50 µs a message (measured), far less than the round trips that splitting it would cost. The
    server-side prepared statement is unaffected."""
    return text(_pg_write_sql(shape))


async def _write_postgresql(conn: AsyncConnection, versions: list[StampedVersion], sources: Sequence[SourceUpdate],
                            messages: Sequence[tuple[int, MessageRecord]] = ()) -> list[Written]:
    creates = [{"res_type": v.res_type, "res_id": v.res_id, "last_updated": v.moment,
                "patient_id": v.patient_id, "content": v.document}
               for v in versions if v.current is None]
    updates = [{"pk": v.current.pk, "previous": v.current.version_id, "version_id": v.version_id,
                "last_updated": v.moment, "patient_id": v.patient_id, "content": v.document}
               for v in versions if v.current is not None]
    tracked = [{"res_type": t, "res_id": i, "event_time": s.event_time, "message_id": s.message_id}
               for s in sources for t, i in s.keys]
    refreshed = [{"pk": pk, "event_time": s.event_time, "message_id": s.message_id}
                 for s in sources for pk in s.refreshed]
    index = _index_arrays(versions)
    shape = WriteShape(creates=bool(creates), updates=bool(updates), tracked=bool(tracked), refreshed=bool(refreshed),
                       kinds=tuple(kind for kind in INDEX_TABLES if index.get(kind)), messages=bool(messages))
    params: dict[str, Any] = {"creates": json_parameter(creates), "updates": json_parameter(updates),
                              "tracked": json_parameter(tracked), "refreshed": json_parameter(refreshed)}
    params.update((f"idx_{kind}", json_parameter(index[kind])) for kind in shape.kinds)
    if messages:
        params["messages"] = json_parameter([{**_row(record), "attempts": 1, "id": message_id}
                                             for message_id, record in messages])
    row = await fetch_one_on_driver(conn, pg_write_statement(shape), params)
    updated, created = row[0], row[1]
    if messages:
        missing = {message_id for message_id, _ in messages} - set(row[2] or ())
        if missing:
            raise DuplicateMessage(*sorted(missing))
    if updated != len(updates):
        raise ConcurrentChange("a resource changed while this message was applied")
    pks = {(t, i): pk for t, i, pk in created or ()}
    pks.update(((u_type, u_id), pk) for (u_type, u_id), pk in
               (((v.res_type, v.res_id), v.current.pk) for v in versions if v.current is not None))
    return [Written(pks[(v.res_type, v.res_id)], v.res_type, v.res_id, v.version_id, v.current is None, v.document)
            for v in versions]


async def write_messages(conn: AsyncConnection, versions: Sequence[StampedVersion], sources: Sequence[SourceUpdate],
                         messages: Sequence[tuple[int, MessageRecord]]) -> list[Written]:
    """PostgreSQL: several messages' rows (reserved ids), their changes (`stamped_versions`) and sources in
    one statement.

    Raises `DuplicateMessage` naming the reserved ids whose (sender, control_id) is stored already
    (their changes were written too: the caller rolls back), `ConcurrentChange` as `write_changes`.
    """
    return await _write_postgresql(conn, list(versions), sources, messages)


def _sources_statement(dialect_name: str) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(resource_sources)
    # A message without an event time keeps the event time already recorded.
    return statement.on_conflict_do_update(
        index_elements=[resource_sources.c.res_pk],
        set_={"event_time": func.coalesce(statement.excluded.event_time, resource_sources.c.event_time),
              "message_id": statement.excluded.message_id},
    )


_RECORD_SOURCES = {name: _sources_statement(name) for name in ("postgresql", "sqlite")}


async def record_sources(conn: AsyncConnection, pks: Iterable[int], event_time: datetime | None,
                         message_id: int) -> None:
    """Remember that `pks` now reflect `message_id`'s event (upsert into resource_sources)."""
    rows = [{"res_pk": pk, "event_time": event_time, "message_id": message_id} for pk in dict.fromkeys(pks)]
    if rows:
        await conn.execute(_RECORD_SOURCES["postgresql" if conn.dialect.name == "postgresql" else "sqlite"], rows)
