"""Read by id and `Observation?patient=X` over HTTP, with a token, next to a bare FastAPI baseline.

Method (bench/README.md says more):

1. create a scratch PostgreSQL database on the server (`--database-url`, default the local one),
   migrate it with the alembic migrations (engine.db.migrate.upgrade);
2. load `--resources` resources through the real write path — `engine.db.repository.create` inside
   `Database.write()` transactions of 500 — so versions and the search index are the real ones:
   Patients (valid test NHS numbers) with 19 Observations each, every tenth Patient with a 20th;
   then VACUUM ANALYZE, so autovacuum does not run during the measurement;
3. start `sharedcare serve --workers W` and, in another process, the bare app (bench/bare_app.py:
   FastAPI + uvicorn, same worker count, the store's engine and pool, the same single SELECT per request,
   no auth, no logging, no middleware; its listening socket gets TCP_NODELAY, see that file); mint
   a token with `sharedcare token` (scope user/*.rs);
4. drive each from a separate process — wrk with a Lua script when it is installed, else a Python
   asyncio load generator (the output says which) — `--connections` keep-alive connections,
   `--warmup` seconds unrecorded, then `--duration` seconds recorded per server, in `--rounds`
   rounds alternating between the two servers; reads rotate over every Patient id, searches over
   the Patients that have exactly 20 Observations;
5. print req/s, p50 and p99 per scenario, the bare figures and the ratio, the non-200 count, and
   whether the goals are met: read ≥ 70 % of bare, 20-row search ≥ 1,000 req/s.

Run from the repository root:  .venv/bin/python bench/read_search.py [--resources 100000] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
OBSERVATIONS = 19  # per Patient; every tenth Patient gets one more, so that it has exactly SEARCH_ROWS
SEARCH_ROWS = 20
# Every Patient is registered with this practice and the bench user works there: a legitimate
# relationship, so the measured path is the full one (role, relationship, labels, consent, audit).
GP_ID, GP_ODS = "bench-gp-B86901", "B86901"
BATCH = 500  # resources per write transaction
READ_GOAL = 0.70  # sharedcare read req/s ÷ bare read req/s
SEARCH_GOAL = 1000.0  # sharedcare 20-row search req/s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/read_search.py",
        description="Load resources into a scratch PostgreSQL database through the real write path, then "
        "measure read by id and Observation?patient=X (20 rows) over HTTP with a token against "
        "`sharedcare serve`, next to a bare FastAPI app doing the same single SELECT on the same database "
        "in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--resources", type=int, default=100_000,
        help="at least this many resources to load (Patients with 19 or 20 Observations each)")
    add("--duration", type=float, default=10.0, help="seconds measured per scenario and server")
    add("--warmup", type=float, default=2.0, help="unrecorded seconds before each measurement")
    add("--rounds", type=int, default=2,
        help="alternate bare and sharedcare this many times, duration / rounds seconds each time")
    add("--connections", type=int, default=32, help="keep-alive HTTP connections")
    add("--threads", type=int, default=2, help="load generator threads (wrk) or processes (python)")
    add("--workers", type=int, default=2, help="server worker processes, the same for both servers")
    add("--database-url", default=DEFAULT_SERVER_URL,
        help="any database on the PostgreSQL server to use (trust auth); the benchmark creates a "
        "scratch database next to it and drops it at the end")
    add("--keep", action="store_true",
        help="keep the scratch database (its name is printed) and the server logs")
    add("--reuse", metavar="NAME",
        help="measure on database NAME, kept by an earlier --keep run, instead of creating and loading one "
        "(it is migrated, not loaded, and kept)")
    add("--load-generator", choices=["auto", "wrk", "python"], default="auto",
        help="wrk if installed (auto), or the built-in Python asyncio generator")
    add("--load-processes", type=int, default=os.cpu_count() or 1,
        help="loader processes, each writing its share of the Patients")
    add("--load-concurrency", type=int, default=2, help="write transactions in flight in each loader process")
    add("--bare-uvicorn-socket", action="store_true",
        help="bind the bare baseline's socket as uvicorn does: no TCP_NODELAY with --workers > 1 "
        "(see bench/bare_app.py)")
    add("--loadgen-worker", help=argparse.SUPPRESS)  # internal: one Python load generator process
    return parser.parse_args(argv)


# -- the data ---------------------------------------------------------------------------------------

VITALS = [("8867-4", "Heart rate", "/min", "beats/minute", 60),
          ("8310-5", "Body temperature", "Cel", "Cel", 36),
          ("8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg", 110),
          ("8462-4", "Diastolic blood pressure", "mm[Hg]", "mmHg", 70),
          ("9279-1", "Respiratory rate", "/min", "breaths/minute", 12),
          ("59408-5", "Oxygen saturation", "%", "%", 94)]  # fmt: skip
FAMILIES = ["Hughes", "Khan", "Smith", "Okafor", "Nowak", "Patel", "Jones", "Walker", "Begum", "Murphy"]
GIVEN = ["Alice", "Mohammed", "Olivia", "Jack", "Amelia", "Harry", "Isla", "Noah", "Ava", "Leo"]


@dataclass
class Plan:
    """What the loader writes: `patients` Patients, each with 19 Observations, every tenth with 20."""

    patients: int

    @classmethod
    def for_at_least(cls, resources: int) -> Plan:
        return cls(max(1, math.ceil(resources / (1 + OBSERVATIONS))))

    @staticmethod
    def patient_id(n: int) -> str:
        return f"bench-pat-{n}"

    @staticmethod
    def observations_of(n: int) -> int:
        return OBSERVATIONS + (1 if n % 10 == 0 else 0)

    @property
    def total(self) -> int:
        return 1 + sum(1 + self.observations_of(n) for n in range(self.patients))

    @property
    def search_patients(self) -> list[str]:
        """The Patients with exactly SEARCH_ROWS Observations (`bench-pat-0` is always one)."""
        return [self.patient_id(n) for n in range(self.patients) if self.observations_of(n) == SEARCH_ROWS]

    def resources(self, shard: int = 0, shards: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
        """Patient `n` then its Observations, for every n with n % shards == shard."""
        start = datetime(2023, 1, 1, 8, 0)
        if shard == 0:  # the GP practice every Patient is registered with: the bench user's organisation
            yield GP_ID, {"resourceType": "Organization", "name": "Bench Surgery",
                          "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": GP_ODS}]}
        for n in range(shard, self.patients, shards):
            pid = self.patient_id(n)
            yield pid, _patient(n, pid, nhs_number(n))
            for j in range(self.observations_of(n)):
                yield f"bench-obs-{n}-{j}", _observation(n, j, pid, start + timedelta(hours=n % 5000, days=j))


def nhs_number(n: int) -> str:
    """A valid NHS number in the 999 test range, unique for n < 500,000.

    Of two consecutive nine-digit stems at most one has no check digit (their weighted sums differ by 2
    modulo 11), so stem 2n or 2n + 1 gives one.
    """
    from engine.nhs_number import with_check_digit

    for stem in (2 * n, 2 * n + 1):
        number = with_check_digit(f"999{stem:06d}")
        if number is not None:
            return number
    raise AssertionError("unreachable")


def _patient(n: int, pid: str, nhs: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs},
                       {"system": "https://bench.sharedcare.example/mrn", "value": f"MRN{n:07d}"}],
        "active": True,
        "name": [{"use": "official", "family": FAMILIES[n % 10], "given": [GIVEN[n // 10 % 10]]}],
        "gender": "female" if n % 2 else "male",
        "birthDate": f"{1930 + n % 90}-{1 + n % 12:02d}-{1 + n % 28:02d}",
        "address": [{"line": [f"{1 + n % 200} Bench Street"], "city": "Leeds",
                     "postalCode": f"LS{1 + n % 28} 1AA"}],
        "generalPractitioner": [{"reference": f"Organization/{GP_ID}"}],
    }  # fmt: skip


def _observation(n: int, j: int, pid: str, when: datetime) -> dict[str, Any]:
    code, display, ucum, unit, base = VITALS[j % len(VITALS)]
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                 "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/bench-enc-{n}-{j // 5}"},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valueQuantity": {"value": base + (n + j) % 20, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": ucum},
    }  # fmt: skip


# -- the database -----------------------------------------------------------------------------------


def _plain(url: str) -> str:
    """A libpq URL for psycopg from a SQLAlchemy-style one."""
    for prefix in ("postgresql+psycopg://", "postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
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


def reused_plan(url: str) -> tuple[Plan, int]:
    """The plan an earlier run loaded into `url`, and how many resources it holds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        patients, total = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FILTER (WHERE res_type = 'Patient' AND res_id LIKE 'bench-pat-%'), count(*)"
            " FROM resources WHERE NOT deleted"
        ).fetchone()
    if not patients:
        raise RuntimeError("that database holds no benchmark Patients: load it with --keep first")
    return Plan(patients), total


