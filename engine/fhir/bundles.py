"""Bundles assembled by joining stored JSON text (https://hl7.org/fhir/R4/bundle.html).

A 20-entry searchset built through pydantic models costs ~20 ms; joining the stored bytes of
each resource into a Bundle skeleton costs microseconds (DESIGN.md, "Measured costs").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

from engine.db.repository import format_instant, utc_now


@dataclass(frozen=True, slots=True)
class Entry:
    """One Bundle entry: its parts other than `resource` as a dict, and the resource's JSON text."""

    fields: dict[str, Any]
    resource: str | bytes | None = None


def _entry_bytes(entry: Entry) -> bytes:
    head = orjson.dumps(entry.fields)
    if entry.resource is None:
        return head
    body = entry.resource.encode() if isinstance(entry.resource, str) else entry.resource
    if head == b"{}":
        return b'{"resource":' + body + b"}"
    # Insert the resource after fullUrl (if any) by splicing it in before the closing brace.
    return head[:-1] + b',"resource":' + body + b"}"


def bundle_bytes(
    bundle_type: str,
    entries: Sequence[Entry],
    *,
    total: int | None = None,
    links: Iterable[tuple[str, str]] = (),
    bundle_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A Bundle as JSON bytes; `links` are (relation, url) pairs."""
    import uuid

    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": bundle_id or str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(utc_now())},
        "type": bundle_type,
    }
    if total is not None:
        head["total"] = total
    link_list = [{"relation": rel, "url": url} for rel, url in links]
    if link_list:
        head["link"] = link_list
    if extra:
        head.update(extra)
    prefix = orjson.dumps(head)[:-1]
    return prefix + b',"entry":[' + b",".join(_entry_bytes(e) for e in entries) + b"]}"


def resource_with_elements(content: str, elements: Sequence[str], mandatory: Sequence[str] = ()) -> bytes:
    """Keep only `_elements` (plus resourceType, id, meta and mandatory ones), tagged SUBSETTED.

    https://hl7.org/fhir/R4/search.html#elements
    """
    resource = orjson.loads(content)
    keep = {"resourceType", "id", "meta", *elements, *mandatory}
    subset = {k: v for k, v in resource.items() if k in keep or _choice_base(k) in keep}
    return orjson.dumps(_subsetted(subset))


_SUMMARY_DROP = {"text", "contained", "extension", "modifierExtension"}


def resource_summary(content: str, mode: str) -> bytes:
    """`_summary=text|data|true` (https://hl7.org/fhir/R4/search.html#summary).

    `true` keeps the top-level elements the R4 definitions mark isSummary (read from the
    fhir.resources R4B models), plus `resourceType`; every subset is marked SUBSETTED so no client
    mistakes it for the whole resource.
    """
    resource = orjson.loads(content)
    if mode == "text":
        subset = {k: v for k, v in resource.items() if k in {"resourceType", "id", "meta", "text"}}
    elif mode == "data":
        subset = {k: v for k, v in resource.items() if k != "text"}
    else:
        kept = summary_elements(str(resource.get("resourceType", "")))
        if kept:
            subset = {k: v for k, v in resource.items() if k == "resourceType" or k in kept}
        else:  # a type the models do not know: at least drop what is never summary
            subset = {k: v for k, v in resource.items() if k not in _SUMMARY_DROP}
    return orjson.dumps(_subsetted(subset))


@cache
def summary_elements(res_type: str) -> frozenset[str]:
    """The JSON names of `res_type`'s top-level elements marked isSummary in R4 (empty if unknown)."""
    try:
        model = get_fhir_model_class(res_type)
    except (KeyError, ValueError):
        return frozenset()
    return frozenset(field.alias or name for name, field in model.model_fields.items()
                     if (field.json_schema_extra or {}).get("summary_element_property"))


def _subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    tags.append({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"})
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def _choice_base(key: str) -> str:
    """`valueQuantity` → `value`, so `_elements=value` keeps a choice element."""
    for i, ch in enumerate(key):
        if ch.isupper() and i > 0:
            return key[:i]
    return key
