"""Group commit (engine/ingest/group_commit.py): messages that arrive together share one transaction, and
each gets exactly the outcome — and the store exactly the content — it would have had alone.

PostgreSQL only: on SQLite every write transaction is serialised anyway and group commit is off.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select, text

from engine.db.database import Database
from engine.ingest import store
from engine.ingest.group_commit import BATCH_SIZE, GATHERS, ROLLED_BACK, GroupCommit
from engine.ingest.pipeline import IngestContext, IngestOutcome

from ..conftest import BACKEND
from .conftest import SENDERS, Clock
from .helpers import ingest, messages
from .messages import NHS_A, NHS_B, NHS_C, adt

postgresql_only = pytest.mark.skipif(BACKEND != "postgresql", reason="group commit runs on PostgreSQL only")

NHS_D, NHS_E = "9990000026", "9990000034"


def batched(ctx: IngestContext, **settings: float) -> IngestContext:
    """`ctx` with group commit, as `sharedcare serve` runs the MLLP listener."""
    return IngestContext(db=ctx.db, senders=dict(SENDERS), now=Clock(), group_commit=GroupCommit(ctx.db, Clock(),
                                                                                                 **settings))


async def senders_at_once(ctx: IngestContext, streams: Sequence[Sequence[str]]) -> list[list[IngestOutcome]]:
    """Each stream's messages in order, one at a time, all streams at once (like MLLP connections)."""
    async def one(stream: Sequence[str]) -> list[IngestOutcome]:
        return [await ingest(ctx, text) for text in stream]

    return list(await asyncio.gather(*(one(stream) for stream in streams)))


def streams() -> list[list[str]]:
    """Five senders' worth: admissions, updates and discharges of five patients, sharing a GP practice
    (PD1) and some Practitioners, which the first message of each creates at the same moment."""
    def stream(n: int, nhs: str, family: str) -> list[str]:
        pd1 = "PD1|||LEEDS CITY MEDICAL PRACTICE^^B86001|G3000001"
        visit = f"V{n:07d}"
        return [adt("A01", f"C{n}-1", nhs=nhs, mrn=f"RR8{n:07d}", family=family, visit=visit, segments=(pd1,)),
                adt("A08", f"C{n}-2", nhs=nhs, mrn=f"RR8{n:07d}", family=family + "-JONES", visit=visit,
                    event="20240301111200", segments=(pd1,)),
                adt("A03", f"C{n}-3", nhs=nhs, mrn=f"RR8{n:07d}", family=family + "-JONES", visit=visit,
                    event="20240301121200", discharged="202403011210", segments=(pd1,))]

    return [stream(n, nhs, family) for n, (nhs, family) in enumerate(
        [(NHS_A, "SMITH"), (NHS_B, "KHAN"), (NHS_C, "NOWAK"), (NHS_D, "OKAFOR"), (NHS_E, "PATEL")], start=1)]


# Each issue of a transfer-of-care document is a new document with a random (version 4) UUID.
_DOCUMENT_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# Times stamped when a resource is written or a document made: they follow the order of writing.
_WRITING_TIMES = frozenset({"lastUpdated", "recorded", "date", "authoredOn", "lastModified", "timestamp"})


def _without_writing_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_writing_times(v) for k, v in value.items() if k not in _WRITING_TIMES}
    if isinstance(value, list):
        return [_without_writing_times(v) for v in value]
    return value


