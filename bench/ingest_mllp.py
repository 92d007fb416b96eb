"""Sustained HL7 v2 ingest over MLLP into PostgreSQL, next to a store-only floor measured in the same run.

Method (bench/README.md says more):

1. create a scratch PostgreSQL database on the server (`--database-url`, default the local one) and
   migrate it with the alembic migrations (engine.db.migrate.upgrade); dropped at the end unless --keep;
2. start `sharedcare serve --workers 1` as a subprocess on it (HTTP and MLLP in one process, plus
   `--mllp-processes` − 1 ingest processes sharing the MLLP port: SHAREDCARE_MLLP_PROCESSES), with a
   senders file configuring the eight sending facilities used below;
3. generate a realistic mix per sender — ~60 % ADT (A01 admit, A08 update, A03 discharge, in order
   for each patient, one visit number (PV1-19) and so one Encounter for the three) across `--patients` patients with valid NHS numbers from the 999 test range,
   ~40 % ORU^R01 with five OBX — each connection its own facility (MSH-4), its own patients and
   control ids, so one patient's events arrive in order on one connection; each scenario's streams
   start at their own point (`SCENARIO_SEQ`), so no scenario re-sends another's events;
4. preload the store (`--preload` s of pipelined MLLP ingest, unrecorded) and VACUUM ANALYZE it: a live
   store is never empty and has planner statistics;
5. measure, each from a separate process, for `--warmup` s unrecorded then `--duration` s recorded:
   a. the store-only floor: the same raw messages inserted into `hl7_messages` only — no parsing
      beyond MSH, no mapping — one commit per message, from `--senders` concurrent connections of the
      store's own engine (SQLAlchemy async, psycopg, `engine.db.database.open_database`);
   b. MLLP ingest: `--senders` connections, each waiting for its ACK before sending the next message;
   c. MLLP ingest pipelined: the same with up to `--window` messages unacknowledged per connection;
   d. MLLP ingest as (b), by a server restarted with group commit off (SHAREDCARE_INGEST_GROUP_COMMIT=0:
      a transaction per message, engine/ingest/group_commit.py), on the same store, later;
6. print msg/s, ACK latency p50/p99, non-AA ACKs, the ratio to the floor, and for (b), (c) and (d) the CPU
   time (utime + stime from /proc) per stored message of the server's processes and of the scratch
   database's PostgreSQL backends (warm-up included on both sides of the division), the share of the
   whole machine's CPU in use during the run (/proc/stat: when it is near 100 % the rate is CPU-bound), the load average,
   the group-commit batches of (b) and (c) in the server's main process (its /metrics histogram: how many,
   messages a batch, the share holding one message), and whether the goal (stop-and-wait MLLP ingest
   ≥ 1,000 msg/s) is met. With `--profile`, py-spy
   samples the server (and its ingest processes) during (b) and the hottest frames are printed. With
   `--without-search-index` the server's processes write no search-index rows (a `sitecustomize` module
   on their path replaces the write's index rows with none): a bound on what any change to the search
   index could give, never a configuration, and not a measurement of the goal.

Run from the repository root:  .venv/bin/python bench/ingest_mllp.py [--duration 10] [--senders 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL = 1000.0  # msg/s, MLLP ingest with each sender waiting for its ACK
# Where each scenario's streams start (MessageStream.seq): the preload (L), the stop-and-wait (S) and pipelined (P)
# runs send different visits at different times rather than the same events again.
SCENARIO_SEQ = {"T": 0, "F": 0, "L": 1_000_000, "S": 2_000_000, "P": 3_000_000, "A": 4_000_000}
# Eight acute trusts (ODS codes), one per connection: the sending facility in MSH-4.
FACILITIES = ["RR8", "RAE", "RCF", "RWY", "RXF", "RHQ", "RJL", "RFF", "RWA", "RCD", "RXR", "RTD"]
FAMILIES = ["HUGHES", "KHAN", "SMITH", "OKAFOR", "NOWAK", "PATEL", "JONES", "WALKER", "BEGUM", "MURPHY"]
GIVEN = ["ALICE", "MOHAMMED", "OLIVIA", "JACK", "AMELIA", "HARRY", "ISLA", "NOAH", "AVA", "LEO"]
FBC = [("HB", "Haemoglobin", "718-7", "g/L", "115-165", 118),
       ("WBC", "White cell count", "6690-2", "10*9/L", "4.0-11.0", 7),
       ("PLT", "Platelet count", "777-3", "10*9/L", "150-400", 245),
       ("MCV", "Mean cell volume", "787-2", "fL", "80-100", 88),
       ("HCT", "Haematocrit", "4544-3", "L/L", "0.37-0.47", 0.41)]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest_mllp.py",
        description="Sustained HL7 v2 ingest over MLLP into a scratch PostgreSQL database (`sharedcare serve`, "
        "one worker) from concurrent senders, next to the store-only floor (the same raw messages inserted "
        "into hl7_messages, one commit each) measured in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--duration", type=float, default=10.0, help="seconds recorded per scenario")
    add("--warmup", type=float, default=2.0, help="unrecorded seconds before each measurement")
    add("--senders", type=int, default=8, help="concurrent MLLP connections (and floor connections)")
    add("--window", type=int, default=4, help="unacknowledged messages per connection in the pipelined run")
    add("--patients", type=int, default=20_000, help="distinct patients, shared out between the senders")
    add("--database-url", default=DEFAULT_SERVER_URL,
        help="any database on the PostgreSQL server (trust auth); a scratch database is created next to it")
    add("--preload", type=float, default=10.0, metavar="SECONDS",
        help="before measuring MLLP ingest, ingest (pipelined, unrecorded) for this long, then VACUUM ANALYZE: "
        "a live store is never empty and has planner statistics")
    add("--mllp-processes", type=int, default=2,
        help="ingest processes sharing the MLLP port (SHAREDCARE_MLLP_PROCESSES; 1 = the server process only)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the server's log level (info writes the one line per message that production writes)")
    add("--keep", action="store_true", help="keep the scratch database and the server log")
    add("--profile", type=Path, metavar="FILE",
        help="sample the server with py-spy during the stop-and-wait run; write collapsed stacks to FILE")
    add("--only", choices=["transport", "floor", "mllp", "pipelined", "one-by-one"], action="append",
        help="run only these scenarios (repeatable)")
    add("--server-env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for the server, e.g. SHAREDCARE_INGEST_MAX_BATCH=8 (repeatable)")
    add("--without-search-index", action="store_true",
        help="a bound, not a configuration: the server (every ingest process) writes no search-index rows at "
        "all, so searches would find nothing — the rate no change to the search index could beat")
    return parser.parse_args(argv)


# -- the messages -----------------------------------------------------------------------------------


def nhs_number(n: int) -> str:
    """A valid NHS number in the 999 test range, unique for n < 500,000 (stem 2n or 2n + 1 has one)."""
    from engine.nhs_number import with_check_digit

    for stem in (2 * n, 2 * n + 1):
        number = with_check_digit(f"999{stem:06d}")
        if number is not None:
            return number
    raise AssertionError("unreachable")


@dataclass
class MessageStream:
    """The messages one sender sends: its facility, its patients, ADT in order per patient, ORU between.

    `tag` makes control ids unique per run and scenario, so no message is a duplicate of an earlier one.
    """

    sender: int
    senders: int
    patients: int
    tag: str
    rng: random.Random = field(init=False)
    seq: int = 0
    admitted: dict[int, int] = field(default_factory=dict)  # patient → visit number

    def __post_init__(self) -> None:
        self.rng = random.Random(1000 + self.sender + self.seq)
        self.facility = FACILITIES[self.sender % len(FACILITIES)]
        self.mine = range(self.sender, self.patients, self.senders)
        self.base_time = datetime(2025, 3, 1, 8, 0)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self

    def __next__(self) -> tuple[str, bytes]:
        """(message type, raw message): ADT in each patient's order (A01, A08…, A03), ORU in between."""
        self.seq += 1
        when = (self.base_time + timedelta(seconds=self.seq * 7)).strftime("%Y%m%d%H%M%S")
        roll = self.rng.random()
        if roll < 0.6:
            event = "A01" if not self.admitted or roll < 0.2 else ("A08" if roll < 0.4 else "A03")
            if event == "A01":
                patient = self._not_admitted()
                visit = self.admitted[patient] = self.seq
            else:
                patient = self._admitted()
                visit = self.admitted[patient] if event == "A08" else self.admitted.pop(patient)
            return f"ADT^{event}", self._adt(event, patient, visit, when)
        patient = self._admitted() if self.admitted and roll < 0.8 else self._any()
        return "ORU^R01", self._oru(patient, self.admitted.get(patient), when)

    def _any(self) -> int:
        return self.mine[self.rng.randrange(len(self.mine))]

    def _not_admitted(self) -> int:
        while (patient := self._any()) in self.admitted:
            pass
        return patient

    def _admitted(self) -> int:
        # dicts keep insertion order: a random one among the admitted, O(1) on average for small sets
        keys = list(self.admitted) if len(self.admitted) < 64 else None
        if keys is not None:
            return keys[self.rng.randrange(len(keys))]
        while True:
            patient = self._any()
            if patient in self.admitted:
                return patient

    def _msh(self, kind: str, when: str) -> str:
        return (f"MSH|^~\\&|PAS|{self.facility}|SHAREDCARE|X26|{when}||{kind}|{self.tag}{self.sender}-{self.seq}"
                "|P|2.4|||||GBR|UNICODE UTF-8")

    def _pid(self, patient: int) -> str:
        return (f"PID|1||{nhs_number(patient)}^^^NHS^NH~{self.facility}{patient:07d}^^^{self.facility}^MR||"
                f"{FAMILIES[patient % 10]}^{GIVEN[patient // 10 % 10]}^^^^MX||"
                f"{1930 + patient % 90}{1 + patient % 12:02d}{1 + patient % 28:02d}|{1 + patient % 2}|||"
                f"{1 + patient % 200} PARK ROW^^LEEDS^West Yorkshire^LS{1 + patient % 28} 5HD^GBR^H||"
                "0113 496 0123^PRN^PH|||||||||||||||||||NSTS01")

    def _adt(self, event: str, patient: int, visit: int, when: str) -> bytes:
        structure = "ADT_A03" if event == "A03" else "ADT_A01"
        discharge = when if event == "A03" else ""
        segments = [
            self._msh(f"ADT^{event}^{structure}", when),
            f"EVN|{event}|{when}",
            self._pid(patient),
            f"PD1|||LEEDS CITY MEDICAL PRACTICE^^B86{patient % 100:03d}|G{3000000 + patient % 999:07d}",
            self._pv1(patient, visit, discharge),
        ]
        return ("\r".join(segments) + "\r").encode()

    def _pv1(self, patient: int, visit: int, discharged: str) -> str:
        """PV1 of an admission: ward and bed (the bed changes between events, so an A08 updates the
        Encounter), admission method 21, the admission time (PV1-44), the consultant, specialty 300, source 19,
        the visit number (PV1-19) that ties A01, A08 and A03 to one Encounter, and on discharge the
        method (PV1-36, 1: on clinical advice), destination (PV1-37, 19: usual place of residence) and date (PV1-45)."""
        fields = dict.fromkeys(range(1, 46), "")
        admitted = (self.base_time + timedelta(seconds=visit * 7)).strftime("%Y%m%d%H%M%S")
        bed = (patient + self.seq) % 20
        fields.update({1: "1", 2: "I", 3: f"{self.facility}^WARD{patient % 12}^BED{bed}^{self.facility}01",
                       4: "21", 7: f"C{1000000 + patient % 5000:07d}^JONES^SAM^^^DR", 10: "300", 14: "19",
                       19: f"{self.facility}V{visit:08d}", 36: "1" if discharged else "", 37: "19" if discharged else "", 44: admitted,
                       45: discharged})
        return "PV1|" + "|".join(fields.values()).rstrip("|")

    def _oru(self, patient: int, visit: int | None, when: str) -> bytes:
        order = f"{self.tag}{self.sender}-{self.seq}"
        segments = [
            self._msh("ORU^R01^ORU_R01", when),
            self._pid(patient),
            f"PV1|1|{'I' if visit else 'O'}|{self.facility}^OPD1^^{self.facility}01||||||||||||||||"
            + (f"{self.facility}V{visit:08d}" if visit else ""),
            f"ORC|RE|ICE{order}^ICE|WP{order}^WINPATH||CM||||{when}|||G3456789^PATEL^ANITA^^^DR^^^GMP",
            (f"OBR|1|ICE{order}^ICE|WP{order}^WINPATH|FBC^Full blood count^WINPATH|||{when}|||||||||"
            f"G3456789^PATEL^ANITA^^^DR^^^GMP||||||{when}||HM|F"),
        ]
        for i, (code, display, loinc, unit, ref, base) in enumerate(FBC, start=1):
            value = round(base * (0.8 + self.rng.random() * 0.4), 2)
            segments.append(f"OBX|{i}|NM|{code}^{display}^WINPATH^{loinc}^{display}^LN||{value}|"
                            f"{unit}^{unit}^UCUM|{ref}|N|||F|||{when}")
        return ("\r".join(segments) + "\r").encode()