def vacuum_analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


def load(url: str, plan: Plan, processes: int, concurrency: int) -> tuple[int, float]:
    """Write the plan through repository.create in `processes` processes; (resources written, seconds).

    Each process writes its share of the Patients (with their Observations), BATCH resources per
    `Database.write()` transaction, `concurrency` transactions in flight; the progress bar is drawn here.
    """
    import multiprocessing
    import queue as queues

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} resources/s" if task.speed else "", style="progress.data.speed")

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    children = [
        context.Process(
            target=_load_shard,
            args=(url, plan.patients, shard, processes, concurrency, messages),
            daemon=True,
        )
        for shard in range(processes)
    ]
    columns = (TextColumn("loading"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    written, finished, failures = 0, 0, []
    started = time.perf_counter()
    for child in children:
        child.start()
    with Progress(*columns, transient=True, console=_console()) as progress:
        task = progress.add_task("load", total=plan.total)
        while finished < len(children):
            try:
                kind, value = messages.get(timeout=1)
            except queues.Empty:
                if any(c.exitcode not in (None, 0) for c in children):
                    failures.append("a loader process died")
                    break
                continue
            if kind == "written":
                written += value
                progress.advance(task, value)
            else:
                finished += 1
                if kind == "failed":
                    failures.append(value)
    seconds = time.perf_counter() - started
    for child in children:
        child.join(10)
    if failures:
        raise RuntimeError("loading failed: " + "; ".join(failures))
    return written, seconds


def _load_shard(url: str, patients: int, shard: int, shards: int, concurrency: int, messages: Any) -> None:
    try:
        asyncio.run(_load_shard_async(url, Plan(patients), shard, shards, concurrency, messages))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        messages.put(("failed", f"{type(exc).__name__}: {exc}"))
    else:
        messages.put(("done", shard))


async def _load_shard_async(
    url: str, plan: Plan, shard: int, shards: int, concurrency: int, messages: Any
) -> None:
    from engine.db import repository
    from engine.db.database import open_database

    db = open_database(url, pool_size=max(concurrency, 1))
    source = plan.resources(shard, shards)

    def next_batch() -> list[tuple[str, dict[str, Any]]]:
        batch = []
        for item in source:
            batch.append(item)
            if len(batch) == BATCH:
                break
        return batch

    async def writer() -> None:
        while batch := next_batch():
            now = repository.utc_now()
            async with db.write() as conn:
                for res_id, resource in batch:
                    await repository.create(conn, resource, now=now, res_id=res_id)
            messages.put(("written", len(batch)))

    try:
        await asyncio.gather(*(writer() for _ in range(max(concurrency, 1))))
    finally:
        await db.dispose()


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 150)


# -- the servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log}:\n"
                    + self.log.read_text(errors="replace")[-3000:]
                )
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(
                    self.process.pid, signal.SIGKILL
                )  # its own session: only the server and its workers
                self.process.wait(5)