async def snapshot(db: Database) -> dict[Any, Any]:
    """Every resource, with its version and number of token index rows, without server meta — but the
    Provenances (whose ids follow message ids) — and the documents (random ids, referred to by a
    placeholder; the versions of what they hold kept, the times of writing left out) as one sorted list."""
    async with db.read() as conn:
        rows = (await conn.execute(text(
            "SELECT res_type, res_id, version_id, CAST(content AS TEXT) FROM resources"
            " WHERE res_type NOT IN ('Provenance', 'Bundle', 'Composition')"))).all()
        documents = (await conn.execute(text(
            "SELECT CAST(content AS TEXT) FROM resources WHERE res_type IN ('Bundle', 'Composition')"))).scalars()
        found: dict[Any, Any] = {"documents": sorted(
            orjson.dumps(_without_writing_times(orjson.loads(_DOCUMENT_UUID.sub("document", content))),
                         option=orjson.OPT_SORT_KEYS) for content in documents)}
        index = (await conn.execute(text(
            "SELECT r.res_type, r.res_id, count(*) FROM idx_token AS t JOIN resources AS r ON r.pk = t.res_pk"
            " GROUP BY r.res_type, r.res_id"))).all()
    tokens = {(t, i): n for t, i, n in index}
    for res_type, res_id, version, content in rows:
        document = orjson.loads(_DOCUMENT_UUID.sub("document", content))
        document["meta"] = {k: v for k, v in document.get("meta", {}).items() if k not in ("lastUpdated", "versionId")}
        for key in ("recorded", "date", "authoredOn", "lastModified"):  # stamped with the time of writing
            document.pop(key, None)
        found[(res_type, res_id)] = (version, tokens.get((res_type, res_id), 0), document)
    return found


def count_statements(db: Database) -> tuple[list[str], Any]:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    return statements, lambda: event.remove(db.engine.sync_engine, "before_cursor_execute", seen)


@postgresql_only
def test_concurrent_senders_give_the_store_that_one_at_a_time_gives(ctx, run, gp_endpoint) -> None:
    for stream in streams():  # alone: one message after another
        for message in stream:
            assert run(ingest(ctx, message)).code == "AA"
    alone = run(snapshot(ctx.db))
    assert len(alone["documents"]) == 10  # each discharge's Bundle and Composition
    alone_outbox = run(_outbox(ctx.db, empty=True))
    assert len(alone_outbox) == 5
    alone_messages = len(run(messages(ctx.db)))
    run(_empty(ctx.db))

    group = batched(ctx)
    before, rolled_back = _batches(), _rolled_back()
    outcomes = run(senders_at_once(group, streams()))
    assert all(o.code == "AA" and not o.duplicate for stream in outcomes for o in stream)
    assert _batches()[1] - before[1] == 15 and _batches()[0] - before[0] < 15, "messages shared transactions"
    # The shared practice and GP, new to the store, are created by one message while the others wait.
    assert _rolled_back() == rolled_back
    assert run(snapshot(ctx.db)) == alone
    assert run(_outbox(ctx.db, empty=True)) == alone_outbox
    assert len(run(messages(ctx.db))) == alone_messages
    provenances = run(_provenance_targets(ctx.db))
    assert len(provenances) == alone_messages  # one per message, naming what it wrote at its version


@pytest.fixture
def gp_endpoint(ctx: IngestContext, run: Any) -> Iterator[None]:
    """The shared GP practice (PD1, B86001) receives its transfers at an endpoint of its own, so that each
    discharge's Task is also a notification in the outbox."""
    from engine.transfers.store import EndpointConfig, delete_endpoint, put_endpoint
    from engine.transfers.subscriptions import Channel

    async def put() -> None:
        async with ctx.db.write() as conn:
            await put_endpoint(conn, EndpointConfig("B86001", Channel("https://gp.example/fhir")), Clock()())

    async def remove() -> None:
        async with ctx.db.write() as conn:
            await delete_endpoint(conn, "B86001")
        await _outbox(ctx.db, empty=True)

    run(put())
    yield
    run(remove())


async def _outbox(db: Database, *, empty: bool) -> list[tuple[Any, ...]]:
    """The notifications waiting in the outbox (Task, version, event, destination), sorted; then deleted."""
    from engine.transfers.schema import transfer_outbox as o

    async with db.write() as conn:
        rows = (await conn.execute(select(o.c.task_id, o.c.task_version, o.c.event, o.c.target_kind, o.c.target_ref,
                                          o.c.method, o.c.url))).all()
        if empty:
            await conn.execute(o.delete())
    return sorted(tuple(row) for row in rows)


@postgresql_only
def test_a_batch_takes_three_statements_for_all_its_messages(ctx, run) -> None:
    group = batched(ctx)
    a01s = [[adt("A01", f"S{n}", nhs=nhs, mrn=f"RR8{n:07d}", visit=f"V{n:07d}")]
            for n, nhs in enumerate((NHS_A, NHS_B, NHS_C, NHS_D, NHS_E), start=1)]
    run(senders_at_once(group, a01s[:1]))  # the shared Organization and Location exist from now on
    statements, stop = count_statements(ctx.db)
    try:
        outcomes = run(senders_at_once(group, a01s[1:]))
    finally:
        stop()
    assert [o[0].code for o in outcomes] == ["AA"] * 4
    locks = [s for s in statements if "pg_advisory_xact_lock" in s]
    writes = [s for s in statements if "INSERT INTO resource_versions" in s]
    assert len(locks) == len(writes) < 4, statements  # fewer transactions than messages


