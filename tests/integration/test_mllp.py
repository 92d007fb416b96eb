"""The MLLP listener on a real socket, driven by python-hl7's clients (MLLPClient, mllp_send, asyncio streams).

Two kinds of test:
- end to end, on the test database through the real ingest pipeline: AA ACKs for UK-shaped
  messages and the golden fixtures, pipelined frames answered in order, concurrent senders, TLS and
  mutual TLS, the store holding what was acknowledged;
- the server's own behaviour, against a stand-in `ingest` with the pipeline's signature whose timing
  the test controls: reading continues while a message is processed, framing errors close only
  their connection, graceful shutdown acknowledges what was received, a failing ingest sends no ACK.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

import engine.db.ingest_schema  # noqa: F401 - so that clean_store empties the ingest tables too
from adapters.hl7v2.ack import build_ack
from adapters.hl7v2.framing import frame
from adapters.hl7v2.parser import decode_bytes, parse_message
from engine.mllp_server import MllpConfig, MllpServer, msh_summary
from engine.nhs_number import with_check_digit

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SENDER = "RR8"  # Leeds Teaching Hospitals: a sender configured in the test senders file


# -- messages ------------------------------------------------------------------------------------------


def nhs_number(n: int) -> str:
    """A valid NHS number from the 999 test range, distinct for each n."""
    for candidate in range(n * 7, n * 7 + 7):
        number = with_check_digit(f"999{candidate:06d}")
        if number:
            return number
    raise AssertionError(n)


def adt(n: int, *, event: str = "A01", control_id: str | None = None, sender: str = SENDER) -> str:
    """A UK-shaped ADT (ITK HL7 v2.4 conventions: NHS number and MRN in PID-3, ODS codes, PV1-19 visit)."""
    structure = {"A03": "ADT_A03", "A08": "ADT_A01"}.get(event, "ADT_A01")
    control_id = control_id or f"MSG{n:06d}{event}"
    return "\r".join([
        (f"MSH|^~\\&|PAS|{sender}|SHAREDCARE|X26|20250301120000||ADT^{event}^{structure}|{control_id}|P|2.4"
        "|||||GBR|UNICODE UTF-8"),
        f"EVN|{event}|20250301120000",
        (f"PID|1||{nhs_number(n)}^^^NHS^NH~M{n:07d}^^^{SENDER}^MR||Testpatient{n}^Alex^^^Mx||19700101|U|||"
        f"1 High Street^^Leeds^^LS1 1AA^GBR||0113 000 0000|||||||||||||||||NSTS01"),
        (f"PV1|1|I|{SENDER}^WARD{n % 9}^BED1^RR801|21||||C1234567^Jones^Sam|||300|||||||||V{n:08d}|||||||||||||||||"
        f"{'19' if event == 'A03' else ''}|||||||20250301110000|{'20250302120000' if event == 'A03' else ''}"),
    ]) + "\r"


def msa(ack: bytes | str) -> tuple[str, str]:
    """(MSA-1 code, MSA-2 control id) of an ACK."""
    text = ack.decode() if isinstance(ack, bytes) else ack
    for segment in text.strip("\x0b\x1c\r\n").split("\r"):
        if segment.startswith("MSA"):
            parts = segment.split("|")
            return parts[1], parts[2] if len(parts) > 2 else ""
    raise AssertionError(f"no MSA in {text!r}")


# -- a server running in a thread of its own -------------------------------------------------------------


class ServerThread:
    """An MllpServer on its own event loop in a thread; `ingest_factory` runs inside that loop."""

    def __init__(self, config: MllpConfig, ingest_factory: Callable[[], Any]) -> None:
        self.config = config
        self.ingest_factory = ingest_factory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: MllpServer | None = None
        self._exit: Any = None

    def __enter__(self) -> Self:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self._exit = self.ingest_factory()
        ingest, ctx = await self._exit.__aenter__()
        self.server = MllpServer(ingest, ctx, self.config)
        await self.server.start()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace))

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._exit is not None:
            self.call(self._exit.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Pipeline:
    """(ingest_message, IngestContext) on the test database, opened inside the server's loop."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def __aenter__(self) -> tuple[Any, Any]:
        from engine.ingest.pipeline import ingest_message
        from engine.serve import ingest_context

        self._context = ingest_context(self.settings)
        return ingest_message, await self._context.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(None, None, None)


