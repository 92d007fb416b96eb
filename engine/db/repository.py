"""The resource repository: versioned create, update, delete and reads over the store tables.

Writes happen inside a transaction the caller opened with `Database.write()`; each one stamps
`meta.versionId` / `meta.lastUpdated`, keeps every version in `resource_versions`
(https://hl7.org/fhir/R4/http.html#history) and rewrites the resource's search-index rows.
Reads return the stored JSON text untouched (`Stored.content`), so the facade can serve it
without parsing (DESIGN.md principle 6).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Text, and_, bindparam, cast, func, insert, or_, select, text
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db.schema import INDEX_TABLES, resource_versions, resources
from engine.search.extract import extract_index, patient_compartment


@dataclass(frozen=True, slots=True)
class Stored:
    """One version of a resource as stored; `content` is its JSON text (None once deleted)."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None
    method: str = "PUT"
    # The Patient whose compartment it is in, when the query that read it asked (the access gate does).
    patient_id: str | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def last_modified(self) -> str:
        return self.last_updated.replace(tzinfo=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


class VersionConflict(Exception):
    """The client's If-Match version is not the current one."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"expected version {expected}, current version is {current}")
        self.expected = expected
        self.current = current


def utc_now() -> datetime:
    """Now as naive UTC, truncated to milliseconds so `meta.lastUpdated` and the column agree."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_instant(moment: datetime) -> str:
    """A FHIR `instant` (https://hl7.org/fhir/R4/datatypes.html#instant) in UTC with milliseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_id() -> str:
    return str(uuid.uuid4())


def stamp(resource: Mapping[str, Any], res_id: str, version_id: int, last_updated: datetime) -> dict[str, Any]:
    """The resource as it will be stored: resourceType, id and meta first, server-set meta fields."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    stamped: dict[str, Any] = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    for key, value in resource.items():
        if key not in stamped:
            stamped[key] = value
    return stamped


def same_content(stored_json: str, resource: Mapping[str, Any]) -> bool:
    """Whether `resource` says nothing new over the stored version (server-set meta aside).

    An update that changes nothing makes no new version (as a re-sent message or a reloaded
    fixture must not grow the history).
    """
    stored = orjson.loads(stored_json)
    return _without_server_meta(stored) == _without_server_meta({**resource, "id": stored.get("id")})


def _without_server_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    plain = dict(resource)
    meta = {k: v for k, v in (plain.pop("meta", None) or {}).items() if k not in {"versionId", "lastUpdated"}}
    if meta:
        plain["meta"] = meta
    return plain


_COLUMNS = (
    resources.c.pk,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.deleted,
    cast(resources.c.content, Text).label("content"),
)
_VERSION_COLUMNS = (
    resource_versions.c.res_pk,
    resource_versions.c.res_type,
    resource_versions.c.res_id,
    resource_versions.c.version_id,
    resource_versions.c.last_updated,
    resource_versions.c.deleted,
    cast(resource_versions.c.content, Text).label("content"),
    resource_versions.c.method,
)


READ_COLUMNS = _COLUMNS


def stored_row(row: Sequence[Any]) -> Stored:
    """A `Stored` from a row of `READ_COLUMNS`."""
    return Stored(*row)


_stored = stored_row


# Built once: constructing a select per read costs more than PostgreSQL takes to answer it.
_READ = select(*_COLUMNS).where(resources.c.res_type == bindparam("res_type"),
                                resources.c.res_id == bindparam("res_id"))
_READ_FOR_UPDATE = _READ.with_for_update()


async def read(conn: AsyncConnection, res_type: str, res_id: str, *, for_update: bool = False) -> Stored | None:
    """The current version of `res_type/res_id` (possibly a deletion marker), or None if never stored."""
    query = _READ_FOR_UPDATE if for_update and conn.dialect.name == "postgresql" else _READ
    row = (await conn.execute(query, {"res_type": res_type, "res_id": res_id})).first()
    return _stored(row) if row else None


def _resource_pk(res_type: str, res_id: str) -> Any:
    """The `pk` of `res_type/res_id` as a subquery: a resource's versions are found by it (pk_resource_versions)."""
    return (select(resources.c.pk).where(resources.c.res_type == res_type, resources.c.res_id == res_id)
            .scalar_subquery())


async def read_version(conn: AsyncConnection, res_type: str, res_id: str, version_id: int) -> Stored | None:
    query = select(*_VERSION_COLUMNS).where(
        resource_versions.c.res_pk == _resource_pk(res_type, res_id),
        resource_versions.c.version_id == version_id,
    )
    row = (await conn.execute(query)).first()
    return _stored(row) if row else None


async def create(
    conn: AsyncConnection, resource: Mapping[str, Any], *, now: datetime, res_id: str | None = None
) -> Stored:
    """Store a new resource (version 1) under `res_id` or a fresh uuid."""
    res_type = resource["resourceType"]
    res_id = res_id or new_id()
    document = stamp(resource, res_id, 1, now)
    patient_id = patient_compartment(document)
    pk = (
        await conn.execute(
            insert(resources)
            .values(
                res_type=res_type,
                res_id=res_id,
                version_id=1,
                last_updated=now,
                deleted=False,
                patient_id=patient_id,
                content=document,
            )
            .returning(resources.c.pk)
        )
    ).scalar_one()
    await _append_version(conn, pk, document, 1, now, "POST")
    await _write_index(conn, pk, res_type, document, replace=False)
    return Stored(pk, res_type, res_id, 1, now, False, orjson.dumps(document).decode(), "POST", patient_id)


async def update(
    conn: AsyncConnection,
    resource: Mapping[str, Any],
    *,
    now: datetime,
    res_id: str,
    if_match: int | None = None,
) -> tuple[Stored, bool]:
    """Store a new version of `res_id`, creating it if it does not exist (update-as-create).

    Returns the stored version and whether it was created. Raises `VersionConflict` when
    `if_match` is given and is not the current version (https://hl7.org/fhir/R4/http.html#concurrency).
    """
    res_type = resource["resourceType"]
    current = await read(conn, res_type, res_id, for_update=True)
    if current is None:
        if if_match is not None:
            raise VersionConflict(if_match, 0)
        return await create(conn, resource, now=now, res_id=res_id), True
    if if_match is not None and if_match != current.version_id:
        raise VersionConflict(if_match, current.version_id)
    if not current.deleted and current.content is not None and same_content(current.content, resource):
        return current, False
    version_id = current.version_id + 1
    now = max(now, current.last_updated)
    document = stamp(resource, res_id, version_id, now)
    patient_id = patient_compartment(document)
    await conn.execute(
        sql_update(resources)
        .where(resources.c.pk == current.pk)
        .values(
            version_id=version_id,
            last_updated=now,
            deleted=False,
            patient_id=patient_id,
            content=document,
        )
    )
    await _append_version(conn, current.pk, document, version_id, now, "PUT")
    await _write_index(conn, current.pk, res_type, document, replace=True)
    stored = Stored(current.pk, res_type, res_id, version_id, now, False, orjson.dumps(document).decode(),
                    patient_id=patient_id)
    return stored, False


async def delete_resource(conn: AsyncConnection, res_type: str, res_id: str, *, now: datetime) -> Stored | None:
    """Mark `res_type/res_id` deleted (a new, empty version); None if it never existed.

    Deleting an already-deleted resource changes nothing and returns the deletion marker.
    """
    current = await read(conn, res_type, res_id, for_update=True)
    if current is None or current.deleted:
        return current
    version_id = current.version_id + 1
    now = max(now, current.last_updated)
    await conn.execute(
        sql_update(resources)
        .where(resources.c.pk == current.pk)
        .values(version_id=version_id, last_updated=now, deleted=True, content=None)
    )
    await conn.execute(
        insert(resource_versions).values(
            res_pk=current.pk,
            version_id=version_id,
            res_type=res_type,
            res_id=res_id,
            last_updated=now,
            deleted=True,
            method="DELETE",
            content=None,
        )
    )
    await _clear_index(conn, current.pk)
    return Stored(current.pk, res_type, res_id, version_id, now, True, None, "DELETE")


async def _append_version(
    conn: AsyncConnection, pk: int, document: dict[str, Any], version_id: int, now: datetime, method: str
) -> None:
    await conn.execute(
        insert(resource_versions).values(
            res_pk=pk,
            version_id=version_id,
            res_type=document["resourceType"],
            res_id=document["id"],
            last_updated=now,
            deleted=False,
            method=method,
            content=document,
        )
    )


async def _clear_index(conn: AsyncConnection, pk: int) -> None:
    for table in INDEX_TABLES.values():
        await conn.execute(sql_delete(table).where(table.c.res_pk == pk))


async def _write_index(
    conn: AsyncConnection, pk: int, res_type: str, document: dict[str, Any], *, replace: bool
) -> None:
    if replace:
        await _clear_index(conn, pk)
    for kind, rows in extract_index(document).items():
        if rows:
            table = INDEX_TABLES[kind]
            await conn.execute(insert(table), [{**row, "res_pk": pk, "res_type": res_type} for row in rows])


# -- history ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[Stored]
    next_cursor: tuple[datetime, int, int] | None


async def history(
    conn: AsyncConnection,
    *,
    res_type: str | None = None,
    res_id: str | None = None,
    since: datetime | None = None,
    at: datetime | None = None,
    count: int = 50,
    after: tuple[datetime, int, int] | None = None,
) -> HistoryPage:
    """Versions newest first (https://hl7.org/fhir/R4/http.html#history), keyset-paged.

    `after` is the (last_updated, res_pk, version_id) of the last version on the previous page,
    so versions written while a client pages never shift the pages it has not fetched yet.
    """
    v = resource_versions.c
    query = select(*_VERSION_COLUMNS).where(*history_filter(res_type, res_id, since, at))
    if after:
        moment, pk, version = after
        query = query.where(
            or_(
                v.last_updated < moment,
                and_(v.last_updated == moment, v.res_pk < pk),
                and_(v.last_updated == moment, v.res_pk == pk, v.version_id < version),
            )
        )
    query = query.order_by(v.last_updated.desc(), v.res_pk.desc(), v.version_id.desc()).limit(count + 1)
    rows = [_stored(r) for r in (await conn.execute(query)).all()]
    page, more = rows[:count], len(rows) > count
    cursor = (page[-1].last_updated, page[-1].pk, page[-1].version_id) if more and page else None
    return HistoryPage(page, cursor)


async def history_total(
    conn: AsyncConnection, *, res_type: str | None = None, res_id: str | None = None,
    since: datetime | None = None, at: datetime | None = None,
) -> int:
    query = select(func.count()).select_from(resource_versions).where(
        *history_filter(res_type, res_id, since, at)
    )
    return (await conn.execute(query)).scalar_one()


def history_filter(
    res_type: str | None, res_id: str | None, since: datetime | None, at: datetime | None
) -> list[Any]:
    """The conditions on `resource_versions` for a history: one resource's versions by its `res_pk`."""
    v = resource_versions.c
    clauses: list[Any] = []
    if res_type and res_id:
        clauses.append(v.res_pk == _resource_pk(res_type, res_id))
    elif res_type:
        clauses.append(v.res_type == res_type)
    elif res_id:
        clauses.append(v.res_id == res_id)
    if since:
        clauses.append(v.last_updated >= since)
    if at:
        clauses.append(v.last_updated <= at)
    return clauses


# -- locks ----------------------------------------------------------------------------------------


def lock_key(*parts: str) -> int:
    """A signed 64-bit key for `pg_advisory_xact_lock`, stable across processes."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_for(conn: AsyncConnection, *parts: str) -> None:
    """Serialise writers on `parts` until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: write transactions already begin
    IMMEDIATE, which serialises every writer, so there is nothing more to take.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(*parts)})


# -- compartment ------------------------------------------------------------------------------------


async def compartment_page(
    conn: AsyncConnection,
    patient_id: str,
    *,
    types: Sequence[str] | None,
    since: datetime | None,
    count: int,
    after_pk: int | None,
    snapshot_pk: int | None,
) -> tuple[list[Stored], int | None]:
    """Resources in a Patient's compartment, by pk, for `$everything`; returns (page, next pk)."""
    r = resources.c
    query = select(*_COLUMNS).where(r.patient_id == patient_id, r.deleted.is_(False))
    if types:
        query = query.where(r.res_type.in_(list(types)))
    if since:
        query = query.where(r.last_updated >= since)
    if after_pk is not None:
        query = query.where(r.pk > after_pk)
    if snapshot_pk is not None:
        query = query.where(r.pk <= snapshot_pk)
    rows = [_stored(x) for x in (await conn.execute(query.order_by(r.pk).limit(count + 1))).all()]
    page = rows[:count]
    return page, (page[-1].pk if len(rows) > count and page else None)


async def max_pk(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.coalesce(func.max(resources.c.pk), 0)))).scalar_one()


async def count_resources(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.count()).select_from(resources).where(~resources.c.deleted))).scalar_one()
