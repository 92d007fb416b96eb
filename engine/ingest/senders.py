"""Sender configuration from the environment: who may send us HL7 v2, read once at start-up.

`SHAREDCARE_SENDERS_FILE` names a JSON file holding a list of `adapters.senders.SenderConfig`
objects (docs/hl7v2-ingest.md, "Configuring senders"); without it, `fixtures/senders.json` in the
repository is used when present, else no sender is configured. `SHAREDCARE_ACCEPT_UNKNOWN_SENDERS=1`
lets messages from an MSH-4 that is not configured through with the generic hospital adapter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from adapters.senders import DEFAULT_TIMEZONE, SecurityLabel, SenderConfig, SenderKind

SENDERS_FILE_ENV = "SHAREDCARE_SENDERS_FILE"
ACCEPT_UNKNOWN_ENV = "SHAREDCARE_ACCEPT_UNKNOWN_SENDERS"
DEFAULT_SENDERS_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "senders.json"
_KINDS = frozenset(get_args(SenderKind))
_FIELDS = frozenset(f.name for f in fields(SenderConfig))
_TRUE = frozenset({"1", "true", "yes", "on"})


class SenderConfigError(ValueError):
    """The senders file cannot be used; the message names the file and the entry at fault."""


def sender_from_json(entry: Mapping[str, Any], where: str = "sender") -> SenderConfig:
    """One `SenderConfig` from its JSON object; unknown keys are an error, not silently ignored."""
    if not isinstance(entry, Mapping):
        raise SenderConfigError(f"{where}: expected a JSON object")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise SenderConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    ods_code = str(entry.get("ods_code") or "").strip()
    if not ods_code:
        raise SenderConfigError(f"{where}: ods_code is required")
    kind = entry.get("kind", "hospital")
    if kind not in _KINDS:
        raise SenderConfigError(f"{where}: kind {kind!r} is not one of {', '.join(sorted(_KINDS))}")
    z_segments = entry.get("z_segments", "keep")
    if z_segments not in ("keep", "reject"):
        raise SenderConfigError(f"{where}: z_segments must be 'keep' or 'reject'")
    timezone = entry.get("timezone", DEFAULT_TIMEZONE)
    if not _is_time_zone(timezone):
        raise SenderConfigError(f"{where}: timezone {timezone!r} is not an IANA time zone name (e.g. Europe/London)")
    labels = tuple(_label(label, f"{where}.security_labels[{i}]")
                   for i, label in enumerate(entry.get("security_labels") or ()))
    values = {k: v for k, v in entry.items() if k not in {"security_labels", "extra", "ods_code"}}
    return SenderConfig(**{**values, "ods_code": ods_code, "security_labels": labels,
                           "extra": dict(entry.get("extra") or {})})


def _is_time_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _label(value: Any, where: str) -> SecurityLabel:
    if not isinstance(value, Mapping) or not value.get("system") or not value.get("code"):
        raise SenderConfigError(f"{where}: a security label needs a system and a code")
    return SecurityLabel(str(value["system"]), str(value["code"]), value.get("display"))


def load_senders_file(path: Path) -> dict[str, SenderConfig]:
    """`{ods_code: SenderConfig}` from a JSON list (or an object with a "senders" list)."""
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SenderConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except orjson.JSONDecodeError as exc:
        raise SenderConfigError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(document, dict):
        document = document.get("senders")
    if not isinstance(document, list):
        raise SenderConfigError(f"{path}: expected a JSON list of senders")
    senders: dict[str, SenderConfig] = {}
    for i, entry in enumerate(document):
        sender = sender_from_json(entry, f"{path}[{i}]")
        if sender.ods_code in senders:
            raise SenderConfigError(f"{path}[{i}]: sender {sender.ods_code} is configured twice")
        senders[sender.ods_code] = sender
    return senders


def senders_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The senders file to use: `SHAREDCARE_SENDERS_FILE`, else the repository's demo file if present."""
    source = os.environ if environ is None else environ
    configured = source.get(SENDERS_FILE_ENV)
    if configured:
        return Path(configured)
    return DEFAULT_SENDERS_FILE if DEFAULT_SENDERS_FILE.is_file() else None


def load_senders(environ: Mapping[str, str] | None = None) -> dict[str, SenderConfig]:
    """The configured senders (`{}` when no file is configured or found)."""
    path = senders_path(environ)
    return load_senders_file(path) if path is not None else {}


def accept_unknown_senders(environ: Mapping[str, str] | None = None) -> bool:
    """`SHAREDCARE_ACCEPT_UNKNOWN_SENDERS` is 1/true/yes/on."""
    source = os.environ if environ is None else environ
    return (source.get(ACCEPT_UNKNOWN_ENV) or "").strip().lower() in _TRUE