@dataclass
class StandIn:
    """An `ingest_message` stand-in: records timings, answers AA (or raises), takes `delay` seconds."""

    delay: float = 0.0
    fail_on: str | None = None  # a control id whose ingest raises
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, ctx: Any, raw: bytes | str, *, transport: str, received_at: dt.datetime) -> Any:
        raw = raw.encode() if isinstance(raw, str) else raw
        started = time.perf_counter()
        message = parse_message(decode_bytes(raw))
        if message.control_id == self.fail_on:
            raise RuntimeError("stand-in failure")
        await asyncio.sleep(self.delay)
        self.seen.append({"control_id": message.control_id, "received_at": received_at, "started": started,
                          "finished": time.perf_counter(), "transport": transport})
        ack = build_ack(message, "AA", now=dt.datetime(2025, 3, 1, 12), control_id=f"ACK{message.control_id}")
        return _Outcome(ack=ack, code="AA", status="processed", message_id=len(self.seen))

    def context(self) -> Any:
        stand_in = self

        class _Ctx:
            async def __aenter__(self) -> tuple[Any, Any]:
                return stand_in, None

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Ctx()


@dataclass
class _Outcome:
    ack: str | None
    code: str
    status: str
    message_id: int


@pytest.fixture
def pipeline_server(settings, clean_store: str) -> Iterator[ServerThread]:
    """The real pipeline on the (emptied) test database, behind a listener on an ephemeral port."""
    with ServerThread(MllpConfig(port=0), lambda: _Pipeline(settings)) as server:
        yield server


def stand_in_server(stand_in: StandIn, **config: Any) -> ServerThread:
    return ServerThread(MllpConfig(port=0, **config), stand_in.context)


# -- end to end on the real pipeline --------------------------------------------------------------------


def test_mllp_client_gets_AA_and_the_store_holds_the_message(pipeline_server, database_url) -> None:
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", pipeline_server.port) as client:
        ack = client.send_message(adt(1, control_id="CTRL-0001"))
    assert msa(ack) == ("AA", "CTRL-0001")
    assert store_counts(database_url)["processed"] == 1
    assert store_counts(database_url)["patients"] == 1


def test_mllp_send_command_sends_a_file(pipeline_server, tmp_path: Path) -> None:
    path = tmp_path / "two.hl7"
    path.write_bytes(frame(adt(2).encode()) + frame(adt(3, event="A08").encode()))
    done = subprocess.run([str(BIN / "mllp_send"), "--port", str(pipeline_server.port), "--file", str(path),
                           "127.0.0.1"], capture_output=True, timeout=30, check=True)
    acks = [msa(chunk) for chunk in done.stdout.split(b"\x1c") if b"MSA" in chunk]
    assert acks == [("AA", "MSG000002A01"), ("AA", "MSG000003A08")]


def golden_messages() -> list[Path]:
    return sorted((REPO / "fixtures" / "hl7v2").glob("*/*.hl7"))


@pytest.mark.skipif(not golden_messages(), reason="no golden HL7 v2 fixtures yet")
def test_golden_fixtures_are_acknowledged_as_their_expected_results_say(pipeline_server) -> None:
    """Each fixture's ACK: success or its expected error (`.expected.json`), in the mode MSH-15/16 ask for."""
    from hl7.client import MLLPClient

    from adapters.hl7v2.ack import ack_code

    with MLLPClient("127.0.0.1", pipeline_server.port) as client:
        for path in golden_messages():
            raw = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            expected_path = path.with_suffix(".expected.json")
            expected = json.loads(expected_path.read_text()) if expected_path.exists() else {}
            error = expected.get("error")
            outcome = "AA" if not error else ("AR" if error.get("reject") else "AE")
            want = ack_code(parse_message(decode_bytes(raw)), outcome)
            ack = client.send_message(raw)
            assert msa(ack) == (want, msh_summary(raw)[2]), (path.name, ack)
            if error:
                assert f"|{error['code']}^" in ack.decode(), (path.name, ack)


