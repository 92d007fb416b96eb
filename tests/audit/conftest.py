"""Audit tests: the session's database (SQLite or PostgreSQL) with empty audit tables, one event loop."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine.audit.events import READ, AuditRecord
from engine.db.database import Database


async def _empty(db: Database) -> None:
    from engine.audit.schema import (
        audit_chain_head,
        audit_entities,
        audit_log,
        audit_patients,
        break_glass_reviews,
    )

    async with db.write() as conn:
        for table in (audit_log, audit_patients, audit_entities, audit_chain_head, break_glass_reviews):
            await conn.execute(table.delete())


@pytest.fixture
def audit_db(db: Database, runner: asyncio.Runner) -> Database:
    """The session's database with empty audit tables."""
    runner.run(_empty(db))
    return db


def a_record(n: int = 0, *, user: str = "u1", patient: str | None = "p1", start: datetime | None = None,
             **changes: Any) -> AuditRecord:
    """A read of Patient/`patient` by `user`, `n` minutes after `start` (Monday 5 January 2026, 10:00 UTC)."""
    moment = (start or datetime(2026, 1, 5, 10, 0)) + timedelta(minutes=n)
    values: dict[str, Any] = {
        "recorded": moment, "user_id": user, "user_name": f"User {user}", "role": "R8000", "org": "RR8",
        "action": READ, "subtype": "read", "patient_ids": (patient,) if patient else (),
        "entities": (f"Patient/{patient}",) if patient else (),
    }
    values.update(changes)
    return AuditRecord(**values)
