"""Document definitions: which headings a transfer-of-care document has and which stored data fills them.

One JSON file per document type under `definitions/` (docs/transfer-of-care.md describes the format),
parsed here into frozen dataclasses and checked, so a new PRSB standard is a new file, not new code.
Headings and codes follow UK-REFERENCE §2 (PRSB headings as in the NHS ITK3 specifications).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from engine.search.registry import get_param, searched_as

Obligation = Literal["mandatory", "required", "optional"]
OBLIGATIONS: frozenset[str] = frozenset({"mandatory", "required", "optional"})
# What a source may take without a query: the document's own anchors.
ANCHORS: frozenset[str] = frozenset({"patient", "encounter", "author", "gp-practice"})
WINDOW_ANCHORS: frozenset[str] = frozenset({"now", "encounter-start", "encounter-end"})
SCOPES: frozenset[str] = frozenset({"patient", "encounter"})
# https://hl7.org/fhir/R4/codesystem-list-empty-reason.html
EMPTY_REASONS: frozenset[str] = frozenset({"nilknown", "notasked", "withheld", "unavailable", "notstarted", "closed"})
SNOMED = "http://snomed.info/sct"


class DefinitionError(ValueError):
    """A document definition file that does not follow the format; names the file and the element."""


@dataclass(frozen=True, slots=True)
class Window:
    """Keep resources dated within `days_before` days before `anchor`, or (`after`) at or after it."""

    anchor: str
    days_before: int | None = None
    after: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """Where a heading's entries come from: an anchor (`take`) or resources of `type` matching filters.

    `where`/`exclude` map a dotted element path to codes: a resource is kept when, for every `where`
    element, one of its codes is listed, and, for every `exclude` element, none is.
    """

    take: str | None = None
    type: str | None = None
    scope: str = "patient"
    where: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    exclude: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    window: Window | None = None
    max: int | None = None
    view: str | None = None


@dataclass(frozen=True, slots=True)
class Heading:
    title: str
    code: Mapping[str, str]
    obligation: Obligation
    empty_text: str
    empty_reason: str
    sources: tuple[Source, ...]

    @property
    def mandatory(self) -> bool:
        return self.obligation == "mandatory"


@dataclass(frozen=True, slots=True)
class DocumentDefinition:
    id: str
    title: str
    type: Mapping[str, str]
    care_setting: Mapping[str, str] | None
    standard: str
    headings: tuple[Heading, ...]
    receive_default: bool = False

    # What a reader of the patient's record needs, worked out once from the headings (`__post_init__`):
    # documents are gathered and discharges raised many times over with the same definition.
    resource_types: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The resource types the headings query, sorted (what the gatherer fetches)."""
    encounter_scoped_types: frozenset[str] = field(init=False, repr=False, compare=False)
    """The types every source of which is scoped to the encounter: only the resources that reference it
    can be selected, so a reader need not fetch the rest of the patient's (a lifetime of results). Only
    types with an `encounter` search parameter: a reader finds them by its index rows."""
    status_scoped_types: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    """The types every source of which keeps only some statuses (`where` on `status`), with the statuses
    any of them keeps: a reader need not fetch the others (a lifetime of completed lab orders). Only
    types with a `status` search parameter (a Flag has none)."""

    def __post_init__(self) -> None:
        types = tuple(sorted({s.type for h in self.headings for s in h.sources if s.type}))
        sources = {t: [s for h in self.headings for s in h.sources if s.type == t] for t in types}
        encounter_scoped = frozenset(t for t in types if _searchable(t, "encounter", "reference")
                                     and all(s.scope == "encounter" for s in sources[t]))
        status_scoped = {}
        for res_type in types:
            wheres = [s.where.get("status") for s in sources[res_type]]
            if all(wheres) and _searchable(res_type, "status", "token"):
                status_scoped[res_type] = frozenset(code for codes in wheres if codes for code in codes)
        object.__setattr__(self, "resource_types", types)
        object.__setattr__(self, "encounter_scoped_types", encounter_scoped)
        object.__setattr__(self, "status_scoped_types", MappingProxyType(status_scoped))


def _searchable(res_type: str, code: str, param_type: str) -> bool:
    """Whether `res_type` has the R4 search parameter `code` of type `param_type`, its index rows stored
    under its own name (engine.search.registry)."""
    param = get_param(res_type, code)
    return param is not None and param.type == param_type and searched_as(res_type, code) == (code,)


def _require(data: Mapping[str, Any], key: str, where: str, kind: type = str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise DefinitionError(f"{where}.{key} must be a non-empty {kind.__name__}")
    return value


def _coding(data: Any, where: str) -> Mapping[str, str]:
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where} must be a Coding object")
    _require(data, "system", where)
    _require(data, "code", where)
    return MappingProxyType({k: str(v) for k, v in data.items() if k in {"system", "code", "display"}})


