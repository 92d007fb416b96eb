"""Writing and verifying the hash-chained audit log.

Each row's hash is sha256 over the previous row's hash, its seq and the canonical JSON of its
record (`chain_hash`); the single-row `audit_chain_head` holds the last seq and hash. Appending
locks and reads the head (PostgreSQL: the head row `FOR UPDATE`, in the one statement that also
chains and inserts the rows; SQLite: the write transaction, which begins IMMEDIATE, already
serialises writers), inserts the rows and moves the head — all inside the caller's transaction, so the audit commits with what it audits.

`AuditWriter` is the group commit for reads (DESIGN.md principle 3): concurrent requests queue
their records and wait; one background task commits everything queued in one write transaction
(one lock, one commit) and only then releases the waiters. A caller is never answered before its
record is durable; if the commit fails every waiter gets the exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg.types.json import Jsonb
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.audit.events import AuditRecord, record_bytes, record_from_json
from engine.audit.schema import GENESIS_HASH, audit_chain_head, audit_entities, audit_log, audit_patients
from engine.db.database import Database

log = logging.getLogger("sharedcare.audit")

_HEAD_ID = 1


def chain_hash(prev_hash: str, seq: int, record: bytes) -> str:
    """sha256(prev_hash ‖ seq ‖ canonical record JSON), hex."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + str(seq).encode() + b"\n" + record).hexdigest()


def entity_key(reference: str) -> str:
    """The indexed form of an entity reference: `Type/id` without a `/_history/n` suffix."""
    return reference if reference.count("/") < 2 else "/".join(reference.split("/")[:2])


def entity_keys(record: AuditRecord) -> list[str]:
    """The record's entities as indexed (`audit_log.entities`, and `audit_entities` rows on SQLite)."""
    return list(dict.fromkeys(map(entity_key, record.entities)))


def indexed_columns(record: AuditRecord) -> dict[str, Any]:
    """The columns of `audit_log` copied from a record for searching (verify re-derives them)."""
    return {
        "recorded": record.recorded, "kind": record.kind, "user_id": record.user_id, "role": record.role,
        "org": record.org, "purpose": record.purpose, "action": record.action, "subtype": record.subtype,
        "outcome": record.outcome, "break_glass": record.break_glass,
    }


_HEAD = select(audit_chain_head.c.seq, audit_chain_head.c.hash).where(audit_chain_head.c.id == _HEAD_ID)


async def _head(conn: AsyncConnection) -> tuple[int, str] | None:
    row = (await conn.execute(_HEAD)).first()
    return (int(row.seq), row.hash) if row else None


