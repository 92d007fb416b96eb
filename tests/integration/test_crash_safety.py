"""Nothing acknowledged is lost and nothing is applied twice when the server is killed mid-stream.

`sharedcare serve` runs as a subprocess on the test database (SQLite or PostgreSQL, by
SHAREDCARE_TEST_BACKEND). Four senders — four hospitals (MSH-4), each with its own patients —
stream ADT and ORU messages over MLLP with up to three frames unacknowledged. Once about 40 % have
been acknowledged the server gets SIGKILL: no shutdown, no flush, transactions cut wherever they are.
It is restarted and every message that did not get an AA is sent again, in the original order,
together with the last few that did (a sender that missed an ACK re-sends, DESIGN.md principle 1).

Then: every message acknowledged AA before the crash is stored `processed`; each message is stored
once; every re-send is answered AA (de-duplication returns the stored ACK); and each patient, each
visit and each report exists exactly once — resources looked up by their identifiers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

import engine.db.ingest_schema  # noqa: F401 - so that clean_store empties the ingest tables too
from adapters.hl7v2.framing import FrameDecoder, frame
from engine.nhs_number import NHS_NUMBER_SYSTEM, with_check_digit

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
FACILITIES = ("RR8", "RAE", "RCF", "RWY")
PATIENTS_PER_SENDER = 12
WINDOW = 3  # frames a sender may have unacknowledged
KILL_AFTER = 0.4  # fraction of all messages acknowledged before SIGKILL


# -- the messages -------------------------------------------------------------------------------------


def nhs_number(n: int) -> str:
    for stem in (2 * n, 2 * n + 1):
        number = with_check_digit(f"999{500000 + stem:06d}")
        if number:
            return number
    raise AssertionError(n)


@dataclass(frozen=True)
class Sent:
    facility: str
    control_id: str
    raw: bytes


def sender_stream(s: int) -> list[Sent]:
    """One hospital's messages: for each patient A01, ORU^R01, A08, A03 — patients interleaved."""
    facility = FACILITIES[s]
    messages = []
    for step, event in enumerate(("A01", "ORU", "A08", "A03")):
        for p in range(PATIENTS_PER_SENDER):
            n = s * 100 + p
            control_id = f"{facility}-{n}-{step}"
            msh = (f"MSH|^~\\&|PAS|{facility}|SHAREDCARE|X26|2025030{1 + step}120000||"
                   + ("ORU^R01^ORU_R01" if event == "ORU" else f"ADT^{event}^{'ADT_A03' if event == 'A03' else 'ADT_A01'}")
                   + f"|{control_id}|P|2.4|||||GBR|UNICODE UTF-8")
            pid = (f"PID|1||{nhs_number(n)}^^^NHS^NH~{facility}{n:06d}^^^{facility}^MR||CRASH{n}^ROBIN^^^MX||"
                   f"19{50 + p}0101|9|||{p} PARK ROW^^LEEDS^^LS1 5HD^GBR^H")
            pv1 = (f"PV1|1|I|{facility}^WARD1^BED{p}^{facility}01|21||||C1234567^JONES^SAM^^^DR|||300|||||||||"
                   f"{facility}V{n:06d}|||||||||||||||||{'19' if event == 'A03' else ''}|||||||20250301110000|"
                   f"{'20250304120000' if event == 'A03' else ''}")
            if event == "ORU":
                body = [pid, pv1,
                        f"ORC|RE|ICE{n}^ICE|WP{n}^WINPATH||CM||||202503021000",
                        (f"OBR|1|ICE{n}^ICE|WP{n}^WINPATH|FBC^Full blood count^WINPATH|||202503021000||||||||||||"
                        f"||202503021200||HM|F"),
                        "OBX|1|NM|HB^Haemoglobin^WINPATH^718-7^Hemoglobin^LN||128|g/L^g/L^UCUM|115-165|N|||F",
                        "OBX|2|NM|PLT^Platelets^WINPATH^777-3^Platelets^LN||245|10*9/L^10*9/L^UCUM|150-400|N|||F"]
            else:
                body = [f"EVN|{event}|2025030{1 + step}120000", pid, pv1]
            messages.append(Sent(facility, control_id, ("\r".join([msh, *body]) + "\r").encode()))
    return messages


