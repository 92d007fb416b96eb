"""CPU time per request: sharedcare against the bare baseline, on a database bench/read_search.py kept.

Throughput on a shared 2-core machine moves with everything else the host runs; CPU time per request
moves far less. This serves one scenario (read by id, or the 20-row search about one patient) with one
worker, first from the bare app (bench/bare_app.py), then from `sharedcare serve`, drives each with wrk
(8 connections) and divides the CPU time (utime + stime in /proc) that the server's processes and all
of PostgreSQL's processes spent while it ran by the requests wrk made. PostgreSQL's background
processes (WAL writer, checkpointer, autovacuum) count: they work for the writes the audit makes.

Run from the repository root, on a database kept by `bench/read_search.py --keep`:

    .venv/bin/python bench/cpu_per_request.py sharedcare_bench_… [--scenario search] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import read_search as rs  # the loader, servers and wrk driver of the throughput bench

TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("database", help="a database kept by bench/read_search.py --keep")
    parser.add_argument("--scenario", choices=["read", "search"], default="search")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per server")
    parser.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections")
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432",
                        help="the PostgreSQL server holding the database (trust auth)")
    return parser.parse_args(argv)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def processes(*argv: str) -> list[int]:
    found = subprocess.run(["pgrep", *argv], capture_output=True, text=True, check=False).stdout.split()
    return [int(pid) for pid in found]


def postgres_cpu() -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in processes("-u", "postgres")}


@dataclass
class Measured:
    rate: float
    server_ms: float
    postgres_ms: float

    @property
    def total_ms(self) -> float:
        return self.server_ms + self.postgres_ms


def measure(server: rs.Server, paths: list[str], headers: dict[str, str], seconds: float, connections: int,
            workdir: Path) -> Measured:
    settings = SimpleNamespace(threads=1, connections=connections)
    rs.run_wrk(server.base, paths, headers, settings, 3, workdir)  # warm-up: prepared statements, caches
    pids = processes("-g", str(os.getpgid(server.process.pid)))
    server_before, postgres_before = sum(map(cpu_seconds, pids)), postgres_cpu()
    result = rs.run_wrk(server.base, paths, headers, settings, seconds, workdir)
    server_after, postgres_after = sum(map(cpu_seconds, pids)), postgres_cpu()
    postgres = sum(after - postgres_before.get(pid, 0.0) for pid, after in postgres_after.items())
    return Measured(result.requests / result.seconds, (server_after - server_before) / result.requests * 1000,
                    postgres / result.requests * 1000)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    plain_url = f"{args.server_url}/{args.database}"
    plan, written = rs.reused_plan(plain_url)
    workdir = Path(tempfile.mkdtemp(prefix="sharedcare-cpu-"))
    env = rs.sharedcare_env(plain_url.replace("postgresql://", "postgresql+psycopg://", 1), workdir / "home")
    token = rs.mint_token(env)
    if args.scenario == "read":
        patients = [plan.patient_id(n) for n in range(plan.patients)]
        random.Random(7).shuffle(patients)
        tails = [f"Patient/{p}" for p in patients]
    else:
        tails = [f"Observation?patient={p}" for p in plan.search_patients]
    sides = {
        "bare": ([sys.executable, str(rs.REPO / "bench" / "bare_app.py")], {**os.environ, "BENCH_DATABASE_URL": plain_url},
                 [f"/bare/{t}" for t in tails], {}),
        "sharedcare": ([str(rs.BIN / "sharedcare"), "serve"], env, [f"/fhir/{t}" for t in tails],
                       {"Authorization": f"Bearer {token}"}),
    }
    results: dict[str, Measured] = {}
    for name, (argv_head, side_env, paths, headers) in sides.items():
        port = rs.free_port()
        server = rs.start(name, [*argv_head, "--port", str(port), "--workers", "1"], side_env, port,
                          workdir / f"{name}.log")
        try:
            server.wait_healthy()
            results[name] = measure(server, paths, headers, args.duration, args.connections, workdir)
        finally:
            server.stop()

    table = Table(title=f"CPU per request — {args.scenario}, {written:,} resources, 1 worker, "
                        f"{args.connections} connections, {args.duration:g} s")
    for column in ("server", "req/s", "server CPU ms", "PostgreSQL CPU ms", "total ms"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, m in results.items():
        table.add_row(name, f"{m.rate:,.0f}", f"{m.server_ms:.3f}", f"{m.postgres_ms:.3f}", f"{m.total_ms:.3f}")
    console = Console()
    console.print(table)
    bare, ours = results["bare"], results["sharedcare"]
    console.print(f"sharedcare ÷ bare, CPU per request: server {ours.server_ms / bare.server_ms:.2f}, "
                  f"PostgreSQL {ours.postgres_ms / bare.postgres_ms:.2f}, total {ours.total_ms / bare.total_ms:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
