"""Cost of a search on PostgreSQL (engine.search.query.search) next to a bare primary-key read.

Builds a scratch database with `--patients` Patients and 20 Observations each (100k Observations by
default; index rows from the real extraction, loaded with COPY), then times on one connection:
`Observation?patient=X` (20 rows), the same with a full first page (`_count=10`: rows + COUNT), with
`_include`, sorted by `-date`, and as a baseline `SELECT … WHERE pk IN (the same 20 pks)` (the
same columns, through the same AsyncConnection). Prints requests/s, statements per request, and the
EXPLAIN ANALYZE of the main query. Drops the database unless `--keep NAME` (then reuses it).

Run from the repository root:  .venv/bin/python bench/search_sql.py [--patients 5000] [--seconds 3]

On the project machine (2 cores, PostgreSQL on the same cores, other work running), 105k resources:

    request                                  stmts/req req/s median req/s best  ms/req  rows
    pk IN (20 pks) baseline                       1.00          846       1189    1.18    20
    Observation?patient=X (20 rows)               1.00         1054       1175    0.95    20
      … &_count=10 (full page: + COUNT)           2.00          676        741    1.48    10
      … &_include=Observation:patient             2.00          507        545    1.97    21
      … &_sort=-date                              1.00          945       1116    1.06    20
      … &_sort=-date&_count=10                    2.00          594        671    1.68    10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy import Text, cast, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.db.schema import INDEX_TABLES, metadata, resources
from engine.search.extract import extract_index
from engine.search.params import parse_search
from engine.search.query import criteria_clause, search

PER_PATIENT = 20
ROW_COLUMNS = (resources.c.pk, resources.c.res_type, resources.c.res_id, resources.c.version_id,
               resources.c.last_updated, cast(resources.c.content, Text))
CODES = [("8867-4", "Heart rate"), ("8310-5", "Body temperature"), ("8480-6", "Systolic blood pressure"),
         ("8462-4", "Diastolic blood pressure"), ("9279-1", "Respiratory rate"), ("59408-5", "Oxygen saturation")]


def observation(i: int, patient: str, when: datetime) -> dict[str, Any]:
    code, display = CODES[i % len(CODES)]
    return {
        "resourceType": "Observation", "id": f"obs-{i}",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T10:16:02.123Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/e-{i // 5}"},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valueQuantity": {"value": 60 + i % 40, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    }  # fmt: skip


def patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{n}", "name": [{"family": f"Family{n % 997}", "given": ["Sam"]}],
            "gender": "female" if n % 2 else "male", "birthDate": f"{1930 + n % 90}-0{1 + n % 9}-1{n % 10}",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": f"{9000000000 + n}"}]}


def load(conninfo: str, patients: int) -> None:
    """COPY the resources and their index rows (from extract_index) into the scratch database."""
    columns = {kind: [c.name for c in table.columns if c.name != "id"] for kind, table in INDEX_TABLES.items()}
    index_rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in INDEX_TABLES}
    start = datetime(2020, 1, 1)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy("COPY resources (pk, res_type, res_id, version_id, last_updated, deleted, patient_id, content)"
                      " FROM STDIN") as copy:
            pk = 0
            for n in range(patients):
                docs = [patient(n)] + [observation(n * PER_PATIENT + j, f"p{n}", start + timedelta(hours=n + 7 * j))
                                       for j in range(PER_PATIENT)]
                for doc in docs:
                    pk += 1
                    copy.write_row((pk, doc["resourceType"], doc["id"], 1, start, False, f"p{n}",
                                    orjson.dumps(doc).decode()))
                    for kind, rows in extract_index(doc).items():
                        index_rows[kind] += [tuple({**r, "res_pk": pk, "res_type": doc["resourceType"]}[c]
                                                   for c in columns[kind]) for r in rows]
        for kind, rows in index_rows.items():
            with cur.copy(f"COPY {INDEX_TABLES[kind].name} ({', '.join(columns[kind])}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        cur.execute("SELECT setval(pg_get_serial_sequence('resources', 'pk'), (SELECT max(pk) FROM resources))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        total = conn.execute("SELECT (SELECT count(*) FROM resources), (SELECT count(*) FROM idx_token)"
                             " + (SELECT count(*) FROM idx_reference) + (SELECT count(*) FROM idx_date)"
                             " + (SELECT count(*) FROM idx_string) + (SELECT count(*) FROM idx_quantity)").fetchone()
        print(f"loaded {total[0]:,} resources, {total[1]:,} index rows")


async def measure(url: str, patients: int, seconds: float, rounds: int = 10) -> None:
    engine = create_async_engine(url)
    statements: list[Any] = [0, None]  # how many statements ran, and the last one with its parameters

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements[0] += 1
        statements[1] = (statement, parameters)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    rng = random.Random(7)
    async with engine.connect() as conn:

        def searching(*extra: tuple[str, str]) -> Callable[[AsyncConnection], Awaitable[int]]:
            async def run(c: AsyncConnection) -> int:
                req = parse_search("Observation", [("patient", f"p{rng.randrange(patients)}"), *extra])
                page = await search(c, req)
                return len(page.rows) + len(page.included)
            return run

        pks_by_patient = {}
        for n in rng.sample(range(patients), 200):
            req = parse_search("Observation", [("patient", f"p{n}")])
            pks_by_patient[n] = [r[0] for r in await conn.execute(select(resources.c.pk).where(criteria_clause(req)))]
        samples = list(pks_by_patient.values())

        async def baseline(c: AsyncConnection) -> int:
            pks = rng.choice(samples)
            return len((await c.execute(select(*ROW_COLUMNS).where(resources.c.pk.in_(pks)))).all())

        cases = [
            ("pk IN (20 pks) baseline", baseline),
            ("Observation?patient=X (20 rows)", searching()),
            ("  … &_count=10 (full page: + COUNT)", searching(("_count", "10"))),
            ("  … &_include=Observation:patient", searching(("_include", "Observation:patient"))),
            ("  … &_sort=-date", searching(("_sort", "-date"))),
            ("  … &_sort=-date&_count=10", searching(("_sort", "-date"), ("_count", "10"))),
        ]
        # Cases take turns in short slices, several rounds, so that load from other processes on the
        # machine hits them alike; the table shows the median and the best round.
        for _, case in cases:
            for _ in range(50):  # warm up (psycopg prepares a statement after 5 runs)
                await case(conn)
        rates: dict[str, list[float]] = {name: [] for name, _ in cases}
        per_request: dict[str, float] = {}
        rows: dict[str, int] = {}
        for _ in range(rounds):
            for name, case in cases:
                statements[0], done = 0, 0
                began = time.perf_counter()
                while time.perf_counter() - began < seconds / rounds:
                    rows[name] = await case(conn)
                    done += 1
                rates[name].append(done / (time.perf_counter() - began))
                per_request[name] = statements[0] / done
        print(f"\n{'request':40} {'stmts/req':>9} {'req/s median':>12} {'req/s best':>10} {'ms/req':>7} {'rows':>5}")
        for name, _ in cases:
            median = statistics.median(rates[name])
            print(f"{name:40} {per_request[name]:9.2f} {median:12.0f} {max(rates[name]):10.0f}"
                  f" {1000 / median:7.2f} {rows[name]:5}")

        began, n = time.perf_counter(), 0
        while time.perf_counter() - began < 1:
            parse_search("Observation", [("patient", "p1"), ("_count", "10")])
            n += 1
        print(f"\nparse_search alone: {n / (time.perf_counter() - began):,.0f} /s")

        await search(conn, parse_search("Observation", [("patient", "p42")]))
        sql, parameters = statements[1]
        plan = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", parameters)
        print("\nEXPLAIN ANALYZE Observation?patient=p42:\n" + "\n".join(r[0] for r in plan))
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--keep", metavar="NAME", help="load into database NAME once, reuse it, do not drop it")
    args = parser.parse_args()
    server = make_url(args.url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = args.keep or f"sc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        if not exists:
            sync = create_engine(url)
            metadata.create_all(sync)
            sync.dispose()
            began = time.perf_counter()
            load(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False), args.patients)
            print(f"load took {time.perf_counter() - began:.0f} s")
        asyncio.run(measure(url, args.patients, args.seconds))
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