def start(name: str, argv: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, process, port, log)


def sharedcare_env(db_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    # HTTP only: SHAREDCARE_MLLP_PORT=0 keeps `serve` from opening the MLLP listener (2575 by default).
    env.update(SHAREDCARE_DATABASE_URL=db_url, SHAREDCARE_HOME=str(home), SHAREDCARE_MLLP_PORT="0")
    return env


def mint_token(env: dict[str, str]) -> str:
    argv = [
        str(BIN / "sharedcare"),
        "token",
        "--user",
        "bench",
        "--name",
        "Bench",
        "--role",
        "R8000",
        "--org",
        GP_ODS,
        "--scope",
        "user/*.rs",
        "--ttl",
        "1h",
    ]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sharedcare token failed: {done.stderr.strip()}")
    return done.stdout.strip()


# -- checks before measuring ---------------------------------------------------------------------------


def check_responses(sc: Server, bare: Server, token: str, plan: Plan) -> tuple[str | None, str | None]:
    """(problem with read, problem with search): each None when sharedcare and bare agree."""
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    pid = plan.patient_id(plan.patients // 2)
    read_problem = search_problem = None
    ours = httpx.get(f"{sc.base}/fhir/Patient/{pid}", headers=auth, timeout=10)
    theirs = httpx.get(f"{bare.base}/bare/Patient/{pid}", timeout=10)
    if ours.status_code != 200 or theirs.status_code != 200:
        read_problem = (
            f"read answered {ours.status_code} (sharedcare) / {theirs.status_code} (bare): {ours.text[:300]}"
        )
    elif orjson.loads(ours.content) != orjson.loads(theirs.content):
        read_problem = "sharedcare and bare returned different Patients"
    known = plan.search_patients[0]
    ours = httpx.get(f"{sc.base}/fhir/Observation", params={"patient": known}, headers=auth, timeout=10)
    theirs = httpx.get(f"{bare.base}/bare/Observation", params={"patient": known}, timeout=10)
    if ours.status_code != 200 or theirs.status_code != 200:
        search_problem = (
            f"search answered {ours.status_code} (sharedcare) / {theirs.status_code} (bare): "
            f"{ours.text[:300]}"
        )
    else:
        bundle, rows = orjson.loads(ours.content), orjson.loads(theirs.content)
        entries = bundle.get("entry", [])
        ids = sorted(e["resource"]["id"] for e in entries if e.get("search", {}).get("mode") == "match")
        if len(entries) != SEARCH_ROWS or len(rows) != SEARCH_ROWS or ids != sorted(r["id"] for r in rows):
            search_problem = (
                f"search returned {len(entries)} entries (sharedcare) / {len(rows)} rows (bare), "
                f"expected {SEARCH_ROWS} of the same Observations"
            )
    return read_problem, search_problem


# -- load generation -------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non200: int
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


WRK_SCRIPT = """
local paths = {%(paths)s}
local threads = {}
local counter = 0
non200 = 0
statuses = ""
local seen = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = (id * 7919) %% #paths
end

function request()
  counter = counter %% #paths + 1
  return wrk.format("GET", paths[counter])
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    seen[status] = (seen[status] or 0) + 1
    local parts = {}
    for code, n in pairs(seen) do table.insert(parts, string.format('"%%d":%%d', code, n)) end
    statuses = table.concat(parts, ",")
  end
end

function done(summary, latency, requests)
  local bad, codes = 0, {}
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non200")
    local s = thread:get("statuses")
    if s ~= "" then table.insert(codes, "{" .. s .. "}") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"non200":%%d,"errors":%%d,"statuses":[%%s]}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad,
    e.connect + e.read + e.write + e.timeout, table.concat(codes, ",")))
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(
    base: str,
    paths: list[str],
    headers: dict[str, str],
    args: argparse.Namespace,
    seconds: float,
    workdir: Path,
) -> Result:
    script = workdir / "rotate.lua"
    script.write_text(WRK_SCRIPT % {"paths": ",".join(_lua_string(p) for p in paths)})
    argv = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, base], capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = orjson.loads(line.removeprefix("BENCH_JSON "))
    statuses: dict[str, int] = {}
    for part in data["statuses"]:
        for code, n in part.items():
            statuses[code] = statuses.get(code, 0) + n
    return Result(
        data["requests"],
        data["duration_us"] / 1e6,
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
        data["non200"],
        data["errors"],
        statuses,
    )


def run_python(
    base: str,
    paths: list[str],
    headers: dict[str, str],
    args: argparse.Namespace,
    seconds: float,
    workdir: Path,
) -> Result:
    """The fallback: `--threads` processes of asyncio keep-alive connections (raw HTTP/1.1 over sockets)."""
    processes = max(1, min(args.threads, args.connections))
    share = [
        args.connections // processes + (1 if i < args.connections % processes else 0)
        for i in range(processes)
    ]
    spec_path = workdir / "loadgen.json"
    children = []
    for i, connections in enumerate(share):
        spec = {
            "base": base,
            "paths": paths[i::processes] or paths,
            "headers": headers,
            "connections": connections,
            "seconds": seconds,
        }
        path = spec_path.with_name(f"loadgen-{i}.json")
        path.write_bytes(orjson.dumps(spec))
        children.append(
            subprocess.Popen(
                [sys.executable, __file__, "--loadgen-worker", str(path)], stdout=subprocess.PIPE, cwd=REPO
            )
        )
    outputs = [orjson.loads(child.communicate()[0]) for child in children]
    latencies = sorted(x for out in outputs for x in out["latencies"])
    statuses: dict[str, int] = {}
    for out in outputs:
        for code, n in out["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return Result(
        sum(o["requests"] for o in outputs),
        max(o["seconds"] for o in outputs),
        percentile(0.50),
        percentile(0.99),
        sum(o["non200"] for o in outputs),
        sum(o["errors"] for o in outputs),
        statuses,
    )


def loadgen_worker(spec_path: str) -> None:
    spec = orjson.loads(Path(spec_path).read_bytes())
    host, port = spec["base"].removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{head}\r\n".encode() for p in spec["paths"]]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counts = {"requests": 0, "non200": 0, "errors": 0}

    async def connection(offset: int, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        i = offset
        try:
            while time.perf_counter() < stop_at:
                request = requests[i % len(requests)]
                i += 1
                sent = time.perf_counter()
                writer.write(request)
                head_bytes = await reader.readuntil(b"\r\n\r\n")
                status = int(head_bytes[9:12])
                length = 0
                for line in head_bytes.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - sent) * 1000)
                counts["requests"] += 1
                if status != 200:
                    counts["non200"] += 1
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(connection(i * 7919, started + spec["seconds"]) for i in range(spec["connections"]))
        )
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    sys.stdout.buffer.write(
        orjson.dumps({**counts, "seconds": seconds, "latencies": latencies, "statuses": statuses})
    )


# -- the run ---------------------------------------------------------------------------------------------


Target = tuple[str, list[str], dict[str, str]]  # base URL, paths to rotate over, headers


def measure(
    generator: Any, targets: dict[str, Target], args: argparse.Namespace, workdir: Path
) -> dict[str, Result]:
    """Warm each server up, then alternate between them for `--rounds` rounds of duration / rounds seconds.

    Alternating keeps a burst of other work on the machine from landing on one side only. req/s is over
    all rounds; p50 is the median of the rounds' p50s and p99 the worst round's p99.
    """
    if args.warmup > 0:
        for base, paths, headers in targets.values():
            generator(base, paths, headers, args, args.warmup, workdir)
    rounds = max(1, args.rounds)
    seconds = max(1.0, args.duration / rounds)
    runs: dict[str, list[Result]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (base, paths, headers) in targets.items():
            runs[name].append(generator(base, paths, headers, args, seconds, workdir))
    merged = {}
    for name, parts in runs.items():
        statuses: dict[str, int] = {}
        for part in parts:
            for code, n in part.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        merged[name] = Result(sum(r.requests for r in parts), sum(r.seconds for r in parts),
                              statistics.median(r.p50_ms for r in parts), max(r.p99_ms for r in parts),
                              sum(r.non200 for r in parts), sum(r.errors for r in parts), statuses)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen_worker:
        loadgen_worker(args.loadgen_worker)
        return 0
    from engine.db.migrate import upgrade

    console, out = _console(), _console(stderr=False)
    have_wrk = shutil.which("wrk") is not None
    if args.load_generator == "wrk" and not have_wrk:
        console.print("wrk is not installed (apt-get install -y wrk)")
        return 2
    use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and have_wrk)
    generator = run_wrk if use_wrk else run_python
    generator_name = (f"wrk, {args.threads} threads" if use_wrk else
                      f"Python asyncio load generator, {args.threads} processes"
                      + ("" if have_wrk else " (wrk is not installed)"))

    plan = Plan.for_at_least(args.resources)
    name = args.reuse or f"sharedcare_bench_{os.getpid()}_{random.randrange(1 << 20):05x}"
    keep = args.keep or bool(args.reuse)
    workdir = Path(tempfile.mkdtemp(prefix="sharedcare-bench-"))
    if args.reuse:
        db_url = _with_database(args.database_url, name)
    else:
        db_url = create_database(args.database_url, name)
    written, load_seconds = 0, 0.0
    servers: list[Server] = []
    results: dict[tuple[str, str], Result] = {}
    problems: list[str] = []
    loadavg: list[float] = []
    try:
        console.print(f"{'reusing' if args.reuse else 'scratch'} database {name} on PostgreSQL "
                      f"{server_version(db_url)}; migrating")
        upgrade(db_url)
        if args.reuse:
            plan, written = reused_plan(db_url)
            console.print(f"{written:,} resources, {plan.patients:,} Patients already loaded")
        else:
            written, load_seconds = load(db_url, plan, args.load_processes, args.load_concurrency)
            console.print(f"loaded {written:,} resources in {load_seconds:.1f} s "
                          f"({written / load_seconds:,.0f} resources/s); VACUUM ANALYZE")
            vacuum_analyze(db_url)

        env = sharedcare_env(db_url, workdir / "home")
        token = mint_token(env)  # creates the development signing key before the server reads it
        sc_port, bare_port = free_port(), free_port()
        workers = ["--workers", str(args.workers)]
        sc_argv = [str(BIN / "sharedcare"), "serve", "--port", str(sc_port), *workers]
        bare_argv = [sys.executable, str(REPO / "bench" / "bare_app.py"), "--port", str(bare_port), *workers]
        if args.bare_uvicorn_socket:
            bare_argv.append("--uvicorn-socket")
        sc = start("sharedcare", sc_argv, env, sc_port, workdir / "sharedcare.log")
        servers.append(sc)
        bare = start("bare", bare_argv, {**os.environ, "BENCH_DATABASE_URL": db_url}, bare_port,
                     workdir / "bare.log")
        servers.append(bare)
        sc.wait_healthy()
        bare.wait_healthy()

        read_problem, search_problem = check_responses(sc, bare, token, plan)
        auth = {"Authorization": f"Bearer {token}"}
        patients = [plan.patient_id(n) for n in range(plan.patients)]
        random.Random(7).shuffle(patients)
        searched = plan.search_patients
        scenarios = [
            ("read", READ_LABEL, [f"/fhir/Patient/{p}" for p in patients],
             [f"/bare/Patient/{p}" for p in patients], read_problem),
            ("search", SEARCH_LABEL, [f"/fhir/Observation?patient={p}" for p in searched],
             [f"/bare/Observation?patient={p}" for p in searched], search_problem),
        ]  # fmt: skip
        loadavg.append(os.getloadavg()[0])
        for key, label, sc_paths, bare_paths, problem in scenarios:
            if problem:
                problems.append(f"{label}: not measured — {problem}")
                continue
            console.print(f"measuring {label}: {args.warmup:g} s warm-up, then {args.duration:g} s on each "
                          f"server in {max(1, args.rounds)} alternating rounds")
            measured = measure(generator, {"bare": (bare.base, bare_paths, {}),
                                           "sharedcare": (sc.base, sc_paths, auth)}, args, workdir)
            for side, result in measured.items():
                results[(key, side)] = result
        loadavg.append(os.getloadavg()[0])
    finally:
        for server in servers:
            server.stop()
        if keep:
            console.print(f"kept database: {db_url} (--reuse {name})")
        else:
            drop_database(args.database_url, name)
        if args.keep:
            console.print(f"server logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    bad = report(out, args, plan, written, load_seconds, results, generator_name, loadavg)
    for problem in problems:
        out.print(f"[red]{problem}")
    return 1 if bad or problems else 0


READ_LABEL = "read by id (Patient)"
SEARCH_LABEL = f"search Observation?patient=X ({SEARCH_ROWS} rows)"


def report(out: Any, args: argparse.Namespace, plan: Plan, written: int, load_seconds: float,
           results: dict[tuple[str, str], Result], generator_name: str, loadavg: list[float]) -> int:
    """Print the table, the goals and whether every response was 200; return how many were not."""
    from rich.table import Table

    table = Table(title=f"sharedcare read/search over HTTP — {written:,} resources, {args.workers} workers "
                  f"each, {args.connections} connections, {args.duration:g} s per server and scenario, "
                  f"{os.cpu_count()} cores")
    columns = ("scenario", "req/s", "p50 ms", "p99 ms", "bare req/s", "bare p50 ms", "bare p99 ms", "ratio",
               "non-200 (sc / bare)")
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    if load_seconds:
        table.add_row("load (resources/s)", f"{written / load_seconds:,.0f}")

    def fault(r: Result) -> str:
        text = f"{r.non200}"
        if r.statuses:
            text += " (" + ", ".join(f"{code}×{n}" for code, n in sorted(r.statuses.items())) + ")"
        return text + (f" +{r.errors} socket errors" if r.errors else "")

    bad = 0
    for key, label in (("read", READ_LABEL), ("search", SEARCH_LABEL)):
        ours, theirs = results.get((key, "sharedcare")), results.get((key, "bare"))
        if ours is None or theirs is None:
            table.add_row(label, "not measured")
            continue
        bad += ours.non200 + ours.errors + theirs.non200 + theirs.errors
        table.add_row(label, f"{ours.rate:,.0f}", f"{ours.p50_ms:.2f}", f"{ours.p99_ms:.2f}",
                      f"{theirs.rate:,.0f}", f"{theirs.p50_ms:.2f}", f"{theirs.p99_ms:.2f}",
                      f"{ours.rate / theirs.rate:.0%}", f"{fault(ours)} / {fault(theirs)}")
    out.print(table)
    nagle = args.bare_uvicorn_socket and args.workers > 1
    if load_seconds:
        out.print(f"load: {written:,} resources by repository.create in {load_seconds:,.0f} s, {BATCH} per "
                  f"transaction, {args.load_processes} processes × {args.load_concurrency} transactions "
                  "in flight")
    out.print(f"load generator: {generator_name}, {args.connections} keep-alive connections; reads rotate "
              f"over {plan.patients:,} Patients, searches over {len(plan.search_patients):,} Patients with "
              f"{SEARCH_ROWS} Observations; ratio = sharedcare req/s ÷ bare req/s; bare socket: "
              + ("bound as uvicorn binds it (no TCP_NODELAY)" if nagle else "TCP_NODELAY")
              + (f"; 1-minute load average {loadavg[0]:.1f} before, {loadavg[-1]:.1f} after"
                 if loadavg else ""))
    read, bare_read = results.get(("read", "sharedcare")), results.get(("read", "bare"))
    search = results.get(("search", "sharedcare"))

    def verdict(ok: bool | None, detail: str) -> str:
        if ok is None:
            return "[yellow]not measured"
        return ("[green]met" if ok else "[red]NOT met") + f" ({detail})"

    read_ok = None if read is None or bare_read is None else read.rate >= READ_GOAL * bare_read.rate
    search_ok = None if search is None else search.rate >= SEARCH_GOAL
    out.print(f"goal: read ≥ {READ_GOAL:.0%} of bare — "
              + verdict(read_ok, f"{read.rate / bare_read.rate:.0%}" if read and bare_read else ""))
    out.print(f"goal: {SEARCH_ROWS}-row search ≥ {SEARCH_GOAL:,.0f} req/s — "
              + verdict(search_ok, f"{search.rate:,.0f} req/s" if search else ""))
    out.print("every response 200: " + ("[green]yes" if bad == 0 and results else f"[red]no ({bad} not)"))
    return bad


if __name__ == "__main__":
    sys.exit(main())
