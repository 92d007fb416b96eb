"""`sharedcare audit …`: verify the hash chain, export and report for IG officers."""

from __future__ import annotations

from typing import Any


def add_audit_parser(commands: Any) -> None:
    """Register `sharedcare audit` on the CLI's subparsers."""
