"""`sharedcare replay`: reprocess stored HL7 v2 messages from the error queue.

    sharedcare replay --id 12 --id 13
    sharedcare replay --since 2026-01-05T09:00 --until 2026-01-05T10:00
    sharedcare replay --error-code 102 --status error --dry-run
    sharedcare replay --all

The lead wires `add_replay_parser` into engine/cli.py; configuration comes from the environment
(SHAREDCARE_DATABASE_URL, SHAREDCARE_SENDERS_FILE, SHAREDCARE_ACCEPT_UNKNOWN_SENDERS).
Exit status: 0 when every replayed message was processed (or nothing matched), 1 otherwise,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from engine.db.ingest_schema import ERROR, FAILED_STATUSES, REJECTED
from engine.ingest.replay import ReplayResult, ReplaySelection
from engine.search.normalise import naive_utc


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `replay` on the CLI's subparsers, with `handler=` set to run it."""
    parser = subparsers.add_parser(
        "replay",
        help="reprocess stored HL7 v2 messages that failed (the error queue)",
        description="Reprocess stored HL7 v2 messages with the current mappings and sender configuration. "
        "Idempotent: resource ids are deterministic and a message row is updated, never duplicated. "
        "Criteria combine (all must hold); times are ISO 8601, UTC unless they carry an offset.",
    )
    parser.add_argument("--id", dest="ids", type=int, action="append", default=[], metavar="N",
                        help="a stored message id (repeatable); processed messages are skipped")
    parser.add_argument("--since", type=_timestamp, metavar="T", help="received at or after T")
    parser.add_argument("--until", type=_timestamp, metavar="T", help="received before T")
    parser.add_argument("--error-code", metavar="CODE", help="HL7 table 0357 error code, e.g. 102 or 204")
    parser.add_argument("--status", choices=[ERROR, REJECTED], action="append",
                        help="only messages with this status (repeatable; default both)")
    parser.add_argument("--all", action="store_true", help="every failed message (no other criterion needed)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run each message in a transaction that is rolled back: report, change nothing")
    parser.set_defaults(handler=run_replay)
    return parser


def _timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {value!r}") from None
    return naive_utc(moment)


def selection_from(args: argparse.Namespace) -> ReplaySelection:
    return ReplaySelection(ids=tuple(args.ids), since=args.since, until=args.until, error_code=args.error_code,
                           statuses=tuple(args.status or FAILED_STATUSES))


def run_replay(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    if selection.is_empty and not args.all:
        print("replay: name messages with --id, --since/--until or --error-code (or --all)", file=sys.stderr)
        return 2
    results = asyncio.run(_replay(selection, args.dry_run))
    print_summary(results, dry_run=args.dry_run)
    return 0 if all(r.succeeded or r.detail.startswith("skipped") for r in results) else 1


async def _replay(selection: ReplaySelection, dry_run: bool) -> list[ReplayResult]:
    from engine.config import load_settings
    from engine.db.database import open_database
    from engine.ingest.pipeline import IngestContext
    from engine.ingest.replay import replay

    db = open_database(load_settings().database_url)
    try:
        return await replay(IngestContext.from_environment(db), selection, dry_run=dry_run)
    finally:
        await db.dispose()


def print_summary(results: Sequence[ReplayResult], *, dry_run: bool = False, out: TextIO | None = None) -> None:
    """A plain table: one line per message, then the totals."""
    out = out or sys.stdout
    if not results:
        print("no stored message matched", file=out)
        return
    header = ("id", "sender", "type", "control id", "before", "after", "detail")
    rows = [(str(r.message_id), r.sender or "", r.message_type or "", r.control_id or "",
             _state(r.before_status, r.before_code), _state(r.after_status, r.after_code), r.detail[:80])
            for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    processed = sum(r.succeeded for r in results)
    verb = "would be processed" if dry_run else "processed"
    print(f"\n{len(results)} messages: {processed} {verb}, {len(results) - processed} still failing or skipped",
          file=out)


def _state(status: str, code: str | None) -> str:
    return f"{status} {code}" if code else status