def test_pipelined_frames_on_one_connection_are_answered_in_order(pipeline_server) -> None:
    from hl7.mllp import open_hl7_connection

    messages = [adt(100 + i % 5, event=("A01", "A08", "A08", "A03")[i // 5 % 4], control_id=f"PIPE{i:03d}")
                for i in range(20)]  # five patients, each admitted, updated twice, discharged, in that order

    async def exchange() -> list[tuple[str, str]]:
        reader, writer = await open_hl7_connection("127.0.0.1", pipeline_server.port, encoding="utf-8")
        for message in messages:  # all written before the first ACK is read
            writer.writemessage(message)
        await writer.drain()
        acks = [msa(str(await asyncio.wait_for(reader.readmessage(), 30))) for _ in messages]
        writer.close()
        return acks

    acks = asyncio.run(exchange())
    assert acks == [("AA", f"PIPE{i:03d}") for i in range(20)]


def test_concurrent_connections_each_get_their_acks(pipeline_server, database_url) -> None:
    from hl7.client import MLLPClient

    results: dict[int, list[tuple[str, str]]] = {}

    def sender(k: int) -> None:
        with MLLPClient("127.0.0.1", pipeline_server.port) as client:
            results[k] = [msa(client.send_message(adt(1000 + k * 10 + i, control_id=f"C{k}-{i}")))
                          for i in range(5)]

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {k: [code for code, _ in acks] for k, acks in results.items()} == {k: ["AA"] * 5 for k in range(8)}
    assert all(ids == [f"C{k}-{i}" for i in range(5)] for k, acks in results.items()
               for ids in [[c for _, c in acks]])
    assert store_counts(database_url)["patients"] == 40


def test_tls_and_mutual_tls_round_trip(settings, clean_store, tmp_path: Path) -> None:
    from hl7.mllp import open_hl7_connection

    from engine.mllp_server import server_ssl_context

    pki = make_pki(tmp_path)
    server_context = server_ssl_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca_cert"])
    client_context = ssl.create_default_context(cafile=str(pki["ca_cert"]))

    async def send(context: ssl.SSLContext, message: str) -> tuple[str, str]:
        reader, writer = await open_hl7_connection("127.0.0.1", port, ssl=context, server_hostname="localhost",
                                                   encoding="utf-8")
        writer.writemessage(message)
        await writer.drain()
        ack = str(await asyncio.wait_for(reader.readmessage(), 30))
        writer.close()
        return msa(ack)

    config = MllpConfig(port=0, ssl_context=server_context)
    with ServerThread(config, lambda: _Pipeline(settings)) as server:
        port = server.port
        # Without a client certificate the handshake (or the first read) fails: no ACK, no message stored.
        with pytest.raises((OSError, asyncio.IncompleteReadError, TimeoutError)):
            asyncio.run(send(client_context, adt(7, control_id="TLS-NOCERT")))
        client_context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
        assert asyncio.run(send(client_context, adt(7, control_id="TLS-0001"))) == ("AA", "TLS-0001")
        # A plain-TCP client is not answered: its bytes are no TLS handshake.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(frame(adt(8).encode()))
            try:
                answer = plain.recv(4096)
            except OSError:
                answer = b""
            assert b"MSA" not in answer


def test_log_lines_name_the_message_but_never_the_patient(pipeline_server, caplog, monkeypatch) -> None:
    from hl7.client import MLLPClient

    from engine.observability import JsonLogFormatter

    caplog.set_level(logging.INFO, logger="sharedcare")
    monkeypatch.setattr(logging.getLogger("sharedcare"), "propagate", True)
    with MLLPClient("127.0.0.1", pipeline_server.port) as client:
        client.send_message(adt(42, control_id="LOG-0001"))
    eventually(lambda: any(r.getMessage() == "mllp message" for r in caplog.records))
    lines = [JsonLogFormatter().format(r) for r in caplog.records if r.name.startswith("sharedcare")]
    message_lines = [json.loads(line) for line in lines if '"msg":"mllp message"' in line]
    assert message_lines, lines
    assert {k: message_lines[0][k] for k in ("sender", "message_type", "control_id", "ack_code")} == {
        "sender": SENDER, "message_type": "ADT^A01", "control_id": "LOG-0001", "ack_code": "AA"}
    assert isinstance(message_lines[0]["duration_ms"], float)
    for line in lines:
        assert nhs_number(42) not in line and "Testpatient42" not in line and "M0000042" not in line


def test_metrics_count_messages_by_type_and_ack_code(pipeline_server) -> None:
    from hl7.client import MLLPClient

    from engine.observability import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("sharedcare_mllp_messages_total",
                                         {"message_type": "ADT^A08", "ack_code": "AA"}) or 0.0

    before = count()
    with MLLPClient("127.0.0.1", pipeline_server.port) as client:
        assert msa(client.send_message(adt(43, event="A08")))[0] == "AA"
    eventually(lambda: count() == before + 1)  # counted just after the ACK is written
    assert (REGISTRY.get_sample_value("sharedcare_mllp_ack_latency_seconds_count",
                                      {"message_type": "ADT^A08"}) or 0) >= 1


def _serve_process(tmp_path: Path, database_url: str, workers: int, **settings: str
                   ) -> tuple[subprocess.Popen[bytes], Path, dict[str, str]]:
    """`sharedcare serve --workers N` in a process group of its own, with fresh ports and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    env.update(SHAREDCARE_DATABASE_URL=database_url, SHAREDCARE_HOME=str(tmp_path / "home"),
               SHAREDCARE_HTTP_PORT=str(_free_port()), SHAREDCARE_MLLP_PORT=str(_free_port()), **settings)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(BIN / "sharedcare"), "serve", "--workers", str(workers)], env=env,
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log, env


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while not ready():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "not ready in time:\n" + log.read_text()
        time.sleep(0.2)


def _stop_and_check_nothing_is_left(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log.read_text()
    deadline = time.monotonic() + 20
    while _live_group_members(process.pid):
        assert time.monotonic() < deadline, f"left running: {_live_group_members(process.pid)}"
        time.sleep(0.1)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_serve_with_two_workers_runs_mllp_beside_them_and_stops_cleanly(database_url, clean_store,
                                                                        tmp_path: Path) -> None:
    """`sharedcare serve --workers 2`: HTTP workers under uvicorn's supervisor, MLLP in a child process."""
    import httpx
    from hl7.client import MLLPClient

    process, log, env = _serve_process(tmp_path, database_url, 2)
    http_port, mllp_port = env["SHAREDCARE_HTTP_PORT"], int(env["SHAREDCARE_MLLP_PORT"])

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_until(healthy, process, log)
        with MLLPClient("127.0.0.1", mllp_port) as client:
            assert msa(client.send_message(adt(77, control_id="WORKERS-1"))) == ("AA", "WORKERS-1")
        assert _listening_pids(mllp_port) != {process.pid}  # the listener is not the supervisor itself
        _stop_and_check_nothing_is_left(process, log)
    finally:
        _kill_group(process)


def test_several_ingest_processes_share_the_connections_evenly_and_stop_together(database_url, clean_store,
                                                                                  tmp_path: Path) -> None:
    """SHAREDCARE_MLLP_PROCESSES=3: the server alone listens and gives each new connection to the process
    holding the fewest (engine/ingest/worker_processes.py); each message is acknowledged AA after its commit,
    a closed connection frees its place, and SIGTERM stops them all."""
    import contextlib

    from hl7.client import MLLPClient
    from sqlalchemy import create_engine, text

    from engine.config import sync_database_url

    process, log, env = _serve_process(tmp_path, database_url, 1, SHAREDCARE_MLLP_PROCESSES="3",
                                       SHAREDCARE_DELIVERY_ENABLED="0")
    mllp_port = int(env["SHAREDCARE_MLLP_PORT"])

    def log_lines(message: str) -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        return [line for line in lines if line.get("msg") == message]

    def serving_processes(clients: int, first: int) -> list[int]:
        """Open `clients` connections at once, send a message on each; how many each process serves."""
        closed = len(log_lines("mllp connection closed")) + clients
        with contextlib.ExitStack() as stack:
            connections = [stack.enter_context(MLLPClient("127.0.0.1", mllp_port)) for _ in range(clients)]
            for n, client in enumerate(connections, start=first):
                assert msa(client.send_message(adt(200 + n, control_id=f"PROC-{n}"))) == ("AA", f"PROC-{n}")
            opened = log_lines("mllp connection opened")[-clients:]
        _wait_until(lambda: len(log_lines("mllp connection closed")) >= closed, process, log)
        time.sleep(0.5)  # each closing process tells the listener; let it hear before the next connections
        return sorted(collections.Counter(line["process"] for line in opened).values())

    try:
        _wait_until(lambda: process.pid in _listening_pids(mllp_port), process, log)
        assert _listening_pids(mllp_port) == {process.pid}  # the others are given connections, not the port
        assert serving_processes(6, 0) == [2, 2, 2]
        assert serving_processes(3, 6) == [1, 1, 1]  # the six closed: every process was free again
        store = create_engine(sync_database_url(database_url))
        with store.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM hl7_messages WHERE control_id LIKE 'PROC-%'")).scalar()
        store.dispose()
        assert stored == 9
        _stop_and_check_nothing_is_left(process, log)
    finally:
        _kill_group(process)


def test_tls_connections_are_handed_to_ingest_processes_before_their_handshake(database_url, clean_store,
                                                                                tmp_path: Path) -> None:
    """With mutual TLS and 2 processes, two connections at once: one is served by the listener, the other by
    the ingest process it was handed to (the handshake, client certificate included, happens there)."""
    from hl7.mllp import open_hl7_connection

    pki = make_pki(tmp_path)
    process, log, env = _serve_process(tmp_path, database_url, 1, SHAREDCARE_MLLP_PROCESSES="2",
                                       SHAREDCARE_DELIVERY_ENABLED="0",
                                       SHAREDCARE_MLLP_TLS_CERT=str(pki["server_cert"]),
                                       SHAREDCARE_MLLP_TLS_KEY=str(pki["server_key"]),
                                       SHAREDCARE_MLLP_TLS_CLIENT_CA=str(pki["ca_cert"]))
    mllp_port = int(env["SHAREDCARE_MLLP_PORT"])
    client_context = ssl.create_default_context(cafile=str(pki["ca_cert"]))
    client_context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))

    async def both() -> list[tuple[str, str]]:
        connections = [await open_hl7_connection("127.0.0.1", mllp_port, ssl=client_context,
                                                 server_hostname="localhost", encoding="utf-8") for _ in range(2)]
        acks = []
        for n, (reader, writer) in enumerate(connections):
            writer.writemessage(adt(300 + n, control_id=f"TLSP-{n}"))
            await writer.drain()
            acks.append(msa(str(await asyncio.wait_for(reader.readmessage(), 30))))
        for _, writer in connections:
            writer.close()
        return acks

    try:
        _wait_until(lambda: process.pid in _listening_pids(mllp_port), process, log)
        assert asyncio.run(both()) == [("AA", "TLSP-0"), ("AA", "TLSP-1")]
        opened = [json.loads(line) for line in log.read_text().splitlines()
                  if line.startswith("{") and '"mllp connection opened"' in line]
        assert len({line["process"] for line in opened}) == 2
        assert {line["tls_client"] for line in opened} == {"RR8-PAS"}
        _stop_and_check_nothing_is_left(process, log)
    finally:
        _kill_group(process)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are still running (zombies excluded), from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _listening_pids(port: int) -> set[int]:
    """PIDs holding a socket listening on `port` (from /proc/net/tcp and /proc/*/fd)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
            inodes.add(parts[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                for fd in (entry / "fd").iterdir():
                    if fd.readlink().name.startswith("socket:[") and fd.readlink().name[8:-1] in inodes:
                        pids.add(int(entry.name))
            except OSError:
                continue
    return pids


# -- the server's own behaviour, with a stand-in pipeline ------------------------------------------------


def test_reading_continues_while_a_message_is_processed() -> None:
    stand_in = StandIn(delay=0.1)
    with stand_in_server(stand_in) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"".join(frame(adt(i, control_id=f"R{i}").encode()) for i in range(4)))
        acks = read_acks(sock, 4)
    assert [control for _, control in acks] == ["R0", "R1", "R2", "R3"]
    assert [s["control_id"] for s in stand_in.seen] == ["R0", "R1", "R2", "R3"]
    first, last = stand_in.seen[0], stand_in.seen[-1]
    # The last frame had been read (received_at) before the first had finished processing.
    assert last["received_at"] < first["received_at"] + dt.timedelta(seconds=0.09)
    assert all(s["transport"] == "mllp" for s in stand_in.seen)


def test_junk_between_frames_is_skipped() -> None:
    with stand_in_server(StandIn()) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"\r\n  junk \r" + frame(adt(1, control_id="J1").encode()) + b"\r\n"
                     + frame(adt(2, control_id="J2").encode()))
        assert [c for _, c in read_acks(sock, 2)] == ["J1", "J2"]


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x0bMSH|^~\\&|half a frame\x0bMSH|^~\\&|another start", id="start-inside-frame"),
    pytest.param(b"\x0bMSH|^~\\&|A|B\x1cX", id="end-block-without-cr"),
    pytest.param(b"\x0b" + b"A" * 5000, id="oversized"),
])
def test_framing_error_closes_only_that_connection(garbage: bytes) -> None:
    with stand_in_server(StandIn(), max_frame_bytes=4096) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as bad:
            bad.sendall(frame(adt(1, control_id="BEFORE").encode()))
            assert [c for _, c in read_acks(bad, 1)] == ["BEFORE"]
            bad.sendall(garbage)
            assert bad.recv(4096) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as good:
            good.sendall(frame(adt(2, control_id="AFTER").encode()))
            assert [c for _, c in read_acks(good, 1)] == ["AFTER"]


def test_failing_ingest_gets_no_ack_and_the_connection_closes() -> None:
    stand_in = StandIn(fail_on="BOOM")
    with stand_in_server(stand_in) as server, socket.create_connection(("127.0.0.1", server.port),
                                                                       timeout=10) as sock:
        sock.sendall(frame(adt(1, control_id="OK1").encode()) + frame(adt(2, control_id="BOOM").encode())
                     + frame(adt(3, control_id="NEVER").encode()))
        assert [c for _, c in read_acks(sock, 1)] == ["OK1"]
        assert sock.recv(4096) == b""
    assert [s["control_id"] for s in stand_in.seen] == ["OK1"]


def test_idle_connection_is_closed() -> None:
    with stand_in_server(StandIn(), idle_timeout=0.3) as server, socket.create_connection(
            ("127.0.0.1", server.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert 0.2 < time.monotonic() - started < 5


def test_a_slow_message_is_not_cut_off_by_the_idle_timeout() -> None:
    with stand_in_server(StandIn(delay=0.8), idle_timeout=0.3) as server, socket.create_connection(
            ("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(frame(adt(1, control_id="SLOW").encode()))
        assert [c for _, c in read_acks(sock, 1)] == ["SLOW"]


def test_shutdown_acknowledges_what_was_received_then_refuses() -> None:
    stand_in = StandIn(delay=0.1)
    with stand_in_server(stand_in) as server:
        port = server.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"".join(frame(adt(i, control_id=f"S{i}").encode()) for i in range(5)))
        deadline = time.monotonic() + 5
        while not stand_in.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        stopping = threading.Thread(target=server.stop, args=(10,))
        stopping.start()
        acks = read_acks(sock, 5)
        assert sock.recv(4096) == b""  # closed once its received messages are acknowledged
        stopping.join(10)
        sock.close()
        assert [c for _, c in acks] == [f"S{i}" for i in range(5)]
        with pytest.raises(ConnectionError):
            socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)


def test_many_connections_are_served_at_once() -> None:
    stand_in = StandIn(delay=0.05)
    with stand_in_server(stand_in) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(50)]
        started = time.monotonic()
        for k, sock in enumerate(socks):
            sock.sendall(frame(adt(k, control_id=f"M{k}").encode()))
        for k, sock in enumerate(socks):
            assert [c for _, c in read_acks(sock, 1)] == [f"M{k}"]
            sock.close()
        assert time.monotonic() - started < 50 * 0.05  # concurrently, not one connection after another


@pytest.mark.parametrize(("raw", "expected"), [
    (b"MSH|^~\\&|PAS|RR8^Leeds^L|SC|X|20250301||ADT^A01^ADT_A01|C1|P|2.4\rPID|1||9912003888^^^NHS",
     ("RR8", "ADT^A01", "C1")),
    (b"MSH#$~\\&#PAS#RAE$x#SC#X#2025##ORU$R01#C2#P#2.5\nOBX#1", ("RAE", "ORU^R01", "C2")),  # own separators, LF
    (b"MSH|^~\\&|PAS", ("", "", "")),
    (b"not HL7 at all", ("", "", "")),
    (b"", ("", "", "")),
])
def test_msh_summary_reads_only_the_header(raw: bytes, expected: tuple[str, str, str]) -> None:
    assert msh_summary(raw) == expected


def test_ack_is_encoded_in_the_charset_its_msh_18_names() -> None:
    from engine.mllp_server import ack_bytes

    latin = "MSH|^~\\&|SC|X|PAS|RR8|20250301||ACK^A01^ACK|1|P|2.4||||||8859/1\rMSA|AE|C1|Zoë\r"
    assert ack_bytes(latin).endswith("Zoë\r".encode("latin-1"))
    assert ack_bytes(latin.replace("8859/1", "UNICODE UTF-8")).endswith("Zoë\r".encode())
    assert ack_bytes("MSH|^~\\&|A\rMSA|AA|1\r") == b"MSH|^~\\&|A\rMSA|AA|1\r"


# -- helpers ---------------------------------------------------------------------------------------------


def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def read_acks(sock: socket.socket, count: int, timeout: float = 30) -> list[tuple[str, str]]:
    from adapters.hl7v2.framing import FrameDecoder

    decoder, acks = FrameDecoder(), []
    sock.settimeout(timeout)
    while len(acks) < count:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed after {len(acks)} of {count} ACKs")
        acks += [msa(payload) for payload in decoder.feed(data)]
    return acks


def store_counts(database_url: str) -> dict[str, int]:
    """How many HL7 messages are stored as processed and how many Patients the store holds."""
    from sqlalchemy import create_engine, text

    from engine.config import sync_database_url

    url = sync_database_url(database_url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            processed = conn.execute(text("SELECT count(*) FROM hl7_messages WHERE status = 'processed'")).scalar()
            patients = conn.execute(text(
                "SELECT count(*) FROM resources WHERE res_type = 'Patient' AND NOT deleted")).scalar()
    finally:
        engine.dispose()
    return {"processed": int(processed or 0), "patients": int(patients or 0)}


def make_pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
        key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("sharedcare test CA")).issuer_name(name("sharedcare test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return write(cn, key, builder.sign(ca_key, hashes.SHA256()))

    ca_cert, _ = write("ca", ca_key, ca)
    server_cert, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_cert, client_key = leaf("RR8-PAS", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return {"ca_cert": ca_cert, "server_cert": server_cert, "server_key": server_key,
            "client_cert": client_cert, "client_key": client_key}