# -- the server as a subprocess -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeProcess:
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def mllp_port(self) -> int:
        return int(self.env["SHAREDCARE_MLLP_PORT"])

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([str(BIN / "sharedcare"), "serve", "--workers", "1"], env=self.env,
                                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sharedcare serve exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sharedcare serve did not listen for MLLP:\n{self.tail()}")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def serve(database_url: str, clean_store: str, tmp_path: Path) -> Iterator[ServeProcess]:
    senders = tmp_path / "senders.json"
    senders.write_bytes(orjson.dumps([{"ods_code": f, "kind": "hospital", "name": f"trust {f}"} for f in FACILITIES]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    env.update(SHAREDCARE_DATABASE_URL=database_url, SHAREDCARE_HOME=str(tmp_path / "home"),
               SHAREDCARE_HTTP_PORT=str(free_port()), SHAREDCARE_MLLP_PORT=str(free_port()),
               SHAREDCARE_SENDERS_FILE=str(senders))
    server = ServeProcess(env, tmp_path / "serve.log")
    yield server
    server.stop()


# -- senders ----------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Which message got which ACK code, across both runs."""

    total: int
    acks: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def record(self, sent: Sent, code: str) -> None:
        self.acks.setdefault((sent.facility, sent.control_id), []).append(code)

    def acknowledged_aa(self) -> set[tuple[str, str]]:
        return {key for key, codes in self.acks.items() if "AA" in codes}


async def send_stream(port: int, stream: list[Sent], ledger: Ledger, *, window: int = WINDOW) -> None:
    """Send `stream` with up to `window` frames unacknowledged; stop quietly when the connection dies."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    decoder, pending = FrameDecoder(), []
    queue = list(stream)
    try:
        while queue or pending:
            while queue and len(pending) < window:
                sent = queue.pop(0)
                writer.write(frame(sent.raw))
                pending.append(sent)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 20)
            if not data:
                return
            for payload in decoder.feed(data):
                sent = pending.pop(0)
                code, control_id = _msa(payload)
                assert control_id == sent.control_id, (control_id, sent.control_id)
                ledger.record(sent, code)
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()


def _msa(ack: bytes) -> tuple[str, str]:
    for segment in ack.decode().split("\r"):
        if segment.startswith("MSA|"):
            parts = segment.split("|")
            return parts[1], parts[2]
    raise AssertionError(ack)


async def send_all(port: int, streams: list[list[Sent]], ledger: Ledger) -> None:
    await asyncio.wait_for(asyncio.gather(*(send_stream(port, s, ledger) for s in streams)), 60)


async def stream_until_killed(server: ServeProcess, streams: list[list[Sent]], ledger: Ledger) -> None:
    async def killer() -> None:
        while len(ledger.acknowledged_aa()) < KILL_AFTER * ledger.total:
            await asyncio.sleep(0.002)
        server.kill()

    kill = asyncio.create_task(killer())
    await asyncio.wait_for(asyncio.gather(*(send_stream(server.mllp_port, s, ledger) for s in streams)), 60)
    await asyncio.wait_for(kill, 5)


# -- the test ---------------------------------------------------------------------------------------------


def test_kill_9_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing(serve: ServeProcess,
                                                                             database_url: str) -> None:
    streams = [sender_stream(s) for s in range(len(FACILITIES))]
    ledger = Ledger(total=sum(len(s) for s in streams))

    serve.start()
    asyncio.run(stream_until_killed(serve, streams, ledger))
    before_crash = ledger.acknowledged_aa()
    assert 0 < len(before_crash) < ledger.total, "the kill did not land mid-stream"
    assert all(codes == ["AA"] for codes in ledger.acks.values()), ledger.acks

    serve.start()
    resend = []
    for stream in streams:
        acked = [m for m in stream if (m.facility, m.control_id) in before_crash]
        resend.append(acked[-3:] + [m for m in stream if (m.facility, m.control_id) not in before_crash])
    asyncio.run(send_all(serve.mllp_port, resend, ledger))
    serve.stop()
    assert serve.process is not None and serve.process.returncode == 0, serve.tail()  # SIGTERM: a clean stop

    every = {(m.facility, m.control_id) for s in streams for m in s}
    assert ledger.acknowledged_aa() == every, f"not acknowledged: {sorted(every - ledger.acknowledged_aa())}"
    assert all(codes[-1] == "AA" for codes in ledger.acks.values())
    resent_after_aa = {(m.facility, m.control_id) for s in resend for m in s} & before_crash
    assert resent_after_aa and all(ledger.acks[key] == ["AA", "AA"] for key in resent_after_aa)

    stored = _stored_messages(database_url)
    assert before_crash <= {key for key, status in stored.items() if status == "processed"}
    assert set(stored) == every and set(stored.values()) == {"processed"}

    patients = len(FACILITIES) * PATIENTS_PER_SENDER
    nhs = _identifier_counts(database_url, "Patient", NHS_NUMBER_SYSTEM)
    assert len(nhs) == patients and set(nhs.values()) == {1}, "a patient stored twice (or missing)"
    fillers = {code: n for (system, code), n in _tokens(database_url, "DiagnosticReport").items()
               if code.startswith("WP")}
    assert len(fillers) == patients and set(fillers.values()) == {1}, "a report stored twice (or missing)"
    assert _count(database_url, "Patient") == patients
    assert _count(database_url, "Encounter") == patients  # one visit each (PV1-19 → a deterministic id)
    assert _count(database_url, "DiagnosticReport") == patients
    assert _count(database_url, "Observation") == 2 * patients


# -- reading the store ------------------------------------------------------------------------------------


def _query(database_url: str, sql: str) -> list[tuple]:
    from sqlalchemy import create_engine, text

    from engine.config import sync_database_url

    engine = create_engine(sync_database_url(database_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _stored_messages(database_url: str) -> dict[tuple[str, str], str]:
    rows = _query(database_url, "SELECT sender, control_id, status FROM hl7_messages")
    stored: dict[tuple[str, str], str] = {}
    for sender, control_id, status in rows:
        assert (sender, control_id) not in stored, f"message stored twice: {sender} {control_id}"
        stored[(sender, control_id)] = status
    return stored


def _tokens(database_url: str, res_type: str) -> dict[tuple[str, str], int]:
    """Identifier (system, value) → how many live resources of `res_type` carry it."""
    rows = _query(database_url, f"""
        SELECT t.system, t.code, count(DISTINCT t.res_pk) FROM idx_token t JOIN resources r ON r.pk = t.res_pk
        WHERE t.res_type = '{res_type}' AND t.param = 'identifier' AND NOT r.deleted GROUP BY t.system, t.code""")
    return {(system, code): int(n) for system, code, n in rows}


def _identifier_counts(database_url: str, res_type: str, system: str) -> dict[str, int]:
    return {code: n for (s, code), n in _tokens(database_url, res_type).items() if s == system}


def _count(database_url: str, res_type: str) -> int:
    return int(_query(database_url, f"SELECT count(*) FROM resources WHERE res_type = '{res_type}' "
                                    "AND NOT deleted")[0][0])
