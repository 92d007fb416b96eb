"""`sharedcare access explain`: the `$access-explain` answer at the command line, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import Any

import orjson


def add_access_parser(commands: Any) -> None:
    access = commands.add_parser("access", help="access control: explain decisions for IG officers")
    actions = access.add_subparsers(dest="access_command", required=True, metavar="ACTION")
    explain = actions.add_parser(
        "explain", help="which rule decides each resource of a patient's record for a user, role and organisation")
    explain.add_argument("--patient", required=True, help="Patient id")
    explain.add_argument("--role", required=True, help="RBAC job role code of the user asked about, e.g. R8000")
    explain.add_argument("--org", help="ODS code of the user's organisation, e.g. RR8")
    explain.add_argument("--user", default="(any user)", help="user id (break-glass grants are per user)")
    explain.add_argument("--break-glass", dest="break_glass", action="store_true",
                         help="as if the user broke the glass for this patient")
    explain.add_argument("--json", action="store_true", help="print the FHIR Parameters resource")
    explain.set_defaults(handler=_explain)


def _explain(args: argparse.Namespace) -> int:
    return asyncio.run(_explain_async(args))


async def _explain_async(args: argparse.Namespace) -> int:
    from engine.access import AccessGate
    from engine.access_explain import Subject, explain_access
    from engine.auth import system_principal
    from engine.config import load_settings
    from engine.db.database import open_database
    from engine.outcomes import FhirError

    db = open_database(load_settings().database_url)
    # The command line acts as an information governance officer (and is audited as such).
    operator = replace(system_principal("sharedcare-cli", "sharedcare command line"), role="R8012")
    try:
        answer = await explain_access(AccessGate(db), operator, args.patient,
                                      Subject(args.user, args.role, args.org, args.break_glass))
    except FhirError as error:
        print(f"sharedcare access explain: {error}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for line in table(answer):
        print(line)
    return 0


def table(parameters: dict[str, Any]) -> list[str]:
    """One line per resource: reference, effect, deciding rule and its reason."""
    lines = []
    for parameter in parameters["parameter"]:
        if parameter["name"] != "resource":
            continue
        parts = {p["name"]: p for p in parameter["part"]}
        reference = parts["reference"]["valueReference"]["reference"]
        lines.append(f"{reference:<60} {parts['effect']['valueCode']:<8} {parts['rule']['valueCode']:<16} "
                     f"{parts['reason']['valueString']}")
    return lines