def _codes(data: Any, where: str) -> Mapping[str, tuple[str, ...]]:
    if data is None:
        return MappingProxyType({})
    if not isinstance(data, Mapping) or not all(
        isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in data.values()
    ):
        raise DefinitionError(f"{where} must map element paths to non-empty lists of codes")
    return MappingProxyType({str(k): tuple(v) for k, v in data.items()})


def _window(data: Any, where: str) -> Window | None:
    if data is None:
        return None
    anchor = data.get("anchor") if isinstance(data, Mapping) else None
    if anchor not in WINDOW_ANCHORS:
        raise DefinitionError(f"{where}.anchor must be one of {sorted(WINDOW_ANCHORS)}")
    days, after = data.get("days_before"), bool(data.get("after", False))
    if (days is None) == (not after) or (days is not None and (not isinstance(days, int) or days < 0)):
        raise DefinitionError(f"{where} needs either days_before (a whole number of days) or after: true")
    return Window(anchor, days, after)


def _source(data: Any, where: str) -> Source:
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where} must be an object")
    take, res_type = data.get("take"), data.get("type")
    if (take is None) == (res_type is None):
        raise DefinitionError(f"{where} needs exactly one of take or type")
    if take is not None and take not in ANCHORS:
        raise DefinitionError(f"{where}.take must be one of {sorted(ANCHORS)}")
    if res_type is not None and (not isinstance(res_type, str) or not res_type[:1].isupper()):
        raise DefinitionError(f"{where}.type must be a FHIR resource type")
    scope = data.get("scope", "patient")
    if scope not in SCOPES:
        raise DefinitionError(f"{where}.scope must be one of {sorted(SCOPES)}")
    maximum = data.get("max")
    if maximum is not None and (not isinstance(maximum, int) or maximum < 1):
        raise DefinitionError(f"{where}.max must be a positive whole number")
    unknown = set(data) - {"take", "type", "scope", "where", "exclude", "window", "max", "view", "comment"}
    if unknown:
        raise DefinitionError(f"{where} has unknown keys {sorted(unknown)}")
    return Source(take=take, type=res_type, scope=scope, where=_codes(data.get("where"), f"{where}.where"),
                  exclude=_codes(data.get("exclude"), f"{where}.exclude"),
                  window=_window(data.get("window"), f"{where}.window"), max=maximum, view=data.get("view"))


def _heading(data: Any, where: str) -> Heading:
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where} must be an object")
    obligation = data.get("obligation")
    if obligation not in OBLIGATIONS:
        raise DefinitionError(f"{where}.obligation must be one of {sorted(OBLIGATIONS)}")
    empty_reason = data.get("empty_reason", "unavailable")
    if empty_reason not in EMPTY_REASONS:
        raise DefinitionError(f"{where}.empty_reason must be one of {sorted(EMPTY_REASONS)}")
    sources = data.get("sources", [])
    if not isinstance(sources, list):
        raise DefinitionError(f"{where}.sources must be a list")
    return Heading(
        title=_require(data, "title", where),
        code=_coding(data.get("code"), f"{where}.code"),
        obligation=obligation,
        empty_text=_require(data, "empty_text", where),
        empty_reason=empty_reason,
        sources=tuple(_source(s, f"{where}.sources[{i}]") for i, s in enumerate(sources)),
    )


def parse_definition(data: Any, where: str = "definition") -> DocumentDefinition:
    """A definition from its JSON form; raises DefinitionError naming the first element at fault."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{where} must be a JSON object")
    headings = _require(data, "headings", where, list)
    parsed = tuple(_heading(h, f"{where}.headings[{i}]") for i, h in enumerate(headings))
    codes = [(h.code["system"], h.code["code"]) for h in parsed]
    if len(set(codes)) != len(codes):
        raise DefinitionError(f"{where}.headings: two headings share a section code")
    care_setting = data.get("care_setting")
    return DocumentDefinition(
        id=_require(data, "id", where),
        title=_require(data, "title", where),
        type=_coding(data.get("type"), f"{where}.type"),
        care_setting=_coding(care_setting, f"{where}.care_setting") if care_setting is not None else None,
        standard=str(data.get("standard", "")),
        headings=parsed,
        receive_default=bool(data.get("receive_default", False)),
    )


@functools.cache
def definitions() -> Mapping[str, DocumentDefinition]:
    """Every packaged definition by id (engine/documents/definitions/*.json), read once."""
    folder = resources.files("engine.documents").joinpath("definitions")
    found: dict[str, DocumentDefinition] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        definition = parse_definition(json.loads(entry.read_text(encoding="utf-8")), entry.name)
        if definition.id != entry.name.removesuffix(".json"):
            raise DefinitionError(f"{entry.name}: id {definition.id!r} does not match the file name")
        found[definition.id] = definition
    return MappingProxyType(found)


def document_types() -> tuple[str, ...]:
    return tuple(sorted(definitions()))
