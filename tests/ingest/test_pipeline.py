"""ingest_message end to end on the test store: store before ACK, de-duplication, errors, ACK after commit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adapters.hl7v2.parser import parse_message
from engine.db.database import open_database
from engine.ingest import apply, store
from engine.ingest.pipeline import IngestContext, IngestUnavailable
from mappings.ids import resource_id

from .conftest import SENDERS, Clock
from .helpers import all_of, counts, ingest, messages, stored, version_count
from .messages import NHS_A, adt, pid, pv1

PATIENT_A = resource_id("Patient", "nhs", NHS_A)


def test_a01_is_stored_applied_and_acknowledged(ctx, run) -> None:
    text = adt("A01", "RR8-1")
    outcome = run(ingest(ctx, text))
    assert (outcome.code, outcome.status, outcome.duplicate) == ("AA", "processed", False)
    ack = parse_message(outcome.ack)
    assert ack.first("MSA").value(1) == "AA" and ack.first("MSA").value(2) == "RR8-1"
    assert ack.sending_facility == "SC" and ack.receiving_facility == "RR8"
    found = run(counts(ctx.db))
    assert found["Patient"] == 1 and found["Encounter"] == 1 and found["Provenance"] == 1
    [row] = run(messages(ctx.db))
    assert (row.sender, row.control_id, row.message_type, row.status, row.ack_code) == (
        "RR8", "RR8-1", "ADT^A01", "processed", "AA")
    assert row.raw == text and row.ack == outcome.ack and row.transport == "mllp"
    assert row.patient_id == PATIENT_A and row.attempts == 1 and row.event_time is not None


def test_the_same_message_twice_gets_the_same_ack_and_changes_nothing(ctx, run) -> None:
    first = run(ingest(ctx, adt("A01", "RR8-2")))
    versions = run(version_count(ctx.db))
    again = run(ingest(ctx, adt("A01", "RR8-2")))
    assert again.ack == first.ack and again.duplicate and again.message_id == first.message_id
    assert run(version_count(ctx.db)) == versions
    assert len(run(messages(ctx.db))) == 1
    assert run(stored(ctx.db, "Patient", PATIENT_A))["meta"]["versionId"] == "1"


def test_racing_copies_of_one_message_are_stored_once(ctx, run) -> None:
    async def race():
        return await asyncio.gather(*(ingest(ctx, adt("A01", "RR8-3")) for _ in range(4)))

    outcomes = run(race())
    assert len({o.ack for o in outcomes}) == 1 and sum(not o.duplicate for o in outcomes) == 1
    assert len(run(messages(ctx.db))) == 1
    assert run(counts(ctx.db))["Patient"] == 1
    assert run(stored(ctx.db, "Patient", PATIENT_A))["meta"]["versionId"] == "1"


def test_bytes_are_decoded_from_the_declared_charset(ctx, run) -> None:
    text = adt("A01", "RR8-4", family="BRONTË")
    outcome = run(ingest(ctx, text.encode("utf-8")))
    assert outcome.code == "AA"
    assert run(stored(ctx.db, "Patient", PATIENT_A))["name"][0]["family"] == "BRONTË"


def test_no_ack_when_the_sender_asks_for_none(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "RR8-5", accept="NE", application="NE")))
    assert outcome.ack is None and outcome.code == "AA"
    [row] = run(messages(ctx.db))
    assert row.ack is None and row.status == "processed"


def test_enhanced_mode_commit_ack(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "RR8-6", accept="AL", application="NE")))
    assert parse_message(outcome.ack).first("MSA").value(1) == "CA"


# -- failures are stored too (the error queue) ----------------------------------------------------


def test_unknown_sender_is_stored_rejected_and_never_mapped(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "X-1", sender="RXX")))
    assert (outcome.code, outcome.status, outcome.error_code) == ("AR", "rejected", "204")
    err = parse_message(outcome.ack).first("ERR")
    assert err.value(2, 1) == "MSH" and err.value(2, 3) == "4" and err.value(3, 1) == "204"
    assert run(counts(ctx.db)) == {}
    [row] = run(messages(ctx.db))
    assert (row.sender, row.status, row.error_code, row.error_location) == ("RXX", "rejected", "204", "MSH^1^4")


def test_unknown_senders_accepted_when_configured(ctx, run) -> None:
    ctx.accept_unknown_senders = True
    outcome = run(ingest(ctx, adt("A01", "X-2", sender="RXX")))
    assert outcome.code == "AA"
    assert run(counts(ctx.db))["Patient"] == 1


def test_unparseable_text_is_stored_and_rejected(ctx, run) -> None:
    text = "EVN|A01|20240101\rPID|1||123"
    outcome = run(ingest(ctx, text))
    assert (outcome.code, outcome.status, outcome.error_code) == ("AR", "rejected", "100")
    assert parse_message(outcome.ack).first("MSA").value(1) == "AR"
    [row] = run(messages(ctx.db))
    assert row.raw == text and row.control_id is None and row.status == "rejected"


def test_mapping_error_is_stored_with_its_location_and_answered_ae(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "RR8-7", nhs="9912003814")))  # fails the check digit
    assert (outcome.code, outcome.status) == ("AE", "error")
    err = parse_message(outcome.ack).first("ERR")
    assert err.value(2, 1) == "PID" and err.value(3, 1) == outcome.error_code
    [row] = run(messages(ctx.db))
    assert row.status == "error" and row.error_code == outcome.error_code and row.error_location.startswith("PID")
    assert "9912003814" not in (row.error_text or "")  # masked in the reason
    assert run(counts(ctx.db)) == {}


def test_unsupported_event_is_rejected(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A99", "RR8-8")))
    assert (outcome.code, outcome.status, outcome.error_code) == ("AR", "rejected", "201")


def test_ack_only_after_commit_a_failure_in_apply_leaves_nothing(ctx, run, monkeypatch) -> None:
    real = store.write_changes

    async def half_then_fail(conn, changes, now, sources=None, message=None):
        await real(conn, changes[:1], now, sources, message)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "write_changes", half_then_fail)
    outcome = run(ingest(ctx, adt("A01", "RR8-9")))
    assert (outcome.code, outcome.status, outcome.error_code) == ("AE", "error", "207")
    assert "disk" not in outcome.ack  # no internals in the ACK
    assert run(counts(ctx.db)) == {}
    [row] = run(messages(ctx.db))
    assert row.status == "error" and row.error_code == "207"
    # A transient failure is retried when the sender re-sends: now it succeeds, on the same row.
    monkeypatch.setattr(store, "write_changes", real)
    again = run(ingest(ctx, adt("A01", "RR8-9")))
    assert again.code == "AA" and again.message_id == outcome.message_id and not again.duplicate
    [row] = run(messages(ctx.db))
    assert row.status == "processed" and row.attempts == 2 and row.error_code is None
    assert run(counts(ctx.db))["Patient"] == 1


def test_store_unreachable_raises_so_no_ack_is_sent(tmp_path, run) -> None:
    db = open_database(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    ctx = IngestContext(db=db, senders=dict(SENDERS), now=Clock())
    with pytest.raises(IngestUnavailable):
        run(ingest(ctx, "not a message"))
    run(db.dispose())


# -- what is written ---------------------------------------------------------------------------------


def test_provenance_records_the_message(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "RR8-10")))
    provenance = run(stored(ctx.db, "Provenance", apply.provenance_id(outcome.message_id)))
    targets = {t["reference"] for t in provenance["target"]}
    assert f"Patient/{PATIENT_A}/_history/1" in targets
    assert any(t.startswith("Encounter/") for t in targets)
    assert provenance["activity"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE", "display": "create"}
    assert provenance["recorded"].endswith("Z")
    author = provenance["agent"][0]["who"]
    assert author["identifier"] == {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RR8"}
    assert provenance["entity"][0]["what"]["identifier"] == {
        "system": "https://fhir.sharedcare.dev/Id/hl7-message", "value": str(outcome.message_id)}


def test_unchanged_content_gets_no_new_version(ctx, run) -> None:
    run(ingest(ctx, adt("A08", "RR8-11", event="20240301101200")))
    versions = run(version_count(ctx.db))
    outcome = run(ingest(ctx, adt("A08", "RR8-12", event="20240301111200")))  # same content, later
    assert outcome.code == "AA"
    assert run(version_count(ctx.db)) == versions  # nothing changed, so no Provenance either
    assert run(stored(ctx.db, "Patient", PATIENT_A))["meta"]["versionId"] == "1"


def test_a_message_without_pd1_or_nk1_keeps_the_registered_gp_and_contacts(ctx, run) -> None:
    """An ORU^R01 carries no PD1: the patient is still registered with the GP an ADT named (nor does a
    message without NK1 remove the next of kin). A later PD1 naming another practice does change it."""
    pd1 = "PD1|||LEEDS CITY MEDICAL PRACTICE^^B86001|G3000001"
    nk1 = "NK1|1|SMITH^JOHN|SPO^Spouse^HL70063|||0113 496 0999"
    assert run(ingest(ctx, adt("A01", "RR8-GP1", segments=(pd1, nk1)))).code == "AA"
    registered = run(stored(ctx.db, "Patient", PATIENT_A))
    assert len(registered["generalPractitioner"]) == 2 and registered["contact"]
    result = ("MSH|^~\\&|LAB|RR8|SHAREDCARE|SC|20240301120000||ORU^R01^ORU_R01|RR8-GP2|P|2.4\r"
              + pid() + "\rOBR|1|ICE1^ICE|WP1^WINPATH|FBC^Full blood count^WINPATH|||20240301115000||||||||||||||||"
              "||F\rOBX|1|NM|HB^Haemoglobin^WINPATH||118|g/L|115-165|N|||F\r")
    assert run(ingest(ctx, result)).code == "AA"
    after_result = run(stored(ctx.db, "Patient", PATIENT_A))
    assert after_result["generalPractitioner"] == registered["generalPractitioner"]
    assert after_result["contact"] == registered["contact"]
    assert after_result["meta"]["versionId"] == "1"  # nothing the result said changed the Patient
    moved = "PD1|||MOORTOWN GROUP PRACTICE^^B86002|G3000002"
    assert run(ingest(ctx, adt("A08", "RR8-GP3", event="20240302090000", segments=(moved,)))).code == "AA"
    updated = run(stored(ctx.db, "Patient", PATIENT_A))
    assert updated["generalPractitioner"] != registered["generalPractitioner"]
    assert updated["contact"] == registered["contact"]


def test_a_patients_resources_can_be_read_for_one_encounter(ctx, run) -> None:
    """read_patient_resources narrowed to an encounter and to statuses (what a discharge document reads): of
    the types named, only the resources that reference that Encounter or have those statuses; of the
    others, all of the patient's."""
    from engine.ingest.apply import read_patient_resources

    allergy = "AL1|1|DA|91936005^Penicillin^SCT|SV|Rash"
    assert run(ingest(ctx, adt("A01", "RR8-EN1", visit="V1", segments=(allergy,)))).code == "AA"

    def result(control_id: str, visit: str) -> str:
        return (f"MSH|^~\\&|LAB|RR8|SHAREDCARE|SC|20240301120000||ORU^R01^ORU_R01|{control_id}|P|2.4\r" + pid()
                + f"\r{pv1(visit=visit)}\rOBR|1|{control_id}^ICE|WP{control_id}^WINPATH|FBC^Full blood count^WINPATH"
                "|||20240301115000||||||||||||||||||F\rOBX|1|NM|HB^Haemoglobin^WINPATH||118|g/L|115-165|N|||F\r")

    assert run(ingest(ctx, result("RR8-EN2", "V1"))).code == "AA"
    assert run(ingest(ctx, result("RR8-EN3", "V2"))).code == "AA"
    encounters = {e["identifier"][0]["value"]: e["id"] for e in run(all_of(ctx.db, "Encounter"))}

    async def read(scope):
        async with ctx.db.read() as conn:
            rows = await read_patient_resources(conn, PATIENT_A, {"Observation", "AllergyIntolerance"}, scope)
        return sorted((row.res_type, row.content.get("encounter", {}).get("reference")) for row in rows)

    everything = run(read(None))
    assert [t for t, _ in everything].count("Observation") == 2
    first_visit = run(read((encounters["V1"], {"Observation"})))
    assert first_visit == [("AllergyIntolerance", None), ("Observation", f"Encounter/{encounters['V1']}")]

    async def with_status(statuses):
        async with ctx.db.read() as conn:
            rows = await read_patient_resources(conn, PATIENT_A, {"Observation", "AllergyIntolerance"}, None, statuses)
        return sorted(row.res_type for row in rows)

    assert run(with_status({"Observation": {"final"}})) == ["AllergyIntolerance", "Observation", "Observation"]
    assert run(with_status({"Observation": {"preliminary"}})) == ["AllergyIntolerance"]


