"""The ingest tables: every inbound HL7 v2 message as received, and which event each resource reflects.

`hl7_messages` is the message store and the error queue in one (DESIGN.md principle 1, "Nothing
lost"): a row holds the exact text received, the ACK that was returned and, for a failed message,
the HL7 table 0357 code, the ERR-2 location and a readable reason. `UNIQUE(sender, control_id)` is
the de-duplication key (MSH-4, MSH-10); rows missing either part (an unparseable message) are never
de-duplicated, because SQL unique constraints treat NULLs as distinct on both back ends.

`resource_sources` remembers, for each stored resource, the event time (EVN-2, else MSH-7) of the
message that last wrote it, so that a message delivered late does not overwrite newer data.

These tables share `engine.db.schema.metadata`, so alembic and `truncate_all` see them once this
module is imported.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint

from engine.db.schema import PrimaryKeyInt, metadata

# hl7_messages.status values: the ACK each one answered with.
PROCESSED = "processed"  # AA: applied and committed
ERROR = "error"  # AE: the content is in error (or storing it failed); waits in the error queue
REJECTED = "rejected"  # AR: not an HL7 message, unknown sender or unsupported type; error queue too
FAILED_STATUSES = (ERROR, REJECTED)

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("id", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("sender", String(64), nullable=True),  # MSH-4.1 (ODS code)
    Column("control_id", String(200), nullable=True),  # MSH-10
    Column("message_type", String(32), nullable=True),  # "ADT^A01"
    Column("status", String(16), nullable=False),
    Column("ack_code", String(2), nullable=False),  # AA / AE / AR: what the pipeline decided
    Column("error_code", String(8), nullable=True),  # HL7 table 0357
    Column("error_text", Text, nullable=True),
    Column("error_location", String(64), nullable=True),  # ERR-2 as text: "PID^1^3^2^1"
    Column("raw", Text, nullable=False),
    Column("ack", Text, nullable=True),  # the ACK text returned; NULL when MSH-15/16 asked for none
    Column("transport", String(16), nullable=False),  # mllp, file, replay, …
    Column("received_at", DateTime(timezone=False), nullable=False),
    Column("event_time", DateTime(timezone=False), nullable=True),
    Column("processed_at", DateTime(timezone=False), nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("unmapped", JSON(none_as_null=True), nullable=True),  # field addresses no map used ("PID-9", "ZU1")
    Column("warnings", JSON(none_as_null=True), nullable=True),  # mapping warnings and stale resources left alone
    Column("patient_id", String(64), nullable=True),  # the Patient the message was applied to
    UniqueConstraint("sender", "control_id"),
    Index(None, "status", "received_at"),
    Index(None, "error_code"),
    Index(None, "received_at"),
    # AUTOINCREMENT: SQLite never reuses an id, so a message id (and the Provenance id derived
    # from it) names one message for ever, as a PostgreSQL sequence does.
    sqlite_autoincrement=True,
)

resource_sources = Table(
    "resource_sources",
    metadata,
    Column("res_pk", PrimaryKeyInt, primary_key=True),  # resources.pk
    Column("event_time", DateTime(timezone=False), nullable=True),
    Column("message_id", PrimaryKeyInt, nullable=True),  # hl7_messages.id
)
