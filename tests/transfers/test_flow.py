"""Discharge → Tasks → outbox → a real HTTP receiver, on the session's database (SQLite or PostgreSQL).

The ingest pipeline runs for real (IngestContext on the test database); the receiver is a real HTTP
server on a free port; the delivery worker sends with httpx. Backoff is configured in tenths of a
second so that retries and dead letters take moments.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from engine.db import repository
from engine.db.database import Database
from engine.db.repository import utc_now
from engine.transfers import discharge, store
from engine.transfers.backoff import RetryPolicy
from engine.transfers.config import TransfersConfig
from engine.transfers.delivery import DeliveryWorker
from engine.transfers.receivers import org_for_ods
from engine.transfers.schema import DEAD, DELIVERED, PENDING, transfer_outbox
from mappings.ids import resource_id
from tests.ingest.helpers import all_of, ingest, stored
from tests.transfers.helpers import CARE_HOME_ODS, GP_ODS, adt, organization, residency

FAST = TransfersConfig(poll_seconds=0.05, lease_seconds=5, timeout_seconds=2,
                       retry=RetryPolicy(first_delay=0.1, factor=2, max_delay=0.4, retry_for=30, jitter=0))
ENCOUNTER = resource_id("Encounter", "RR8", "V0001234")
GP_ID = resource_id("Organization", GP_ODS)
HOME_ID = resource_id("Organization", CARE_HOME_ODS)


@pytest.fixture
def documents() -> None:
    """The discharge document comes from engine.documents (issue_discharge_document), which must be installed."""
    assert discharge.document_issuer() is not None, "engine.documents.service.issue_discharge_document is missing"


async def admit_to_care_home(ctx: Any, *, destination: str = "54", with_residency: bool = True) -> str:
    """A01, the care home's residency on record, then the A03; the patient's id."""
    assert (await ingest(ctx, adt("A01", "ADM1"))).code == "AA"
    patient = (await all_of(ctx.db, "Patient"))[0]
    if with_residency:
        async with ctx.db.write() as conn:
            now = utc_now()
            await repository.create(conn, organization(CARE_HOME_ODS, "Oak Lodge Care Home"), now=now, res_id=HOME_ID)
            await repository.create(conn, residency(patient["id"], HOME_ID), now=now)
    outcome = await ingest(ctx, adt("A03", "DIS1", destination=destination))
    assert outcome.code == "AA", outcome
    return patient["id"]


async def tasks(db: Database) -> dict[str, dict[str, Any]]:
    return {(t.get("owner") or {}).get("identifier", {}).get("value", "none"): t for t in await all_of(db, "Task")}


async def outbox(db: Database) -> list[Any]:
    async with db.read() as conn:
        return list((await conn.execute(select(transfer_outbox).order_by(transfer_outbox.c.id))).all())


async def set_endpoint(db: Database, ods: str, url: str, payload: str | None = "application/fhir+json") -> None:
    from engine.transfers.subscriptions import Channel

    async with db.write() as conn:
        await store.put_endpoint(conn, store.EndpointConfig(ods, Channel(url, (("X-Api-Key", "k1"),), payload)),
                                 utc_now())


async def deliver_until(worker: DeliveryWorker, done: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await worker.run_once()
        if await done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not delivered in time")


# -- raising transfers -------------------------------------------------------------------------------------


def test_a03_to_a_care_home_raises_a_document_and_two_tasks_in_the_same_transaction(ctx, run, documents) -> None:
    patient_id = run(admit_to_care_home(ctx))
    found = run(tasks(ctx.db))
    assert sorted(found) == sorted([GP_ODS, CARE_HOME_ODS])
    for task in found.values():
        assert task["status"] == "requested" and task["for"] == {"reference": f"Patient/{patient_id}"}
        assert task["encounter"] == {"reference": f"Encounter/{ENCOUNTER}"}
        assert task["requester"]["identifier"]["value"] == "RR8"
        assert task["focus"]["reference"].startswith("DocumentReference/")
    assert found[GP_ODS]["owner"]["reference"] == f"Organization/{GP_ID}"
    assert found[CARE_HOME_ODS]["owner"]["reference"] == f"Organization/{HOME_ID}"
    reference = found[GP_ODS]["focus"]["reference"].split("/")[1]
    document = run(stored(ctx.db, "DocumentReference", reference))
    assert document is not None and document["status"] == "current"
    assert {i["valueReference"]["reference"].split("/")[0] for i in found[GP_ODS]["input"]} == {"Composition", "Bundle"}
    composition = run(stored(ctx.db, "Composition", found[GP_ODS]["input"][0]["valueReference"]["reference"].split("/")[1]))
    assert composition["type"]["coding"][0]["code"] == "373942005"  # Discharge summary (UK-REFERENCE §2)


def test_a03_home_raises_the_gp_transfer_only_and_a01_none(ctx, run, documents) -> None:
    assert run(ingest(ctx, adt("A01", "ADM1"))).code == "AA"
    assert run(tasks(ctx.db)) == {}
    assert run(ingest(ctx, adt("A03", "DIS1", destination="19"))).code == "AA"
    assert sorted(run(tasks(ctx.db))) == [GP_ODS]


def test_resends_and_replays_create_no_duplicates_and_keep_the_status(ctx, run, documents) -> None:
    run(admit_to_care_home(ctx))
    before = run(tasks(ctx.db))
    run(_accept(ctx.db, before[GP_ODS]["id"]))
    assert run(ingest(ctx, adt("A03", "DIS1", destination="54"))).duplicate  # the same message again
    assert run(ingest(ctx, adt("A03", "DIS2", destination="54"))).code == "AA"  # re-sent under a new id
    after = run(tasks(ctx.db))
    assert sorted(after) == sorted(before) and len(run(all_of(ctx.db, "Task"))) == 2
    assert after[GP_ODS]["status"] == "accepted"
    assert len(run(outbox(ctx.db))) == 0  # no endpoint or subscription configured: nothing to send


async def _accept(db: Database, task_id: str) -> None:
    from engine.access import AccessGate
    from engine.auth import system_principal
    from engine.transfers.actions import act

    principal = replace(system_principal("gp-user", "GP"), org=GP_ODS)
    await act(AccessGate(db), principal, task_id, "accept", None, utc_now())


def test_a_failure_in_raising_transfers_rolls_the_message_back(ctx, run, monkeypatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("document generation failed")

    monkeypatch.setattr(discharge, "document_issuer", lambda: broken)
    run(ingest(ctx, adt("A01", "ADM1")))
    outcome = run(ingest(ctx, adt("A03", "DIS1", destination="54")))
    assert outcome.code == "AE" and run(tasks(ctx.db)) == {}
    assert run(stored(ctx.db, "Encounter", ENCOUNTER))["status"] == "in-progress"  # the A03 is not applied


# -- delivery ------------------------------------------------------------------------------------------------


def test_the_receiver_gets_each_new_transfer_once_with_its_idempotency_key(ctx, run, documents, receiver) -> None:
    run(set_endpoint(ctx.db, GP_ODS, receiver.url))
    run(set_endpoint(ctx.db, CARE_HOME_ODS, receiver.url, payload=None))
    run(admit_to_care_home(ctx))
    rows = run(outbox(ctx.db))
    assert [(r.target_ref, r.method, r.status) for r in rows] == [(GP_ODS, "PUT", PENDING),
                                                                  (CARE_HOME_ODS, "POST", PENDING)]
    worker = DeliveryWorker(ctx.db, FAST)
    assert run(worker.run_once()) == 2
    assert run(worker.run_once()) == 0
    run(worker.stop())
    by_method = {r.method: r for r in receiver.requests}
    task_ids = {o: t["id"] for o, t in run(tasks(ctx.db)).items()}
    put = by_method["PUT"]
    assert put.path == f"/hook/Task/{task_ids[GP_ODS]}" and orjson.loads(put.body)["id"] == task_ids[GP_ODS]
    assert put.headers["content-type"] == "application/fhir+json" and put.headers["x-api-key"] == "k1"
    assert put.headers["x-sharedcare-event"] == "task-requested" and put.headers["x-sharedcare-attempt"] == "1"
    post = by_method["POST"]
    assert post.path == "/hook" and post.body == b""  # R4 rest-hook without payload: an empty notification
    assert sorted(receiver.keys()) == sorted(r.delivery_key for r in rows)
    assert {r.status for r in run(outbox(ctx.db))} == {DELIVERED}


def test_the_receiver_down_for_a_while_gets_it_after_retries(ctx, run, documents, down_receiver) -> None:
    run(set_endpoint(ctx.db, GP_ODS, down_receiver.url))
    run(admit_to_care_home(ctx))
    worker = DeliveryWorker(ctx.db, FAST)

    async def scenario() -> None:
        started = time.monotonic()
        worker.start()
        while time.monotonic() - started < 0.6:  # connection refused, retried with backoff
            await asyncio.sleep(0.05)
        down_receiver.start()
        await deliver_until(worker, lambda: _all(ctx.db, DELIVERED))
        await worker.stop()

    run(scenario())
    assert len(down_receiver.requests) == 1
    row = run(outbox(ctx.db))[0]
    history = run(_history(ctx.db))[0]["attempt_log"]
    assert row.attempts == len(history) >= 3
    assert all(a["status_code"] is None and "Connect" in a["error"] for a in history[:-1])
    assert history[-1]["status_code"] == 200
    assert down_receiver.requests[0].headers["x-sharedcare-attempt"] == str(len(history))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.removesuffix("Z"))


async def _all(db: Database, status: str) -> bool:
    rows = await outbox(db)
    return bool(rows) and all(r.status == status for r in rows)


async def _history(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return await store.list_deliveries(conn)


def test_a_receiver_that_never_answers_2xx_is_dead_lettered_then_retried(ctx, run, documents, receiver) -> None:
    receiver.status = 503
    run(set_endpoint(ctx.db, GP_ODS, receiver.url))
    run(admit_to_care_home(ctx))
    short = replace(FAST, retry=RetryPolicy(first_delay=0.05, factor=2, max_delay=0.1, retry_for=0.4, jitter=0))
    worker = DeliveryWorker(ctx.db, short)
    run(deliver_until(worker, lambda: _all(ctx.db, DEAD)))
    dead = run(_history(ctx.db))[0]
    assert dead["status"] == DEAD and dead["last_status_code"] == 503
    assert len(dead["attempt_log"]) == dead["attempts"] == len(receiver.requests) >= 1
    window_end = _instant(dead["created_at"]) + timedelta(seconds=short.retry.retry_for)
    assert _instant(dead["dead_at"]) >= window_end  # dead-lettered only once the retry window was over
    assert _instant(dead["attempt_log"][-1]["started_at"]) >= window_end - timedelta(seconds=1)
    receiver.status = 204
    async def retry() -> bool:
        async with ctx.db.write() as conn:
            return await store.retry_dead(conn, dead["id"], utc_now())
    assert run(retry()) and not run(retry())  # only a dead letter can be retried
    run(deliver_until(worker, lambda: _all(ctx.db, DELIVERED)))
    run(worker.stop())
    assert len({*receiver.keys()}) == 1  # every attempt carried the same idempotency key


def test_a_worker_killed_after_claiming_loses_nothing_and_a_fresh_one_delivers_once(ctx, run, documents,
                                                                                    receiver) -> None:
    run(set_endpoint(ctx.db, GP_ODS, receiver.url))
    run(set_endpoint(ctx.db, CARE_HOME_ODS, receiver.url))
    run(admit_to_care_home(ctx))

    async def claim_and_die() -> int:  # a worker takes the batch, then its process dies before sending
        async with ctx.db.write() as conn:
            return len(await store.claim(conn, "doomed", utc_now(), 1.5, 10))

    assert run(claim_and_die()) == 2
    fresh = DeliveryWorker(ctx.db, replace(FAST, lease_seconds=1.5))
    assert run(fresh.run_once()) == 0  # the dead worker's lease still holds
    time.sleep(1.6)
    assert run(fresh.run_once()) == 2
    assert run(fresh.run_once()) == 0
    run(fresh.stop())
    assert len(receiver.requests) == 2 and len(set(receiver.keys())) == 2


def test_no_worker_at_event_time_then_two_workers_share_the_outbox_without_repeats(ctx, run, documents,
                                                                                   receiver) -> None:
    run(set_endpoint(ctx.db, GP_ODS, receiver.url))
    run(set_endpoint(ctx.db, CARE_HOME_ODS, receiver.url))
    for n in range(4):  # four discharges, two notifications each, while no worker runs
        visit, nhs = f"V{n:07d}", ["9449305552", "9912003888", "9990000018", "9449304424"][n]
        assert run(ingest(ctx, adt("A01", f"ADM{n}", visit=visit, nhs=nhs))).code == "AA"
        assert run(ingest(ctx, adt("A03", f"DIS{n}", visit=visit, nhs=nhs, destination="19"))).code == "AA"
    assert len(run(outbox(ctx.db))) == 4  # GP transfers only (destination 19)
    one, two = DeliveryWorker(ctx.db, replace(FAST, batch_size=1)), DeliveryWorker(ctx.db, replace(FAST, batch_size=1))

    async def both() -> None:
        while sum(await asyncio.gather(one.run_once(), two.run_once())):
            pass
        await one.stop()
        await two.stop()

    run(both())
    assert len(receiver.requests) == 4 and len(set(receiver.keys())) == 4


def test_accepting_notifies_the_requesters_endpoint(ctx, run, documents, receiver) -> None:
    run(set_endpoint(ctx.db, "RR8", receiver.url))
    run(admit_to_care_home(ctx))
    assert run(outbox(ctx.db)) == []  # the hospital is not told of its own new transfers
    run(_accept(ctx.db, run(tasks(ctx.db))[GP_ODS]["id"]))
    rows = run(outbox(ctx.db))
    assert [(r.event, r.target_ref, r.task_version) for r in rows] == [("task-status", "RR8", 2)]
    worker = DeliveryWorker(ctx.db, FAST)
    run(worker.run_once())
    run(worker.stop())
    assert orjson.loads(receiver.requests[0].body)["status"] == "accepted"


def test_a_matching_subscription_gets_notified(ctx, run, documents, receiver) -> None:
    from engine.db.repository import format_instant
    from engine.transfers.subscriptions import stored_subscription

    body = {"resourceType": "Subscription", "reason": "our transfers", "criteria": f"Task?owner=Organization/{GP_ID}",
            "channel": {"type": "rest-hook", "endpoint": receiver.url, "header": ["Authorization: Bearer s3cret"]}}
    other = {**body, "criteria": f"Task?owner=Organization/{org_for_ods('Y99999').id}"}

    async def subscribe() -> None:
        async with ctx.db.write() as conn:
            for n, content in enumerate((body, other)):
                document = stored_subscription(content, f"sub{n}", "requested", 1, format_instant(utc_now()))
                await store.insert_subscription(conn, document, GP_ODS, utc_now())

    run(subscribe())
    worker = DeliveryWorker(ctx.db, FAST)
    assert run(worker.activate_subscriptions()) == 2
    run(admit_to_care_home(ctx))
    rows = run(outbox(ctx.db))
    assert [(r.target_kind, r.target_ref, r.method) for r in rows] == [("subscription", "sub0", "POST")]
    run(worker.run_once())
    run(worker.stop())
    request = receiver.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["x-sharedcare-subscription"] == "Subscription/sub0" and request.body == b""
