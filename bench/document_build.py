"""Transfer-of-care document generation for a two-week inpatient stay (≈ 300 resources), goal ≤ 100 ms.

Method:

1. make a scratch store — a SQLite file and, when the server answers, a scratch PostgreSQL database
   (`--database-url`, default the local one) — migrated with the alembic migrations;
2. write one patient's record through the real write path (`repository.create` in one transaction):
   Patient, GP practice, trust, ward, consultant, a 14-day Encounter, 5 vital signs 4 times a day
   (280 Observations), diagnoses, problems, allergies, medicines, flags, a clinical note, a contact —
   `--resources` in all (about 300);
3. time, `--rounds` times each after a warm-up, median and p95:
   - baseline: read the same resources the gatherer reads (`repository.compartment_page`, one connection),
     JSON not parsed — the least any document could cost;
   - build: `build_document` alone on already gathered resources (pure, no I/O);
   - issue (gate): `issue_document` as a clinician — gather through the access gate, build, store
     Bundle + Composition + DocumentReference in one write transaction;
   - issue (engine): `issue_discharge_document` inside an open write transaction (the A03 path);
4. print a table with each figure's ratio to the baseline and whether the goal is met.

Run from the repository root:  .venv/bin/python bench/document_build.py [--rounds 30] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.access import AccessGate
from engine.auth import system_principal
from engine.db import repository
from engine.db.database import Database, open_database
from engine.db.migrate import upgrade
from engine.documents.build import build_document
from engine.documents.definitions import definitions
from engine.documents.gather import StoreReader, engine_author, gather
from engine.documents.service import issue_discharge_document, issue_document

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_MS = 100.0
DOC_TYPE = "inpatient-discharge"
START = datetime(2025, 1, 1, 9, 0)
VITALS = (("8867-4", "Heart rate", 78, "/min"), ("9279-1", "Respiratory rate", 16, "/min"),
          ("8310-5", "Body temperature", 37.1, "Cel"), ("59408-5", "Oxygen saturation", 95, "%"),
          ("8480-6", "Systolic blood pressure", 132, "mm[Hg]"))


def _coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def stay(resources: int) -> tuple[str, list[dict[str, Any]]]:
    """One patient's record with a 14-day admission; returns (encounter id, resources in write order)."""
    pid, eid = "bench-patient", "bench-admission"
    subject, encounter = {"reference": f"Patient/{pid}"}, {"reference": f"Encounter/{eid}"}
    snomed, loinc = "http://snomed.info/sct", "http://loinc.org"
    record: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": "bench-gp", "name": "Bench Surgery",
         "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "B99999"}]},
        {"resourceType": "Organization", "id": "bench-trust", "name": "Bench Hospital NHS Trust",
         "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RR8"}]},
        {"resourceType": "Location", "id": "bench-ward", "name": "Ward 1"},
        {"resourceType": "Practitioner", "id": "bench-consultant", "name": [{"family": "Consultant", "prefix": ["Dr"]}]},
        {"resourceType": "Patient", "id": pid, "name": [{"family": "Bench", "given": ["Betty"]}], "gender": "female",
         "birthDate": "1940-01-01", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9912003888"}],
         "generalPractitioner": [{"reference": "Organization/bench-gp"}]},
        {"resourceType": "Encounter", "id": eid, "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}, "subject": subject,
         "period": {"start": START.isoformat() + "Z", "end": (START + timedelta(days=14)).isoformat() + "Z"},
         "participant": [{"individual": {"reference": "Practitioner/bench-consultant"}}],
         "serviceProvider": {"reference": "Organization/bench-trust"},
         "location": [{"location": {"reference": "Location/bench-ward"}}],
         "reasonCode": [_coded(snomed, "233604007", "Pneumonia")]},
    ]
    fixed = len(record)
    extras = [
        *({"resourceType": "Condition", "id": f"bench-dx-{i}", "subject": subject, "encounter": encounter,
           "clinicalStatus": _coded("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
           "code": _coded(snomed, str(233604007 + i), f"Diagnosis {i}"), "onsetDateTime": "2025-01-01"}
          for i in range(6)),
        *({"resourceType": "AllergyIntolerance", "id": f"bench-allergy-{i}", "patient": subject,
           "code": _coded(snomed, str(91936005 + i), f"Allergy {i}"), "recordedDate": "2020-01-01"} for i in range(2)),
        *({"resourceType": "MedicationStatement", "id": f"bench-med-{i}", "status": "active", "subject": subject,
           "medicationCodeableConcept": _coded("https://dmd.nhs.uk", str(319773006 + i), f"Medicine {i}"),
           "dosage": [{"text": "One a day"}], "effectiveDateTime": "2024-01-01"} for i in range(8)),
        {"resourceType": "Flag", "id": "bench-flag", "status": "active", "subject": subject,
         "code": {"text": "Falls risk"}},
        {"resourceType": "RelatedPerson", "id": "bench-contact", "patient": subject, "name": [{"family": "Bench"}]},
    ]
    record += extras
    observations = max(0, resources - fixed - len(extras))
    for n in range(observations):
        code, name, value, unit = VITALS[n % len(VITALS)]
        when = START + timedelta(hours=6 * (n // len(VITALS)))
        record.append({
            "resourceType": "Observation", "id": f"bench-obs-{n}", "status": "final", "subject": subject,
            "encounter": encounter, "effectiveDateTime": when.isoformat() + "Z",
            "category": [_coded("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
            "code": _coded(loinc, code, name),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        })
    return eid, record


async def load(db: Database, record: list[dict[str, Any]]) -> None:
    async with db.write() as conn:
        for resource in record:
            await repository.create(conn, resource, now=START, res_id=resource["id"])


async def timed(rounds: int, work: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(3):
        await work()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(url: str, resources: int, rounds: int) -> list[tuple[str, list[float]]]:
    db = open_database(url, pool_size=4)
    try:
        eid, record = stay(resources)
        await load(db, record)
        gate = AccessGate(db)
        who = system_principal("bench-user", "Bench Clinician")
        definition = definitions()[DOC_TYPE]
        async with db.read() as conn:
            gathered = await gather(StoreReader(conn), definition, eid)
        author = engine_author(gathered)
        now = START + timedelta(days=14, hours=2)

        async def baseline() -> None:
            async with db.read() as conn:
                await repository.compartment_page(conn, "bench-patient", types=definition.resource_types, since=None,
                                                  count=1000, after_pk=None, snapshot_pk=None)

        async def build() -> None:
            build_document(definition, patient=gathered.patient, encounter=gathered.encounter,
                           resources=gathered.resources, author=author, custodian=None, now=now,
                           document_id=str(uuid.uuid4()))

        async def issue_gate() -> None:
            await issue_document(db, gate, who, eid, DOC_TYPE, now=now, base_url="http://bench/fhir")

        async def issue_engine() -> None:
            async with db.write() as conn:
                await issue_discharge_document(conn, eid, DOC_TYPE, now=now, base_url="http://bench/fhir")

        results = [("baseline: read the same resources", await timed(rounds, baseline))]
        results.append(("build_document alone (pure)", await timed(rounds, build)))
        results.append(("issue_document (gate: gather+build+store)", await timed(rounds, issue_gate)))
        results.append(("issue_discharge_document (engine, in txn)", await timed(rounds, issue_engine)))
        bundle = build_document(definition, patient=gathered.patient, encounter=gathered.encounter,
                                resources=gathered.resources, author=author, custodian=None, now=now,
                                document_id="size")
        print(f"  record: {len(record)} resources written; gathered {len(gathered.resources)}; document "
              f"{len(bundle['entry'])} entries, {len(orjson.dumps(bundle)) // 1024} KiB")
        return results
    finally:
        await db.dispose()


def report(backend: str, results: list[tuple[str, list[float]]]) -> bool:
    base = statistics.median(results[0][1])
    print(f"\n{backend}\n  {'operation':45} {'median ms':>10} {'p95 ms':>8} {'× baseline':>11}  goal ≤ {GOAL_MS:.0f} ms")
    met = True
    for name, samples in results:
        median = statistics.median(samples)
        p95 = sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]
        goal = ""
        if name.startswith("issue"):
            goal = "met" if median <= GOAL_MS else "NOT MET"
            met = met and median <= GOAL_MS
        print(f"  {name:45} {median:10.1f} {p95:8.1f} {median / base:11.1f}  {goal}")
    return met


def scratch_postgres(server_url: str) -> tuple[str, Callable[[], None]] | None:
    import psycopg

    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=3) as conn:
            name = f"sc_bench_docs_{uuid.uuid4().hex[:8]}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"PostgreSQL skipped: {exc}")
        return None
    base = server_url.rsplit("/", 1)[0]

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--database-url", default=DEFAULT_SERVER_URL, help="PostgreSQL server for the scratch database")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"document generation: {DOC_TYPE}, {args.resources} resources, {args.rounds} rounds")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        upgrade(url)
        ok &= report("SQLite", asyncio.run(measure(url, args.resources, args.rounds)))
    if not args.no_postgres:
        scratch = scratch_postgres(args.database_url)
        if scratch:
            url, drop = scratch
            try:
                upgrade(url)
                ok &= report("PostgreSQL", asyncio.run(measure(url, args.resources, args.rounds)))
            finally:
                drop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