@postgresql_only
def test_a_resent_message_in_a_batch_gets_its_stored_ack_and_the_others_are_applied(ctx, run) -> None:
    first = run(ingest(ctx, adt("A01", "R1")))
    group = batched(ctx)
    resent, other = run(senders_at_once(group, [[adt("A01", "R1")], [adt("A01", "R2", nhs=NHS_B, mrn="RR80000002",
                                                                         visit="V0000002")]]))
    assert resent[0].duplicate and resent[0].ack == first.ack and resent[0].message_id == first.message_id
    assert other[0].code == "AA" and not other[0].duplicate
    assert len(run(messages(ctx.db))) == 2


@postgresql_only
def test_a_message_whose_plan_fails_is_stored_as_failed_and_the_batch_goes_on(ctx, run) -> None:
    assert run(ingest(ctx, adt("A01", "P1"))).code == "AA"  # NHS_A with MRN RR81234567
    group = batched(ctx)
    conflict, fine = run(senders_at_once(group, [
        [adt("A08", "P2", nhs=NHS_B)],  # the same MRN with another NHS number: AE 205
        [adt("A01", "P3", nhs=NHS_C, mrn="RR80000003", visit="V0000003")]]))
    assert (conflict[0].code, conflict[0].error_code) == ("AE", "205")
    assert fine[0].code == "AA"
    statuses = {row.control_id: row.status for row in run(messages(ctx.db))}
    assert statuses == {"P1": "processed", "P2": "error", "P3": "processed"}


