"""Transfer tests' messages, a real HTTP receiver on a free port, and store helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ingest.messages import NHS_A, msh, pid, pv1

GP_ODS = "B86001"
CARE_HOME_ODS = "VM4K2"
COMMUNITY_ODS = "RY6"
HOSPITAL_ODS = "RR8"


def pd1(gp_ods: str = GP_ODS) -> str:
    """PD1-3 registered practice (`name^^ODS`, UK ITK v2.4) and PD1-4 GP (GMP code)."""
    return f"PD1|||BEESTON VILLAGE SURGERY^^{gp_ods}|G8123456^PATEL^ANITA"


def adt(trigger: str, control_id: str, *, nhs: str = NHS_A, visit: str = "V0001234", destination: str = "",
        gp_ods: str | None = GP_ODS, sender: str = HOSPITAL_ODS, patient_class: str = "I",
        event: str = "20240301101200") -> str:
    """An A01 (admit) or A03 (discharge, PV1-37 destination, PV1-45 time) for one patient and visit."""
    discharged = "202403051430" if trigger == "A03" else ""
    lines = [msh(trigger, control_id, sender=sender, structure="ADT_A03" if trigger == "A03" else "ADT_A01"),
             f"EVN|{trigger}|{event}", pid(nhs=nhs, mrn=f"{sender}{nhs[-7:]}", assigner=sender)]
    if gp_ods:
        lines.append(pd1(gp_ods))
    lines.append(pv1(visit=visit, assigner=sender, patient_class=patient_class, discharged=discharged,
                     destination=destination if trigger == "A03" else ""))
    return "\r".join(lines) + "\r"


# -- a receiving system ------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A tiny HTTP server in a thread: records every request and answers `status` (a callable may decide)."""

    port: int
    status: int | Callable[[Received], int] = 200
    hold: threading.Event | None = None  # when set, requests wait for it before answering
    requests: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                item = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                self.rfile.read(length) if length else b"", time.monotonic())
                receiver.requests.append(item)
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                status = receiver.status(item) if callable(receiver.status) else receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def keys(self) -> list[str]:
        return [r.headers.get("idempotency-key", "") for r in self.requests]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def residency(patient_id: str, care_home_id: str, care_home_ods: str = CARE_HOME_ODS,
              start: str = "2023-01-10") -> dict[str, Any]:
    """A care-home residency EpisodeOfCare (what a care home's DSCR submission yields, UK-REFERENCE §6)."""
    from engine.transfers.receivers import CARE_HOME_RESIDENCY, EPISODE_TYPE_SYSTEM

    return {"resourceType": "EpisodeOfCare", "status": "active",
            "type": [{"coding": [{"system": EPISODE_TYPE_SYSTEM, "code": CARE_HOME_RESIDENCY}]}],
            "patient": {"reference": f"Patient/{patient_id}"},
            "managingOrganization": {"reference": f"Organization/{care_home_id}",
                                     "identifier": {"system": "https://fhir.nhs.uk/Id/ods-site-code",
                                                    "value": care_home_ods}},
            "period": {"start": start}}


def organization(ods: str, name: str) -> dict[str, Any]:
    return {"resourceType": "Organization", "identifier": [
        {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}], "name": name}


def naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)
