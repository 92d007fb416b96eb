"""The access policy as data: role table, relationship windows, break-glass, sensitive code lists, opt-out.

The default lives in `consent/policy.json` (configuration as data); `policy_from_dict` builds a `Policy`
from any such mapping (pure) and `load_policy` is the one function in `consent/` that reads a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from consent.fhir_values import Coding, as_utc
from consent.model import INTERACTIONS, RELATIONSHIP_KINDS, Interaction, PatientConsent

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.json")
ALL_PATIENT_TYPES = "*"  # in a grant: every type outside the governance group
_GROUP_PREFIX = "@"


class PolicyError(ValueError):
    """A policy document that cannot be used as written."""


@dataclass(frozen=True)
class RoleGrant:
    """What one RBAC job role (UK-REFERENCE §4) may do: resource types per interaction; `ALL_PATIENT_TYPES`
    stands for every type outside the governance group."""

    name: str
    grants: Mapping[str, frozenset[str]]
    needs_relationship: bool = True

    def allows(self, interaction: Interaction, res_type: str, governance_types: frozenset[str]) -> bool:
        types = self.grants.get(interaction, frozenset())
        return res_type in types or (ALL_PATIENT_TYPES in types and res_type not in governance_types)


@dataclass(frozen=True)
class CodeList:
    """A sensitive code list: any matching code (exact, or by prefix) calls for `label` (UK-REFERENCE §5)."""

    name: str
    label: Mapping[str, str]
    codes: frozenset[Coding]
    prefixes: frozenset[Coding]

    def matches(self, system: str, code: str) -> bool:
        if (system, code) in self.codes:
            return True
        return any(system == s and code.startswith(prefix) for s, prefix in self.prefixes)


@dataclass(frozen=True)
class CodeListIndex:
    """The sensitive code lists by code, so that a resource's codes are looked up rather than compared with
    every list: exact (system, code) → positions of the lists holding it; system → (prefix, position)."""

    code_lists: tuple[CodeList, ...]
    exact: Mapping[Coding, tuple[int, ...]]
    prefixes: Mapping[str, tuple[tuple[str, int], ...]]

    def matching(self, codes: Iterable[Coding]) -> list[CodeList]:
        """The code lists that any of `codes` `matches`, in policy order."""
        found: set[int] = set()
        for system, code in codes:
            found.update(self.exact.get((system, code), ()))
            found.update(position for prefix, position in self.prefixes.get(system, ()) if code.startswith(prefix))
        return [self.code_lists[position] for position in sorted(found)] if found else []


def index_code_lists(code_lists: tuple[CodeList, ...]) -> CodeListIndex:
    """`code_lists` indexed by exact code and by system for their prefixes (`CodeListIndex`)."""
    exact: dict[Coding, tuple[int, ...]] = {}
    prefixes: dict[str, tuple[tuple[str, int], ...]] = {}
    for position, code_list in enumerate(code_lists):
        for coding in code_list.codes:
            exact[coding] = (*exact.get(coding, ()), position)
        for system, prefix in code_list.prefixes:
            prefixes[system] = (*prefixes.get(system, ()), (prefix, position))
    return CodeListIndex(code_lists, exact, prefixes)


@dataclass(frozen=True)
class BreakGlassRules:
    """Break-glass (UK-REFERENCE §4): a time box and what makes a free-text reason acceptable."""

    time_box: timedelta
    reason_min_chars: int
    reason_min_words: int
    reason_placeholders: frozenset[str]


@dataclass(frozen=True)
class OptOutMarker:
    """How a national data opt-out Consent is recognised: root provision deny plus any of these."""

    scopes: frozenset[Coding]
    policy_rules: frozenset[Coding]
    policy_uris: frozenset[str]

    def recognises(self, consent: PatientConsent) -> bool:
        return consent.root.type == "deny" and bool(
            consent.scopes & self.scopes
            or consent.policy_rules & self.policy_rules
            or consent.policy_uris & self.policy_uris
        )


@dataclass(frozen=True)
class Policy:
    """Everything `consent.decide` and `consent.labels` need to know about local policy."""

    roles: Mapping[str, RoleGrant]
    patient_grant: RoleGrant
    directory_types: frozenset[str]
    governance_types: frozenset[str]
    relationship_windows: Mapping[str, timedelta]
    break_glass: BreakGlassRules
    objection_break_glass_overrides: bool
    restricting_labels: frozenset[Coding]
    confidentiality_label: Mapping[str, str]
    code_system_aliases: Mapping[str, str]
    code_lists: tuple[CodeList, ...]
    opt_out: OptOutMarker
    withheld_read_status: int = 404

    @cached_property
    def code_list_index(self) -> CodeListIndex:
        """`code_lists` indexed for labelling (built on first use; the policy never changes)."""
        return index_code_lists(self.code_lists)


def load_policy(path: str | Path | None = None) -> Policy:
    """Read a policy JSON file (default: the packaged `consent/policy.json`) — the only I/O in `consent/`."""
    source = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyError(f"cannot read policy {source}: {exc}") from exc
    return policy_from_dict(data)


def policy_from_dict(data: Mapping[str, Any]) -> Policy:
    """A `Policy` from the mapping `policy.json` holds (pure); `PolicyError` names what is wrong."""
    try:
        groups = {name: frozenset(types) for name, types in data["resource_groups"].items()}
        profiles = {name: _role_grant(name, raw, groups) for name, raw in data["role_profiles"].items()}
        return Policy(
            roles={code: _named(profiles, raw, code) for code, raw in data["roles"].items()},
            patient_grant=profiles[data["patient_profile"]],
            directory_types=groups["directory"],
            governance_types=groups["governance"],
            relationship_windows=_windows(data["relationship_windows"]),
            break_glass=_break_glass(data["break_glass"]),
            objection_break_glass_overrides=bool(data["objection"]["break_glass_overrides"]),
            restricting_labels=frozenset(_coding(c) for c in data["restricting_labels"]),
            confidentiality_label=dict(data["confidentiality_label_when_sensitive"]),
            code_system_aliases=dict(data.get("code_system_aliases", {})),
            code_lists=tuple(_code_list(raw) for raw in data["sensitive_code_lists"]),
            opt_out=_opt_out(data["national_opt_out"]),
            withheld_read_status=_withheld_status(data.get("withheld_read_status", 404)),
        )
    except KeyError as exc:
        raise PolicyError(f"policy is missing {exc}") from exc


def _role_grant(name: str, raw: Mapping[str, Any], groups: Mapping[str, frozenset[str]]) -> RoleGrant:
    unknown = set(raw["grants"]) - set(INTERACTIONS)
    if unknown:
        raise PolicyError(f"role profile {name!r}: unknown interactions {sorted(unknown)}")
    grants = {interaction: _expand(types, groups, name) for interaction, types in raw["grants"].items()}
    return RoleGrant(name=name, grants=grants, needs_relationship=bool(raw.get("needs_relationship", True)))


def _expand(types: list[str], groups: Mapping[str, frozenset[str]], profile: str) -> frozenset[str]:
    expanded: set[str] = set()
    for entry in types:
        if entry.startswith(_GROUP_PREFIX):
            if entry[1:] not in groups:
                raise PolicyError(f"role profile {profile!r}: unknown resource group {entry!r}")
            expanded |= groups[entry[1:]]
        else:
            expanded.add(entry)
    return frozenset(expanded)


def _named(profiles: Mapping[str, RoleGrant], raw: Mapping[str, Any], code: str) -> RoleGrant:
    if raw["profile"] not in profiles:
        raise PolicyError(f"role {code}: unknown profile {raw['profile']!r}")
    profile = profiles[raw["profile"]]
    return RoleGrant(
        name=raw.get("name", code), grants=profile.grants, needs_relationship=profile.needs_relationship
    )


def _windows(raw: Mapping[str, Any]) -> dict[str, timedelta]:
    missing = set(RELATIONSHIP_KINDS) - set(raw)
    if missing:
        raise PolicyError(f"relationship_windows: no window for {sorted(missing)}")
    return {kind: timedelta(days=raw[kind]["days_after_end"]) for kind in RELATIONSHIP_KINDS}


def _break_glass(raw: Mapping[str, Any]) -> BreakGlassRules:
    return BreakGlassRules(
        time_box=timedelta(hours=raw["time_box_hours"]),
        reason_min_chars=int(raw["reason_min_chars"]),
        reason_min_words=int(raw["reason_min_words"]),
        reason_placeholders=frozenset(_normal_text(p) for p in raw["reason_placeholders"]),
    )


def _coding(raw: Mapping[str, Any]) -> Coding:
    return str(raw["system"]), str(raw["code"])


def _code_list(raw: Mapping[str, Any]) -> CodeList:
    return CodeList(
        name=raw["name"],
        label={k: raw["label"][k] for k in ("system", "code", "display") if k in raw["label"]},
        codes=frozenset((c["system"], normal_code(c["code"])) for c in raw.get("codes", [])),
        prefixes=frozenset((c["system"], normal_code(c["code"])) for c in raw.get("prefixes", [])),
    )


def _opt_out(raw: Mapping[str, Any]) -> OptOutMarker:
    return OptOutMarker(
        scopes=frozenset(_coding(c) for c in raw.get("scopes", [])),
        policy_rules=frozenset(_coding(c) for c in raw.get("policy_rules", [])),
        policy_uris=frozenset(raw.get("policy_uris", [])),
    )


def _withheld_status(value: object) -> int:
    if value not in (403, 404):
        raise PolicyError(f"withheld_read_status must be 403 or 404, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def normal_code(code: str) -> str:
    """Codes compared without case or the ICD-10 dot: "f32.1" and "F321" are the same code."""
    return code.replace(".", "").strip().upper()


def normal_coding(coding: Coding, policy: Policy) -> Coding:
    """(system, code) with the system's alias resolved (ICD-10 UK → ICD-10) and `normal_code` applied."""
    system, code = coding
    return policy.code_system_aliases.get(system, system), normal_code(code)