@postgresql_only
def test_a_batch_that_fails_to_write_applies_each_message_alone(ctx, run, monkeypatch) -> None:
    real, calls = store.write_messages, []

    async def fail_once(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise store.ConcurrentChange("another writer got there first")
        await real(*args, **kwargs)

    monkeypatch.setattr(store, "write_messages", fail_once)
    group, rolled_back = batched(ctx), _rolled_back()
    outcomes = run(senders_at_once(group, [[adt("A01", f"F{n}", nhs=nhs, mrn=f"RR8{n:07d}", visit=f"V{n:07d}")]
                                           for n, nhs in enumerate((NHS_A, NHS_B, NHS_C), start=1)]))
    assert [o[0].code for o in outcomes] == ["AA"] * 3 and _rolled_back() > rolled_back
    assert {row.status for row in run(messages(ctx.db))} == {"processed"}
    assert len(run(messages(ctx.db))) == 3


@postgresql_only
def test_messages_about_one_person_never_share_a_batch(ctx, run) -> None:
    group, rolled_back = batched(ctx), _rolled_back()
    # Two senders, one patient (the same NHS number), at once: both apply, one after the other.
    outcomes = run(senders_at_once(group, [[adt("A01", "O1", family="FIRST")],
                                           [adt("A08", "O2", sender="RY6", family="SECOND", mrn="RY60000001",
                                                visit=None, event="20240301111200")]]))
    assert [o[0].code for o in outcomes] == ["AA", "AA"] and _rolled_back() == rolled_back

    async def patients() -> list[Any]:
        async with ctx.db.read() as conn:
            return (await conn.execute(text("SELECT version_id, CAST(content AS TEXT) FROM resources"
                                            " WHERE res_type = 'Patient'"))).all()
    [(version, content)] = run(patients())
    assert version == 2 and "SECOND" in content and "RY60000001" in content and "RR81234567" in content


@postgresql_only
def test_a_message_sent_as_the_last_batch_ends_gets_a_runner(ctx, run) -> None:
    # One runner, one sender: each answer wakes the sender, which submits its next message before the
    # finished runner's task is done. That message must start a runner rather than wait for ever.
    group = batched(ctx, concurrency=1)
    stream = [adt("A01", "L1"), adt("A08", "L2", event="20240301111200"), adt("A08", "L3", event="20240301121200")]

    async def in_time() -> list[list[IngestOutcome]]:
        return await asyncio.wait_for(senders_at_once(group, [stream]), timeout=30)

    [outcomes] = run(in_time())
    assert [o.code for o in outcomes] == ["AA", "AA", "AA"]


@postgresql_only
@pytest.mark.parametrize(("gather", "batches"), [(30.0, 3), (0.0, 4)])
def test_streaming_senders_answered_together_share_the_next_batch(ctx, run, gather, batches) -> None:
    # Two senders, each sending its next message as soon as it is answered — but the second takes a
    # moment before its third. The batch after the one that answered them both waits for it (up to
    # `gather` seconds) rather than being written for the first sender's message alone.
    assert run(ingest(ctx, adt("A01", "G0", nhs=NHS_C, mrn="RR80000003", visit="V0000003"))).code == "AA"
    group = batched(ctx, gather=gather)  # the shared Organization, Location and doctor exist from now on

    async def sender(nhs: str, n: int, pause_before_third: float) -> list[IngestOutcome]:
        mrn, visit = f"RR8{n:07d}", f"V{n:07d}"
        outcomes = [await ingest(group, adt("A01", f"G{n}-1", nhs=nhs, mrn=mrn, visit=visit)),
                    await ingest(group, adt("A08", f"G{n}-2", nhs=nhs, mrn=mrn, visit=visit, event="20240301111200"))]
        await asyncio.sleep(pause_before_third)
        return [*outcomes, await ingest(group, adt("A08", f"G{n}-3", nhs=nhs, mrn=mrn, visit=visit,
                                                   event="20240301121200"))]

    async def both() -> list[list[IngestOutcome]]:
        return list(await asyncio.wait_for(asyncio.gather(sender(NHS_A, 1, 0), sender(NHS_B, 2, 0.1)), timeout=20))

    before, gathered = _batches(), _gathers()
    outcomes = run(both())
    assert [o.code for stream in outcomes for o in stream] == ["AA"] * 6
    # Together: the first messages, the second ones, then (gathering) the third ones; or apart at the end.
    assert (_batches()[0] - before[0], _batches()[1] - before[1]) == (batches, 6)
    assert _gathers() - gathered == (1 if gather else 0)  # the one wait, complete when the second sender sent


@postgresql_only
def test_a_slow_sender_never_holds_up_a_busy_one(ctx, run) -> None:
    # The slow sender sends a message as the busy one starts, and its next only much later: it is not
    # streaming, so however long gathering may last the busy sender never waits for it.
    assert run(ingest(ctx, adt("A01", "S0", nhs=NHS_C, mrn="RR80000003", visit="V0000003"))).code == "AA"
    group = batched(ctx, gather=60.0)
    busy = [adt("A01", "S1"), *(adt("A08", f"S{n}", event=f"202403011{n}1200") for n in range(2, 6))]
    slow = [adt("A01", "S6", nhs=NHS_B, mrn="RR80000006", visit="V0000006"),
            adt("A08", "S7", nhs=NHS_B, mrn="RR80000006", visit="V0000006", event="20240301111200")]

    async def slowly() -> list[IngestOutcome]:
        first = await ingest(group, slow[0])
        await asyncio.sleep(5)
        return [first, await ingest(group, slow[1])]

    async def both() -> tuple[list[IngestOutcome], list[IngestOutcome]]:
        waiting = asyncio.ensure_future(slowly())
        busy_outcomes = await asyncio.wait_for(senders_at_once(group, [busy]), timeout=3)
        return busy_outcomes[0], await waiting

    busy_outcomes, slow_outcomes = run(both())
    assert [o.code for o in busy_outcomes + slow_outcomes] == ["AA"] * 7


@postgresql_only
def test_a_lone_sender_never_waits_to_gather(ctx, run) -> None:
    # However long the gathering may last, a sender alone (the other has finished) is the whole batch.
    assert run(ingest(ctx, adt("A01", "W0", nhs=NHS_C, mrn="RR80000003", visit="V0000003"))).code == "AA"
    group = batched(ctx, gather=60.0)  # the shared Organization, Location and doctor exist from now on
    stream = [adt("A01", "W1"), adt("A08", "W2", event="20240301111200"), adt("A08", "W3", event="20240301121200")]
    other = [adt("A01", "W4", nhs=NHS_B, mrn="RR80000004", visit="V0000004"),
             adt("A08", "W5", nhs=NHS_B, mrn="RR80000004", visit="V0000004", event="20240301111200")]

    async def in_time() -> list[list[IngestOutcome]]:
        return await asyncio.wait_for(senders_at_once(group, [stream, other]), timeout=20)

    outcomes = run(in_time())
    assert [o.code for stream in outcomes for o in stream] == ["AA"] * 5


@postgresql_only
def test_group_commit_is_configured_by_the_environment(ctx) -> None:
    assert GroupCommit.from_environment(ctx.db, Clock(), {"SHAREDCARE_INGEST_GROUP_COMMIT": "0"}) is None
    made = GroupCommit.from_environment(ctx.db, Clock(), {"SHAREDCARE_INGEST_MAX_BATCH": "8",
                                                          "SHAREDCARE_INGEST_BATCHES_IN_FLIGHT": "3",
                                                          "SHAREDCARE_INGEST_GATHER_MS": "1.5"})
    assert made is not None and (made.max_batch, made.concurrency, made.gather) == (8, 3, 0.0015)
    defaults = GroupCommit.from_environment(ctx.db, Clock(), {})
    assert defaults is not None and (defaults.concurrency, defaults.gather) == (1, 0.003)


# -- helpers --------------------------------------------------------------------------------------------


def _batches() -> tuple[float, float]:
    """(batches, messages) the group commit histogram has seen so far in this process."""
    samples = {s.name: s.value for metric in BATCH_SIZE.collect() for s in metric.samples}
    return samples["sharedcare_ingest_batch_messages_count"], samples["sharedcare_ingest_batch_messages_sum"]


def _gathers(outcome: str = "complete") -> float:
    return sum(s.value for metric in GATHERS.collect() for s in metric.samples
               if s.name.endswith("_total") and s.labels.get("outcome") == outcome)


def _rolled_back() -> float:
    return sum(s.value for metric in ROLLED_BACK.collect() for s in metric.samples if s.name.endswith("_total"))


async def _empty(db: Database) -> None:
    from .conftest import _empty as empty

    await empty(db)


async def _provenance_targets(db: Database) -> list[Any]:
    async with db.read() as conn:
        return (await conn.execute(text("SELECT res_id FROM resources WHERE res_type = 'Provenance'"))).all()


def test_one_message_per_person_and_per_control_id_in_a_batch() -> None:
    from types import SimpleNamespace

    from engine.ingest.group_commit import _one_per_person

    def entry(keys: set[int], control_id: str, sender: str = "RR8") -> Any:
        return SimpleNamespace(lock_keys=frozenset(keys), dedupe_key=(sender, control_id))

    a, b, c, d, e = entry({1, 2}, "1"), entry({3}, "2"), entry({2}, "3"), entry({4}, "2"), entry({4}, "2", "RY6")
    taken, waiting = _one_per_person([a, b, c, d, e])
    assert taken == [a, b, e] and waiting == [c, d]


@postgresql_only
def test_a_batch_of_messages_that_change_nothing_stores_the_messages(ctx, run) -> None:
    """Re-sent content under new control ids: no resource changes, so the batch's write holds the messages
    (and the event times they move forward) only."""

    firsts = [adt("A08", f"RR8-NC{n}", event="20240301100000", nhs=nhs, mrn=f"RR800000{n}", visit=f"V000{n}")
              for n, nhs in enumerate((NHS_A, NHS_B, NHS_C))]
    for message in firsts:
        assert run(ingest(ctx, message)).code == "AA"
    versions = run(_version_total(ctx.db))
    again = [[message.replace(f"RR8-NC{n}", f"RR8-NC{n}-again").replace("20240301100000", "20240302100000")]
             for n, message in enumerate(firsts)]
    outcomes = run(senders_at_once(batched(ctx), again))
    assert [o.code for stream in outcomes for o in stream] == ["AA"] * 3
    assert run(_version_total(ctx.db)) == versions
    assert len(run(messages(ctx.db))) == 6


async def _version_total(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(text("SELECT count(*) FROM resource_versions"))).scalar_one()
