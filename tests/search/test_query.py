"""search(): criteria, sorting, paging under writes and includes, on SQLite and PostgreSQL.

Every test runs on both stores (or only on `SHAREDCARE_TEST_BACKEND` when that is set, as `make test`
does). Resources are written by a small fixture writer with the real index extraction
(engine.search.extract), not through the repository, so these tests depend on the schema only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, delete, event, insert, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from engine.db.direct import POSTGRES_STATEMENTS, DirectConnection, connect_direct
from engine.db.schema import INDEX_TABLES, idx_number, metadata, resources
from engine.search.extract import extract_index, patient_compartment
from engine.search.paging import decode_cursor
from engine.search.params import Condition, SearchError, SearchRequest, parse_number, parse_search
from engine.search.query import SearchPage, search

PG_URL = os.environ.get("SHAREDCARE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [os.environ["SHAREDCARE_TEST_BACKEND"]] if os.environ.get("SHAREDCARE_TEST_BACKEND") else ["sqlite", "postgresql"]
T0 = datetime(2024, 1, 1)
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


# -- stores ------------------------------------------------------------------------------------------------


def _conninfo(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Store:
    """A scratch database: a sync engine to write fixtures, an async one (on one event loop) to search."""

    backend: str
    sync: Engine
    engine: AsyncEngine
    runner: asyncio.Runner
    statements: list[str] = field(default_factory=list)
    clock: datetime = T0
    raw: Any = None  # PostgreSQL: an asyncpg connection for engine.db.direct

    def run(self, coro_fn: Any) -> Any:
        async def go() -> Any:
            async with self.engine.connect() as conn:
                return await coro_fn(conn)

        return self.runner.run(go())

    def run_direct(self, coro_fn: Any) -> Any:
        """`coro_fn` on a DirectConnection (PostgreSQL): the statements run on asyncpg, as the gate runs them."""
        async def go() -> Any:
            if self.raw is None:
                self.raw = await connect_direct(self.engine.url.set(drivername="postgresql").render_as_string(
                    hide_password=False))
            return await coro_fn(DirectConnection(self.raw, POSTGRES_STATEMENTS))

        return self.runner.run(go())

    def search(self, resource_type: str, items: list[tuple[str, str]], **kwargs: Any) -> SearchPage:
        return self.search_request(parse_search(resource_type, items, **kwargs))

    def search_request(self, req: SearchRequest) -> SearchPage:
        page = self.run(lambda conn: search(conn, req))
        if self.backend == "postgresql":
            # Every search here also runs on asyncpg directly (the access gate's executor) and must agree.
            direct = self.run_direct(lambda conn: search(conn, req))
            assert direct == page, f"engine.db.direct disagrees for {req.items}"
        return page

    def ids(self, resource_type: str, items: list[tuple[str, str]]) -> list[str]:
        return [row.res_id for row in self.search(resource_type, [*items, ("_count", "1000")]).rows]

    def put(self, resource: dict[str, Any], *, last_updated: datetime | None = None) -> int:
        """Write `resource` as version 1 with its index rows; returns its pk."""
        if last_updated is None:
            self.clock += timedelta(minutes=1)
            last_updated = self.clock
        res_type = resource["resourceType"]
        with self.sync.begin() as conn:
            pk = conn.execute(
                insert(resources)
                .values(
                    res_type=res_type,
                    res_id=resource["id"],
                    version_id=1,
                    last_updated=last_updated,
                    deleted=False,
                    patient_id=patient_compartment(resource),
                    content=resource,
                )
                .returning(resources.c.pk)
            ).scalar_one()
            for kind, rows in extract_index(resource).items():
                if rows:
                    conn.execute(insert(INDEX_TABLES[kind]), [{**r, "res_pk": pk, "res_type": res_type} for r in rows])
        return pk

    def delete(self, res_type: str, res_id: str) -> None:
        with self.sync.begin() as conn:
            pk = conn.execute(
                update(resources)
                .where(resources.c.res_type == res_type, resources.c.res_id == res_id)
                .values(deleted=True, content=None, version_id=resources.c.version_id + 1)
                .returning(resources.c.pk)
            ).scalar_one()
            for table in INDEX_TABLES.values():
                conn.execute(delete(table).where(table.c.res_pk == pk))

    def clear(self) -> None:
        with self.sync.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(delete(table))
        self.clock = T0

    def close(self) -> None:
        if self.raw is not None:
            self.runner.run(self.raw.close())
        self.runner.run(self.engine.dispose())
        self.runner.close()
        self.sync.dispose()


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[tuple[str, str]]]]:
    """Per backend, two scratch databases (a read-only world and a writable one): (async url, sync url)."""
    made: dict[str, list[tuple[str, str]]] = {}
    pg_names: list[str] = []
    for backend in BACKENDS:
        made[backend] = []
        for _ in range(2):
            if backend == "sqlite":
                path: Path = tmp_path_factory.mktemp("search") / "store.db"
                made[backend].append((f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"))
                continue
            try:
                with psycopg.connect(_conninfo(PG_URL), autocommit=True, connect_timeout=3) as conn:
                    name = f"sc_search_{uuid.uuid4().hex[:10]}"
                    conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.OperationalError:
                break
            pg_names.append(name)
            url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
            made[backend].append((url, url))
    yield made
    if pg_names:
        with psycopg.connect(_conninfo(PG_URL), autocommit=True) as conn:
            for name in pg_names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _open(backend: str, urls: tuple[str, str]) -> Store:
    sync = create_engine(urls[1], poolclass=NullPool)
    metadata.create_all(sync)
    store = Store(backend, sync, create_async_engine(urls[0]), asyncio.Runner())

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        store.statements.append(statement)

    return store


def _store(request: pytest.FixtureRequest, databases: dict[str, list[tuple[str, str]]], which: int) -> Store:
    backend = request.param
    if len(databases[backend]) <= which:
        pytest.skip(f"{backend} is not available")
    return _open(backend, databases[backend][which])


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, _databases: dict[str, list[tuple[str, str]]]) -> Iterator[Store]:
    store = _store(request, _databases, 0)
    store.clear()
    load_world(store)
    yield store
    store.close()


@pytest.fixture(scope="module", params=BACKENDS)
def _scratch(request: pytest.FixtureRequest, _databases: dict[str, list[tuple[str, str]]]) -> Iterator[Store]:
    store = _store(request, _databases, 1)
    yield store
    store.close()


@pytest.fixture
def scratch(_scratch: Store) -> Store:
    _scratch.clear()
    _scratch.statements.clear()
    return _scratch


# -- the world ----------------------------------------------------------------------------------------------


def patient(pid: str, family: str, given: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}], **extra}


def observation(oid: str, subject: str | None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": oid, **extra}
    if subject:
        resource["subject"] = {"reference": subject}
    return resource


def coded(system: str | None, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": code}
    if system:
        coding["system"] = system
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "system": UCUM, "code": code}


URN = "urn:uuid:0f1c5f7e-1111-4222-8333-944445555666"


def load_world(store: Store) -> None:
    lu = {f"p{i}": T0 + timedelta(days=i) for i in range(1, 5)}
    lu["p4"] = lu["p3"]  # a tie for _lastUpdated
    store.put({"resourceType": "Practitioner", "id": "gp1", "name": [{"family": "Who"}]})
    store.put({"resourceType": "Practitioner", "id": "gp2", "name": [{"family": "Finlay"}]})
    store.put({"resourceType": "Organization", "id": "org1", "name": "Leeds Practice"})
    store.put(
        patient(
            "p1", "Smith", "Zoë", birthDate="1980-05-10", gender="female", active=True,
            identifier=[{"system": NHS, "value": "9000000009"}],
            generalPractitioner=[{"reference": "Practitioner/gp1"}],
            managingOrganization={"reference": "Organization/org1"},
            meta={"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]},
        ),
        last_updated=lu["p1"],
    )
    store.put(
        patient("p2", "Smithson", "John", birthDate="1975", gender="male",
                identifier=[{"system": NHS, "value": "9000000017"}],
                generalPractitioner=[{"reference": "Practitioner/gp2"}]),
        last_updated=lu["p2"],
    )
    store.put(patient("p3", "O'Brien", "Anna", identifier=[{"system": "urn:oid:1.2.3", "value": "333"}]),
              last_updated=lu["p3"])
    store.put(patient("p4", "Núñez", "Óscar", birthDate="1980-05-10", gender="male", identifier=[{"value": "444"}]),
              last_updated=lu["p4"])
    store.put(patient("p5", "Smith", "Gone"))
    store.delete("Patient", "p5")

    obs_time = {f"o{i}": datetime(2024, 2, i, 10) for i in range(1, 8)}
    store.put(observation("o1", "Patient/p1", status="final", code=coded(LOINC, "8867-4", "Heart rate"),
                          effectiveDateTime="2020-03-15T10:00:00Z", valueQuantity=quantity(72, "/min")),
              last_updated=obs_time["o1"])
    store.put(observation("o2", "Patient/p1", status="preliminary", code=coded(LOINC, "8310-5", "Body temperature"),
                          effectivePeriod={"start": "2020-01-01", "end": "2020-06-30"},
                          valueQuantity=quantity(37.5, "Cel")),
              last_updated=obs_time["o2"])
    store.put(observation("o3", "Patient/p2", status="final",
                          code=coded("http://snomed.info/sct", "271649006", "Systolic blood pressure"),
                          effectiveDateTime="2021-07-01", valueQuantity=quantity(120, "mm[Hg]")),
              last_updated=obs_time["o3"])
    store.put(observation("o4", "http://other.example/fhir/Patient/p2", status="amended", code=coded(None, "local-1"),
                          valueString="Normal sinus rhythm"),
              last_updated=obs_time["o4"])
    store.put(observation("o5", "Group/g1", status="final", code=coded(LOINC, "8867-4", "Heart rate"),
                          effectivePeriod={"start": "2019-06-01"}, valueQuantity=quantity(100, "mg")),
              last_updated=obs_time["o5"])
    store.put(observation("o6", URN, status="cancelled", effectivePeriod={"end": "2018-12-31"}),
              last_updated=obs_time["o6"])
    store.put(observation("o7", "Patient/p1", status="final", code=coded(LOINC, "8867-4")), last_updated=obs_time["o7"])
    store.delete("Observation", "o7")

    def provenance(pid: str, target: str, who: str) -> dict[str, Any]:
        return {"resourceType": "Provenance", "id": pid, "target": [{"reference": target}],
                "recorded": "2024-02-01T00:00:00Z", "agent": [{"who": {"reference": who}}]}

    store.put(provenance("prov1", "Observation/o1", "Practitioner/gp1"))
    store.put(provenance("prov2", "Patient/p1", "Practitioner/gp2"))
    store.put(provenance("prov3", "Observation/o1", "Practitioner/gp2"))
    store.delete("Provenance", "prov3")


# -- criteria ---------------------------------------------------------------------------------------------------

CRITERIA = [
    # references
    ("Observation", [("patient", "p1")], "o1 o2"),
    ("Observation", [("patient", "Patient/p1")], "o1 o2"),
    ("Observation", [("subject", "Patient/p2")], "o3 o4"),
    ("Observation", [("subject", "http://other.example/fhir/Patient/p2")], "o3 o4"),
    ("Observation", [("subject:Patient", "p2")], "o3 o4"),
    ("Observation", [("subject:Group", "g1")], "o5"),
    ("Observation", [("subject", URN)], "o6"),
    ("Observation", [("subject", "p1,g1")], "o1 o2 o5"),
    ("Observation", [("patient:missing", "true")], "o5 o6"),
    ("Observation", [("patient:missing", "false")], "o1 o2 o3 o4"),
    ("Patient", [("general-practitioner", "Practitioner/gp1")], "p1"),
    ("Patient", [("general-practitioner:Practitioner", "gp2")], "p2"),
    ("Patient", [("organization", "org1")], "p1"),
    # chains
    ("Observation", [("subject:Patient.identifier", f"{NHS}|9000000009")], "o1 o2"),
    ("Observation", [("patient.name", "smith")], "o1 o2 o3 o4"),
    ("Observation", [("patient.family:exact", "Smith")], "o1 o2"),
    ("Observation", [("patient.birthdate", "1975")], "o3 o4"),
    ("Observation", [("patient._id", "p2")], "o3 o4"),
    ("Observation", [("patient.gender:missing", "true")], ""),
    ("Observation", [("patient.general-practitioner", "gp1")], "o1 o2"),
    # tokens
    ("Observation", [("code", "8867-4")], "o1 o5"),
    ("Observation", [("code", f"{LOINC}|8867-4")], "o1 o5"),
    ("Observation", [("code", f"{LOINC}|")], "o1 o2 o5"),
    ("Observation", [("code", "|local-1")], "o4"),
    ("Observation", [("code", "local-1")], "o4"),
    ("Observation", [("code", f"{LOINC}|local-1")], ""),
    ("Observation", [("code", "|8867-4")], ""),
    ("Observation", [("code", "8867-4,271649006")], "o1 o3 o5"),
    ("Observation", [("code:not", "8867-4")], "o2 o3 o4 o6"),
    ("Observation", [("code:not", "8867-4,local-1")], "o2 o3 o6"),
    ("Observation", [("code:text", "heart")], "o1 o5"),
    ("Observation", [("status", "final"), ("code", "8867-4")], "o1 o5"),
    ("Observation", [("status", "final,amended")], "o1 o3 o4 o5"),
    ("Observation", [("status", "final"), ("status", "amended")], ""),
    ("Patient", [("gender", "male")], "p2 p4"),
    ("Patient", [("gender:not", "male")], "p1 p3"),
    ("Patient", [("gender:missing", "true")], "p3"),
    ("Patient", [("identifier", "9000000009")], "p1"),
    ("Patient", [("identifier", "|444")], "p4"),
    ("Patient", [("identifier", "urn:oid:1.2.3|")], "p3"),
    ("Patient", [("active", "true")], "p1"),
    # strings
    ("Patient", [("name", "smith")], "p1 p2"),
    ("Patient", [("name", "SMITH")], "p1 p2"),
    ("Patient", [("family:exact", "Smith")], "p1"),
    ("Patient", [("family:exact", "smith")], ""),
    ("Patient", [("name:contains", "mit")], "p1 p2"),
    ("Patient", [("given", "zoe")], "p1"),
    ("Patient", [("given", "Zoë")], "p1"),
    ("Patient", [("given:exact", "Zoë")], "p1"),
    ("Patient", [("given:exact", "Zoe")], ""),
    ("Patient", [("family", "nunez")], "p4"),
    ("Patient", [("name", "o'brien")], "p3"),
    ("Patient", [("name", "sm_th")], ""),  # LIKE wildcards in values are literal
    ("Patient", [("name:contains", "%")], ""),
    ("Patient", [("name", "smith,jones,nunez")], "p1 p2 p4"),
    ("Patient", [("name", "smith"), ("given", "john")], "p2"),
    ("Patient", [("name:missing", "true")], ""),
    ("Observation", [("value-string", "normal")], "o4"),
    # dates
    ("Observation", [("date", "2020")], "o1 o2"),
    ("Observation", [("date", "ge2021")], "o3 o5"),
    ("Observation", [("date", "lt2019")], "o6"),
    ("Observation", [("date", "ge2020"), ("date", "lt2021")], "o1 o2 o5"),
    ("Observation", [("date", "2020-03-15T10:00:00Z")], "o1"),
    ("Observation", [("date", "2020-03-15T11:00:00+01:00")], "o1"),
    ("Observation", [("date", "2018,2021")], "o3"),
    ("Observation", [("date:missing", "true")], "o4"),
    ("Patient", [("birthdate", "1980")], "p1 p4"),
    ("Patient", [("birthdate", "1980-05-10")], "p1 p4"),
    ("Patient", [("birthdate", "lt1978")], "p2"),
    ("Patient", [("birthdate:missing", "true")], "p3"),
    # quantities
    ("Observation", [("value-quantity", "72")], "o1"),
    ("Observation", [("value-quantity", "72.0")], "o1"),
    ("Observation", [("value-quantity", "72.6")], ""),
    ("Observation", [("value-quantity", "gt100")], "o3"),
    ("Observation", [("value-quantity", "ge100")], "o3 o5"),
    ("Observation", [("value-quantity", f"ge100|{UCUM}|mg")], "o5"),
    ("Observation", [("value-quantity", "37.5||Cel")], "o2"),
    ("Observation", [("value-quantity", "lt50")], "o2"),
    ("Observation", [("value-quantity", "le72")], "o1 o2"),
    ("Observation", [("value-quantity", "ne72")], "o2 o3 o5"),
    ("Observation", [("value-quantity", "ap110")], "o3 o5"),
    ("Observation", [("value-quantity", "sa100")], "o3"),
    ("Observation", [("value-quantity", "eb72")], "o2"),
    ("Observation", [("value-quantity:missing", "true")], "o4 o6"),
    # uri
    ("Patient", [("_profile", "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient")], "p1"),
    ("Patient", [("_profile", "https://fhir.hl7.org.uk/StructureDefinition/")], ""),
    ("Patient", [("_profile:below", "https://fhir.hl7.org.uk/StructureDefinition/")], "p1"),
    # _id and _lastUpdated
    ("Observation", [("_id", "o1,o3,o7,nope")], "o1 o3"),
    ("Observation", [("_id", "o1"), ("status", "final")], "o1"),
    ("Observation", [("_lastUpdated", "2024-02-01")], "o1"),
    ("Observation", [("_lastUpdated", "ge2024-02-03")], "o3 o4 o5 o6"),
    ("Observation", [("_lastUpdated", "lt2024-02-03T10:00:00Z")], "o1 o2"),
    ("Observation", [("_lastUpdated", "le2024-02-03T10:00:00Z")], "o1 o2 o3"),
    ("Observation", [("_lastUpdated", "ne2024-02-02")], "o1 o3 o4 o5 o6"),
    ("Patient", [], "p1 p2 p3 p4"),
]


@pytest.mark.parametrize(("resource_type", "items", "expected"), CRITERIA, ids=[str(c[1]) for c in CRITERIA])
def test_criteria(world: Store, resource_type: str, items: list[tuple[str, str]], expected: str) -> None:
    assert sorted(world.ids(resource_type, items)) == expected.split()


# -- date prefixes on intervals -----------------------------------------------------------------------------------

# Stored intervals against the search value "2020" = [2020-01-01, 2020-12-31T23:59:59.999999].
INTERVALS = {
    "inside": {"start": "2020-03-01", "end": "2020-03-31"},
    "over_start": {"start": "2019-06-01", "end": "2020-06-01"},
    "over_end": {"start": "2020-06-01", "end": "2021-06-01"},
    "before": {"start": "2019-01-01", "end": "2019-12-31"},
    "after": {"start": "2021-01-01", "end": "2021-12-31"},
    "around": {"start": "2019-01-01", "end": "2021-12-31"},
    "open_end": {"start": "2020-05-01"},
    "open_start": {"end": "2019-05-01"},
    "same": {"start": "2020-01-01T00:00:00.000000Z", "end": "2020-12-31T23:59:59.999999Z"},
}
# https://hl7.org/fhir/R4/search.html#prefix, ranges: eq — contained; gt — reaches above; lt — reaches
# below; ge/le — that or contained; sa — starts after; eb — ends before; ap — overlaps.
PREFIX_TRUTH = {
    "eq": "inside same",
    "ne": "after around before open_end open_start over_end over_start",
    "gt": "after around open_end over_end",
    "lt": "around before open_start over_start",
    "ge": "after around inside open_end over_end same",
    "le": "around before inside open_start over_start same",
    "sa": "after",
    "eb": "before open_start",
    "ap": "around inside open_end over_end over_start same",
}


def test_date_prefix_truth_table(scratch: Store) -> None:
    for name, period in INTERVALS.items():
        scratch.put(observation(name, "Patient/x", effectivePeriod=period))
    for prefix, expected in PREFIX_TRUTH.items():
        assert sorted(scratch.ids("Observation", [("date", f"{prefix}2020")])) == expected.split(), prefix


def test_number_prefixes(scratch: Store) -> None:
    """No stored resource type has a number parameter yet: exercise idx_number through a hand-made request."""
    values = {"a": 99.4, "b": 99.5, "c": 100.0, "d": 100.49, "e": 100.5, "f": 120.0}
    for rid, value in values.items():
        pk = scratch.put({"resourceType": "RiskAssessment", "id": rid})
        with scratch.sync.begin() as conn:
            conn.execute(insert(idx_number).values(res_pk=pk, res_type="RiskAssessment", param="probability", value=value))
    expected = {"100": "b c d", "100.0": "c", "gt100": "d e f", "ge100": "c d e f", "lt100": "a b",
                "le100": "a b c", "ne100": "a e f", "ap100": "a b c d e", "sa100": "d e f", "eb100": "a b"}
    for text, ids in expected.items():
        req = SearchRequest("RiskAssessment", (Condition("probability", "number", (parse_number("probability", text),)),))
        assert sorted(r.res_id for r in scratch.search_request(req).rows) == ids.split(), text


# -- sorting ----------------------------------------------------------------------------------------------------

SORTS = [
    ("family", "p4 p3 p1 p2"),
    ("-family", "p2 p1 p3 p4"),
    ("birthdate", "p2 p1 p4 p3"),
    ("-birthdate", "p1 p4 p2 p3"),
    ("gender", "p1 p2 p4 p3"),
    ("-gender", "p2 p4 p1 p3"),
    ("_lastUpdated", "p1 p2 p3 p4"),
    ("-_lastUpdated", "p3 p4 p2 p1"),
    ("_id", "p1 p2 p3 p4"),
    ("-_id", "p4 p3 p2 p1"),
    ("-birthdate,-family", "p1 p4 p2 p3"),
    ("-birthdate,family", "p4 p1 p2 p3"),
    ("gender,-_lastUpdated", "p1 p4 p2 p3"),
]


@pytest.mark.parametrize(("sort", "expected"), SORTS)
def test_sort_and_keyset_paging_agree(world: Store, sort: str, expected: str) -> None:
    assert world.ids("Patient", [("_sort", sort)]) == expected.split()
    forward, page = [], world.search("Patient", [("_sort", sort), ("_count", "1")])
    assert page.prev_cursor is None and page.total == 4
    while True:
        forward += [r.res_id for r in page.rows]
        if page.next_cursor is None:
            break
        page = world.search("Patient", [("_sort", sort), ("_count", "1"), ("_cursor", page.next_cursor)])
        assert page.total == 4
    assert forward == expected.split()
    backward = [r.res_id for r in page.rows]
    while page.prev_cursor is not None:
        page = world.search("Patient", [("_sort", sort), ("_count", "1"), ("_cursor", page.prev_cursor)])
        backward = [r.res_id for r in page.rows] + backward
    assert backward == expected.split()


# -- counts, totals and the number of queries ---------------------------------------------------------------------


def _selects(store: Store) -> list[str]:
    return [s for s in store.statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]


def test_count_total_and_summary(world: Store) -> None:
    page = world.search("Observation", [("status", "final"), ("_count", "2")])
    assert len(page.rows) == 2 and page.total == 3 and page.next_cursor and not page.prev_cursor
    assert world.search("Observation", [("status", "final"), ("_count", "0")]).rows == []
    assert world.search("Observation", [("status", "final"), ("_count", "0")]).total == 3
    counted = world.search("Observation", [("status", "final"), ("_summary", "count")])
    assert (counted.rows, counted.total) == ([], 3)
    assert world.search("Observation", [("status", "final"), ("_total", "none"), ("_count", "2")]).total is None
    row = world.search("Observation", [("_id", "o1")]).rows[0]
    assert (row.res_type, row.res_id, row.version_id) == ("Observation", "o1", 1)
    assert isinstance(row.content, str) and orjson.loads(row.content)["id"] == "o1"
    assert row.last_updated == datetime(2024, 2, 1, 10)


def test_query_budget(world: Store) -> None:
    """Rows only when the first page holds every match; rows + COUNT when it is full; + one for includes."""
    world.statements.clear()
    page = world.search("Observation", [("patient", "p1")])
    assert page.total == 2 and len(_selects(world)) == 1
    world.statements.clear()
    page = world.search("Observation", [("patient", "p1"), ("_count", "1")])
    assert page.total == 2 and len(page.rows) == 1 and len(_selects(world)) == 2
    world.statements.clear()
    world.search("Observation", [("patient", "p1"), ("_count", "1"), ("_cursor", page.next_cursor)])  # type: ignore[list-item]
    assert len(_selects(world)) == 1  # the total travels in the cursor
    world.statements.clear()
    world.search("Observation", [("patient", "p1"), ("_include", "Observation:patient")])
    assert len(_selects(world)) == 2
    world.statements.clear()
    world.search("Observation", [("patient", "p1"), ("_include", "Observation:patient"),
                                 ("_include:iterate", "Patient:general-practitioner")])
    assert len(_selects(world)) == 3


# -- paging while the store changes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["", "-date", "date,_id", "-_lastUpdated"])
def test_paging_through_writes(scratch: Store, sort: str) -> None:
    rng = random.Random(f"paging{sort}")

    def add(i: int) -> None:
        when = None if i % 7 == 0 else f"2020-01-{1 + rng.randrange(20):02d}"  # ties and missing dates
        extra = {"effectiveDateTime": when} if when else {}
        scratch.put(observation(f"obs-{i}", "Patient/x", code=coded(LOINC, "paging"), **extra),
                    last_updated=T0 + timedelta(minutes=rng.randrange(30)))

    for i in range(55):
        add(i)
    at_start = {f"obs-{i}" for i in range(55)}
    items = [("code", "paging"), ("_count", "10")] + ([("_sort", sort)] if sort else [])
    page = scratch.search("Observation", items)
    assert page.total == 55
    seen: list[str] = []
    deleted: set[str] = set()
    created = 55
    pages = [page]
    while True:
        seen += [r.res_id for r in page.rows]
        if page.next_cursor is None:
            break
        for _ in range(3):  # new matches between page requests
            add(created)
            created += 1
        unseen = sorted(at_start - set(seen) - deleted)
        for victim in rng.sample(unseen, min(2, len(unseen))) + rng.sample(seen, 1):
            if victim not in deleted:
                scratch.delete("Observation", victim)
                deleted.add(victim)
        page = scratch.search("Observation", [*items, ("_cursor", page.next_cursor)])
        assert page.total == 55  # Bundle.total stays the one counted at the first page
        pages.append(page)
    assert len(seen) == len(set(seen)), "a resource was returned twice"
    assert set(seen) <= at_start, "a resource created after the search began appeared"
    assert (at_start - deleted) <= set(seen), "a resource that existed throughout was skipped"

    # Walking back from the last page returns what is still there, in the same order, again without duplicates.
    back: list[str] = [r.res_id for r in page.rows]
    while page.prev_cursor is not None:
        page = scratch.search("Observation", [*items, ("_cursor", page.prev_cursor)])
        back = [r.res_id for r in page.rows] + back
    assert back == [rid for rid in seen if rid not in deleted]


def test_page_after_everything_was_deleted_links_back(scratch: Store) -> None:
    for i in range(4):
        scratch.put(observation(f"o{i}", "Patient/x"))
    first = scratch.search("Observation", [("_count", "2")])
    scratch.delete("Observation", "o2")
    scratch.delete("Observation", "o3")
    empty = scratch.search("Observation", [("_count", "2"), ("_cursor", first.next_cursor)])  # type: ignore[list-item]
    assert empty.rows == [] and empty.next_cursor is None and empty.prev_cursor
    back = scratch.search("Observation", [("_count", "2"), ("_cursor", empty.prev_cursor)])
    assert [r.res_id for r in back.rows] == ["o0", "o1"]


# -- cursors -------------------------------------------------------------------------------------------------------------


def test_bad_cursors_are_search_errors(world: Store) -> None:
    first = world.search("Patient", [("_sort", "birthdate"), ("_count", "1")])
    assert first.next_cursor is not None
    token = first.next_cursor
    forged = base64.urlsafe_b64encode(b'{"d":"n","k":[42],"p":1,"s":9,"t":4,"q":"x"}').decode().rstrip("=")
    payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    payload["k"] = ["not a date"]
    wrong_type = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
    for bad in ("not-a-cursor!", "AAAA", token[:-3], forged, wrong_type):
        with pytest.raises(SearchError) as caught:
            world.search("Patient", [("_sort", "birthdate"), ("_count", "1"), ("_cursor", bad)])
        assert caught.value.param == "_cursor"
    with pytest.raises(SearchError) as caught:  # a cursor from another search
        world.search("Patient", [("_sort", "family"), ("_count", "1"), ("_cursor", token)])
    assert caught.value.param == "_cursor"
    # _count may change between pages; the cursor still fits.
    req = parse_search("Patient", [("_sort", "birthdate"), ("_count", "3"), ("_cursor", token)])
    assert decode_cursor(token, req).pk > 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(list("dkpstqi")), inner, max_size=7),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), _JSON.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode())))
def test_decode_cursor_raises_only_search_error(token: str) -> None:
    req = parse_search("Patient", [("_sort", "birthdate,_id")])  # the cursor is not part of the fingerprint
    try:
        decode_cursor(token, req)
    except SearchError as exc:
        assert exc.param == "_cursor"


def test_statements_are_built_once_per_shape(world: Store) -> None:
    from engine.search.query import _page_statement

    before = _page_statement.cache_info()
    world.search("Observation", [("patient", "p1"), ("code", "8867-4")])
    world.search("Observation", [("patient", "p2"), ("code", "8310-5")])
    after = _page_statement.cache_info()
    assert after.hits >= before.hits + 1
    assert world.ids("Observation", [("patient", "p2"), ("code", "271649006")]) == ["o3"]


# -- includes ---------------------------------------------------------------------------------------------------------------

INCLUDES = [
    ("Observation", [("_id", "o1"), ("_include", "Observation:patient")], "Patient/p1"),
    ("Observation", [("patient", "p1"), ("_include", "Observation:subject:Patient")], "Patient/p1"),
    ("Observation", [("patient", "p1"), ("_include", "Observation:subject:Group")], ""),
    ("Observation", [("_id", "o1,o5"), ("_include", "Observation:*")], "Patient/p1"),
    ("Observation", [("_id", "o1"), ("_revinclude", "Provenance:target")], "Provenance/prov1"),
    ("Observation", [("_id", "o1"), ("_include", "Observation:patient"), ("_include:iterate", "Patient:general-practitioner")],
     "Patient/p1 Practitioner/gp1"),
    ("Observation", [("_id", "o1"), ("_revinclude", "Provenance:target"), ("_include:iterate", "Provenance:agent")],
     "Practitioner/gp1 Provenance/prov1"),
    ("Patient", [("_id", "p1"), ("_revinclude", "Observation:subject")], "Observation/o1 Observation/o2"),
    ("Patient", [("_id", "p1"), ("_revinclude", "Observation:patient"), ("_revinclude:iterate", "Provenance:target")],
     "Observation/o1 Observation/o2 Provenance/prov1 Provenance/prov2"),
    ("Patient", [("_id", "p1,p2"), ("_include", "Patient:general-practitioner:Practitioner")],
     "Practitioner/gp1 Practitioner/gp2"),
    ("Patient", [("_id", "p1"), ("_revinclude", "Provenance:target:Observation")], ""),
]


@pytest.mark.parametrize(("resource_type", "items", "expected"), INCLUDES, ids=[str(c[1]) for c in INCLUDES])
def test_includes(world: Store, resource_type: str, items: list[tuple[str, str]], expected: str) -> None:
    page = world.search(resource_type, items)
    included = [f"{r.res_type}/{r.res_id}" for r in page.included]
    assert len(included) == len(set(included))
    assert sorted(included) == expected.split()
    assert not {r.pk for r in page.rows} & {r.pk for r in page.included}


# -- PostgreSQL plans ----------------------------------------------------------------------------------------------------------


def test_postgres_plan_uses_composite_indexes(scratch: Store) -> None:
    """On ~10k resources the reference and token criteria are index scans, not sequential scans."""
    if scratch.backend != "postgresql":
        pytest.skip("EXPLAIN plans are checked on PostgreSQL")
    rows, refs, tokens = [], [], []
    for i in range(10_000):
        rows.append({"pk": i + 1, "res_type": "Observation", "res_id": f"o{i}", "version_id": 1,
                     "last_updated": T0, "deleted": False, "content": {"resourceType": "Observation"}})
        refs.append({"res_pk": i + 1, "res_type": "Observation", "param": "patient", "target_type": "Patient",
                     "target_id": f"p{i % 500}", "url": None})
        tokens.append({"res_pk": i + 1, "res_type": "Observation", "param": "code", "system": LOINC,
                       "code": f"c{i % 50}", "display": None})
    with scratch.sync.begin() as conn:
        conn.execute(insert(resources), rows)
        conn.execute(insert(INDEX_TABLES["reference"]), refs)
        conn.execute(insert(INDEX_TABLES["token"]), tokens)
        conn.exec_driver_sql("ANALYZE")
    from engine.search.query import criteria_clause

    def plan(items: list[tuple[str, str]]) -> str:
        req = parse_search("Observation", items)
        stmt = resources.select().where(criteria_clause(req)).limit(21)
        compiled = stmt.compile(scratch.sync, compile_kwargs={"literal_binds": True})
        with scratch.sync.connect() as conn:
            return "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))

    by_patient = plan([("patient", "p7")])
    assert "Index Scan using ix_idx_reference_search_" in by_patient and "Seq Scan" not in by_patient, by_patient
    by_code = plan([("code", f"{LOINC}|c3"), ("patient", "p3")])
    assert "Index Scan using ix_idx_reference_search_" in by_code and "Seq Scan" not in by_code, by_code


def test_postgres_plan_reads_a_resources_versions_by_its_key(scratch: Store) -> None:
    """A vread and an instance history go from the type and id to `pk_resource_versions` (migration 0010)."""
    if scratch.backend != "postgresql":
        pytest.skip("EXPLAIN plans are checked on PostgreSQL")
    from engine.db.repository import history_filter
    from engine.db.schema import resource_versions

    rows = [{"pk": i + 1, "res_type": "Observation", "res_id": f"o{i}", "version_id": 2, "last_updated": T0,
             "deleted": False, "content": {"resourceType": "Observation"}} for i in range(10_000)]
    versions = [{"res_pk": row["pk"], "version_id": v, "res_type": "Observation", "res_id": row["res_id"],
                 "last_updated": T0, "deleted": False, "method": "PUT", "content": row["content"]}
                for row in rows for v in (1, 2)]
    with scratch.sync.begin() as conn:
        conn.execute(insert(resources), rows)
        conn.execute(insert(resource_versions), versions)
        conn.exec_driver_sql("ANALYZE")
    query = resource_versions.select().where(*history_filter("Observation", "o7", None, None))
    compiled = query.compile(scratch.sync, compile_kwargs={"literal_binds": True})
    with scratch.sync.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
        found = conn.execute(query).all()
    assert "pk_resource_versions" in plan and "Seq Scan" not in plan, plan
    assert sorted(row.version_id for row in found) == [1, 2]