def test_mental_health_sender_labels_its_resources(ctx, run) -> None:
    outcome = run(ingest(ctx, adt("A01", "RGD-1", sender="RGD", mrn="M123")))
    assert outcome.code == "AA"
    labels = {("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY"),
              ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")}
    [encounter] = run(all_of(ctx.db, "Encounter"))
    assert {(c["system"], c["code"]) for c in encounter["meta"]["security"]} >= labels
    for organization in run(all_of(ctx.db, "Organization")):
        assert not (organization.get("meta") or {}).get("security")



def test_every_stored_resource_names_its_data_owner(ctx, run) -> None:
    """The owner tag (consent.vocabulary) reaches the store, the Provenance too; directory types carry none."""
    from consent.vocabulary import OWNER_TAG_SYSTEM, owner_tag

    assert run(ingest(ctx, adt("A01", "RR8-T1"))).code == "AA"
    assert run(ingest(ctx, adt("A04", "RY6-T1", sender="RY6", mrn="C555", visit="CV1"))).code == "AA"
    for res_type in ("Encounter", "Provenance"):
        for resource in run(all_of(ctx.db, res_type)):
            assert len([t for t in resource["meta"]["tag"] if t["system"] == OWNER_TAG_SYSTEM]) == 1, res_type
    assert {e["meta"]["tag"][0]["code"] for e in run(all_of(ctx.db, "Encounter"))} == {"RR8", "RY6"}
    [patient] = run(all_of(ctx.db, "Patient"))  # one person, sent by both: both are owners
    assert owner_tag("RR8") in patient["meta"]["tag"] and owner_tag("RY6") in patient["meta"]["tag"]
    for organization in run(all_of(ctx.db, "Organization")):
        assert not (organization.get("meta") or {}).get("tag")


@pytest.mark.parametrize("admitted, start, event_utc", [
    ("202401151005", "2024-01-15T10:05:00+00:00", "2024-01-15 10:12:00"),  # GMT
    ("202407151005", "2024-07-15T10:05:00+01:00", "2024-07-15 09:12:00"),  # BST
])
def test_times_without_offset_are_the_senders_local_time(ctx, run, admitted, start, event_utc) -> None:
    """UK senders send local time (SenderConfig.timezone, default Europe/London); the store keeps UTC."""
    day = admitted[:8]
    text = adt("A01", f"RR8-TZ{day}", event=f"{day}101200", visit=None, segments=(pv1(admitted=admitted),))
    assert run(ingest(ctx, text)).code == "AA"
    [encounter] = run(all_of(ctx.db, "Encounter"))
    assert encounter["period"]["start"] == start
    [row] = run(messages(ctx.db))
    assert str(row.event_time) == event_utc


# -- results (UK-REFERENCE test 7) and every fixture message ---------------------------------------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


def test_obx11_corrected_replaces_and_withdrawn_marks_entered_in_error(ctx, run) -> None:
    for name in ("01_fbc_final", "02_fbc_corrected", "03_fbc_withdrawn"):
        outcome = run(ingest(ctx, (FIXTURES / "ORU_R01" / f"{name}.hl7").read_bytes()))
        assert outcome.code == "AA", outcome.error_text
        if name == "01_fbc_final":
            observations = run(all_of(ctx.db, "Observation"))
            haemoglobin = next(o for o in observations if "718-7" in json.dumps(o["code"]))
            assert haemoglobin["status"] == "final" and haemoglobin["valueQuantity"]["value"] == 118
        if name == "02_fbc_corrected":
            corrected = run(stored(ctx.db, "Observation", haemoglobin["id"]))
            assert corrected["status"] == "corrected" and corrected["valueQuantity"]["value"] == 128
            assert corrected["meta"]["versionId"] == "2"
    observations = run(all_of(ctx.db, "Observation"))
    assert len(observations) == 4  # replaced in place, never duplicated
    platelets = next(o for o in observations if "777-3" in json.dumps(o["code"]))
    assert platelets["status"] == "entered-in-error"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*/*.hl7")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_fixture_message_is_stored_and_answered(ctx, run, path: Path) -> None:
    outcome = run(ingest(ctx, path.read_bytes(), transport="file"))
    assert outcome.ack is None or parse_message(outcome.ack).first("MSA") is not None
    assert outcome.error_code != "207", outcome.error_text  # no fixture may hit an internal error
    [row] = run(messages(ctx.db))
    assert row.status == {"AA": "processed", "AE": "error", "AR": "rejected"}[outcome.code]


def test_collisions_with_concurrent_writers_are_retried(ctx, run, monkeypatch) -> None:
    real, calls = store.write_changes, []

    async def collide_once(conn, changes, now, sources=None, message=None):
        calls.append(1)
        if len(calls) == 1:
            raise store.ConcurrentChange("another writer got there first")
        return await real(conn, changes, now, sources, message)

    monkeypatch.setattr(store, "write_changes", collide_once)
    outcome = run(ingest(ctx, adt("A01", "RR8-13")))
    assert outcome.code == "AA" and len(calls) == 2
    assert len(run(messages(ctx.db))) == 1 and run(counts(ctx.db))["Patient"] == 1


def test_endless_collisions_are_stored_as_206_for_replay(ctx, run, monkeypatch) -> None:
    async def always(conn, changes, now, sources=None, message=None):
        raise store.ConcurrentChange("busy")

    monkeypatch.setattr(store, "write_changes", always)
    ctx.max_attempts = 2
    outcome = run(ingest(ctx, adt("A01", "RR8-14")))
    assert (outcome.code, outcome.status, outcome.error_code) == ("AE", "error", "206")
    assert run(counts(ctx.db)) == {}


def test_stored_exactly_as_the_repository_stores(ctx, run) -> None:
    """Batched writes keep versions, current content and the search index consistent (both back ends)."""
    from sqlalchemy import Text, cast, select

    from engine.db.schema import resource_versions, resources

    run(ingest(ctx, adt("A01", "RR8-15", event="20240301100000", phone="0113 496 0000")))
    run(ingest(ctx, adt("A08", "RR8-16", family="JONES", event="20240302100000")))

    async def check() -> None:
        async with ctx.db.read() as conn:
            row = (await conn.execute(select(resources.c.pk, cast(resources.c.content, Text)).where(
                resources.c.res_type == "Patient"))).one()
            content = json.loads(row[1])
            history = (await conn.execute(select(resource_versions.c.version_id, resource_versions.c.method,
                                                 cast(resource_versions.c.content, Text))
                                          .where(resource_versions.c.res_pk == row[0])
                                          .order_by(resource_versions.c.version_id))).all()
            assert [(v, m) for v, m, _ in history] == [(1, "POST"), (2, "PUT")]
            assert json.loads(history[-1][2]) == content and content["meta"]["versionId"] == "2"
            await assert_index_rows_are_those_of(conn, row[0], content)

    run(check())


async def assert_index_rows_are_those_of(conn, pk: int, content: dict) -> None:
    """The stored index rows of resource `pk` are exactly those its current content yields."""
    from sqlalchemy import select

    from engine.db.schema import INDEX_TABLES
    from engine.search.extract import extract_index

    expected = extract_index(content)
    for kind, table in INDEX_TABLES.items():
        columns = [c for c in table.columns if c.name not in ("id", "res_pk", "res_type")]
        found = (await conn.execute(select(*columns).where(table.c.res_pk == pk))).all()
        assert sorted(map(tuple, found), key=repr) == sorted(
            (tuple(r[c.name] for c in columns) for r in expected.get(kind, ())), key=repr), kind


def test_every_stored_resource_has_exactly_the_index_rows_its_content_yields(ctx, run) -> None:
    """Every kind of index row — texts with quotes and accents, codes, dates, quantities, references, care
    relationships — goes through the batched write unchanged (on PostgreSQL as JSON arrays: store._index_arrays)."""
    from sqlalchemy import Text, cast, select

    from engine.db.schema import resources

    for path in ("ADT_A01", "ORU_R01", "ADT_A03", "MDM_T02", "SIU_S12"):
        for message in sorted((FIXTURES / path).glob("*.hl7")):
            run(ingest(ctx, message.read_bytes(), transport="file"))
    assert run(ingest(ctx, adt("A08", "RR8-IDX", family="O'DÓNAILL", event="20240302100000"))).code == "AA"

    async def check() -> set[str]:
        async with ctx.db.read() as conn:
            rows = (await conn.execute(select(resources.c.pk, cast(resources.c.content, Text)))).all()
            for pk, content in rows:
                await assert_index_rows_are_those_of(conn, pk, json.loads(content))
            return {json.loads(content)["resourceType"] for _, content in rows}

    assert {"Patient", "Encounter", "Observation", "DiagnosticReport", "Composition", "Task"} <= run(check())


def test_an_update_leaves_the_index_rows_its_content_yields_even_if_some_were_missing(ctx, run) -> None:
    """A discharge changes some of the Encounter's index rows (status, period); afterwards the stored rows
    are exactly those of the new content, a row that had gone missing from the store included."""
    from sqlalchemy import Text, cast, delete, select

    from engine.db.schema import idx_token, resources

    assert run(ingest(ctx, adt("A01", "RR8-IX1", event="20240301100000"))).code == "AA"

    async def encounter_pk() -> int:
        async with ctx.db.read() as conn:
            return (await conn.execute(select(resources.c.pk).where(resources.c.res_type == "Encounter"))).scalar_one()

    pk = run(encounter_pk())

    async def lose_a_row() -> None:
        async with ctx.db.write() as conn:
            await conn.execute(delete(idx_token).where(idx_token.c.res_pk == pk, idx_token.c.param == "class"))

    run(lose_a_row())
    discharge = adt("A03", "RR8-IX2", event="20240305100000", discharged="202403051000")
    assert run(ingest(ctx, discharge)).code == "AA"

    async def check() -> None:
        async with ctx.db.read() as conn:
            content = json.loads((await conn.execute(select(cast(resources.c.content, Text))
                                                     .where(resources.c.pk == pk))).scalar_one())
            assert content["status"] == "finished"
            await assert_index_rows_are_those_of(conn, pk, content)

    run(check())


def test_the_postgresql_write_is_one_statement_for_every_row_table() -> None:
    """Resources, versions, sources and every INDEX_TABLES table (care relationships too) in one statement:
    a table written separately costs round trips per message (store.pg_write_statement's docstring has the numbers)."""
    from sqlalchemy.dialects.postgresql import psycopg as pg

    from engine.db.schema import INDEX_TABLES

    compiled = str(store.pg_write_statement(store.WriteShape()).compile(dialect=pg.dialect()))
    for table in INDEX_TABLES.values():
        assert f"INSERT INTO {table.name} " in compiled and f"DELETE FROM {table.name} " in compiled


def test_the_postgresql_write_has_only_the_parts_a_batch_needs() -> None:
    """New resources only: no UPDATE and no index-row DELETE; an update deletes the resource's rows from every
    index table, also those its new version adds none to; no resources at all: the messages alone."""
    from engine.db.schema import INDEX_TABLES

    def sql(**shape) -> str:
        return store.pg_write_statement(store.WriteShape(**shape)).text

    creates = sql(updates=False, refreshed=False, kinds=("token", "reference"), messages=True)
    assert "UPDATE resources" not in creates and "DELETE FROM" not in creates
    assert "INSERT INTO idx_token " in creates and "INSERT INTO idx_string " not in creates
    updates = sql(creates=False, kinds=("token",))
    assert all(f"DELETE FROM {table.name} " in updates for table in INDEX_TABLES.values())
    assert "INSERT INTO resources" not in updates and "INSERT INTO idx_string " not in updates
    nothing = sql(creates=False, updates=False, tracked=False, refreshed=True, kinds=(), messages=True)
    assert "resource_versions" not in nothing and "INSERT INTO resource_sources" in nothing
    assert store.pg_write_statement(store.WriteShape(updates=False)) is store.pg_write_statement(
        store.WriteShape(updates=False))  # built once, so psycopg prepares it once per connection


def test_t08_replacement_marks_the_original_superseded(ctx, run) -> None:
    """MDM^T08 with a new TXA-12 and the original in TXA-13: the new document `replaces` the original,
    which becomes `superseded` (a new version, named in the T08's Provenance); a replay changes nothing."""
    folder = FIXTURES / "MDM_T02"
    original = run(ingest(ctx, (folder / "01_discharge_summary_text.hl7").read_bytes()))
    [before] = run(all_of(ctx.db, "DocumentReference"))
    assert original.code == "AA" and before["status"] == "current"
    edit = run(ingest(ctx, (folder / "04_edit_T08.hl7").read_bytes()))
    assert edit.code == "AA", edit.error_text
    documents = {d["id"]: d for d in run(all_of(ctx.db, "DocumentReference"))}
    old, new = documents.pop(before["id"]), next(iter(documents.values()))
    assert (old["status"], old["meta"]["versionId"]) == ("superseded", "2")
    assert old["content"] == before["content"]  # only the status changes
    assert new["status"] == "current" and new["relatesTo"] == [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{old['id']}"}}]
    provenance = run(stored(ctx.db, "Provenance", apply.provenance_id(edit.message_id)))
    assert {"reference": f"DocumentReference/{old['id']}/_history/2"} in provenance["target"]
    from engine.ingest.replay import ReplaySelection, replay

    run(replay(ctx, ReplaySelection(ids=(edit.message_id,), statuses=("processed",))))
    assert run(stored(ctx.db, "DocumentReference", old["id"]))["meta"]["versionId"] == "2"


def test_t08_whose_original_is_not_stored_is_accepted_with_a_warning(ctx, run) -> None:
    edit = run(ingest(ctx, (FIXTURES / "MDM_T02" / "04_edit_T08.hl7").read_bytes()))
    assert edit.code == "AA"
    [row] = run(messages(ctx.db))
    assert any(w.startswith("supersede: DocumentReference/") for w in row.warnings)
    assert len(run(all_of(ctx.db, "DocumentReference"))) == 1


def test_a_message_costs_three_statements_on_postgresql(ctx, run) -> None:
    """Between BEGIN and COMMIT: locks + message id, the one read, the one write (message row included)."""
    from sqlalchemy import event

    if ctx.db.dialect != "postgresql":
        pytest.skip("the statement budget is PostgreSQL's")
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(statement.split(None, 1)[0])

    event.listen(ctx.db.writer.sync_engine, "before_cursor_execute", count)
    try:
        outcome = run(ingest(ctx, adt("A01", "RR8-S1")))
    finally:
        event.remove(ctx.db.writer.sync_engine, "before_cursor_execute", count)
    assert outcome.code == "AA" and seen == ["SELECT", "SELECT", "WITH"]
    [row] = run(messages(ctx.db))
    assert row.id == outcome.message_id and row.status == "processed" and row.attempts == 1
    provenance = run(stored(ctx.db, "Provenance", apply.provenance_id(outcome.message_id)))
    assert provenance["entity"][0]["what"]["identifier"]["value"] == str(outcome.message_id)


def test_locks_and_a_message_id_in_one_round_trip(ctx, run) -> None:
    """store.lock_and_reserve takes every advisory lock for the transaction and reserves a fresh id."""
    from sqlalchemy import text

    if ctx.db.dialect != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")

    async def check() -> tuple[int, int, int]:
        async with ctx.db.write() as conn:
            first = await store.lock_and_reserve(conn, [3, 1, 2, 2])
            second = await store.lock_and_reserve(conn, [])
            held = (await conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"))).scalar_one()
        return first, second, held

    first, second, held = run(check())
    assert held == 3 and second > first


def test_ingested_resources_get_the_policys_sensitivity_labels() -> None:
    from consent.policy import load_policy
    from engine.ingest.pipeline import with_sensitivity_labels
    from mappings.result import MappingResult

    depression = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                  "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32.1"}]}}
    sprain = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"},
              "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "S93.4"}]}}
    result = MappingResult("ADT^A01", [depression, sprain], "p1", None, None)
    labelled = with_sensitivity_labels(result, load_policy()).resources
    assert {c["code"] for c in labelled[0]["meta"]["security"]} == {"PSY", "R"}
    assert "meta" not in labelled[1]
