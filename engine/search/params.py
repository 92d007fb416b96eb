"""Parse a FHIR search query string into a typed request (https://hl7.org/fhir/R4/search.html).

Pure: no database, no clock. The query is given as the (name, value) pairs of the URL, in order
(repeating a name ANDs, commas inside a value OR, `\\,` `\\|` `\\$` `\\\\` escape). The result is a
`SearchRequest` that `engine.search.query` turns into SQL; its `items` are the parameters that
were honoured, for the Bundle's self and paging links.

    >>> req = parse_search("Observation", [("patient", "123"), ("date", "ge2020"), ("_count", "10")])
    >>> [c.param for c in req.criteria], req.count
    (['patient', 'date'], 10)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

from engine.search.normalise import normalise_string, parse_fhir_date_range
from engine.search.normalise import parse_reference as parse_literal_reference
from engine.search.registry import ANY_TARGET, SearchParam, get_param

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
PREFIXES: frozenset[str] = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})

# Parameters that shape the result rather than select resources (search.html#Summary).
RESULT_PARAMS = frozenset(
    {"_sort", "_count", "_summary", "_total", "_elements", "_include", "_revinclude", "_format", "_pretty", "_cursor"}
)
_SINGLETONS = frozenset({"_sort", "_count", "_summary", "_total", "_elements", "_cursor"})
_SORTABLE_TYPES = frozenset({"date", "string", "token", "number", "quantity"})
_SUMMARY_VALUES = frozenset({"count", "true", "false", "data", "text"})
_TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\[\]]{0,63}")
# FHIR decimal (https://hl7.org/fhir/R4/datatypes.html#decimal); exponent bounded to stay a finite float.
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?")


class SearchError(Exception):
    """A search the server will not run: HTTP 400 with an OperationOutcome naming `param`."""

    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message
        self.status = status


# -- the criteria tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """`mode` is 'start' (default: starts with, on the normalised value), 'exact' or 'contains'."""

    mode: Literal["start", "exact", "contains"]
    value: str


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """`system|code`; None means "any". `system=''` means "no system" (`|code`)."""

    system: str | None
    code: str | None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class DateMatch:
    """The search value as the closed interval [low, high] (naive UTC) and its prefix."""

    prefix: Prefix
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberMatch:
    """`value` as written, and [low, high) its implicit precision range (or ±10% for `ap`)."""

    prefix: Prefix
    value: float
    low: float
    high: float
    system: str | None = None  # quantities only
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceMatch:
    """A reference by type and id (either may be None for "any") or by absolute/canonical `url`."""

    target_type: str | None
    target_id: str | None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class UriMatch:
    value: str
    below: bool = False


@dataclass(frozen=True, slots=True)
class IdMatch:
    value: str


Match = StringMatch | TokenMatch | DateMatch | NumberMatch | ReferenceMatch | UriMatch | IdMatch
Kind = Literal["string", "token", "date", "reference", "quantity", "number", "uri", "id", "lastUpdated"]


@dataclass(frozen=True, slots=True)
class Chain:
    """`ref:Type.param=…`: the referenced `target_type` resource must satisfy `condition`.

    `targets` (set by the access gate, engine.search.query.Visibility) limits the resources the chain
    may match to those the user may see, so that a chain cannot test what the user may not read.
    """

    target_type: str
    condition: Condition
    targets: object | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    """One parameter occurrence: true when any of `matches` holds (OR) on the `param` index rows.

    `negate` (`:not`) inverts the whole OR; `missing` (`:missing=true|false`) tests for index rows
    at all; `chain` tests the resources the reference points at.
    """

    param: str
    kind: Kind
    matches: tuple[Match, ...] = ()
    negate: bool = False
    missing: bool | None = None
    chain: Chain | None = None


@dataclass(frozen=True, slots=True)
class SortKey:
    param: str
    kind: str  # 'id', 'lastUpdated' or the parameter's type
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Include:
    """`_include=source_type:param[:target_type]` (or `_revinclude=`); `param` None is `*`."""

    source_type: str
    param: str | None
    target_type: str | None = None
    iterate: bool = False


@dataclass(frozen=True)
class SearchRequest:
    """A parsed search: criteria are ANDed; every other field shapes the result."""

    resource_type: str
    criteria: tuple[Condition, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = 50
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    summary: str | None = None
    total: str = "accurate"
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    items: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()


# -- escapes -----------------------------------------------------------------------------------


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on `sep` except where escaped by a backslash; escapes are kept for a later `unescape`."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            current.append(ch)
            current.append(next(chars, ""))
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    """`\\,` `\\|` `\\$` `\\\\` → the character itself (search.html#escaping)."""
    if "\\" not in value:
        return value
    return re.sub(r"\\(.)", r"\1", value)


# -- values by type ----------------------------------------------------------------------------


def _split_prefix(value: str) -> tuple[Prefix, str]:
    if len(value) > 2 and value[:2].isalpha() and value[:2].islower():
        if value[:2] not in PREFIXES:
            raise ValueError(f"unknown prefix {value[:2]!r}")
        return value[:2], value[2:]  # type: ignore[return-value]
    return "eq", value


def parse_date(param: str, raw: str) -> DateMatch:
    """`[prefix]date` → DateMatch; the date may be partial (`2020`, `2020-03`, …)."""
    try:
        prefix, text = _split_prefix(raw)
        low, high = parse_fhir_date_range(text)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. 2020-02-30, year 0, a bad offset
        raise SearchError(param, f"invalid date {raw!r}: {exc}") from exc
    return DateMatch(prefix, low, high)


def _decimal(param: str, text: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise SearchError(param, f"invalid number {text!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # unreachable after the regex, kept as a guard
        raise SearchError(param, f"invalid number {text!r}") from exc


def parse_number(param: str, raw: str) -> NumberMatch:
    """`[prefix]number`; `eq` uses the value's implicit precision (search.html#number): 100 is [99.5, 100.5)."""
    try:
        prefix, text = _split_prefix(raw)
    except ValueError as exc:
        raise SearchError(param, str(exc)) from exc
    number = _decimal(param, text)
    if prefix == "ap":
        margin = abs(number) / 10
        low, high = number - margin, number + margin
    else:
        exponent = number.as_tuple().exponent
        half = Decimal(5).scaleb(int(exponent) - 1)
        low, high = number - half, number + half
    return NumberMatch(prefix, float(number), float(low), float(high))


def parse_quantity(param: str, raw: str) -> NumberMatch:
    """`[prefix]number|system|code`, `[prefix]number||code` or `[prefix]number` (search.html#quantity)."""
    parts = split_unescaped(raw, "|")
    if len(parts) not in (1, 3):
        raise SearchError(param, f"invalid quantity {raw!r}: expected number|system|code")
    number = parse_number(param, unescape(parts[0]))
    if len(parts) == 1:
        return number
    system, code = unescape(parts[1]) or None, unescape(parts[2]) or None
    return NumberMatch(number.prefix, number.value, number.low, number.high, system, code)


def parse_token(param: str, raw: str) -> TokenMatch:
    """`system|code`, `|code` (no system), `system|` (any code) or `code` (search.html#token)."""
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        return TokenMatch(None, unescape(parts[0]))
    if len(parts) != 2 or parts == ["", ""]:
        raise SearchError(param, f"invalid token {raw!r}: expected [system|]code")
    system, code = unescape(parts[0]), unescape(parts[1])
    return TokenMatch(system, code or None)


def parse_reference(param: str, raw: str, targets: tuple[str, ...], type_modifier: str | None) -> ReferenceMatch:
    """`id`, `Type/id` or an absolute URL (search.html#reference); `targets` are the parameter's types.

    An absolute URL of a RESTful shape (`http://host/fhir/Patient/1`) matches by type and id and
    by the URL itself; any other URL (`urn:uuid:…`, a canonical) by the URL only.
    """
    value = unescape(raw)
    target = parse_literal_reference(value)
    if target is None:
        if "/" in value or "?" in value or value.startswith("#"):
            raise SearchError(param, f"invalid reference {raw!r}")
        return ReferenceMatch(type_modifier or (targets[0] if len(targets) == 1 else None), value)
    wanted = target.target_type
    if target.url is not None:
        if wanted is None or (targets and wanted not in targets) or type_modifier not in (None, wanted):
            return ReferenceMatch(None, None, target.url)
        return ReferenceMatch(wanted, target.target_id, target.url)
    if (targets and wanted not in targets) or type_modifier not in (None, wanted):
        raise SearchError(param, f"{wanted} is not a target type of {param}")
    return ReferenceMatch(wanted, target.target_id)


# -- one parameter -----------------------------------------------------------------------------


class _Unsupported(Exception):
    """An unknown parameter or modifier: a SearchError when strict, ignored when lenient."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"below", "missing"}),
    "reference": frozenset({"missing"}),
}


def _values(raw: str) -> list[str]:
    return [v for v in split_unescaped(raw, ",") if v != ""]


def _missing(param: str, kind: Kind, raw: str) -> Condition:
    if raw not in ("true", "false"):
        raise SearchError(param, f":missing takes true or false, not {raw!r}")
    return Condition(param, kind, missing=raw == "true")


def _special(name: str, modifier: str | None, raw: str) -> Condition:
    """`_id` (on resources.res_id) and `_lastUpdated` (on resources.last_updated), search.html#all."""
    if modifier is not None:
        raise _Unsupported(name, f"modifier :{modifier} is not supported on {name}")
    if name == "_id":
        return Condition("_id", "id", tuple(IdMatch(unescape(v)) for v in _values(raw)))
    return Condition("_lastUpdated", "lastUpdated", tuple(parse_date(name, v) for v in _values(raw)))


def _param_type(resource_type: str, code: str) -> tuple[str, tuple[str, ...]]:
    param = get_param(resource_type, code)
    if param is None:
        raise _Unsupported(code, f"unknown search parameter {code!r} for {resource_type}")
    return param.type, _targets(param)


def _targets(param: SearchParam) -> tuple[str, ...]:
    """A reference parameter's target types; () when it may point at any resource."""
    return () if ANY_TARGET in param.targets else tuple(param.targets)


def _condition(resource_type: str, name: str, raw: str, *, chained: bool = False) -> Condition:
    """Parse `name[:modifier]=raw` for `resource_type` (`name` may be a one-level chain)."""
    if "." in name:
        if chained:
            raise SearchError(name, "only one level of chaining is supported")
        return _chain(resource_type, name, raw)
    code, _, modifier = name.partition(":")
    modifier_or_none = modifier if _ else None
    if code in ("_id", "_lastUpdated"):
        return _special(code, modifier_or_none, raw)
    kind, targets = _param_type(resource_type, code)
    if kind == "reference" and modifier_or_none and _TYPE_NAME.fullmatch(modifier):
        if targets and modifier not in targets:
            raise SearchError(name, f"{modifier} is not a target type of {code}")
        return _values_condition(code, "reference", raw, targets, modifier)
    if modifier_or_none is not None and modifier not in _MODIFIERS.get(kind, frozenset()):
        raise _Unsupported(name, f"modifier :{modifier} is not supported on {kind} parameter {code}")
    if modifier == "missing":
        return _missing(code, kind, raw)  # type: ignore[arg-type]
    if kind not in _MODIFIERS:
        raise _Unsupported(name, f"{kind} search parameters are not supported ({code})")
    return _values_condition(code, kind, raw, targets, modifier_or_none)


def _values_condition(
    code: str, kind: str, raw: str, targets: tuple[str, ...], modifier: str | None
) -> Condition:
    values = _values(raw)
    matches: tuple[Match, ...]
    if kind == "string":
        mode = {"exact": "exact", "contains": "contains"}.get(modifier or "", "start")
        matches = tuple(
            StringMatch(mode, unescape(v) if mode == "exact" else normalise_string(unescape(v)))  # type: ignore[arg-type]
            for v in values
        )
    elif kind == "token":
        if modifier == "text":
            matches = tuple(TokenMatch(None, None, normalise_string(unescape(v))) for v in values)
        else:
            matches = tuple(parse_token(code, v) for v in values)
    elif kind == "date":
        matches = tuple(parse_date(code, v) for v in values)
    elif kind == "number":
        matches = tuple(parse_number(code, v) for v in values)
    elif kind == "quantity":
        matches = tuple(parse_quantity(code, v) for v in values)
    elif kind == "uri":
        matches = tuple(UriMatch(unescape(v), modifier == "below") for v in values)
    else:
        matches = tuple(parse_reference(code, v, targets, modifier) for v in values)
    return Condition(code, kind, matches, negate=modifier == "not")  # type: ignore[arg-type]


def _chain(resource_type: str, name: str, raw: str) -> Condition:
    """`ref[:Type].param[:modifier]=raw` (search.html#chaining), one level deep."""
    head, _, tail = name.partition(".")
    code, _, type_modifier = head.partition(":")
    kind, targets = _param_type(resource_type, code)
    if kind != "reference":
        raise SearchError(name, f"{code} is not a reference parameter and cannot be chained")
    if type_modifier:
        if not _TYPE_NAME.fullmatch(type_modifier) or (targets and type_modifier not in targets):
            raise SearchError(name, f"{type_modifier} is not a target type of {code}")
        target_type = type_modifier
    elif len(targets) == 1:
        target_type = targets[0]
    else:
        raise SearchError(name, f"{code} may refer to several types: name one, as {code}:Type.{tail}")
    if not tail:
        raise SearchError(name, "a chain needs a parameter after the '.'")
    inner = _condition(target_type, tail, raw, chained=True)
    return Condition(code, "reference", chain=Chain(target_type, inner))


# -- result parameters -------------------------------------------------------------------------


def _count(raw: str, max_count: int) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise SearchError("_count", f"_count must be a whole number from 0 to {max_count}, not {raw!r}")
    return min(int(raw), max_count)


def _sort(resource_type: str, raw: str) -> tuple[SortKey, ...]:
    keys = []
    for item in raw.split(","):
        descending = item.startswith("-")
        code = item[1:] if descending else item
        if code in ("_id", "_lastUpdated"):
            keys.append(SortKey(code, code.lstrip("_"), descending))
            continue
        param = get_param(resource_type, code) if code else None
        if param is None or param.type not in _SORTABLE_TYPES:
            raise SearchError("_sort", f"cannot sort {resource_type} by {code!r}")
        keys.append(SortKey(code, param.type, descending))
    return tuple(keys)


def _include(resource_type: str, name: str, raw: str, *, reverse: bool) -> Include:
    """`Source:param[:Target]` (search.html#include); for `_include` the source is the searched type."""
    base, _, modifier = name.partition(":")
    if modifier not in ("", "iterate", "recurse"):
        raise _Unsupported(name, f"modifier :{modifier} is not supported on {base}")
    iterate = modifier != ""
    parts = raw.split(":")
    if raw == "*" and not reverse:
        parts = [resource_type, "*"]
    if len(parts) not in (2, 3) or not _TYPE_NAME.fullmatch(parts[0]):
        raise SearchError(base, f"expected Type:param[:targetType], not {raw!r}")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not reverse and not iterate and source != resource_type:
        raise SearchError(base, f"{raw!r} does not start from {resource_type} (use {base}:iterate)")
    if target is not None and not _TYPE_NAME.fullmatch(target):
        raise SearchError(base, f"invalid target type in {raw!r}")
    if code == "*":
        return Include(source, None, target, iterate)
    param = get_param(source, code)
    if param is None or param.type != "reference":
        raise SearchError(base, f"{source} has no reference search parameter {code!r}")
    targets = _targets(param)
    if target is not None and targets and target not in targets:
        raise SearchError(base, f"{target} is not a target type of {source}:{code}")
    return Include(source, code, target, iterate)


def _elements(raw: str) -> tuple[str, ...]:
    names = tuple(n for n in raw.split(",") if n)
    for n in names:
        if not _ELEMENT_NAME.fullmatch(n):
            raise SearchError("_elements", f"invalid element name {n!r}")
    return names


def _choice(name: str, raw: str, allowed: frozenset[str]) -> str:
    if raw not in allowed:
        raise SearchError(name, f"{name} must be one of {', '.join(sorted(allowed))}, not {raw!r}")
    return raw


# -- the whole query ---------------------------------------------------------------------------

# What one search may ask for. Each parameter occurrence is a condition of its own in the statement, and
# PostgreSQL's planning time grows steeply with their number: thousands of repeated parameters would keep
# a database connection busy for minutes. Values cost too: PostgreSQL takes at most 32,767 bound values
# per statement (up to four per value), and SQLite's time grows faster than their number (30 parameters of
# 1,000 quantities took it nine minutes). Far above what a clinical system sends.
MAX_CRITERIA = 30  # parameter occurrences (AND)
MAX_VALUES = 1000  # comma-separated values of one occurrence (OR)
MAX_TOTAL_VALUES = 2000  # values of all occurrences together
MAX_INCLUDES = 20  # _include and _revinclude together


def parse_search(
    resource_type: str,
    items: list[tuple[str, str]],
    *,
    lenient: bool = False,
    default_count: int = 50,
    max_count: int = 1000,
) -> SearchRequest:
    """Parse `items` (the query's name/value pairs, in order) into a SearchRequest.

    Raises SearchError for invalid values always, and for unknown parameters and unsupported
    modifiers unless `lenient` (`Prefer: handling=lenient`, search.html#errors), in which case
    they are listed in `SearchRequest.ignored`.
    """
    criteria: list[Condition] = []
    honoured: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    result: dict[str, object] = {}
    includes: list[Include] = []
    revincludes: list[Include] = []
    total_values = 0
    for name, raw in items:
        base = name.partition(":")[0]
        try:
            if "\x00" in raw:  # no index holds one, and PostgreSQL text cannot carry it
                raise SearchError(name, "a search value may not contain a NUL character (U+0000)")
            if base in RESULT_PARAMS and not (base in ("_include", "_revinclude") or name == base):
                raise _Unsupported(name, f"modifier on {base} is not supported")
            if base in _SINGLETONS and base in result:
                raise SearchError(base, f"{base} may appear only once")
            if base == "_count":
                result[base] = count = _count(raw, max_count)
                raw = str(count)
            elif base == "_sort":
                result[base] = _sort(resource_type, raw)
            elif base == "_summary":
                result[base] = _choice(base, raw, _SUMMARY_VALUES)
            elif base == "_total":
                result[base] = _choice(base, raw, _TOTAL_VALUES)
            elif base == "_elements":
                result[base] = _elements(raw)
            elif base == "_cursor":
                result[base] = raw
                continue  # a paging position, not part of the query the links repeat
            elif base in ("_include", "_revinclude"):
                if len(includes) + len(revincludes) >= MAX_INCLUDES:
                    raise SearchError(base, f"a search may have at most {MAX_INCLUDES} _include and _revinclude")
                target = includes if base == "_include" else revincludes
                target.append(_include(resource_type, name, raw, reverse=base == "_revinclude"))
            elif base in ("_format", "_pretty"):
                pass  # the HTTP layer's business; kept in the links
            elif not _values(raw) and not name.endswith(":missing"):
                ignored.append((name, raw))  # an empty value selects nothing: ignore it
                continue
            else:
                if len(criteria) >= MAX_CRITERIA:
                    raise SearchError(name, f"a search may combine at most {MAX_CRITERIA} search parameters")
                values = len(_values(raw))
                if values > MAX_VALUES:
                    raise SearchError(name, f"a search parameter may have at most {MAX_VALUES} values")
                total_values += values
                if total_values > MAX_TOTAL_VALUES:
                    raise SearchError(name, f"a search may have at most {MAX_TOTAL_VALUES} values in all")
                criteria.append(_condition(resource_type, name, raw))
        except _Unsupported as exc:
            if not lenient:
                raise SearchError(exc.param, exc.message) from None
            ignored.append((name, raw))
            continue
        honoured.append((name, raw))
    return SearchRequest(
        resource_type=resource_type,
        criteria=tuple(criteria),
        sort=result.get("_sort", ()),  # type: ignore[arg-type]
        count=result.get("_count", default_count),  # type: ignore[arg-type]
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        summary=result.get("_summary"),  # type: ignore[arg-type]
        total=result.get("_total", "accurate"),  # type: ignore[arg-type]
        elements=result.get("_elements", ()),  # type: ignore[arg-type]
        cursor=result.get("_cursor"),  # type: ignore[arg-type]
        items=tuple(honoured),
        ignored=tuple(ignored),
    )
