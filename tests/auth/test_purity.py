"""The deciding modules stay pure (DESIGN.md): no network, database, web framework or clock."""

from __future__ import annotations

import ast
from pathlib import Path

import engine.auth

PURE_MODULES = ("scopes.py", "principal.py")
FORBIDDEN = {"sqlalchemy", "fastapi", "starlette", "httpx", "socket", "os", "time", "datetime", "anyio"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_scope_and_principal_modules_are_pure() -> None:
    package = Path(engine.auth.__file__).parent
    for name in PURE_MODULES:
        assert not imported_roots(package / name) & FORBIDDEN, name
