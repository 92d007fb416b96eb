"""Tests for engine.auth. Shared helpers live here (test modules import them relatively)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.auth.keys import DevKey, issue_token
from engine.config import Settings, load_settings

EPOCH = 1_700_000_000


class FakeClock:
    """A clock the tests move by hand, so expiry and JWKS refetch rules run without sleeping."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings as `load_settings` builds them for SHAREDCARE_HOME=home, with field overrides."""
    return dataclasses.replace(load_settings({"SHAREDCARE_HOME": str(home)}), **overrides)


def mint(dev_key: DevKey, settings: Settings, now: float, **overrides: Any) -> str:
    """A development token valid for an hour from `now`; keyword overrides replace defaults."""
    fields: dict[str, Any] = {
        "issuer": settings.auth_issuer,
        "audience": settings.auth_audience,
        "user": "user-1",
        "name": "Dr Ada Smith",
        "role": "R8000",
        "org": "RR8",
        "scope": "user/*.cruds",
        "ttl_seconds": 3600,
        "now": int(now),
    }
    fields.update(overrides)
    return issue_token(dev_key, **fields)
