"""Bulk loading of FHIR JSON files: single resources, Bundles and NDJSON (`sharedcare load`).

Everything goes through the same writes, validation and gate as the REST API, as the system
principal `sharedcare-loader`. Transaction and batch Bundles are processed as such (so demo
fixtures with PUT entries reload idempotently); other Bundles and NDJSON lines are upserted one
resource at a time: PUT when they carry an id, POST otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.auth import system_principal
from engine.db.database import Database
from engine.db.repository import utc_now
from engine.fhir import writes
from engine.fhir.rest import FhirRequest, FhirService
from engine.fhir.transaction import process_bundle
from engine.ingest.files import is_golden_file
from engine.outcomes import FhirError

LOADER = system_principal("sharedcare-loader", "sharedcare bulk loader")

@dataclass
class LoadReport:
    files: int = 0
    resources: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One thing to store: a transaction/batch Bundle or a single resource, with where it came from."""

    source: str
    document: dict[str, Any]


HL7_SUFFIXES = frozenset({".hl7", ".txt", ".er7"})  # loaded as HL7 v2 messages, not FHIR JSON


def find_files(paths: list[Path]) -> list[Path]:
    """FHIR JSON and NDJSON files under `paths` (directories recursively), in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.suffix in {".json", ".ndjson"} and p.is_file() and not is_golden_file(p)))
        elif path.suffix.lower() not in HL7_SUFFIXES:
            found.append(path)
    return found


def read_units(path: Path) -> Iterator[Unit]:
    """The storable units of one file; raises ValueError with the line or file at fault."""
    if path.suffix == ".ndjson":
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if line.strip():
                yield Unit(f"{path}:{number}", _json_object(line, f"{path}:{number}"))
        return
    document = _json_object(path.read_bytes(), str(path))
    if document.get("resourceType") == "Bundle" and document.get("type") not in {"transaction", "batch"}:
        for index, entry in enumerate(document.get("entry") or []):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield Unit(f"{path}#entry[{index}]", entry["resource"])
        return
    yield Unit(str(path), document)


def count_units(path: Path) -> int:
    if path.suffix == ".ndjson":
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    return 1


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{where}: not a JSON object")  # noqa: TRY004 - reported as bad input
    return document


async def store_unit(service: FhirService, unit: Unit, base_url: str) -> int:
    """Store one unit; returns the number of resources it wrote."""
    document = unit.document
    request = FhirRequest("POST", [], {"prefer": "return=minimal"}, b"", LOADER, base_url)
    if document.get("resourceType") == "Bundle" and document.get("type") in {"transaction", "batch"}:
        response = await process_bundle(service, request, document)
        failed = [e for e in response["entry"] if not str(e.get("response", {}).get("status", "")).startswith("2")]
        if failed:
            raise ValueError(f"{unit.source}: {len(failed)} batch entries failed")
        return len(response["entry"])
    res_type = str(document.get("resourceType", ""))
    writes.check_type(res_type)
    resource = writes.validated(document, res_type)
    async with service.db.write() as conn:
        if resource.get("id"):
            await writes.update(conn, service.gate, LOADER, resource, resource["id"], now=utc_now())
        else:
            await writes.create(conn, service.gate, LOADER, resource, now=utc_now())
    return 1


async def load_paths(
    db: Database, service: FhirService, paths: list[Path], base_url: str,
    progress: Callable[[int], None] | None = None,
) -> LoadReport:
    report = LoadReport()
    for path in find_files(paths):
        report.files += 1
        try:
            for unit in read_units(path):
                try:
                    report.resources += await store_unit(service, unit, base_url)
                except FhirError as exc:
                    report.failures.append(f"{unit.source}: {exc}")
                except ValueError as exc:
                    report.failures.append(str(exc))
                if progress:
                    progress(1)
        except (OSError, ValueError) as exc:
            report.failures.append(str(exc))
    return report
