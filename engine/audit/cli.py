"""`sharedcare audit …`: verify the hash chain, export and report for IG officers.

    sharedcare audit verify                       # exit 1 if any record was edited, deleted or inserted
    sharedcare audit export --since 2026-01-01 --until 2026-02-01 > january.csv
    sharedcare audit report break-glass [--status pending]
    sharedcare audit report alerts --since 2026-01-05 --until 2026-01-06
    sharedcare audit report user 555000000101
    sharedcare audit report patient 9449306613

Configuration comes from the environment (SHAREDCARE_DATABASE_URL; alert thresholds from
SHAREDCARE_AUDIT_*, docs/audit.md). Reports print JSON; times are ISO 8601, UTC unless they carry
an offset; `--until` is exclusive. Exit status: 0 done, 1 chain broken, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

EXIT_BROKEN = 1


def add_audit_parser(commands: Any) -> None:
    """Register `sharedcare audit` on the CLI's subparsers."""
    audit = commands.add_parser("audit", help="verify, export and report on the audit log",
                                description="The hash-chained audit log: verify it, export it as CSV, report on it.")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = actions.add_parser("verify", help="check the hash chain; exit 1 on any edited, deleted or inserted record")
    verify.set_defaults(handler=_verify)

    export = actions.add_parser("export", help="write the audit log (oldest first) as CSV to stdout")
    _period(export)
    export.set_defaults(handler=_export)

    report = actions.add_parser("report", help="print a report as JSON")
    kinds = report.add_subparsers(dest="report", required=True, metavar="REPORT")
    break_glass = kinds.add_parser("break-glass", help="break-glass alerts and their reviews")
    break_glass.add_argument("--status", choices=["pending", "reviewed", "all"], default="all")
    alerts = kinds.add_parser("alerts", help="unusual access (default: the last 24 hours)")
    user = kinds.add_parser("user", help="one user's activity")
    user.add_argument("id", help="the user id (token sub / nhsid_useruid)")
    user.add_argument("--limit", type=int, default=100, help="latest entries listed (default 100)")
    patient = kinds.add_parser("patient", help="who accessed one patient's record")
    patient.add_argument("id", help="the Patient id")
    for parser in (break_glass, alerts, user, patient):
        _period(parser)
        parser.set_defaults(handler=_report)


def _period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_timestamp, metavar="T", help="recorded at or after T")
    parser.add_argument("--until", type=_timestamp, metavar="T", help="recorded before T")


def _timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {value!r}") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _run(work: Callable[[Any], Awaitable[int]]) -> int:
    from engine.config import load_settings
    from engine.db.database import open_database

    async def go() -> int:
        db = open_database(load_settings().database_url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def _verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from engine.audit.log import verify_database

    async def work(db: Any) -> int:
        report = await verify_database(db)
        print(report.text(), file=out or sys.stdout)
        return 0 if report.ok else EXIT_BROKEN

    return _run(work)


def _export(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from engine.audit.query import AuditFilter
    from engine.audit.reports import csv_chunks

    async def work(db: Any) -> int:
        stream = out or sys.stdout
        async for chunk in csv_chunks(db, AuditFilter(since=args.since, until=args.until)):
            stream.write(chunk)
        stream.flush()
        return 0

    return _run(work)


def _report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from engine.audit import reports
    from engine.audit.alerts import config_from

    async def work(db: Any) -> int:
        period = {"since": args.since, "until": args.until}
        if args.report == "break-glass":
            result = await reports.break_glass_log(db, status=args.status, **period)
        elif args.report == "user":
            result = await reports.user_activity(db, args.id, limit=args.limit, **period)
        elif args.report == "patient":
            result = await reports.patient_access(db, args.id, **period)
        else:
            until = args.until or datetime.now(UTC).replace(tzinfo=None)
            since = args.since or until - timedelta(days=1)
            result = await reports.alerts(db, since=since, until=until, config=config_from(os.environ))
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode(), file=out or sys.stdout)
        return 0

    return _run(work)
