"""The store's tables: current resources, every version, and the search index.

Resources are kept as canonical JSON (JSONB on PostgreSQL, JSON text on SQLite) with their
`meta.versionId` and `meta.lastUpdated` already inside, so a read serves the stored document
as it is. The search index is one narrow table per FHIR search parameter type
(https://hl7.org/fhir/R4/search.html#ptypes); every row points at `resources.pk`, which is
assigned once when a resource is first created and never changes (paging keys on it).

Times are stored as naive UTC datetimes on both back ends so that they compare the same way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Computed,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger on PostgreSQL, INTEGER on SQLite (so that it aliases the rowid and autoincrements).
PrimaryKeyInt = BigInteger().with_variant(Integer(), "sqlite")
DocumentJSON = JSON().with_variant(JSONB(), "postgresql")


class CarriesSecurityLabels(ColumnElement[bool]):
    """`resources.content` has `meta.security` — the expression of the generated `labelled` column.

    The access rules test a row's security labels in the search index; on the rows without any (nearly
    all of them) this column lets them skip that lookup. The database computes it from the stored
    document, so no write path can leave it wrong.
    """

    type = Boolean()
    inherit_cache = True


# The same SQL in the migration that adds the column (engine/db/migrations/versions/0006_labelled.py).
LABELLED_SQL = {
    "postgresql": "(content -> 'meta' -> 'security') IS NOT NULL",
    "sqlite": "json_extract(content, '$.meta.security') IS NOT NULL",
}


@compiles(CarriesSecurityLabels, "postgresql")
@compiles(CarriesSecurityLabels, "sqlite")
def _labelled_sql(element: CarriesSecurityLabels, compiler: Any, **kw: Any) -> str:
    return LABELLED_SQL[compiler.dialect.name]


resources = Table(
    "resources",
    metadata,
    Column("pk", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # The Patient whose compartment this resource belongs to (itself, for a Patient).
    Column("patient_id", String(64), nullable=True),
    # Null once deleted: the content of a deleted resource lives on in resource_versions.
    Column("content", DocumentJSON, nullable=True),
    # Whether `content` carries security labels (computed by the database; see CarriesSecurityLabels).
    Column("labelled", Boolean, Computed(CarriesSecurityLabels(), persisted=True), nullable=True),
    UniqueConstraint("res_type", "res_id"),
    Index(None, "res_type", "last_updated"),
    Index(None, "patient_id", "res_type"),
    # A patient's labelled resources of one type, without reading the unlabelled rest.
    Index("ix_resources_labelled", "patient_id", "res_type", postgresql_where=text("labelled"),
          sqlite_where=text("labelled")),
)

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("res_pk", PrimaryKeyInt, primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # POST, PUT or DELETE: Bundle.entry.request.method in a history bundle.
    Column("method", String(8), nullable=False),
    Column("content", DocumentJSON, nullable=True),
    # A resource's versions are found by its `res_pk` (the primary key), never by type and id.
    Index(None, "res_type", "last_updated"),
    Index(None, "last_updated"),
)


def index_table(
    name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...], pattern_ops: tuple[str, ...] = (),
    partial: dict[int, str] | None = None,
) -> Table:
    """A table of index rows, each pointing at `resources.pk`, with no key of its own: rows are found
    through `indexes` and replaced by `res_pk` (a surrogate key would cost every row one more B-tree
    insert). `partial` maps an index's position to the condition it is limited to."""
    table = Table(
        name,
        metadata,
        Column("res_pk", PrimaryKeyInt, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
    )
    Index(f"ix_{name}_res_pk", table.c.res_pk)
    for i, cols in enumerate(indexes):
        # varchar_pattern_ops lets PostgreSQL use the index for `LIKE 'prefix%'` in any collation.
        ops = {c: "varchar_pattern_ops" for c in cols if c in pattern_ops}
        where = text((partial or {})[i]) if i in (partial or {}) else None
        Index(f"ix_{name}_search_{i}", *(table.c[c] for c in cols), postgresql_ops=ops,
              postgresql_where=where, sqlite_where=where)
    return table


# Strings are matched on `value` (lower-cased, accents and punctuation folded: the FHIR default
# "starts with, case and accent insensitive") and on `exact` for the :exact modifier.
idx_string = index_table(
    "idx_string",
    Column("value", String(256), nullable=False),
    Column("exact", String(256), nullable=False),
    indexes=(("res_type", "param", "value"), ("res_type", "param", "exact")),
    pattern_ops=("value",),
)

# Codings, Identifiers, ContactPoints, codes and booleans. `system` is '' when absent. A search by
# system alone (`system|`) reads the parameter's rows through the one index, filtering on the system.
idx_token = index_table(
    "idx_token",
    Column("system", String(256), nullable=False, default=""),
    Column("code", String(256), nullable=False),
    Column("display", String(256), nullable=True),
    indexes=(("res_type", "param", "code", "system"),),
)

# A date, dateTime, instant, Period or Timing as the closed interval [low, high].
idx_date = index_table(
    "idx_date",
    Column("low", DateTime(timezone=False), nullable=True),
    Column("high", DateTime(timezone=False), nullable=True),
    indexes=(("res_type", "param", "low", "high"), ("res_type", "param", "high")),
)

# Literal references: `target_type`/`target_id` for relative and local absolute ones,
# `url` for absolute references to other servers and canonical URLs.
idx_reference = index_table(
    "idx_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", String(512), nullable=True),
    indexes=(
        ("res_type", "param", "target_id", "target_type"),
        ("target_type", "target_id"),
        ("res_type", "param", "url"),
    ),
    partial={2: "url IS NOT NULL"},  # few references are absolute URLs (migration 0008)
)

idx_quantity = index_table(
    "idx_quantity",
    Column("system", String(256), nullable=False, default=""),
    Column("code", String(64), nullable=False, default=""),
    Column("value", Float, nullable=False),
    indexes=(("res_type", "param", "code", "value"), ("res_type", "param", "value")),
)

idx_number = index_table(
    "idx_number",
    Column("value", Float, nullable=False),
    indexes=(("res_type", "param", "value"),),
)

idx_uri = index_table(
    "idx_uri",
    Column("value", String(512), nullable=False),
    indexes=(("res_type", "param", "value"),),
)

# Not a search index: which organisations have a legitimate relationship with which patient
# (UK-REFERENCE §4), derived from stored resources by `consent.relationships.relationships_from`
# and rebuilt with the search index on every write, so it is never out of step with the record.
# `param` holds the relationship kind, `org` an ODS code or "Organization/<id>", `low`/`high` the period.
care_relationships = index_table(
    "care_relationships",
    Column("patient_id", String(64), nullable=False),
    Column("org", String(128), nullable=False),
    Column("low", DateTime(timezone=False), nullable=True),
    Column("high", DateTime(timezone=False), nullable=True),
    indexes=(("org", "patient_id"), ("patient_id",)),
)

INDEX_TABLES: dict[str, Table] = {
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "reference": idx_reference,
    "quantity": idx_quantity,
    "number": idx_number,
    "uri": idx_uri,
    "relationship": care_relationships,
}
