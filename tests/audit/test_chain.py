"""The hash chain: appends link, and `verify` finds edited, deleted and inserted records (both databases)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from sqlalchemy import delete, insert, select, text, update

from engine.audit.events import record_bytes
from engine.audit.log import append, chain_hash, verify, verify_database
from engine.audit.schema import GENESIS_HASH, audit_chain_head, audit_log, audit_patients
from engine.db.database import Database, open_database
from tests.audit.conftest import a_record


async def _fill(db: Database, n: int = 5) -> list[int]:
    async with db.write() as conn:
        return await append(conn, [a_record(i, patient=f"p{i}") for i in range(n)])


async def _report(db: Database):
    return await verify_database(db)


def test_appends_link_into_one_chain(audit_db: Database, run) -> None:
    assert run(_fill(audit_db, 3)) == [1, 2, 3]
    assert run(_fill(audit_db, 2)) == [4, 5]

    async def rows():
        async with audit_db.read() as conn:
            return (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()

    found = run(rows())
    assert found[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(found):
        assert after.prev_hash == before.hash
    assert found[0].hash == chain_hash(GENESIS_HASH, 1, record_bytes(a_record(0, patient="p0")))
    report = run(_report(audit_db))
    assert report.ok and report.checked == 5 and report.head_seq == 5
    assert "chain intact" in report.text()


def test_processes_appending_at_once_make_one_chain(audit_db: Database, run) -> None:
    """Appenders on separate connections (as worker processes are), starting from an empty log, some in
    autocommit (the group commit on PostgreSQL) and some inside write transactions: one gapless chain."""
    other = open_database(audit_db.engine.url.render_as_string(hide_password=False), pool_size=4)

    async def autocommit(db: Database, n: int) -> list[int]:
        async with db.direct(transaction=not db.is_postgres) as conn:
            return await append(conn, [a_record(n, patient=f"p{n}"), a_record(n, patient=f"q{n}")])

    async def in_transaction(db: Database, n: int) -> list[int]:
        async with db.write() as conn:
            return await append(conn, [a_record(n, patient=f"p{n}")])

    async def go() -> list[list[int]]:
        try:
            return await asyncio.gather(*(
                (autocommit if n % 2 else in_transaction)(audit_db if n % 3 else other, n) for n in range(24)))
        finally:
            await other.dispose()

    seqs = sorted(seq for batch in run(go()) for seq in batch)
    assert seqs == list(range(1, len(seqs) + 1))
    report = run(_report(audit_db))
    assert report.ok, report.text()
    assert report.checked == len(seqs)


def test_an_empty_log_verifies(audit_db: Database, run) -> None:
    report = run(_report(audit_db))
    assert report.ok and report.checked == 0


def test_a_rolled_back_append_leaves_no_trace(audit_db: Database, run) -> None:
    run(_fill(audit_db, 2))

    async def fail() -> None:
        try:
            async with audit_db.write() as conn:
                await append(conn, [a_record(9)])
                raise RuntimeError("the data write failed")
        except RuntimeError:
            pass

    run(fail())
    assert run(_fill(audit_db, 1)) == [3]
    assert run(_report(audit_db)).ok


async def _sql(db: Database, statement) -> None:
    async with db.write() as conn:
        await conn.execute(statement)


def test_an_edited_record_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db))
    edited = record_bytes(replace(a_record(2, patient="p2"), user_id="someone-else")).decode()
    run(_sql(audit_db, update(audit_log).where(audit_log.c.seq == 3).values(record=edited)))
    report = run(_report(audit_db))
    assert not report.ok
    assert any("seq 3" in b and "edited" in b for b in report.breaks)


def test_an_edited_index_column_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db))
    run(_sql(audit_db, text("UPDATE audit_log SET user_id = 'hidden' WHERE seq = 2")))
    run(_sql(audit_db, update(audit_patients).where(audit_patients.c.seq == 4).values(patient_id="other")))
    breaks = run(_report(audit_db)).breaks
    assert any("seq 2" in b and "indexed columns" in b for b in breaks)
    assert any("seq 4" in b and "patient/entity index" in b for b in breaks)


def test_an_edited_entity_key_is_found_and_the_entity_index_finds_records(audit_db: Database, run) -> None:
    """`audit_log.entities` (the entity index on PostgreSQL, a copy beside the index rows on SQLite) must
    agree with the hashed record; the audit search by entity goes through it."""
    from engine.audit.query import AuditFilter, search_page

    run(_fill(audit_db))

    async def found(keys: list[str]) -> list[int]:
        async with audit_db.read() as conn:
            page = await search_page(conn, AuditFilter(entities=keys), count=10)
        return [seq for seq, _ in page.entries]

    assert run(found(["Patient/p1", "Patient/p3"])) == [4, 2]
    assert run(found(["Patient/nobody"])) == []
    run(_sql(audit_db, update(audit_log).where(audit_log.c.seq == 2).values(entities=["Patient/other"])))
    breaks = run(_report(audit_db)).breaks
    assert breaks == ["seq 2: patient/entity index disagrees with the hashed record (edited)"]


def test_a_deleted_middle_record_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db))
    run(_sql(audit_db, delete(audit_log).where(audit_log.c.seq == 3)))
    breaks = run(_report(audit_db)).breaks
    assert any("missing" in b for b in breaks)
    assert any("seq 4: prev_hash" in b for b in breaks)


def test_a_deleted_tail_is_found_through_the_head(audit_db: Database, run) -> None:
    run(_fill(audit_db))
    run(_sql(audit_db, delete(audit_log).where(audit_log.c.seq >= 4)))
    run(_sql(audit_db, delete(audit_patients).where(audit_patients.c.seq >= 4)))
    run(_sql(audit_db, text("DELETE FROM audit_entities WHERE seq >= 4")))
    breaks = run(_report(audit_db)).breaks
    assert breaks == ["head names seq 5 but the log ends at 3 (tail deleted)"]


def test_a_deleted_head_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db, 2))
    run(_sql(audit_db, delete(audit_chain_head)))
    assert run(_report(audit_db)).breaks == ["the chain head is missing"]


def test_a_forged_record_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db, 3))

    async def forge() -> None:
        async with audit_db.write() as conn:
            last = (await conn.execute(select(audit_log).where(audit_log.c.seq == 3))).one()
            forged = a_record(30, user="intruder")
            body = record_bytes(forged)
            # A well-formed row that links to the last one, but the head was not (cannot be) moved with it.
            await conn.execute(insert(audit_log).values(
                seq=4, recorded=forged.recorded, kind="rest", user_id="intruder", role="R8000", org="RR8",
                purpose="TREAT", action="R", subtype="read", outcome="0", break_glass=False,
                record=body.decode(), prev_hash=last.hash, hash="f" * 64))
            await conn.execute(insert(audit_patients).values(patient_id="p1", seq=4))

    run(forge())
    breaks = run(_report(audit_db)).breaks
    assert any("seq 4: hash does not match" in b for b in breaks)
    assert any("head" in b for b in breaks)


def test_a_record_slipped_between_others_is_found(audit_db: Database, run) -> None:
    run(_fill(audit_db, 3))

    async def shift_and_insert() -> None:
        async with audit_db.write() as conn:
            await conn.execute(text("UPDATE audit_log SET seq = seq + 10 WHERE seq = 3"))
            await conn.execute(text("UPDATE audit_patients SET seq = seq + 10 WHERE seq = 3"))
            await conn.execute(text("UPDATE audit_entities SET seq = seq + 10 WHERE seq = 3"))
            row = (await conn.execute(select(audit_log).where(audit_log.c.seq == 2))).one()
            body = record_bytes(a_record(1, user="intruder", patient=None))
            digest = chain_hash(row.hash, 3, body)
            await conn.execute(insert(audit_log).values(
                seq=3, recorded=row.recorded, kind="rest", user_id="intruder", role="R8000", org="RR8",
                purpose="TREAT", action="R", subtype="read", outcome="0", break_glass=False,
                record=body.decode(), prev_hash=row.hash, hash=digest))

    run(shift_and_insert())
    breaks = run(_report(audit_db)).breaks
    assert breaks, "an inserted record must break the chain"
    assert any("seq 13" in b for b in breaks)


def test_verify_reads_in_batches(audit_db: Database, run) -> None:
    run(_fill(audit_db, 7))

    async def check():
        async with audit_db.read() as conn:
            return await verify(conn, batch=3)

    report = run(check())
    assert report.ok and report.checked == 7
