"""Search index rows for a resource: what each of its search parameters finds in it, normalised.

`extract_index` evaluates every registered parameter of the resource's type (expressions compiled once,
in engine.search.registry) and turns the nodes found into rows for the index tables of
engine/db/schema.py, by search parameter type (https://hl7.org/fhir/R4/search.html#ptypes). The
repository adds `res_pk` and `res_type` to each row. `patient_compartment` says which Patient's record a
resource belongs to (https://hl7.org/fhir/R4/compartmentdefinition-patient.html, simplified to the
`patient`/`subject` parameters).

Pure: no I/O beyond the registry loaded once at import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from consent.relationships import relationships_from
from engine.search.fhirpath import Evaluate, Item
from engine.search.normalise import (
    MAX_STRING,
    MAX_URL,
    ReferenceTarget,
    naive_utc,
    normalise_string,
    parse_fhir_date_range,
    parse_reference,
)
from engine.search.registry import SUPPORTED_TYPES, SearchParam, narrower_params, params_for

INDEX_KINDS = ("string", "token", "date", "reference", "quantity", "number", "uri", "relationship")
"""The index tables, named by search parameter type (engine.db.schema.INDEX_TABLES)."""

Row = dict[str, Any]
_MAX_QUANTITY_CODE = 64  # idx_quantity.code
_COMPARTMENT_PARAMS = ("patient", "subject")
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_QUANTITY_TYPES = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"}
)
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_T = TypeVar("_T")
_CACHE_SIZE = 4096  # recent texts remembered (names and addresses recur across a patient's resources)


# --- strings: https://hl7.org/fhir/R4/search.html#string -----------------------------------------


def _string_texts(items: Iterable[Item]) -> list[str]:
    """The texts a string parameter matches: a plain string, or the parts of a HumanName or Address."""
    texts: list[str] = []
    for node, fhir_type in items:
        if type(node) is str:
            texts.append(node)
        elif type(node) is dict:
            shape = fhir_type if fhir_type in ("HumanName", "Address") else _string_shape(node)
            if shape == "HumanName":
                texts += _parts(node, ("text", "family"), ("given", "prefix", "suffix"))
            elif shape == "Address":
                texts += _parts(node, ("text",), ("line",))
                texts += _parts(node, ("city", "district", "state", "postalCode", "country"), ())
            elif type(node.get("text")) is str:
                texts.append(node["text"])
    return texts


def _string_shape(node: Mapping[str, Any]) -> str | None:
    if any(k in node for k in ("family", "given", "prefix", "suffix")):
        return "HumanName"
    if any(k in node for k in ("line", "city", "district", "state", "postalCode", "country")):
        return "Address"
    return None


def _parts(node: Mapping[str, Any], single: tuple[str, ...], repeated: tuple[str, ...]) -> list[str]:
    parts = [value for key in single if type(value := node.get(key)) is str]
    for key in repeated:
        values = node.get(key)
        if type(values) is list:
            parts += [v for v in values if type(v) is str]
    return parts


@lru_cache(maxsize=_CACHE_SIZE)
def _string_value(text: str) -> tuple[str, str] | None:
    """(folded, exact) of a text, None when it folds to nothing."""
    value = normalise_string(text)
    return (value, text[:MAX_STRING]) if value else None


# --- tokens: https://hl7.org/fhir/R4/search.html#token -------------------------------------------


def _token_values(items: Iterable[Item]) -> list[tuple[str, str, str | None]]:
    """(system, code, display) for Codings, CodeableConcepts, Identifiers, ContactPoints and primitives."""
    found: list[tuple[str, str, str | None]] = []
    for node, fhir_type in items:
        kind = type(node)
        if kind is str:
            found.append(("", node, None))
        elif kind is dict:
            shape = fhir_type or _token_shape(node)
            if shape == "CodeableConcept":
                codings = node.get("coding")
                if type(codings) is list:
                    for coding in codings:
                        if type(coding) is dict:
                            found.append(_coding(coding))
            elif shape == "Identifier":
                system, value = node.get("system"), node.get("value")
                found.append((_text(system), _text(value), None))
            else:
                found += _complex_tokens(node, shape)
        elif kind is bool:
            found.append(("", "true" if node else "false", None))
        elif kind is int:
            found.append(("", str(node), None))
    return found


def _complex_tokens(node: Mapping[str, Any], shape: str | None) -> list[tuple[str, str, str | None]]:
    """Tokens of a Coding or ContactPoint (_token_values reads CodeableConcepts and Identifiers itself)."""
    if shape == "Coding":
        return [_coding(node)]
    if shape == "ContactPoint":
        # The ContactPoint's own system (phone, email…) is not a token system.
        return [("", _text(node.get("value")), None)]
    return []


def _coding(coding: Mapping[str, Any]) -> tuple[str, str, str | None]:
    system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
    return (
        system if type(system) is str else "",
        code if type(code) is str else "",
        display if type(display) is str else None,
    )


def _token_shape(node: Mapping[str, Any]) -> str | None:
    """The datatype of a token node the path did not type, from its shape."""
    if "coding" in node or ("text" in node and "value" not in node):
        return "CodeableConcept"
    if "code" in node:
        return "Coding"
    if "value" in node:
        return "ContactPoint" if node.get("system") in _CONTACT_SYSTEMS else "Identifier"
    return None


def _text(value: Any) -> str:
    return value if type(value) is str else ""


# --- dates: https://hl7.org/fhir/R4/search.html#date ---------------------------------------------


def _date_values(items: Iterable[Item]) -> list[tuple[datetime | None, datetime | None]]:
    """[low, high] for dates, dateTimes, instants, Periods and each event of a Timing."""
    found: list[tuple[datetime | None, datetime | None]] = []
    for node, fhir_type in items:
        if type(node) is str:
            if fhir_type is None or fhir_type in _DATE_TYPES:
                moment = _date_range(node)
                if moment is not None:
                    found.append(moment)
        elif type(node) is dict:
            shape = fhir_type or ("Period" if ("start" in node or "end" in node) else "Timing")
            if shape == "Period":
                low, high = _date_range(node.get("start")), _date_range(node.get("end"))
                # A Period's open ends stay open (None).
                if low is not None or high is not None:
                    found.append(((low[0] if low else None), (high[1] if high else None)))
            elif shape == "Timing" and type(node.get("event")) is list:
                found += filter(None, map(_date_range, node["event"]))
    return found


def _date_range(value: Any) -> tuple[datetime, datetime] | None:
    if type(value) is not str:
        return None
    try:
        return parse_fhir_date_range(value)
    except ValueError:
        return None


# --- references: https://hl7.org/fhir/R4/search.html#reference -----------------------------------


def _reference_values(items: Iterable[Item]) -> list[tuple[str | None, str | None, str | None]]:
    """(target_type, target_id, url) for literal references and for canonical/uri values."""
    found: list[tuple[str | None, str | None, str | None]] = []  # ReferenceTargets among them
    for node, fhir_type in items:
        if type(node) is dict:
            literal = node.get("reference")
            # Identifier- or display-only references are not indexed.
            if type(literal) is str and (fhir_type is None or fhir_type == "Reference"):
                target = parse_reference(literal)
                if target is not None:
                    found.append(target if target.target_type is not None else _declared(target, node))
        elif type(node) is str and node:
            found.append((None, None, node[:MAX_URL]))
    return found


def _declared(
    target: ReferenceTarget, reference: Mapping[str, Any]
) -> tuple[str | None, str | None, str | None]:
    """A target whose literal does not name its type (urn:uuid:…), typed by `Reference.type` if given."""
    declared = reference.get("type")
    if type(declared) is str and declared:
        return declared.rsplit("/", 1)[-1], target.target_id, target.url
    return target


# --- quantities and numbers: https://hl7.org/fhir/R4/search.html#quantity ------------------------


def _quantity_values(items: Iterable[Item]) -> list[tuple[str, str, float]]:
    """(system, code or unit, value); a Range gives its low and its high (the table has one value)."""
    found: list[tuple[str, str, float]] = []
    for node, fhir_type in items:
        if type(node) is not dict:
            continue
        shape = fhir_type or ("Range" if ("low" in node or "high" in node) else "Quantity")
        if shape in _QUANTITY_TYPES:
            found += _quantity(node)
        elif shape == "Range":
            for end in ("low", "high"):
                if type(node.get(end)) is dict:
                    found += _quantity(node[end])
    return found


def _quantity(quantity: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    value = _number(quantity.get("value"))
    if value is None:
        return []
    code = _text(quantity.get("code")) or _text(quantity.get("unit"))
    return [(_text(quantity.get("system"))[:MAX_STRING], code[:_MAX_QUANTITY_CODE], value)]


def _number(value: Any) -> float | None:
    if type(value) not in (int, float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _number_values(items: Iterable[Item]) -> list[float]:
    return [number for node, _ in items if (number := _number(node)) is not None]


def _uri_values(items: Iterable[Item]) -> list[str]:
    return [node[:MAX_URL] for node, _ in items if type(node) is str and node]


# --- rows ----------------------------------------------------------------------------------------


def _unique(values: list[_T]) -> Iterable[_T]:
    """`values` in order without repeats (most parameters find one or two values, which need no dict)."""
    if len(values) < 2:
        return values
    if len(values) == 2:
        return values if values[0] != values[1] else values[:1]
    return dict.fromkeys(values)


def _strings(param: str, items: Collection[Item]) -> list[Row]:
    found: list[tuple[str, str]] = []
    for text in _string_texts(items):
        value = _string_value(text)
        if value is not None:
            found.append(value)
    rows: list[Row] = []
    for value, exact in _unique(found):
        rows.append({"param": param, "value": value, "exact": exact})
    return rows


def _tokens(param: str, items: Collection[Item]) -> list[Row]:
    rows: list[Row] = []
    for system, code, display in _unique(_token_values(items)):
        if code:
            rows.append({
                "param": param,
                "system": system[:MAX_STRING],
                "code": code[:MAX_STRING],
                "display": display[:MAX_STRING] if display else None,
            })
    return rows


def _dates(param: str, items: Collection[Item]) -> list[Row]:
    rows: list[Row] = []
    for low, high in _unique(_date_values(items)):
        rows.append({"param": param, "low": low, "high": high})
    return rows


def _references(param: str, items: Collection[Item]) -> list[Row]:
    rows: list[Row] = []
    for target_type, target_id, url in _unique(_reference_values(items)):
        rows.append({"param": param, "target_type": target_type, "target_id": target_id, "url": url})
    return rows


def _quantities(param: str, items: Collection[Item]) -> list[Row]:
    rows = _unique(_quantity_values(items))
    return [{"param": param, "system": s, "code": c, "value": v} for s, c, v in rows]


def _numbers(param: str, items: Collection[Item]) -> list[Row]:
    return [{"param": param, "value": v} for v in _unique(_number_values(items))]


def _uris(param: str, items: Collection[Item]) -> list[Row]:
    return [{"param": param, "value": v} for v in _unique(_uri_values(items))]


_ROWS: Mapping[str, Callable[[str, Collection[Item]], list[Row]]] = {
    "string": _strings,
    "token": _tokens,
    "date": _dates,
    "reference": _references,
    "quantity": _quantities,
    "number": _numbers,
    "uri": _uris,
}


_PLAN_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class _Extractor:
    """Search parameters of one kind that share an expression (a Patient's `name` and `phonetic`):
    evaluated and turned into rows once, the rows copied for the other codes."""

    codes: tuple[str, ...]
    kind: str
    expression: str
    evaluate: Evaluate
    rows: Callable[[str, Collection[Item]], list[Row]]
    root_keys: frozenset[str] | None
    second_keys: frozenset[str] | None

    def may_find(self, resource: Mapping[str, Any]) -> bool:
        """Whether the expression can find something in `resource`, judged by its keys (CompiledExpression
        `root_keys` and `second_keys`)."""
        if self.root_keys is None:
            return True
        if not any(key in resource for key in self.root_keys):
            return False
        if self.second_keys is None:
            return True
        (key,) = self.root_keys
        element = resource[key]
        return type(element) is not dict or any(k in element for k in self.second_keys)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The extractors of one resource type, ordered, and those worth running on a resource."""

    extractors: tuple[_Extractor, ...]
    # Top-level elements whose own keys decide whether some extractor may find something (`meta`).
    nested: tuple[str, ...]
    # (kind, wider parameter, the narrower ones): rows the narrower ones hold are not kept for the wider
    # one as well (engine.search.registry.narrower_params).
    shared: tuple[tuple[str, str, frozenset[str]], ...] = ()
    # Resources of one type from one source share their key sets: remember the choice per key tuple.
    chosen: dict[tuple[Any, ...], tuple[_Extractor, ...]] = field(default_factory=dict)

    def applicable(self, resource: Mapping[str, Any]) -> tuple[_Extractor, ...]:
        """The extractors that can find something in `resource`, judged by its keys."""
        keys = (*resource, *(tuple(e) if type(e := resource.get(k)) is dict else None for k in self.nested))
        found = self.chosen.get(keys)
        if found is None:
            found = tuple(extractor for extractor in self.extractors if extractor.may_find(resource))
            if len(self.chosen) >= _PLAN_CACHE_SIZE:
                self.chosen.clear()
            self.chosen[keys] = found
        return found


def _extractors(params: Mapping[str, SearchParam]) -> list[_Extractor]:
    """The parameters in code order. One with the same expression as the previous one of its kind joins
    it, so that the rows of each kind keep that order."""
    extractors: list[_Extractor] = []
    last_of_kind: dict[str, int] = {}
    for code, param in sorted(params.items()):
        if param.type not in _ROWS:
            continue
        last = last_of_kind.get(param.type)
        if last is not None and extractors[last].expression == param.expression:
            extractors[last] = replace(extractors[last], codes=extractors[last].codes + (code,))
            continue
        last_of_kind[param.type] = len(extractors)
        evaluator = param.evaluator
        extractors.append(_Extractor(
            (code,), param.type, param.expression, evaluator.evaluate, _ROWS[param.type], evaluator.root_keys,
            evaluator.second_keys,
        ))
    return extractors


def _plan(resource_type: str) -> _Plan:
    params = params_for(resource_type)
    extractors = _extractors(params)
    nested = {key for e in extractors if e.second_keys is not None for key in e.root_keys or ()}
    shared = tuple((params[wide].type, wide, frozenset(narrow))
                   for wide, narrow in sorted(narrower_params(resource_type).items()))
    return _Plan(tuple(extractors), tuple(sorted(nested)), shared)


_PLANS: Mapping[str, _Plan] = {t: _plan(t) for t in SUPPORTED_TYPES}


def extract_index(resource: Mapping[str, Any]) -> dict[str, list[Row]]:
    """Index rows of `resource` by table kind: {"string": [...], "token": [...], …, "uri": [...]}.

    Every kind is present (possibly empty). Rows carry exactly their table's columns besides
    `res_pk`/`res_type`: string {param, value, exact}; token {param, system, code, display}; date
    {param, low, high}; reference {param, target_type, target_id, url}; quantity {param, system, code,
    value}; number {param, value}; uri {param, value}. Duplicate rows of one parameter are dropped, and
    so are a parameter's rows that a narrower one holds (`subject` rows that are `patient` rows; a search
    reads both: engine.search.registry.searched_as). A resource of a type that is not supported gives no
    rows.
    https://hl7.org/fhir/R4/search.html#ptypes
    """
    rows: dict[str, list[Row]] = {kind: [] for kind in INDEX_KINDS}
    resource_type = resource.get("resourceType")
    plan = _PLANS.get(resource_type)  # type: ignore[arg-type]
    if plan is None:
        return rows
    root = [(resource, resource_type)]
    for extractor in plan.applicable(resource):
        items = extractor.evaluate(root)
        if not items:
            continue
        found = extractor.rows(extractor.codes[0], items)
        table = rows[extractor.kind]
        table += found
        for code in extractor.codes[1:]:
            table += [{**row, "param": code} for row in found]
    if plan.shared:
        _store_shared_rows_once(rows, plan.shared)
    patient = _compartment_from_rows(resource, rows["reference"])
    rows["relationship"] = _relationship_rows(resource, patient)
    return rows


def _store_shared_rows_once(rows: dict[str, list[Row]], shared: tuple[tuple[str, str, frozenset[str]], ...]) -> None:
    """Leave out each wider parameter's rows that a narrower one holds (all decided on the rows as extracted)."""
    dropped: dict[str, set[tuple[str, tuple[Any, ...]]]] = {}
    for kind, wide, narrow in shared:
        held = {_row_values(row) for row in rows[kind] if row["param"] in narrow}
        if held:
            dropped.setdefault(kind, set()).update((wide, values) for values in held)
    for kind, drop in dropped.items():
        wide_params = {wide for wide, _ in drop}
        rows[kind] = [row for row in rows[kind]
                      if row["param"] not in wide_params or (row["param"], _row_values(row)) not in drop]


def _row_values(row: Row) -> tuple[Any, ...]:
    return tuple([value for column, value in row.items() if column != "param"])


def relationship_rows(resource: Mapping[str, Any]) -> list[Row]:
    """Care relationships `resource` establishes (`consent.relationships`), as rows of
    care_relationships {param (the kind), patient_id, org, low, high} in naive UTC."""
    return _relationship_rows(resource, patient_compartment(resource))


def _relationship_rows(resource: Mapping[str, Any], patient: str | None) -> list[Row]:
    return [{"param": r.kind, "patient_id": r.patient_id, "org": r.org, "low": r.start and naive_utc(r.start),
             "high": r.end and naive_utc(r.end)} for r in relationships_from(resource, patient) if r.patient_id]


def _compartment_from_rows(resource: Mapping[str, Any], reference_rows: list[Row]) -> str | None:
    """patient_compartment(resource) read from the reference rows extract_index has just built: a
    relative reference to a Patient is exactly a row with that target type, an id and no URL."""
    if resource.get("resourceType") == "Patient":
        return patient_compartment(resource)
    for code in _COMPARTMENT_PARAMS:
        for row in reference_rows:
            if (row["param"] == code and row["target_type"] == "Patient" and row["target_id"] is not None
                    and row["url"] is None):
                return row["target_id"]
    return None


def patient_compartment(resource: Mapping[str, Any], local_bases: Collection[str] = ()) -> str | None:
    """The id of the Patient whose record `resource` belongs to, or None.

    A Patient belongs to itself; any other resource to the first Patient its `patient` (else
    `subject`) search parameter references. Only relative references count, and absolute ones under
    one of `local_bases` (this server's base URLs): an absolute reference to another server is a
    different patient. https://hl7.org/fhir/R4/compartmentdefinition-patient.html
    """
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        own_id = resource.get("id")
        return own_id if type(own_id) is str and own_id else None
    evaluators = _COMPARTMENT_EVALUATORS.get(resource_type, ()) if type(resource_type) is str else ()
    for evaluate in evaluators:
        for node, _ in evaluate([(resource, resource_type)]):
            patient_id = _local_patient(node, local_bases)
            if patient_id is not None:
                return patient_id
    return None


def _compartment_evaluators(resource_type: str) -> tuple[Evaluate, ...]:
    params = params_for(resource_type)
    found = (params.get(code) for code in _COMPARTMENT_PARAMS)
    return tuple(p.evaluator.evaluate for p in found if p is not None and p.type == "reference")


_COMPARTMENT_EVALUATORS: Mapping[str, tuple[Evaluate, ...]] = {
    t: _compartment_evaluators(t) for t in SUPPORTED_TYPES
}


def _local_patient(node: Any, local_bases: Collection[str]) -> str | None:
    if type(node) is not dict or type(node.get("reference")) is not str:
        return None
    target = parse_reference(node["reference"])
    if target is None or target.target_type != "Patient" or target.target_id is None:
        return None
    if target.url is not None and not any(
        target.url.startswith(base.rstrip("/") + "/Patient/") for base in local_bases
    ):
        return None
    return target.target_id
