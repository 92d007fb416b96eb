"""End to end on real sockets (UK-REFERENCE test 6; issue 5 "Proof"):

ADT A01 → A03 with discharge destination 54 over MLLP → the discharge document and two Tasks (the
registered GP practice, the care home) → a real local HTTP receiver gets the notifications → the
receivers accept their Tasks over the FHIR API. Then the same with the receiver down for a while
(retries), and with the delivery worker — a separate process — killed mid-delivery: a fresh worker
delivers, the receiver sees one notification key (a repeat it can recognise), nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from engine.mllp_server import MllpConfig
from engine.transfers.backoff import RetryPolicy
from engine.transfers.config import TransfersConfig
from mappings.ids import resource_id
from tests.integration.test_mllp import ServerThread, _Pipeline, msa
from tests.transfers.helpers import CARE_HOME_ODS, GP_ODS, Receiver, adt, organization, residency, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FHIR = "application/fhir+json"
GP_ID = resource_id("Organization", GP_ODS)
HOME_ID = resource_id("Organization", CARE_HOME_ODS)
ENCOUNTER = resource_id("Encounter", "RR8", "V0001234")
FAST = TransfersConfig(poll_seconds=0.05, lease_seconds=2, timeout_seconds=2,
                       retry=RetryPolicy(first_delay=0.1, factor=2, max_delay=0.4, retry_for=60, jitter=0))
FAST_ENV = {"SHAREDCARE_DELIVERY_POLL_SECONDS": "0.05", "SHAREDCARE_DELIVERY_LEASE_SECONDS": "2",
            "SHAREDCARE_DELIVERY_TIMEOUT_SECONDS": "1.5", "SHAREDCARE_DELIVERY_FIRST_RETRY_SECONDS": "0.1",
            "SHAREDCARE_DELIVERY_MAX_RETRY_DELAY_SECONDS": "0.4", "SHAREDCARE_DELIVERY_JITTER": "0"}


class WorkerThread:
    """A DeliveryWorker on its own event loop and database pool, as a server process would run it."""

    def __init__(self, database_url: str, config: TransfersConfig) -> None:
        self.database_url, self.config = database_url, config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        from engine.db.database import open_database
        from engine.transfers.delivery import DeliveryWorker

        self.thread.start()
        self.db = open_database(self.database_url, pool_size=2)
        self.worker = DeliveryWorker(self.db, self.config)
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.worker.start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.stop(), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.db.dispose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(autouse=True)
def no_server_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run their own workers (fast backoff); a server that starts one at launch must not."""
    monkeypatch.setenv("SHAREDCARE_DELIVERY_ENABLED", "0")


@pytest.fixture
def mllp(settings, live_server) -> Iterator[ServerThread]:
    import engine.transfers.schema  # noqa: F401 - the transfer tables are emptied with the store

    with ServerThread(MllpConfig(port=0), lambda: _Pipeline(settings)) as server:
        yield server


@pytest.fixture
def documents() -> None:
    """The discharge document comes from engine.documents, which must be installed."""
    from engine.transfers import discharge

    assert discharge.document_issuer() is not None, "engine.documents.service.issue_discharge_document is missing"