def senders_file(path: Path, count: int) -> Path:
    path.write_bytes(orjson.dumps([
        {"ods_code": FACILITIES[i % len(FACILITIES)], "kind": "hospital", "name": f"bench trust {i}"}
        for i in range(min(count, len(FACILITIES)))
    ]))
    return path


# -- measurement ------------------------------------------------------------------------------------


@dataclass
class Result:
    messages: int
    seconds: float
    latencies_ms: list[float]
    codes: dict[str, int]
    errors: list[str] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    @property
    def non_aa(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "AA")


def run_in_process(target: Any, *args: Any) -> Result:
    """Run `target(*args, results)` in a fresh (spawned) process and return the Result it puts."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results), daemon=True)
    process.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            outcome = results.get(timeout=1)
            break
        except Exception:  # noqa: BLE001 - queue.Empty; check the child is still there
            if not process.is_alive():
                raise RuntimeError(f"measurement process exited with {process.exitcode}") from None
    else:
        raise RuntimeError("measurement process did not report")
    process.join(10)
    if isinstance(outcome, str):
        raise RuntimeError(outcome)  # noqa: TRY004 - the child reports its failure as text
    return outcome


@dataclass(frozen=True)
class Spec:
    senders: int
    patients: int
    tag: str
    warmup: float
    duration: float
    first_seq: int = 0  # where the stream starts: scenarios send different events (visits, times, choices)


def mllp_load(host: str, port: int, window: int, spec: Spec, results: Any) -> None:
    """Load generator process: `spec.senders` MLLP connections, `window` messages in flight on each."""
    try:
        results.put(asyncio.run(_mllp_load(host, port, window, spec)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"load generator failed: {type(exc).__name__}: {exc}")


async def _mllp_load(host: str, port: int, window: int, spec: Spec) -> Result:
    from adapters.hl7v2.framing import FrameDecoder, frame

    loop = asyncio.get_running_loop()
    start = loop.time()
    record_from, record_until = start + spec.warmup, start + spec.warmup + spec.duration
    latencies: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[str] = collections.Counter()
    errors: list[str] = []

    async def sender(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = MessageStream(k, spec.senders, spec.patients, spec.tag, seq=spec.first_seq)
        slots = asyncio.Semaphore(window)
        sent: collections.deque[tuple[float, str]] = collections.deque()
        decoder = FrameDecoder()

        async def read_acks() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    if sent:
                        errors.append(f"sender {k}: connection closed with {len(sent)} unacknowledged")
                    return
                now = loop.time()
                for payload in decoder.feed(data):
                    at, kind = sent.popleft()
                    if record_from <= at and now <= record_until:
                        latencies.append((now - at) * 1000)
                        code = _msa_code(payload)
                        codes[code] += 1
                        by_type[kind] += 1
                    slots.release()

        acks = asyncio.create_task(read_acks())
        while loop.time() < record_until and not acks.done():
            await slots.acquire()
            kind, raw = next(stream)
            sent.append((loop.time(), kind))
            writer.write(frame(raw))
            if window == 1 or len(sent) >= window:
                await writer.drain()
        try:
            await asyncio.wait_for(_drained(sent), timeout=30)
        except TimeoutError:
            errors.append(f"sender {k}: {len(sent)} ACKs still outstanding 30 s after the end")
        acks.cancel()
        writer.close()

    await asyncio.gather(*(sender(k) for k in range(spec.senders)))
    return Result(len(latencies), spec.duration, latencies, dict(codes), errors, dict(by_type))


async def _drained(sent: collections.deque[Any]) -> None:
    while sent:
        await asyncio.sleep(0.01)


def _msa_code(payload: bytes) -> str:
    start = payload.find(b"\rMSA")
    return payload[start + 5:start + 7].decode("ascii", "replace") if start >= 0 else "??"


def floor_load(db_url: str, spec: Spec, results: Any) -> None:
    """Store-only floor process: the same raw messages into hl7_messages, one commit each, N connections."""
    try:
        results.put(asyncio.run(_floor_load(db_url, spec)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(f"floor failed: {type(exc).__name__}: {exc}")


async def _floor_load(db_url: str, spec: Spec) -> Result:
    from sqlalchemy import insert

    from engine.db.database import open_database
    from engine.db.ingest_schema import hl7_messages
    from engine.mllp_server import msh_summary

    db = open_database(db_url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    record_from, record_until = start + spec.warmup, start + spec.warmup + spec.duration
    latencies: list[float] = []
    by_type: collections.Counter[str] = collections.Counter()
    statement = insert(hl7_messages)

    async def connection(k: int) -> None:
        stream = MessageStream(k, spec.senders, spec.patients, spec.tag, seq=spec.first_seq)
        while loop.time() < record_until:
            kind, raw = next(stream)
            at = loop.time()
            sender, message_type, control_id = msh_summary(raw)
            async with db.write() as conn:
                await conn.execute(statement, {
                    "sender": sender, "control_id": control_id, "message_type": message_type,
                    "status": "processed", "ack_code": "AA", "raw": raw.decode(), "transport": "bench",
                    "received_at": datetime.now(UTC).replace(tzinfo=None), "attempts": 1,
                })
            now = loop.time()
            if record_from <= at and now <= record_until:
                latencies.append((now - at) * 1000)
                by_type[kind] += 1

    try:
        await asyncio.gather(*(connection(k) for k in range(spec.senders)))
    finally:
        await db.dispose()
    return Result(len(latencies), spec.duration, latencies, {"AA": len(latencies)}, [], dict(by_type))


def transport_server(port: int, log_level: str, log_path: str, ready: Any) -> None:
    """The MLLP listener with ingest replaced by a canned AA: what framing, ordering, logging and
    metrics cost on their own (stderr → `log_path`, as `sharedcare serve` would log)."""
    sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as this process
    from engine.observability import configure_logging

    configure_logging(log_level.upper())
    asyncio.run(_transport_server(port, ready))


async def _transport_server(port: int, ready: Any) -> None:
    from types import SimpleNamespace

    from adapters.hl7v2.ack import build_ack
    from engine.mllp_server import MllpConfig, MllpServer, msh_summary

    now = datetime(2025, 3, 1, 12)

    async def canned(ctx: Any, raw: bytes, *, transport: str, received_at: datetime) -> Any:
        # The MSH fields an ACK echoes, without parsing the message: the listener is what is measured.
        control_id = msh_summary(raw)[2]
        header = raw[:raw.find(b"\r")].decode()
        ack = build_ack(None, "AA", now=now, control_id=control_id, raw_header=header)
        return SimpleNamespace(ack=ack, code="AA", status="processed", message_id=None)

    async with MllpServer(canned, None, MllpConfig(port=port)):
        ready.set()
        await asyncio.Event().wait()


# -- the database and the server ----------------------------------------------------------------------


def _plain(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(_plain(url)).set(database=name).render_as_string(hide_password=False)


def create_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(_plain(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_plain(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def vacuum_analyze(db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def store_summary(db_url: str) -> dict[str, Any]:
    """What the store holds after the run: messages by status/ACK code, resources by type, error reasons."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        statuses = dict(conn.execute(
            "SELECT transport || ' ' || status || ' ' || ack_code, count(*) FROM hl7_messages GROUP BY 1"
        ).fetchall())
        resources = dict(conn.execute("SELECT res_type, count(*) FROM resources GROUP BY 1").fetchall())
        reasons = conn.execute(
            "SELECT message_type, error_code, left(error_text, 120), count(*) FROM hl7_messages"
            " WHERE status <> 'processed' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 5").fetchall()
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return {"statuses": statuses, "resources": resources, "reasons": reasons, "version": version}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    mllp_port: int
    log: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sharedcare serve exited with {self.process.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                healthy = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).status_code == 200
                with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=2):
                    pass
                if healthy:
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"sharedcare serve did not become ready within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only the server
                self.process.wait(5)


