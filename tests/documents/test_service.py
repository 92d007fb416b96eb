"""The service as the engine calls it: `issue_discharge_document` inside an open write transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from engine.db import repository
from engine.db.database import Database, open_database
from engine.documents.service import IssuedDocument, issue_discharge_document, reference_id_for
from engine.outcomes import FhirError
from tests.documents.conftest import ALICE_ADMISSION

NOW = datetime(2025, 1, 14, 12, 0, 0)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url, pool_size=2)
    yield database
    asyncio.run(database.dispose())


async def _issue(db: Database, doc_type: str = "inpatient-discharge", **kwargs: object) -> IssuedDocument:
    async with db.write() as conn:
        return await issue_discharge_document(conn, ALICE_ADMISSION, doc_type, now=NOW,
                                              base_url="https://sc.example.org/fhir", **kwargs)


async def _read(db: Database, res_type: str, res_id: str) -> dict | None:
    async with db.read() as conn:
        stored = await repository.read(conn, res_type, res_id)
    return orjson.loads(stored.content) if stored and stored.content else None


def test_engine_issues_and_stores_a_discharge_document(demo_client, db: Database) -> None:
    async def run() -> None:
        issued = await _issue(db)
        assert issued.document_reference_id == reference_id_for(ALICE_ADMISSION, "inpatient-discharge")
        bundle = await _read(db, "Bundle", issued.bundle_id)
        assert bundle is not None and bundle["type"] == "document"
        Bundle.model_validate(bundle)
        composition = await _read(db, "Composition", issued.composition_id)
        assert composition is not None and composition["title"] == "Inpatient discharge summary"
        # no principal: the author is the encounter's attending clinician, the custodian its provider
        assert composition["author"] == [{"reference": "Practitioner/prac-sarah-okafor", "display": "Dr Sarah Okafor"}]
        assert composition["custodian"]["reference"] == "Organization/org-rr8"
        assert bundle["entry"][1]["fullUrl"] == "https://sc.example.org/fhir/Patient/pat-alice-hughes"
        docref = await _read(db, "DocumentReference", issued.document_reference_id)
        assert docref is not None and docref["content"][0]["attachment"]["url"] == f"Bundle/{issued.bundle_id}"

        again = await _issue(db)
        assert again.document_reference_id == issued.document_reference_id
        assert again.bundle_id != issued.bundle_id and again.reference_version == issued.reference_version + 1
    asyncio.run(run())


def test_engine_document_rolls_back_with_the_callers_transaction(demo_client, db: Database) -> None:
    class Abort(Exception):
        pass

    async def run() -> str:
        try:
            async with db.write() as conn:
                issued = await issue_discharge_document(conn, ALICE_ADMISSION, "inpatient-discharge", now=NOW,
                                                        base_url="https://sc.example.org/fhir")
                raise Abort
        except Abort:
            return issued.bundle_id
        raise AssertionError("not reached")

    bundle_id = asyncio.run(run())
    assert asyncio.run(_read(db, "Bundle", bundle_id)) is None
    assert asyncio.run(_read(db, "DocumentReference", reference_id_for(ALICE_ADMISSION, "inpatient-discharge"))) is None


def test_engine_errors_are_fhir_errors(demo_client, db: Database) -> None:
    async def run(encounter: str, doc_type: str) -> int:
        try:
            async with db.write() as conn:
                await issue_discharge_document(conn, encounter, doc_type, now=NOW, base_url="https://x/fhir")
        except FhirError as error:
            return error.status
        return 0

    assert asyncio.run(run("missing", "inpatient-discharge")) == 404
    assert asyncio.run(run(ALICE_ADMISSION, "nonsense")) == 400