# --------------------------------------------------------------------------------------------------
# Break-glass

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _normal_text(text: str) -> str:
    return " ".join(word.lower() for word in _WORD.findall(text)) or text.strip().lower()


def check_break_glass_reason(text: str | None, policy: Policy) -> str | None:
    """Why a break-glass reason is not acceptable, or None when it is (UK-REFERENCE §4: a mandatory,
    non-trivial free-text reason). Rules: present; at least `reason_min_chars` characters; at least
    `reason_min_words` distinct words of two or more letters; not a placeholder (e.g. "test", "n/a")."""
    rules = policy.break_glass
    stripped = (text or "").strip()
    if not stripped:
        return "A break-glass reason is required"
    if _normal_text(stripped) in rules.reason_placeholders:
        return (
            f"The break-glass reason {stripped!r} is a placeholder: say why this patient's record is needed"
        )
    if len(stripped) < rules.reason_min_chars:
        return f"The break-glass reason must be at least {rules.reason_min_chars} characters"
    words = {word.lower() for word in _WORD.findall(stripped) if sum(ch.isalpha() for ch in word) >= 2}
    if len(words) < rules.reason_min_words:
        return f"The break-glass reason must have at least {rules.reason_min_words} different words"
    return None


def break_glass_active(started: datetime, now: datetime, policy: Policy) -> bool:
    """Is a break-glass grant that began at `started` still inside the policy's time box at `now`?"""
    elapsed = as_utc(now) - as_utc(started)
    return timedelta(0) <= elapsed <= policy.break_glass.time_box