async def append(conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
    """Append `records` to the chain inside the caller's open write transaction; their seqs.

    Commit (or roll back) is the caller's: the audit stands or falls with the data it audits.
    On PostgreSQL it is one statement, so outside a transaction (autocommit) it is atomic by itself.
    """
    if not records:
        return []
    if conn.dialect.name == "postgresql":
        return await _append_postgres(conn, records)
    head = await _head(conn)
    seq, prev = head or (0, GENESIS_HASH)
    rows, patients, entities = [], [], []
    for record in records:
        seq += 1
        body = record_bytes(record)
        digest = chain_hash(prev, seq, body)
        keys = entity_keys(record)
        rows.append({"seq": seq, **indexed_columns(record), "record": body.decode(), "prev_hash": prev,
                     "hash": digest, "entities": keys})
        patients += [{"patient_id": p, "seq": seq} for p in record.patient_ids]
        entities += [{"reference": key, "seq": seq} for key in keys]
        prev = digest
    await conn.execute(insert(audit_log), rows)
    if patients:
        await conn.execute(insert(audit_patients), patients)
    if entities:
        await conn.execute(insert(audit_entities), entities)
    if head is None:
        await conn.execute(insert(audit_chain_head).values(id=_HEAD_ID, seq=seq, hash=prev))
    else:
        await conn.execute(update(audit_chain_head).where(audit_chain_head.c.id == _HEAD_ID)
                           .values(seq=seq, hash=prev))
    return [row["seq"] for row in rows]


async def _append_postgres(conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
    """The records as numbered rows (1, 2, …); `_PG_APPEND` numbers them after the head and chains them."""
    rows, patients = [], []
    for n, record in enumerate(records, start=1):
        rows.append({"n": n, **indexed_columns(record), "record": record_bytes(record).decode(),
                     "entities": entity_keys(record)})
        patients += [{"patient_id": p, "n": n} for p in record.patient_ids]
    values = {"rows": _jsonb(rows), "patients": _jsonb(patients)}
    after = (await conn.execute(_PG_APPEND, values)).scalar()
    if after is None:  # no head yet: create the genesis head (idempotent, race-free), then append
        await conn.execute(_PG_GENESIS, {"hash": GENESIS_HASH})
        after = (await conn.execute(_PG_APPEND, values)).scalar()
    if after is None:
        raise AuditChainBroken("the audit log holds records but its chain head is missing "
                               "(`sharedcare audit verify` reports it); nothing more can be appended")
    return list(range(after + 1, after + 1 + len(records)))


class AuditChainBroken(RuntimeError):
    """The chain cannot be extended as it stands (an operator must look at it)."""


# PostgreSQL: lock the head row, number and hash-chain the rows, insert them with their index rows and
# move the head — one statement, one round trip per batch. Under READ COMMITTED a `FOR UPDATE` that
# waited for another appender reads the head as that appender committed it. The chain is computed as
# `chain_hash` computes it: sha256(prev hash ‖ "\n" ‖ seq ‖ "\n" ‖ record JSON), hex. With no head row
# nothing is inserted and NULL is returned.
_PG_APPEND = text("""WITH RECURSIVE head AS (SELECT seq, hash FROM audit_chain_head WHERE id = 1 FOR UPDATE),
x AS (SELECT * FROM jsonb_to_recordset(:rows) AS x(n int, recorded timestamp, kind text, user_id text,
 role text, org text, purpose text, action text, subtype text, outcome text, break_glass boolean, record text,
 entities text[])),
chain AS (SELECT 0 AS n, seq, hash::text FROM head
 UNION ALL SELECT x.n, chain.seq + 1, encode(sha256(convert_to(chain.hash || E'\\n' || (chain.seq + 1)::text
 || E'\\n' || x.record, 'UTF8')), 'hex') FROM chain JOIN x ON x.n = chain.n + 1),
l AS (INSERT INTO audit_log (seq, recorded, kind, user_id, role, org, purpose, action, subtype, outcome,
 break_glass, record, prev_hash, hash, entities)
 SELECT c.seq, x.recorded, x.kind, x.user_id, x.role, x.org, x.purpose, x.action, x.subtype, x.outcome,
 x.break_glass, x.record, p.hash, c.hash, x.entities FROM chain c JOIN x ON x.n = c.n JOIN chain p ON p.n = c.n - 1),
p AS (INSERT INTO audit_patients (patient_id, seq) SELECT y.patient_id, head.seq + y.n
 FROM jsonb_to_recordset(:patients) AS y(patient_id text, n int), head),
h AS (UPDATE audit_chain_head SET seq = last.seq, hash = last.hash
 FROM (SELECT seq, hash FROM chain ORDER BY n DESC LIMIT 1) AS last WHERE audit_chain_head.id = 1)
SELECT seq FROM head""")
# The head before the first record; never over a log that has records (a lost head is for `verify` to report).
_PG_GENESIS = text("INSERT INTO audit_chain_head (id, seq, hash) SELECT 1, 0, :hash "
                   "WHERE NOT EXISTS (SELECT FROM audit_log) ON CONFLICT (id) DO NOTHING")


def _jsonb(rows: list[dict[str, Any]]) -> Jsonb:
    return Jsonb(rows, dumps=lambda value: orjson.dumps(value).decode())


# -- group commit ----------------------------------------------------------------------------------


@dataclass
class _Waiter:
    records: Sequence[AuditRecord]
    done: asyncio.Future[list[int]]


class AuditWriterStopped(RuntimeError):
    """`record` was called on a writer that is not running."""


class AuditWriter:
    """Group commit of audit records: `await writer.record(records)` returns once they are committed.

        writer = AuditWriter(db)
        writer.start()            # in the application's lifespan, inside the running event loop
        await writer.record([r])  # before the response is sent; raises if the commit failed
        await writer.stop()       # commits what is queued, then ends the task
    """

    def __init__(self, db: Database, *, max_batch: int = 2000) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: deque[_Waiter] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.commits = 0  # transactions committed (for tests and metrics)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Commit everything already queued, then stop; later `record` calls raise."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None

    async def record(self, records: Sequence[AuditRecord]) -> list[int]:
        """Queue `records` and wait until they are committed; their seqs. Raises what the commit raised."""
        if not records:
            return []
        if not self.running:
            raise AuditWriterStopped("the audit writer is not running")
        waiter = _Waiter(records, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._wake.set()
        # shield: a caller that gives up still has its record committed (it may have seen data).
        return await asyncio.shield(waiter.done)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit(self._take_batch())
            if self._stopping:
                return

    def _take_batch(self) -> list[_Waiter]:
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].records) <= self.max_batch):
            waiter = self._queue.popleft()
            batch.append(waiter)
            size += len(waiter.records)
        return batch

    async def _commit(self, batch: list[_Waiter]) -> None:
        records = [r for waiter in batch for r in waiter.records]
        try:
            # One statement on PostgreSQL, atomic in autocommit; a write transaction on SQLite.
            async with self.db.direct(transaction=not self.db.is_postgres) as conn:
                seqs = await append(conn, records)
        except Exception as exc:  # every waiter gets the failure; the writer carries on
            log.error("audit commit failed", exc_info=exc, extra={"fields": {"records": len(records)}})
            for waiter in batch:
                if not waiter.done.done():
                    waiter.done.set_exception(exc)
            return
        self.commits += 1
        start = 0
        for waiter in batch:
            if not waiter.done.done():
                waiter.done.set_result(seqs[start:start + len(waiter.records)])
            start += len(waiter.records)


