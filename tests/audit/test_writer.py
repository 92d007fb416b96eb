"""Group commit: `AuditWriter.record` returns only once its records are committed, batches concurrent
callers into few transactions, and hands a failed commit's exception to every waiter."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, func, select

from engine.audit.log import AuditWriter, AuditWriterStopped, verify_database
from engine.audit.schema import audit_chain_head, audit_log
from engine.db.database import Database
from tests.audit.conftest import a_record


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(audit_log))).scalar()


def test_a_hundred_concurrent_callers_all_commit_in_few_transactions(audit_db: Database, run) -> None:
    async def go():
        writer = AuditWriter(audit_db)
        writer.start()
        try:
            async def caller(i: int) -> list[int]:
                seqs = await writer.record([a_record(i, user=f"u{i % 7}", patient=f"p{i}")])
                assert await _count(audit_db) >= seqs[0]  # committed, visible to another connection
                return seqs

            results = await asyncio.gather(*(caller(i) for i in range(100)))
        finally:
            await writer.stop()
        return results, writer.commits

    results, commits = run(go())
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 101))
    assert commits < 100, "concurrent records share transactions"
    assert run(_count(audit_db)) == 100
    assert run(verify_database(audit_db)).ok


def test_records_of_one_call_stay_together(audit_db: Database, run) -> None:
    async def go():
        writer = AuditWriter(audit_db, max_batch=3)
        writer.start()
        try:
            return await asyncio.gather(writer.record([a_record(1), a_record(2)]),
                                        writer.record([a_record(3), a_record(4)]),
                                        writer.record([a_record(5)]))
        finally:
            await writer.stop()

    assert run(go()) == [[1, 2], [3, 4], [5]]


def test_a_failed_commit_raises_in_every_waiter_and_the_writer_recovers(audit_db: Database, run) -> None:
    async def go() -> None:
        writer = AuditWriter(audit_db)
        writer.start()
        try:
            await writer.record([a_record(0)])
            async with audit_db.write() as conn:  # lose the head: the next append collides with seq 1
                await conn.execute(delete(audit_chain_head))
            outcomes = await asyncio.gather(*(writer.record([a_record(i)]) for i in range(10)),
                                            return_exceptions=True)
            assert all(isinstance(o, Exception) for o in outcomes), outcomes
            assert await _count(audit_db) == 1
            async with audit_db.write() as conn:
                row = (await conn.execute(select(audit_log.c.seq, audit_log.c.hash))).one()
                await conn.execute(audit_chain_head.insert().values(id=1, seq=row.seq, hash=row.hash))
            assert await writer.record([a_record(11)]) == [2]
        finally:
            await writer.stop()

    run(go())
    assert run(verify_database(audit_db)).ok


def test_a_stopped_writer_refuses_and_stop_flushes(audit_db: Database, run) -> None:
    async def go() -> None:
        writer = AuditWriter(audit_db)
        with pytest.raises(AuditWriterStopped):
            await writer.record([a_record()])
        writer.start()
        pending = asyncio.ensure_future(writer.record([a_record()]))
        await asyncio.sleep(0)
        await writer.stop()
        assert await pending == [1]  # committed by stop(), not dropped
        with pytest.raises(AuditWriterStopped):
            await writer.record([a_record()])

    run(go())