# Loaded by every process of the server (PYTHONPATH) under --without-search-index: ingest writes resources,
# versions, sources and messages as it does, and no index rows.
_WITHOUT_SEARCH_INDEX = '''"""bench/ingest_mllp.py --without-search-index: a bound, not a configuration."""
import engine.ingest.store

engine.ingest.store._index_arrays = lambda versions: {}
'''


def without_search_index_env(workdir: Path) -> dict[str, str]:
    """The environment that makes the server's processes write no search-index rows (a `sitecustomize`
    module first on their path)."""
    directory = workdir / "without-search-index"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(_WITHOUT_SEARCH_INDEX)
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(directory), os.environ.get("PYTHONPATH"))))}


def start_server(db_url: str, workdir: Path, senders: int, log_level: str, processes: int = 1,
                 extra_env: dict[str, str] | None = None) -> Server:
    http_port, mllp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    env.update(SHAREDCARE_DATABASE_URL=db_url, SHAREDCARE_HOME=str(workdir / "home"),
               SHAREDCARE_HTTP_PORT=str(http_port), SHAREDCARE_MLLP_PORT=str(mllp_port),
               SHAREDCARE_MLLP_PROCESSES=str(processes),
               SHAREDCARE_SENDERS_FILE=str(senders_file(workdir / "senders.json", senders)), **(extra_env or {}))
    log = workdir / "sharedcare.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(BIN / "sharedcare"), "serve", "--workers", "1", "--log-level", log_level],
                                   env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(process, http_port, mllp_port, log)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (utime + stime, /proc/PID/stat) of `pid` and every process descended from it."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, total = {pid}, 0.0
    for _ in range(4):  # children of children: a few levels are plenty
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