async def record_now(db: Database, records: Sequence[AuditRecord], writer: AuditWriter | None = None) -> list[int]:
    """Commit `records` through `writer` when it runs, else in a transaction of their own."""
    if writer is not None and writer.running:
        return await writer.record(records)
    async with db.write() as conn:
        return await append(conn, records)


# -- verification ----------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What `verify` found: `breaks` lists each inconsistency; an intact chain has none."""

    checked: int = 0
    head_seq: int | None = None
    head_hash: str | None = None
    breaks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def text(self) -> str:
        lines = [f"audit log: {self.checked} records checked; head seq {self.head_seq} hash {self.head_hash}"]
        lines += [f"BREAK: {b}" for b in self.breaks]
        lines.append("chain intact" if self.ok else f"chain BROKEN ({len(self.breaks)} problems)")
        return "\n".join(lines)


async def verify(conn: AsyncConnection, *, batch: int = 1000) -> VerifyReport:
    """Walk the chain from seq 1: detect edited rows (hash or copied columns disagree with the record),
    deleted rows (a seq gap or a broken link), inserted rows (a link or hash that does not fit) and a
    deleted tail (the head names a seq or hash the last row does not have)."""
    report = VerifyReport()
    entity_rows = conn.dialect.name != "postgresql"  # `audit_entities` rows are kept on SQLite only
    head = await _head(conn)
    report.head_seq, report.head_hash = head if head else (None, None)
    expected_seq, prev = 1, GENESIS_HASH
    last = 0
    while True:
        rows = (await conn.execute(select(audit_log).where(audit_log.c.seq > last)
                                   .order_by(audit_log.c.seq).limit(batch))).all()
        if not rows:
            break
        children = await _children(conn, rows[0].seq, rows[-1].seq)
        for orphan in sorted(set(children) - {row.seq for row in rows}):
            report.breaks.append(f"seq {orphan}: patient/entity index rows for a record that does not exist")
        for row in rows:
            _check_row(row, expected_seq, prev, children, report, entity_rows=entity_rows)
            expected_seq, prev = row.seq + 1, row.hash
            report.checked += 1
        last = rows[-1].seq
    _check_head(head, last, prev, report)
    for table in (audit_patients, audit_entities):
        beyond = (await conn.execute(select(func.count()).select_from(table).where(table.c.seq > last))).scalar()
        if beyond:
            report.breaks.append(f"{table.name}: {beyond} index rows after the last record")
    return report


async def verify_database(db: Database) -> VerifyReport:
    """`verify` over one consistent snapshot (REPEATABLE READ on PostgreSQL; SQLite reads are snapshots)."""
    options = {"isolation_level": "REPEATABLE READ"} if db.is_postgres else {}
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(**options)
        async with conn.begin():
            return await verify(conn)


def _check_row(row: Any, expected_seq: int, prev: str, children: dict[int, tuple[set[str], set[str]]],
               report: VerifyReport, *, entity_rows: bool) -> None:
    if row.seq != expected_seq:
        report.breaks.append(f"seq {expected_seq}–{row.seq - 1} missing (deleted records)"
                             if row.seq > expected_seq else f"seq {row.seq} out of order")
    if row.prev_hash != prev:
        report.breaks.append(f"seq {row.seq}: prev_hash does not link to the record before it")
    if chain_hash(row.prev_hash, row.seq, row.record.encode()) != row.hash:
        report.breaks.append(f"seq {row.seq}: hash does not match its content (edited)")
        return
    try:
        record = record_from_json(orjson.loads(row.record))
    except (ValueError, TypeError, KeyError) as exc:
        report.breaks.append(f"seq {row.seq}: record unreadable ({type(exc).__name__})")
        return
    stored = {name: getattr(row, name) for name in indexed_columns(record)}
    if stored != indexed_columns(record):
        report.breaks.append(f"seq {row.seq}: indexed columns disagree with the hashed record (edited)")
    patients, entities = children.get(row.seq, (set(), set()))
    keys = set(entity_keys(record))
    if patients != set(record.patient_ids) or set(row.entities or ()) != keys or (entity_rows and entities != keys):
        report.breaks.append(f"seq {row.seq}: patient/entity index disagrees with the hashed record (edited)")


def _check_head(head: tuple[int, str] | None, last: int, prev: str, report: VerifyReport) -> None:
    if head is None:
        if last:
            report.breaks.append("the chain head is missing")
        return
    if head[0] != last or head[1] != prev:
        if head[0] > last:
            report.breaks.append(f"head names seq {head[0]} but the log ends at {last} (tail deleted)")
        else:
            report.breaks.append(f"head (seq {head[0]}) does not match the last record (seq {last})")


async def _children(conn: AsyncConnection, low: int, high: int) -> dict[int, tuple[set[str], set[str]]]:
    found: dict[int, tuple[set[str], set[str]]] = {}
    for table, column, slot in ((audit_patients, audit_patients.c.patient_id, 0),
                                (audit_entities, audit_entities.c.reference, 1)):
        result = await conn.execute(select(table.c.seq, column).where(table.c.seq.between(low, high)))
        for seq, value in result.all():
            found.setdefault(seq, (set(), set()))[slot].add(value)
    return found
