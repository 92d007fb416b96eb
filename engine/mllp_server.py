"""The MLLP listener: HL7 v2 messages in over TCP or TLS, ACKs out only after their commit.

MLLP (HL7 Version 3 Standard: Transport Specification — MLLP, Release 2; HL7 v2.5.1 Appendix C)
wraps each message in a frame, `<VT> message <FS><CR>`, and expects the receiver to answer each
one with an acknowledgement in the same framing. This module only frames and acknowledges:
`adapters/hl7v2/framing.py` cuts the byte stream into frames, the ingest pipeline
(`engine.ingest.pipeline.ingest_message`) stores, maps and commits each one and returns the ACK
text, which goes back to the sender after that call has returned — so an AA always means
"committed" (DESIGN.md, principle 1).

Per connection, one task reads frames continuously and another processes them one at a time in
arrival order (ordering matters for one patient's events) and writes each ACK as it completes, so
a sender may pipeline several messages. A framing error, an oversized frame or an idle connection
closes that connection after logging; nothing closes the server but `stop()`. Shutdown stops
accepting and reading, then lets each connection finish the messages it has already received.

One JSON log line per message — sender (MSH-4), message type (MSH-9), control id (MSH-10), ACK
code and duration — and never a patient identifier: the message body is not logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

from prometheus_client import Counter, Gauge, Histogram

from adapters.hl7v2.framing import FrameDecoder, FramingError, frame
from engine.ingest.pipeline import IngestUnavailable
from engine.ingest.worker_processes import Worker, start_workers, stop_workers
from engine.observability import REGISTRY

log = logging.getLogger("sharedcare.mllp")

MESSAGES = Counter("sharedcare_mllp_messages_total", "HL7 v2 messages received over MLLP, by type and ACK code",
                   ["message_type", "ack_code"], registry=REGISTRY)
LATENCY = Histogram("sharedcare_mllp_ack_latency_seconds",
                    "Time from a frame's arrival to its ACK being written, by message type", ["message_type"],
                    registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CONNECTIONS = Gauge("sharedcare_mllp_connections", "Open MLLP connections", registry=REGISTRY)
CONNECTION_CLOSES = Counter("sharedcare_mllp_connection_closes_total", "MLLP connections closed, by reason",
                            ["reason"], registry=REGISTRY)

# Prometheus label values must stay a small set: anything that is not MSH-9-shaped is "other".
_MESSAGE_TYPE = re.compile(r"^[A-Z0-9]{2,3}\^[A-Z0-9]{2,3}$")
_ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_END = object()  # queued after the last frame of a connection
_READ_CHUNK = 64 * 1024


class IngestOutcomeLike(Protocol):
    """What the server needs from `engine.ingest.pipeline.IngestOutcome`."""

    ack: str | None


IngestFn = Callable[..., Awaitable[IngestOutcomeLike]]
"""`async (ctx, raw, *, transport, received_at) -> outcome`: the signature of `ingest_message`."""


@dataclass(frozen=True)
class MllpConfig:
    """Where and how the listener serves. `port=0` binds an ephemeral port (tests)."""

    host: str = "127.0.0.1"
    port: int = 2575
    ssl_context: ssl.SSLContext | None = None
    max_frame_bytes: int = 10 * 1024 * 1024
    idle_timeout: float = 300.0  # seconds without bytes or work before a connection is closed; 0 = never
    max_in_flight: int = 32  # frames received but not yet acknowledged, per connection (then reading pauses)
    max_connections: int = 1000
    shutdown_grace: float = 30.0  # seconds for connections to finish their received messages on stop()
    handshake_timeout: float = 10.0
    processes: int = 1  # ingest processes sharing the port (engine/ingest/worker_processes.py)
    handoff_fd: int | None = None  # an ingest process's end of the hand-off socket: take connections from it


def mllp_config_from_env(port: int, environ: Mapping[str, str] | None = None) -> MllpConfig:
    """The listener's configuration from `SHAREDCARE_MLLP_*` variables (docs/mllp.md lists them)."""
    env = os.environ if environ is None else environ

    def get(name: str, default: str) -> str:
        return env.get(name) or default

    cert, key = env.get("SHAREDCARE_MLLP_TLS_CERT"), env.get("SHAREDCARE_MLLP_TLS_KEY")
    if bool(cert) != bool(key):
        raise ValueError("SHAREDCARE_MLLP_TLS_CERT and SHAREDCARE_MLLP_TLS_KEY must be set together")
    client_ca = env.get("SHAREDCARE_MLLP_TLS_CLIENT_CA")
    if client_ca and not cert:
        raise ValueError("SHAREDCARE_MLLP_TLS_CLIENT_CA needs SHAREDCARE_MLLP_TLS_CERT and _KEY")
    return MllpConfig(
        host=get("SHAREDCARE_MLLP_HOST", "127.0.0.1"),
        port=port,
        ssl_context=server_ssl_context(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        if cert and key else None,
        max_frame_bytes=int(get("SHAREDCARE_MLLP_MAX_FRAME_BYTES", str(10 * 1024 * 1024))),
        idle_timeout=float(get("SHAREDCARE_MLLP_IDLE_TIMEOUT", "300")),
        max_in_flight=int(get("SHAREDCARE_MLLP_MAX_IN_FLIGHT", "32")),
        max_connections=int(get("SHAREDCARE_MLLP_MAX_CONNECTIONS", "1000")),
        shutdown_grace=float(get("SHAREDCARE_MLLP_SHUTDOWN_GRACE", "30")),
        processes=max(1, int(get("SHAREDCARE_MLLP_PROCESSES", "1"))),
    )


def _listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP listening socket on (host, port), SO_REUSEADDR as asyncio's servers bind."""
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=1024)
    listener.setblocking(False)
    return listener


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class MllpServer:
    """An asyncio MLLP server handing every frame to `ingest(ctx, frame, transport="mllp", received_at=…)`.

    Use as `async with MllpServer(ingest_message, ctx, config) as server: ...` or `start()` / `stop()`.
    """

    def __init__(self, ingest: IngestFn, ctx: Any, config: MllpConfig) -> None:
        self.ingest = ingest
        self.ctx = ctx
        self.config = config
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None  # with ingest processes: accepted here, then handed out
        self._accepting: asyncio.Task[None] | None = None
        self._handoff: socket.socket | None = None  # an ingest process: where its connections come from
        self._opening = 0  # connections accepted here whose streams are not set up yet
        self._setting_up: set[asyncio.Task[None]] = set()  # their tasks (held: the loop keeps weak references)
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self._workers: list[Worker] = []
        self._next_worker = 0  # where the search for the least busy process starts: ties take turns

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when configured with port 0)."""
        if self._listener is not None:
            return self._listener.getsockname()[1]
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP server is not listening")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.handoff_fd is not None:  # an ingest process: the main process accepts for it
            self._handoff = socket.socket(fileno=self.config.handoff_fd)
            self._handoff.setblocking(False)
            loop.add_reader(self._handoff.fileno(), self._take_connections)
            return
        if self.config.processes > 1:
            self._listener = _listening_socket(self.config.host, self.config.port)
            self._workers = await asyncio.to_thread(start_workers, self.config.processes - 1,
                                                    log.getEffectiveLevel())
            for worker in self._workers:
                loop.add_reader(worker.channel.fileno(), self._hear_from, worker)
            self._accepting = asyncio.create_task(self._accept_and_share())
        else:
            self._server = await asyncio.start_server(
                self._accept, self.config.host, self.config.port, ssl=self.config.ssl_context,
                ssl_handshake_timeout=self.config.handshake_timeout if self.config.ssl_context else None,
                limit=_READ_CHUNK, reuse_address=True,
            )
        log.info("mllp listening", extra={"fields": {
            "host": self.config.host, "port": self.port, "tls": self.config.ssl_context is not None,
            "mutual_tls": bool(self.config.ssl_context and self.config.ssl_context.verify_mode == ssl.CERT_REQUIRED),
            "processes": 1 + len(self._workers),
        }})

    # -- several ingest processes: the main process accepts and gives each connection to the least busy ----

    async def _accept_and_share(self) -> None:
        """Accept connections for ever; each goes to the process holding the fewest open connections."""
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # e.g. too many open files: log, breathe, go on
                log.warning("mllp accept failed", extra={"fields": {"error": type(exc).__name__}})
                await asyncio.sleep(0.1)
                continue
            worker = self._least_busy()
            if worker is not None and worker.hand(accepted):
                continue
            self._open(accepted)

    def _least_busy(self) -> Worker | None:
        """The ingest process to take the next connection, or None for this one (ties take turns)."""
        here = len(self._connections) + self._opening
        alive = [w for w in self._workers if w.alive]
        if not alive:
            return None
        start = self._next_worker % (len(alive) + 1)
        self._next_worker += 1
        candidates: list[tuple[int, int, Worker | None]] = [(here, 0, None)]
        candidates += [(w.connections, n, w) for n, w in enumerate(alive, start=1)]
        ordered = candidates[start:] + candidates[:start]
        return min(ordered, key=lambda c: c[0])[2]

    def _hear_from(self, worker: Worker) -> None:
        """A worker's channel is readable: connections it has closed, or its end (it has stopped)."""
        if not worker.hear():
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())

    def _take_connections(self) -> None:
        """An ingest process's hand-off socket is readable: connections from the main process."""
        assert self._handoff is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._handoff, 64, 16)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # the main process has gone: its watcher stops this one
                asyncio.get_running_loop().remove_reader(self._handoff.fileno())
                return
            for fd in fds:
                self._open(socket.socket(fileno=fd))

    def _open(self, accepted: socket.socket) -> None:
        """Serve a connection accepted elsewhere (by `_accept_and_share`, here or in the main process)."""
        self._opening += 1
        task = asyncio.create_task(self._serve_accepted(accepted))
        self._setting_up.add(task)
        task.add_done_callback(self._setting_up.discard)

    async def _serve_accepted(self, accepted: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader, self._accept_counted)
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, accepted, ssl=self.config.ssl_context,
                ssl_handshake_timeout=self.config.handshake_timeout if self.config.ssl_context else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a failed TLS handshake, a reset
            self._opening -= 1
            accepted.close()
            log.info("mllp connection not set up", extra={"fields": {"error": type(exc).__name__}})
            self._closed()

    async def _accept_counted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._opening -= 1
        try:
            await self._accept(reader, writer)
        finally:
            self._closed()

    def _closed(self) -> None:
        """Tell the main process that a connection it handed here has closed (it counts them)."""
        if self._handoff is not None:
            try:
                self._handoff.send(b"-")
            except OSError:  # the main process has gone
                pass

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting and reading; give connections `grace` seconds to acknowledge what they received."""
        if self._stopping:
            return
        grace = self.config.shutdown_grace if grace is None else grace
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
        if self._handoff is not None:
            asyncio.get_running_loop().remove_reader(self._handoff.fileno())
        for connection in list(self._connections.values()):
            connection.stop_reading()
        stopping_workers = None
        if self._workers:
            stopping_workers = asyncio.create_task(asyncio.to_thread(stop_workers, self._workers, grace))
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:  # an unfinished ingest rolls back; its sender re-sends (no ACK went out)
                task.cancel()
            if pending:
                log.warning("mllp shutdown grace expired", extra={"fields": {"connections": len(pending)}})
                await asyncio.gather(*pending, return_exceptions=True)
        if stopping_workers is not None:
            await stopping_workers
            for worker in self._workers:
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
                worker.channel.close()
            self._workers = []
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        log.info("mllp stopped")

    def abort(self) -> None:
        """Cancel every connection's work now (a second interrupt): unfinished messages get no ACK."""
        for task in self._connections:
            task.cancel()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(next(self._ids), self, reader, writer)
        if self._stopping:
            CONNECTION_CLOSES.labels("shutdown").inc()
            writer.close()
            return
        if len(self._connections) >= self.config.max_connections:
            log.warning("mllp connection refused: too many connections",
                        extra={"fields": {"conn": connection.id, "peer": connection.peer}})
            CONNECTION_CLOSES.labels("too_many_connections").inc()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = connection
        CONNECTIONS.inc()
        try:
            await connection.run()
        finally:
            CONNECTIONS.dec()
            del self._connections[task]


