"""`sharedcare` — the command line: serve, db upgrade, load, token.

Configuration comes from the environment (engine/config.py); `sharedcare COMMAND --help` tells
each command's options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.access_cli import add_access_parser
from engine.audit.cli import add_audit_parser
from engine.auth.cli import add_token_parser
from engine.config import Settings, load_settings
from engine.ingest.cli import add_replay_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sharedcare",
        description="sharedcare: FHIR R4 shared care record engine. Configured by SHAREDCARE_* environment "
        "variables (see README.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve the FHIR API (http://127.0.0.1:8080/fhir) and MLLP (127.0.0.1:2575) by default"
    )
    serve.add_argument("--host", help="interface to listen on (default SHAREDCARE_HTTP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default SHAREDCARE_HTTP_PORT or 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--banner", action="store_true", help="print how to get a token and a first curl")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="apply the alembic migrations (creates the database)")
    upgrade.add_argument("--revision", default="head")
    upgrade.set_defaults(handler=_db_upgrade)

    load = commands.add_parser(
        "load",
        help="load FHIR JSON resources, Bundles and NDJSON, and HL7 v2 message files (.hl7, .er7, .txt; "
        "one or many messages, FHS/BHS batches), from files or folders",
    )
    load.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    load.add_argument("--if-empty", action="store_true", help="do nothing if the store already holds resources")
    load.set_defaults(handler=_load)

    add_token_parser(commands)
    add_replay_parser(commands)
    add_audit_parser(commands)
    add_access_parser(commands)

    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


def _db_upgrade(args: argparse.Namespace) -> int:
    from engine.db.migrate import upgrade

    settings = load_settings()
    _ensure_home(settings)
    upgrade(settings.database_url, args.revision)
    print(f"database at revision {args.revision}: {_redacted(settings.database_url)}", file=sys.stderr)
    return 0


def _load(args: argparse.Namespace) -> int:
    return asyncio.run(_load_async(args))


async def _load_async(args: argparse.Namespace) -> int:
    from engine.access import AccessGate
    from engine.db import repository
    from engine.db.database import open_database
    from engine.fhir.rest import FhirService
    from engine.ingest.files import hl7_files, ingest_files
    from engine.ingest.pipeline import IngestContext
    from engine.loader import count_units, find_files, load_paths

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = load_settings()
    db = open_database(settings.database_url)
    failures = 0
    try:
        if args.if_empty:
            async with db.read() as conn:
                if await repository.count_resources(conn) > 0:
                    print("store already holds resources: nothing loaded", file=sys.stderr)
                    return 0
        fhir_files = find_files(args.paths)
        if fhir_files:
            service = FhirService(db, AccessGate(db), max_body_bytes=settings.max_body_bytes,
                                  default_count=settings.default_page_size, max_count=settings.max_page_size)
            with _progress(sum(count_units(p) for p in fhir_files)) as advance:
                report = await load_paths(db, service, args.paths, settings.base_url, progress=advance)
            for failure in report.failures:
                print(f"failed: {failure}", file=sys.stderr)
            print(f"loaded {report.resources} resources from {report.files} files"
                  + (f"; {len(report.failures)} failed" if report.failures else ""), file=sys.stderr)
            failures += len(report.failures)
        message_files = hl7_files([p for p in args.paths if p.is_dir()] +
                                  [p for p in args.paths if p.is_file() and p not in fhir_files])
        if message_files:
            with _progress(len(message_files)) as advance:
                hl7_report = await ingest_files(IngestContext.from_environment(db), message_files)
                advance(len(message_files))
            for failure in hl7_report.failures:
                print(f"failed: {failure}", file=sys.stderr)
            print(hl7_report.summary(), file=sys.stderr)
            failures += len(hl7_report.failures)
    finally:
        await db.dispose()
    return 1 if failures else 0


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal for long loads; silent otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("loading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=total < 20 or not sys.stderr.isatty()) as progress:
        task = progress.add_task("load", total=total)
        yield lambda n: progress.advance(task, n)


def _serve(args: argparse.Namespace) -> int:
    from engine.serve import run

    settings = load_settings()
    _ensure_home(settings)
    host = args.host or settings.http_host
    port = args.port or settings.http_port
    if args.banner:
        _print_banner(settings, host, port)
    return run(settings, host, port, workers=args.workers, log_level=args.log_level)


def _print_banner(settings: Settings, host: str, port: int) -> None:
    base = f"http://{host}:{port}/fhir"
    print(
        f"""
sharedcare is serving FHIR R4 at {base}

Get a token (a GP at Leeds practice B86901, valid for 8 hours):
  export TOKEN=$(.venv/bin/sharedcare token --user 555000000101 --name "Dr Aisha Rahman" --role R8000 \\
      --org B86901 --scope 'user/*.cruds' --ttl 8h)

Then, for example:
  curl -s -H "Authorization: Bearer $TOKEN" '{base}/Patient?family=hughes' | python3 -m json.tool

CapabilityStatement: {base}/metadata   OpenAPI: http://{host}:{port}/docs   Metrics: http://{host}:{port}/metrics
HL7 v2 over MLLP: {"off" if not settings.mllp_port else f"127.0.0.1:{settings.mllp_port}"} (senders configured in \
$SHAREDCARE_SENDERS_FILE, default fixtures/senders.json)
""",
        file=sys.stderr,
        flush=True,
    )


def _ensure_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':')[0]}@{host}"
    return url


if __name__ == "__main__":
    sys.exit(main())
