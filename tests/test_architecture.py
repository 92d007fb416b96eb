"""The pure core stays pure (DESIGN.md, "Packages and what each owns").

`mappings/`, `consent/`, the parsing side of `adapters/` and the pure modules of `engine/` never
import database, web, HTTP or socket libraries, and never read the clock or the environment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"sqlalchemy", "fastapi", "starlette", "httpx", "socket", "psycopg", "asyncpg", "aiosqlite", "uvicorn", "asyncio"}
PURE_PACKAGES = ["mappings", "consent"]
PURE_MODULES = [
    "engine/search/fhirpath.py",
    "engine/search/normalise.py",
    "engine/search/extract.py",
    "engine/search/registry.py",
    "engine/search/params.py",
    "engine/validation.py",
    "engine/nhs_number.py",
    "engine/required_bindings.py",
    "engine/narrative.py",
    "engine/auth/scopes.py",
    "engine/auth/principal.py",
    "engine/fhir/negotiation.py",
    "adapters/hl7v2/parser.py",
    "adapters/hl7v2/framing.py",
    "adapters/hl7v2/ack.py",
    "adapters/senders.py",
]


def _pure_files() -> list[Path]:
    files = [REPO / m for m in PURE_MODULES]
    for package in PURE_PACKAGES:
        files.extend(sorted((REPO / package).rglob("*.py")))
    return files


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _clock_or_environment_reads(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in {"now", "utcnow", "today"} and getattr(node.value, "id", "") in {"datetime", "date"}:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")  # type: ignore[attr-defined]
            if node.attr in {"environ", "getenv"} and getattr(node.value, "id", "") == "os":
                found.append(f"line {node.lineno}: os.{node.attr}")
            if node.attr == "time" and getattr(node.value, "id", "") == "time":
                found.append(f"line {node.lineno}: time.time")
    return found


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_pure_module_imports_no_io_library(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not (_imported_roots(tree) & FORBIDDEN), f"{path.relative_to(REPO)} imports I/O libraries"
    assert not _clock_or_environment_reads(tree), _clock_or_environment_reads(tree)
