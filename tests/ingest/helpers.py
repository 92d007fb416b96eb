"""Reading the store back in ingest tests: resources, versions, message rows, searches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, cast, func, select

from engine.db.database import Database
from engine.db.ingest_schema import hl7_messages
from engine.db.schema import resource_versions, resources
from engine.ingest.pipeline import IngestContext, IngestOutcome, ingest_message
from engine.search.params import parse_search
from engine.search.query import search

RECEIVED = datetime(2024, 6, 1, 9, 0, 0)


async def ingest(ctx: IngestContext, text: str | bytes, transport: str = "mllp") -> IngestOutcome:
    return await ingest_message(ctx, text, transport=transport, received_at=RECEIVED)


async def stored(db: Database, res_type: str, res_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        query = select(cast(resources.c.content, Text)).where(resources.c.res_type == res_type,
                                                              resources.c.res_id == res_id)
        content = (await conn.execute(query)).scalar_one_or_none()
    return orjson.loads(content) if content else None


async def all_of(db: Database, res_type: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        query = select(cast(resources.c.content, Text)).where(resources.c.res_type == res_type).order_by(resources.c.pk)
        return [orjson.loads(c) for c in (await conn.execute(query)).scalars()]


async def counts(db: Database) -> dict[str, int]:
    """Resources by type."""
    async with db.read() as conn:
        query = select(resources.c.res_type, func.count()).group_by(resources.c.res_type)
        return {t: n for t, n in (await conn.execute(query)).all()}


async def version_count(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(resource_versions))).scalar_one()


async def compartment(db: Database, patient_id: str) -> list[tuple[str, str]]:
    async with db.read() as conn:
        query = select(resources.c.res_type, resources.c.res_id).where(resources.c.patient_id == patient_id)
        return [tuple(r) for r in (await conn.execute(query)).all()]  # type: ignore[misc]


async def messages(db: Database) -> list[Any]:
    async with db.read() as conn:
        return list((await conn.execute(select(hl7_messages).order_by(hl7_messages.c.id))).all())


async def search_ids(db: Database, res_type: str, *params: tuple[str, str]) -> list[str]:
    async with db.read() as conn:
        page = await search(conn, parse_search(res_type, list(params)))
    return [row.res_id for row in page.rows]
