"""The transfer tables: the delivery outbox and its attempts, Subscriptions, per-organisation endpoints.

- `transfer_outbox`: one row per notification to send (a Task event × one destination), written in
  the same transaction as the event, so a notification exists exactly when its event committed.
  The row is self-contained — method, URL, headers and body are fixed when it is written — so a
  retry days later sends the same bytes under the same idempotency key (`delivery_key`).
- `transfer_delivery_attempts`: every attempt (when, HTTP status or error, which worker).
- `transfer_subscriptions`: FHIR R4 Subscriptions (rest-hook); the store's resource registry has no
  Subscription type, so they live here and are served by engine/api/transfer_routes.py.
- `transfer_endpoints`: a receiving organisation's own endpoint (by ODS code), configured once.

These tables share `engine.db.schema.metadata`, so `truncate_all` sees them once this module is imported.
Times are naive UTC, as everywhere in the store.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, Index, Integer, String, Table, Text, UniqueConstraint

from engine.db.schema import PrimaryKeyInt, metadata

# transfer_outbox.status
PENDING = "pending"  # waiting for its next attempt (or being attempted, while `claimed_until` is in the future)
DELIVERED = "delivered"  # the receiver answered 2xx; never sent again
DEAD = "dead"  # retried for the whole retry window without success; waits for a person (retry action)

transfer_outbox = Table(
    "transfer_outbox",
    metadata,
    Column("id", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("delivery_key", String(64), nullable=False),  # idempotency key: uuid5(event, destination)
    Column("event", String(32), nullable=False),  # task-requested, task-status
    Column("task_id", String(64), nullable=False),
    Column("task_version", Integer, nullable=False),
    Column("owner_ods", String(64), nullable=True),  # the Task's owner, for listing by organisation
    Column("target_kind", String(16), nullable=False),  # subscription | endpoint
    Column("target_ref", String(128), nullable=False),  # Subscription id, or the endpoint's ODS code
    Column("method", String(8), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("headers", JSON, nullable=False),  # [[name, value], ...] configured by the receiver
    Column("body", Text, nullable=True),  # None: an empty rest-hook notification
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("retry_from", DateTime(timezone=False), nullable=False),  # start of the retry window
    Column("next_attempt_at", DateTime(timezone=False), nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", DateTime(timezone=False), nullable=True),
    Column("delivered_at", DateTime(timezone=False), nullable=True),
    Column("dead_at", DateTime(timezone=False), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("delivery_key"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "task_id"),
    sqlite_autoincrement=True,
)

transfer_delivery_attempts = Table(
    "transfer_delivery_attempts",
    metadata,
    Column("id", PrimaryKeyInt, primary_key=True, autoincrement=True),
    Column("outbox_id", PrimaryKeyInt, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(timezone=False), nullable=False),
    Column("finished_at", DateTime(timezone=False), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("worker", String(64), nullable=False),
    Index(None, "outbox_id"),
)

transfer_subscriptions = Table(
    "transfer_subscriptions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # requested, active, error, off
    Column("criteria", String(1024), nullable=False),
    Column("owner_ods", String(64), nullable=True),  # the organisation of the user who created it
    Column("version_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("updated_at", DateTime(timezone=False), nullable=False),
    Column("content", JSON, nullable=False),  # the Subscription resource as served
    Index(None, "status"),
)

transfer_endpoints = Table(
    "transfer_endpoints",
    metadata,
    Column("ods_code", String(64), primary_key=True),
    Column("address", String(2048), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("payload", String(64), nullable=True),  # application/fhir+json, or None for an empty notification
    Column("active", Boolean, nullable=False, default=True),
    Column("updated_at", DateTime(timezone=False), nullable=False),
)

TABLES = (transfer_outbox, transfer_delivery_attempts, transfer_subscriptions, transfer_endpoints)
