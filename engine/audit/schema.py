"""The audit tables: an append-only, hash-chained log, its search indexes and the break-glass reviews.

`audit_log.record` holds the canonical JSON of an `AuditRecord` exactly as it was hashed (text,
not JSONB, so the bytes survive). The other columns of `audit_log` (its `entities` among them) and
the child tables `audit_patients` and (on SQLite) `audit_entities` are copies of fields of that
record, kept for index lookups; `verify` checks that they still agree with it. `seq` is assigned under the chain lock, so it is
gapless; `audit_chain_head` (one row, id 1) remembers the last seq and hash, which is how a deleted
tail is noticed.

These tables share `engine.db.schema.metadata` (as engine/db/ingest_schema.py does), so tests'
`truncate_all` empties them once this module is imported.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Index, Integer, String, Table, Text, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

from engine.db.schema import PrimaryKeyInt, metadata

HASH_LENGTH = 64  # hex sha256
GENESIS_HASH = "0" * HASH_LENGTH

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", PrimaryKeyInt, primary_key=True, autoincrement=False),
    Column("recorded", DateTime(timezone=False), nullable=False),
    Column("kind", String(32), nullable=False),  # rest | security-alert
    Column("user_id", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("org", String(16), nullable=True),
    Column("purpose", String(16), nullable=False),
    Column("action", String(1), nullable=False),
    Column("subtype", String(32), nullable=False),
    Column("outcome", String(2), nullable=False),
    Column("break_glass", Boolean, nullable=False),
    Column("record", Text, nullable=False),
    Column("prev_hash", String(HASH_LENGTH), nullable=False),
    Column("hash", String(HASH_LENGTH), nullable=False),
    # The record's entity keys (`Observation/1`): text[] with a GIN index on PostgreSQL, JSON on SQLite.
    Column("entities", ARRAY(Text).with_variant(JSON(), "sqlite"), nullable=True),
    # The append that fills the GIN pending list merges it, holding the chain lock meanwhile: a small list
    # (128 kB, not the default 4 MB) keeps that pause to a few milliseconds (search p99 138 ms, not 230–350).
    Index("ix_audit_log_entities", "entities", postgresql_using="gin",
          postgresql_with={"gin_pending_list_limit": 128}).ddl_if(dialect="postgresql"),
    Index(None, "recorded"),
    Index(None, "user_id", "seq"),
    Index(None, "org", "seq"),
    Index(None, "purpose", "seq"),
    Index(None, "kind", "seq"),
    Index(None, "action", "seq"),
    Index(None, "outcome", "seq"),
)

audit_patients = Table(
    "audit_patients",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("seq", PrimaryKeyInt, primary_key=True),
    Index(None, "seq"),
)

# The entity index on SQLite (one row per record and entity key). On PostgreSQL the keys live in
# `audit_log.entities` under a GIN index instead: twenty btree rows per search result, inserted at random
# places in the index, cost PostgreSQL more than the rest of the audit record (WAL above all); a GIN
# index takes the keys into its pending list and merges them in bulk.
audit_entities = Table(
    "audit_entities",
    metadata,
    Column("reference", String(200), primary_key=True),  # Observation/1 (a version suffix is dropped)
    Column("seq", PrimaryKeyInt, primary_key=True),
    Index(None, "seq"),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", PrimaryKeyInt, nullable=False),
    Column("hash", String(HASH_LENGTH), nullable=False),
)

# break_glass_reviews.outcome values.
REVIEW_OUTCOMES = ("appropriate", "inappropriate", "follow-up")

break_glass_reviews = Table(
    "break_glass_reviews",
    metadata,
    Column("id", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("audit_seq", PrimaryKeyInt, nullable=False),  # the security alert's audit_log.seq
    Column("reviewer", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("note", Text, nullable=True),
    Column("reviewed_at", DateTime(timezone=False), nullable=False),
    Index(None, "audit_seq"),
    sqlite_autoincrement=True,
)


class RefersToEntities(ColumnElement[bool]):
    """The audit record names one of `keys` (entity keys, `Type/id`): `audit_log.entities` overlaps them
    on PostgreSQL (its GIN index), the `audit_entities` rows hold one of them on SQLite."""

    type = Boolean()
    inherit_cache = False

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)


@compiles(RefersToEntities, "postgresql")
def _refers_postgresql(element: RefersToEntities, compiler: Any, **kw: Any) -> str:
    return compiler.process(audit_log.c.entities.overlap(element.keys), **kw)  # type: ignore[no-any-return]


@compiles(RefersToEntities)
def _refers_elsewhere(element: RefersToEntities, compiler: Any, **kw: Any) -> str:
    rows = select(audit_entities.c.seq).where(audit_entities.c.reference.in_(element.keys))
    return compiler.process(audit_log.c.seq.in_(rows), **kw)  # type: ignore[no-any-return]