class _Connection:
    """One sender's connection: a reading task and an answering task joined by a FIFO queue."""

    def __init__(self, conn_id: int, server: MllpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.id = conn_id
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        self.peer = _peer(writer)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        # A slot per received-but-unacknowledged frame: when they run out, reading pauses (TCP backpressure).
        self.slots = asyncio.Semaphore(self.config.max_in_flight)
        self.in_flight = 0
        self.close_reason = "eof"
        self._reading: asyncio.Task[None] | None = None

    async def run(self) -> None:
        log.info("mllp connection opened", extra={"fields": {"conn": self.id, "peer": self.peer, "process": os.getpid(),
                                                             "tls_client": _tls_client(self.writer)}})
        self._reading = asyncio.create_task(self._read())
        answering = asyncio.create_task(self._answer())
        try:
            await asyncio.wait({self._reading, answering}, return_when=asyncio.FIRST_COMPLETED)
            if answering.done():  # the peer went away or ingest failed: nothing more can be answered
                self._reading.cancel()
            else:  # no more frames: acknowledge those received, then close
                self.queue.put_nowait(_END)
            await asyncio.gather(self._reading, answering, return_exceptions=True)
        finally:
            if not self._reading.done():
                self._reading.cancel()
            if not answering.done():
                answering.cancel()
            await asyncio.gather(self._reading, answering, return_exceptions=True)
            CONNECTION_CLOSES.labels(self.close_reason).inc()
            log.info("mllp connection closed", extra={"fields": {"conn": self.id, "peer": self.peer,
                                                                 "reason": self.close_reason}})
            await _close(self.writer)

    def stop_reading(self) -> None:
        """Shutdown: take no more frames; those already received are still acknowledged."""
        if self._reading is not None and not self._reading.done():
            self.close_reason = "shutdown"
            self._reading.cancel()

    async def _read(self) -> None:
        decoder = FrameDecoder(max_frame=self.config.max_frame_bytes)
        idle = self.config.idle_timeout or None
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await self.reader.read(_READ_CHUNK)
            except TimeoutError:
                if self.in_flight:  # the sender is waiting for ACKs, not idle
                    continue
                self.close_reason = "idle"
                return
            except OSError as exc:  # reset by the peer, a TLS alert, …
                self.close_reason = "reset"
                log.info("mllp read failed", extra={"fields": {"conn": self.id, "error": type(exc).__name__}})
                return
            if not data:
                if not decoder.at_boundary:
                    self.close_reason = "eof_mid_frame"
                    log.warning("mllp connection closed mid-frame",
                                extra={"fields": {"conn": self.id, "peer": self.peer, "bytes": decoder.buffered}})
                return
            try:
                frames = decoder.feed(data)
            except FramingError as exc:
                self.close_reason = "framing_error"
                log.warning("mllp framing error; closing the connection",
                            extra={"fields": {"conn": self.id, "peer": self.peer, "error": str(exc)}})
                return
            for payload in frames:
                await self.slots.acquire()
                self.in_flight += 1
                self.queue.put_nowait((payload, datetime.now(UTC), time.perf_counter()))

    async def _answer(self) -> None:
        while (item := await self.queue.get()) is not _END:
            payload, received_at, arrived = item
            started = time.perf_counter()
            try:
                outcome = await self.server.ingest(self.server.ctx, payload, transport="mllp",
                                                   received_at=received_at)
            except Exception as exc:
                # Nothing was acknowledged, so the sender re-sends later; de-duplication makes that safe.
                self.close_reason = "ingest_unavailable" if isinstance(exc, IngestUnavailable) else "ingest_error"
                sender, message_type, control_id = msh_summary(payload)
                log.log(logging.WARNING if isinstance(exc, IngestUnavailable) else logging.ERROR,
                        "mllp message not stored; closing the connection without an ACK",
                        exc_info=not isinstance(exc, IngestUnavailable),
                        extra={"fields": {"conn": self.id, "sender": sender, "message_type": message_type,
                                          "control_id": control_id, "error": type(exc).__name__}})
                return
            ingested = time.perf_counter()
            ack = getattr(outcome, "ack", None)
            if ack is not None:
                self.writer.write(frame(ack_bytes(ack)))
                try:
                    await self.writer.drain()
                except OSError:  # the sender went away: it will re-send, and get the stored ACK
                    self.close_reason = "reset"
                    self._record(payload, outcome, arrived, started, ingested, ack="undelivered")
                    return
            self._record(payload, outcome, arrived, started, ingested, ack="sent" if ack is not None else "not requested")
            self.in_flight -= 1
            self.slots.release()

    def _record(self, payload: bytes, outcome: Any, arrived: float, started: float, ingested: float, *,
                ack: str) -> None:
        done = time.perf_counter()
        sender, message_type, control_id = msh_summary(payload)
        ack_code = ack_code_of(outcome)
        label = message_type if _MESSAGE_TYPE.match(message_type) else "other"
        MESSAGES.labels(label, ack_code if ack_code in _ACK_CODES else "none").inc()
        LATENCY.labels(label).observe(done - arrived)
        if log.isEnabledFor(logging.INFO):
            log.info("mllp message", extra={"fields": {
                "conn": self.id,
                "sender": sender,
                "message_type": message_type,
                "control_id": control_id,
                "ack_code": ack_code,
                "status": _text(getattr(outcome, "status", None)),
                "ack": ack,
                "duration_ms": round((done - arrived) * 1000, 2),
                "ingest_ms": round((ingested - started) * 1000, 2),
                "queued_ms": round((started - arrived) * 1000, 2),
            }})


# -- small pure helpers ----------------------------------------------------------------------------


def msh_summary(payload: bytes) -> tuple[str, str, str]:
    """(MSH-4.1 sender, MSH-9.1^MSH-9.2 type, MSH-10 control id) for logs and metrics; "" when absent.

    Reads only the MSH segment (HL7 v2.5.1 §2.14.9), so it works on messages the parser rejects,
    and never touches a segment that carries patient data.
    """
    if not payload.startswith(b"MSH") or len(payload) < 8:
        return "", "", ""
    end = min((i for i in (payload.find(b"\r"), payload.find(b"\n")) if i >= 0), default=len(payload))
    header = payload[:end].decode("latin-1")
    fields = header.split(header[3])
    component = (fields[1][:1] or "^") if len(fields) > 1 else "^"

    def field(n: int) -> str:  # MSH-n is fields[n - 1]: MSH-1 is the separator itself
        return fields[n - 1] if len(fields) >= n else ""

    message_type = field(9).split(component)
    kind = "^".join(message_type[:2]) if len(message_type) > 1 else message_type[0]
    return field(4).split(component)[0][:32], kind[:16], field(10)[:64]


def ack_code_of(outcome: Any) -> str:
    """The code sent (MSA-1 of the ACK: AA…CR), else the pipeline's decision (`outcome.code`) when no ACK goes."""
    ack = getattr(outcome, "ack", None)
    if ack:
        start = ack.find("\rMSA")
        if start >= 0 and ack[start + 7:start + 8] in ("|", "\r", ""):
            return ack[start + 5:start + 7]
    return _text(getattr(outcome, "code", None))


def ack_bytes(ack: str) -> bytes:
    """The ACK text in the character set its MSH-18 names (HL7 table 0211); ASCII text needs no choice."""
    try:
        return ack.encode("ascii")
    except UnicodeEncodeError:
        header = ack.split("\r", 1)[0]
        fields = header.split(header[3]) if len(header) > 3 else []
        charset = fields[17].upper() if len(fields) > 17 else ""
        return ack.encode("latin-1" if charset.startswith("8859/1") else "utf-8", errors="replace")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def _tls_client(writer: asyncio.StreamWriter) -> str | None:
    """The client certificate's subject CN under mutual TLS: which system connected, not a person."""
    cert = writer.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout=5)
    except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
        pass