class Api:
    """The FHIR API of the live server, as one organisation's user."""

    def __init__(self, live_server: Any, make_token: Any, org: str, role: str = "R8000") -> None:
        root = live_server.base_url.removesuffix("/fhir")
        self.client = httpx.Client(base_url=root, timeout=30,
                                   headers={"Authorization": f"Bearer {make_token(org=org, role=role)}"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def send(port: int, message: str) -> str:
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", port) as client:
        ack = client.send_message(message)
    return msa(ack)[0]


def discharge_to_care_home(mllp: ServerThread, hospital: Api) -> dict[str, dict[str, Any]]:
    """A01 over MLLP, the care home's residency over FHIR, A03 (destination 54) over MLLP; Tasks by owner."""
    assert send(mllp.port, adt("A01", "E2E-ADM")) == "AA"
    patients = hospital.get("/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9449305552").json()
    patient_id = patients["entry"][0]["resource"]["id"]
    home = hospital.put(f"/fhir/Organization/{HOME_ID}", json=organization(CARE_HOME_ODS, "Oak Lodge Care Home")
                        | {"id": HOME_ID}, headers={"Content-Type": FHIR})
    assert home.status_code in (200, 201), home.text
    stay = hospital.post("/fhir/EpisodeOfCare", json=residency(patient_id, HOME_ID), headers={"Content-Type": FHIR})
    assert stay.status_code == 201, stay.text
    assert send(mllp.port, adt("A03", "E2E-DIS", destination="54")) == "AA"
    found = hospital.get(f"/fhir/Task?encounter=Encounter/{ENCOUNTER}").json()
    tasks = {e["resource"]["owner"]["identifier"]["value"]: e["resource"] for e in found.get("entry", [])}
    assert sorted(tasks) == sorted([GP_ODS, CARE_HOME_ODS]) and found["total"] == 2
    return tasks


def subscribe_care_home(home: Api, url: str) -> None:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "residents coming home",
            "criteria": f"Task?owner=Organization/{HOME_ID}&status=requested",
            "channel": {"type": "rest-hook", "endpoint": url, "payload": FHIR, "header": ["X-Home-Key: oak"]}}
    assert home.post("/fhir/Subscription", json=body, headers={"Content-Type": FHIR}).status_code == 201


def gp_endpoint(gp: Api, url: str) -> None:
    assert gp.put(f"/transfers/endpoints/{GP_ODS}", json={"address": url}).status_code == 200


@pytest.mark.parametrize("receiver_starts", ["up", "down-for-a-while"])
def test_discharge_to_care_home_is_delivered_and_accepted(mllp, live_server, make_token, database_url, documents,
                                                          receiver_starts: str) -> None:
    from tests.conftest import free_port

    receiver = Receiver(free_port())
    if receiver_starts == "up":
        receiver.start()
    hospital, gp = Api(live_server, make_token, "RR8"), Api(live_server, make_token, GP_ODS)
    home = Api(live_server, make_token, CARE_HOME_ODS)
    gp_endpoint(gp, receiver.url)
    subscribe_care_home(home, receiver.url)
    try:
        with WorkerThread(database_url, FAST):
            tasks = discharge_to_care_home(mllp, hospital)
            focus = tasks[GP_ODS]["focus"]["reference"]
            assert focus.startswith("DocumentReference/")
            document = hospital.get(f"/fhir/{focus}")  # the discharge document is stored
            assert document.status_code == 200 and document.json()["resourceType"] == "DocumentReference"
            if receiver_starts != "up":
                time.sleep(1.0)  # several refused attempts
                receiver.start()
            wait_for(lambda: len(receiver.requests) >= 2, timeout=30)
            time.sleep(0.3)  # anything more would be a duplicate
        assert len(receiver.requests) == 2 and len(set(receiver.keys())) == 2
        by_path = {r.path: r for r in receiver.requests}
        gp_note = by_path["/hook"]  # the GP endpoint: an empty rest-hook POST
        assert gp_note.method == "POST" and gp_note.body == b""
        assert gp_note.headers["x-sharedcare-focus"].startswith(f"Task/{tasks[GP_ODS]['id']}/_history/1")
        home_note = by_path[f"/hook/Task/{tasks[CARE_HOME_ODS]['id']}"]  # the Subscription with payload: a PUT
        assert home_note.method == "PUT" and home_note.headers["x-home-key"] == "oak"
        assert home_note.headers["content-type"] == FHIR
        if receiver_starts != "up":
            deliveries = Api(live_server, make_token, GP_ODS).get(f"/transfers/deliveries?org={GP_ODS}").json()
            log = deliveries["deliveries"][0]["attempt_log"]
            assert len(log) >= 2 and log[0]["status_code"] is None and log[-1]["status_code"] == 200
        # the receivers act on what they were sent
        accepted = gp.post(f"/fhir/Task/{tasks[GP_ODS]['id']}/$accept")
        assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
        assert home.post(f"/fhir/Task/{tasks[CARE_HOME_ODS]['id']}/$receive").json()["status"] == "received"
        assert home.post(f"/fhir/Task/{tasks[CARE_HOME_ODS]['id']}/$accept").json()["status"] == "accepted"
        outstanding = hospital.get("/transfers/outstanding?requester=RR8").json()
        assert outstanding["total"] == 0
    finally:
        receiver.stop()


def test_a_worker_process_killed_mid_delivery_loses_nothing(mllp, live_server, make_token, database_url, documents,
                                                            sc_home) -> None:
    from tests.conftest import free_port

    hold = threading.Event()
    receiver = Receiver(free_port(), hold=hold).start()
    hospital, gp = Api(live_server, make_token, "RR8"), Api(live_server, make_token, GP_ODS)
    gp_endpoint(gp, receiver.url)
    env = {**os.environ, **FAST_ENV, "SHAREDCARE_DATABASE_URL": database_url, "SHAREDCARE_HOME": str(sc_home)}
    worker = subprocess.Popen([sys.executable, "-m", "engine.transfers.delivery"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        tasks = discharge_to_care_home(mllp, hospital)
        wait_for(lambda: receiver.requests, timeout=30)  # the worker is sending; the receiver holds its answer
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        hold.set()  # the answer goes to a process that is gone: nothing recorded the delivery
        first_key = receiver.requests[0].headers["idempotency-key"]
        with WorkerThread(database_url, replace(FAST, lease_seconds=2)):
            wait_for(lambda: len(receiver.requests) >= 2, timeout=30)
            time.sleep(0.5)
        assert len(receiver.requests) == 2 and set(receiver.keys()) == {first_key}  # a repeat it can recognise
        assert receiver.requests[1].headers["x-sharedcare-attempt"] == "1"  # the killed attempt was never recorded
        deliveries = gp.get(f"/transfers/deliveries?org={GP_ODS}").json()["deliveries"]
        assert [(d["status"], d["attempts"]) for d in deliveries] == [("delivered", 1)]
        assert gp.post(f"/fhir/Task/{tasks[GP_ODS]['id']}/$accept").json()["status"] == "accepted"
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        hold.set()
        receiver.stop()
