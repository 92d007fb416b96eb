"""Break-glass grants: who overrode the relationship and objection rules, for whom, why, until when.

Each use of break-glass (UK-REFERENCE §4: purpose of use BTG, a mandatory reason, time-boxed)
records a grant; while it runs the user may see that patient's record as if they had a legitimate
relationship and the patient had not objected. The care relationships themselves live with the
search index (`engine.db.schema.care_relationships`), rebuilt on every write.

This table shares `engine.db.schema.metadata`, so alembic and `truncate_all` see it.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from engine.db.schema import PrimaryKeyInt, metadata

break_glass_grants = Table(
    "break_glass_grants",
    metadata,
    Column("id", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("user_id", String(128), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("org", String(16), nullable=True),
    Column("role", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("started", DateTime(timezone=False), nullable=False),
    Column("expires", DateTime(timezone=False), nullable=False),
    Index(None, "user_id", "patient_id", "expires"),
    Index(None, "started"),
)