def database_cpu(name: str) -> float:
    """CPU seconds of the PostgreSQL backends serving database `name` (their command line names it)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f" {name} ".encode() not in (entry / "cmdline").read_bytes():
                continue
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot (/proc/stat: busy is all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def batch_counts(http_port: int) -> tuple[float, float, float]:
    """(batches, messages, batches of one message) so far, from the group-commit histogram on the server's
    /metrics — its main process's, one of the ingest processes; zeros when it cannot be read."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return 0.0, 0.0, 0.0
    values = {}
    for line in lines:
        name, _, value = line.rpartition(" ")
        if name.startswith("sharedcare_ingest_batch_messages"):
            values[name] = float(value)
    return (values.get("sharedcare_ingest_batch_messages_count", 0.0),
            values.get("sharedcare_ingest_batch_messages_sum", 0.0),
            values.get('sharedcare_ingest_batch_messages_bucket{le="1.0"}', 0.0))


def stored_mllp_messages(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM hl7_messages WHERE transport = 'mllp'").fetchone()[0])  # type: ignore[index]


def start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--format", "raw", "--output", str(path), "--rate", "200", "--nonblocking", "--subprocesses"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def hot_frames(collapsed: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(frame, self %, total %) of the most sampled frames in py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    if not samples:
        return []
    return [(name, 100 * n / samples, 100 * total[name] / samples) for name, n in own.most_common(top)]


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.db.migrate import upgrade

    args = parse_args(argv)
    console = Console(stderr=True)
    out = Console(width=None if sys.stdout.isatty() else 150)
    only = set(args.only or ["transport", "floor", "mllp", "pipelined", "one-by-one"])
    server_env = dict(item.split("=", 1) for item in args.server_env)
    name = f"sharedcare_bench_mllp_{os.getpid()}_{random.randrange(1 << 20):05x}"
    workdir = Path(tempfile.mkdtemp(prefix="sharedcare-bench-mllp-"))
    if args.without_search_index:
        server_env.update(without_search_index_env(workdir))
    db_url = create_database(args.database_url, name)
    results: dict[str, Result] = {}
    problems: list[str] = []
    server: Server | None = None
    profile: list[tuple[str, float, float]] = []
    summary: dict[str, Any] = {}
    cpu_ms: dict[str, float] = {}  # the server's processes, per message stored
    db_cpu_ms: dict[str, float] = {}  # the PostgreSQL backends of the scratch database, per message stored
    busy: dict[str, float] = {}  # the share of the whole machine's CPU in use during the run
    batches: dict[str, tuple[float, ...]] = {}  # group commit in the main process: (batches, messages, of one)
    try:
        console.print(f"scratch database {name}; migrating")
        upgrade(db_url)
        spec = Spec(args.senders, args.patients, "", args.warmup, args.duration)
        if "transport" in only:
            console.print(f"measuring the MLLP listener alone, canned ACK ({args.warmup:g} s warm-up + "
                          f"{args.duration:g} s)")
            results["transport"] = measure_transport(workdir, args.log_level, _tagged(spec, "T"))
        if "floor" in only:
            console.print(f"measuring the store-only floor ({args.warmup:g} s warm-up + {args.duration:g} s)")
            results["floor"] = run_in_process(floor_load, db_url, _tagged(spec, "F"))
        server = start_server(db_url, workdir, args.senders, args.log_level, args.mllp_processes, server_env)
        server.wait_ready()
        if args.preload > 0 and only & {"mllp", "pipelined", "one-by-one"}:
            console.print(f"preloading the store: {args.preload:g} s of pipelined MLLP ingest, then VACUUM ANALYZE")
            run_in_process(mllp_load, "127.0.0.1", server.mllp_port, args.window,
                           _tagged(Spec(args.senders, args.patients, "", 0.0, args.preload), "L"))
            vacuum_analyze(db_url)
        for key, window, tag in (("mllp", 1, "S"), ("pipelined", args.window, "P"), ("one-by-one", 1, "A")):
            if key not in only:
                continue
            if key == "one-by-one":  # the same server with group commit off: a transaction per message
                server.stop()
                server = start_server(db_url, workdir, args.senders, args.log_level, args.mllp_processes,
                                      {**server_env, "SHAREDCARE_INGEST_GROUP_COMMIT": "0"})
                server.wait_ready()
            console.print(f"measuring MLLP ingest, {args.senders} senders, window {window} "
                          f"({args.warmup:g} s warm-up + {args.duration:g} s)")
            profiler = None
            if key == "mllp" and args.profile:
                profiler = start_profiler(server.process.pid, args.duration, args.profile)
                if profiler is None:
                    problems.append("py-spy not found (.venv/bin/pip install py-spy): no profile")
            cpu_before, stored_before = process_tree_cpu(server.process.pid), stored_mllp_messages(db_url)
            db_before, ticks_before, batches_before = database_cpu(name), machine_ticks(), batch_counts(server.http_port)
            results[key] = run_in_process(mllp_load, "127.0.0.1", server.mllp_port, window, _tagged(spec, tag))
            ticks_after = machine_ticks()
            batches[key] = tuple(a - b for a, b in zip(batch_counts(server.http_port), batches_before, strict=True))
            busy[key] = (ticks_after[0] - ticks_before[0]) / max(1, ticks_after[1] - ticks_before[1])
            stored = stored_mllp_messages(db_url) - stored_before
            if stored:  # warm-up included on both sides: CPU of the server's processes per message they stored
                cpu_ms[key] = 1000 * (process_tree_cpu(server.process.pid) - cpu_before) / stored
                db_cpu_ms[key] = 1000 * (database_cpu(name) - db_before) / stored
            if profiler is not None:
                _, err = profiler.communicate(timeout=60)
                if profiler.returncode == 0 and args.profile.exists():
                    profile = hot_frames(args.profile)
                else:
                    problems.append(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
        summary = store_summary(db_url)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            console.print(f"kept database: {db_url}\nkept server log: {workdir / 'sharedcare.log'}")
        else:
            drop_database(args.database_url, name)
            shutil.rmtree(workdir, ignore_errors=True)

    floor = results.get("floor")
    table = Table(title=f"sharedcare HL7 v2 ingest over MLLP — PostgreSQL {summary.get('version', '?')}, "
                  f"{args.senders} senders, {args.mllp_processes} ingest process(es), {args.duration:g} s per run, "
                  f"{os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for column in ("scenario", "msg/s", "p50 ms", "p99 ms", "non-AA", "÷ floor", "server CPU ms/msg",
                   "PostgreSQL CPU ms/msg", "machine busy"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    labels = {
        "transport": f"MLLP listener alone: ingest replaced by a canned AA, {args.senders} senders, wait for ACK",
        "floor": f"store-only floor: INSERT hl7_messages, 1 commit/msg, {args.senders} connections",
        "mllp": f"MLLP ingest, {args.senders} senders, each waits for its ACK",
        "pipelined": f"MLLP ingest, {args.senders} senders, pipelined (window {args.window})",
        "one-by-one": f"MLLP ingest, {args.senders} senders, each waits for its ACK, a transaction per message "
                      "(SHAREDCARE_INGEST_GROUP_COMMIT=0)",
    }
    if args.without_search_index:
        labels.update({key: labels[key] + " — BOUND: no search-index rows written"
                       for key in ("mllp", "pipelined", "one-by-one")})
    for key, label in labels.items():
        result = results.get(key)
        if result is None:
            table.add_row(label, "not measured", "", "", "", "", "", "", "")
            continue
        ratio = (f"{result.rate / floor.rate:.0%}" if floor and floor.rate and key in ("mllp", "pipelined", "one-by-one")
                 else "")
        table.add_row(label, f"{result.rate:,.0f}", f"{result.percentile(50):.2f}", f"{result.percentile(99):.2f}",
                      str(result.non_aa) if key != "floor" else "", ratio,
                      f"{cpu_ms[key]:.2f}" if key in cpu_ms else "", f"{db_cpu_ms[key]:.2f}" if key in db_cpu_ms else "",
                      f"{busy[key]:.0%}" if key in busy else "")
        problems += [f"{key}: {e}" for e in result.errors]
    out.print(table)
    mix = collections.Counter()
    for key in ("mllp", "pipelined"):
        mix.update(results[key].by_type if key in results else {})
    if mix:
        total = sum(mix.values())
        out.print("mix: " + ", ".join(f"{kind} {n / total:.0%}" for kind, n in sorted(mix.items())))
    if summary:
        out.print("store: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["statuses"].items()))
                  + "; resources: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["resources"].items())))
        for message_type, code, text, count in summary["reasons"]:
            problems.append(f"{count} × {message_type} not processed: {code} {text}")
    mllp = results.get("mllp")
    if mllp is not None and args.without_search_index:
        out.print(f"bound: MLLP ingest writing no search index, each sender waiting for its ACK: {mllp.rate:,.0f} "
                  f"msg/s (the goal, ≥ {GOAL:,.0f} msg/s, is measured without --without-search-index)")
    elif mllp is not None:
        met = mllp.rate >= GOAL
        out.print(f"goal: MLLP ingest (each sender waiting for its ACK) ≥ {GOAL:,.0f} msg/s — "
                  + ("[green]met[/]" if met else f"[red]NOT met[/] ({mllp.rate:,.0f} msg/s)"))
    made = [(labels[key].split(",", 2)[-1].strip(), *counts) for key, counts in batches.items() if counts[0]]
    if made:
        out.print(f"group commit in the server's main process (1 of {args.mllp_processes} ingest processes): "
                  + "; ".join(f"{label}: {n:,.0f} batches, {messages / n:.1f} messages a batch, {one / n:.0%} of one"
                              for label, n, messages, one in made))
    if profile:
        hot = Table(title="py-spy: hottest frames in the server during the stop-and-wait run")
        for column in ("frame", "self %", "total %"):
            hot.add_column(column, justify="left" if column == "frame" else "right")
        for frame_name, own, total in profile:
            hot.add_row(frame_name[:110], f"{own:.1f}", f"{total:.1f}")
        out.print(hot)
    for problem in problems:
        out.print(f"[yellow]{problem}")
    bad = any(r.non_aa or r.errors for r in results.values()) or not results
    return 1 if bad else 0


def measure_transport(workdir: Path, log_level: str, spec: Spec) -> Result:
    context = multiprocessing.get_context("spawn")
    ready, port = context.Event(), free_port()
    server = context.Process(target=transport_server, args=(port, log_level, str(workdir / "transport.log"), ready),
                             daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the transport-only listener did not start")
        return run_in_process(mllp_load, "127.0.0.1", port, 1, spec)
    finally:
        server.terminate()
        server.join(10)


def _tagged(spec: Spec, prefix: str) -> Spec:
    """The spec for one scenario: its own control ids and its own events (a stream starting elsewhere)."""
    return Spec(spec.senders, spec.patients, f"{prefix}{os.getpid() % 10000}-", spec.warmup, spec.duration,
                first_seq=SCENARIO_SEQ[prefix])


if __name__ == "__main__":
    sys.exit(main())
