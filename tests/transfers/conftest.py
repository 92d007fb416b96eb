"""Transfer tests: the ingest tests' session database and loop, with the transfer tables emptied too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import engine.db.ingest_schema
import engine.transfers.schema  # noqa: F401 - and the transfer tables
from engine.db.database import Database
from engine.db.repository import utc_now
from engine.ingest.pipeline import IngestContext
from tests.conftest import free_port
from tests.ingest.conftest import SENDERS, _empty
from tests.transfers.helpers import Receiver


@pytest.fixture
def store(db: Database, runner) -> Database:
    """The session's database with the store, ingest and transfer tables emptied."""
    runner.run(_empty(db, transfers=True))
    return db


@pytest.fixture
def ctx(store: Database) -> IngestContext:
    """Ingest on the real clock (notifications are due when written)."""
    return IngestContext(db=store, senders=dict(SENDERS), now=utc_now)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def down_receiver() -> Iterator[Receiver]:
    """A receiver whose port nobody listens on yet: `.start()` brings it up."""
    server = Receiver(free_port())
    yield server
    server.stop()


def fake_document(issued: list[Any]) -> Any:
    """A stand-in `issue_discharge_document` recording its calls (used until engine.documents lands)."""
    from dataclasses import dataclass

    from mappings.ids import resource_id

    @dataclass
    class Issued:
        bundle_id: str
        composition_id: str
        document_reference_id: str

    async def issue(conn: Any, encounter_id: str, doc_type: str, *, now: Any) -> Issued:
        issued.append((encounter_id, doc_type))
        return Issued(resource_id("Bundle", encounter_id), resource_id("Composition", encounter_id),
                      resource_id("DocumentReference", encounter_id))

    return issue
