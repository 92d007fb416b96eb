"""Ingest tests: a clean store on the session's database (SQLite or PostgreSQL), one event loop."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from adapters.senders import SecurityLabel, SenderConfig
from engine.db.database import Database
from engine.ingest.pipeline import IngestContext

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SENDERS = {
    "RR8": SenderConfig("RR8", "hospital", "Leeds Teaching Hospitals NHS Trust"),
    "RY6": SenderConfig("RY6", "community", "Leeds Community Healthcare NHS Trust"),
    "RGD": SenderConfig("RGD", "mental_health", "Leeds and York Partnership NHS Foundation Trust",
                        security_labels=(SecurityLabel(ACT_CODE, "PSY"), SecurityLabel(CONFIDENTIALITY, "R"))),
}


class Clock:
    """A controllable `now()`: naive UTC, advancing a millisecond per call so versions order."""

    def __init__(self, start: datetime = datetime(2024, 6, 1, 12, 0, 0)) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        self.moment += timedelta(milliseconds=1)
        return self.moment


async def _empty(db: Database, *, transfers: bool = False) -> None:
    """Delete what ingest writes; with `transfers`, the transfer-of-care tables too (an A03's outbox rows,
    and the subscriptions and endpoints a test set up to receive them). DELETE, not TRUNCATE: on a few rows
    it is far quicker."""
    from engine.db.ingest_schema import hl7_messages, resource_sources
    from engine.db.schema import INDEX_TABLES, resource_versions, resources
    from engine.transfers.schema import TABLES as TRANSFER_TABLES

    async with db.write() as conn:
        for table in (*INDEX_TABLES.values(), resource_versions, resources, resource_sources, hl7_messages,
                      *(TRANSFER_TABLES if transfers else ())):
            await conn.execute(table.delete())


@pytest.fixture
def store(db: Database, runner: asyncio.Runner) -> Database:
    """The session's database, emptied (of what another test's transfers left too)."""
    runner.run(_empty(db, transfers=True))
    return db


@pytest.fixture
def ctx(store: Database) -> IngestContext:
    return IngestContext(db=store, senders=dict(SENDERS), now=Clock())


