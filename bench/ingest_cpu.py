"""CPU a message of HL7 v2 ingest with group commit, by how many senders feed one process.

The MLLP bench (bench/ingest_mllp.py) gives the rate on this machine; this one says where the CPU goes and
what more concurrency would buy. In one process, with no MLLP in between:

1. create a scratch PostgreSQL database (`--database-url`, default the local server) and migrate it with the
   alembic migrations; dropped at the end unless --keep;
2. one `IngestContext` with group commit on (engine/ingest/group_commit.py, its defaults) and the collector
   tuned as `sharedcare serve` tunes it; the eight bench senders configured;
3. preload: `--preload` s of ingest from 8 senders, then VACUUM ANALYZE (a live store has statistics);
4. for each `--senders` count: that many tasks, each calling `engine.ingest.pipeline.ingest_message` with the
   bench's ADT/ORU mix (ingest_mllp.MessageStream: admissions, updates and discharges with their discharge
   documents, results) and waiting for its outcome before sending the next — `--warmup` s, then
   `--duration` s recorded: msg/s, messages a group-commit batch, the CPU of this process (Python) and of
   the scratch database's PostgreSQL backends, a message;
5. the baseline, in the same run: the same kind of messages parsed, mapped and index-extracted with no
   database at all (Python CPU a message), so each row's total can be read as a multiple of it;
6. print a table with, per row, the rate the machine's cores would allow at that CPU a message
   (cores × 1000 / total ms): the ceiling however the work were spread.

Run from the repository root:  .venv/bin/python bench/ingest_cpu.py [--senders 8 --senders 32] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ingest_mllp import (  # after the path set-up above
    DEFAULT_SERVER_URL,
    MessageStream,
    create_database,
    database_cpu,
    drop_database,
    senders_file,
    vacuum_analyze,
)

BASELINE_MESSAGES = 2000


@dataclass(frozen=True)
class Row:
    senders: int
    rate: float
    per_batch: float
    python_ms: float
    database_ms: float

    @property
    def total_ms(self) -> float:
        return self.python_ms + self.database_ms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest_cpu.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="CPU a message of HL7 v2 ingest with group commit in one process (no MLLP), by the number "
        "of concurrent senders, next to parsing, mapping and index extraction alone.")
    add = parser.add_argument
    add("--senders", type=int, action="append", help="concurrent senders (repeatable; default 8, 16 and 32)")
    add("--duration", type=float, default=10.0, help="seconds recorded per sender count")
    add("--warmup", type=float, default=3.0, help="unrecorded seconds before each measurement")
    add("--preload", type=float, default=10.0, help="seconds of ingest before measuring, then VACUUM ANALYZE")
    add("--patients", type=int, default=20_000, help="distinct patients")
    add("--database-url", default=DEFAULT_SERVER_URL, help="any database on the PostgreSQL server (trust auth)")
    add("--keep", action="store_true", help="keep the scratch database")
    return parser.parse_args(argv)


def baseline_ms(patients: int) -> float:
    """Python CPU a message to parse, map (with sensitivity labels) and extract the index rows of what it
    yields, with no database: the work a message needs whatever stores it."""
    from adapters.hl7v2.parser import decode_bytes, parse_message
    from adapters.registry import adapter_for
    from consent.policy import load_policy
    from engine.config import access_policy_path
    from engine.db.repository import stamp
    from engine.ingest.pipeline import with_sensitivity_labels
    from engine.search.extract import extract_index

    policy = load_policy(access_policy_path())
    streams = [MessageStream(k, 8, patients, "B", seq=9_000_000) for k in range(8)]
    raws = [next(streams[i % 8])[1] for i in range(BASELINE_MESSAGES)]
    configured = _senders(8)
    now = datetime(2026, 1, 1)
    started = time.process_time()
    for raw in raws:
        message = parse_message(decode_bytes(raw))
        sender = configured[message.sending_facility]
        result = with_sensitivity_labels(adapter_for(sender.kind)(message, sender), policy)
        for document in result.resources:
            extract_index(stamp(document, document["id"], 1, now))
    return 1000 * (time.process_time() - started) / len(raws)


def _senders(count: int) -> Any:
    from engine.ingest.senders import load_senders

    path = senders_file(Path(tempfile.mkdtemp(prefix="sharedcare-bench-cpu-")) / "senders.json", count)
    return load_senders({"SHAREDCARE_SENDERS_FILE": str(path)})


async def measure(db_url: str, name: str, args: argparse.Namespace, counts: list[int]) -> list[Row]:
    from engine.db.database import open_database
    from engine.ingest.group_commit import GroupCommit
    from engine.ingest.pipeline import IngestContext, ingest_message
    from engine.observability import REGISTRY

    db = open_database(db_url)
    ctx = IngestContext(db=db, senders=_senders(max(8, *counts)))
    ctx.group_commit = GroupCommit(db, ctx.now)
    done = 0

    async def sender(stream: MessageStream, until: float) -> None:
        nonlocal done
        for _, raw in stream:
            if time.monotonic() >= until:
                return
            outcome = await ingest_message(ctx, raw, transport="mllp", received_at=datetime.now(UTC))
            if outcome.code != "AA":
                raise RuntimeError(f"{outcome.code} {outcome.error_code}: {outcome.error_text}")
            done += 1

    async def run(senders: int, tag: str, seq: int, seconds: float) -> None:
        until = time.monotonic() + seconds
        streams = [MessageStream(k, senders, args.patients, tag, seq=seq) for k in range(senders)]
        await asyncio.gather(*(sender(s, until) for s in streams))

    def batches() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("sharedcare_ingest_batch_messages_count") or 0.0,
                REGISTRY.get_sample_value("sharedcare_ingest_batch_messages_sum") or 0.0)

    rows: list[Row] = []
    try:
        await run(8, "L", 1_000_000, args.preload)
        await asyncio.to_thread(vacuum_analyze, db_url)
        for i, senders in enumerate(counts):
            seq = 2_000_000 + i * 1_000_000
            warm = asyncio.create_task(run(senders, f"W{i}", seq, args.warmup + args.duration))
            await asyncio.sleep(args.warmup)
            first, python, database, (count, total) = done, time.process_time(), database_cpu(name), batches()
            started = time.perf_counter()
            await warm
            elapsed = time.perf_counter() - started
            stored = done - first
            count_after, total_after = batches()
            rows.append(Row(senders, stored / elapsed, (total_after - total) / max(1.0, count_after - count),
                            1000 * (time.process_time() - python) / stored,
                            1000 * (database_cpu(name) - database) / stored))
    finally:
        await db.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.db.migrate import upgrade
    from engine.serve import run_event_loop, tune_garbage_collection

    args = parse_args(argv)
    counts = args.senders or [8, 16, 32]
    name = f"sharedcare_bench_cpu_{os.getpid()}_{random.randrange(1 << 20):05x}"
    console = Console(stderr=True)
    db_url = create_database(args.database_url, name)
    try:
        console.print(f"scratch database {name}; migrating")
        upgrade(db_url)
        tune_garbage_collection()
        base = baseline_ms(args.patients)
        console.print("ingesting")
        rows = run_event_loop(measure(db_url, name, args, counts))
    finally:
        if args.keep:
            console.print(f"kept database: {db_url}")
        else:
            drop_database(args.database_url, name)
    cores = os.cpu_count() or 1
    table = Table(title=f"sharedcare HL7 v2 ingest, one process, group commit, no MLLP — CPU a message ({cores} cores)")
    for column in ("senders", "msg/s", "messages a batch", "Python ms/msg", "PostgreSQL ms/msg", "total ms/msg",
                   "÷ baseline", f"msg/s {cores} cores allow"):
        table.add_column(column, justify="right")
    table.add_row("baseline: parse, map, extract; no database", "", "", f"{base:.2f}", "", f"{base:.2f}", "1.0",
                  f"{cores * 1000 / base:,.0f}")
    for row in rows:
        table.add_row(str(row.senders), f"{row.rate:,.0f}", f"{row.per_batch:.1f}", f"{row.python_ms:.2f}",
                      f"{row.database_ms:.2f}", f"{row.total_ms:.2f}", f"{row.total_ms / base:.1f}",
                      f"{cores * 1000 / row.total_ms:,.0f}")
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
