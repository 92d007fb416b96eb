"""Which resources fill each heading: a document definition's sources applied to a patient's resources.

Pure: `(source, context, resources) → items`. The context carries the document's anchors (patient,
encounter, author) and `now`; the resources are whatever the caller gathered for the patient (through
the access gate for a user, straight from the store for the engine). Entered-in-error data never
reaches a document, whatever a definition says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.documents.definitions import Heading, Source, Window
from engine.documents.elements import (
    JSON,
    codes_of,
    encounter_ids,
    key_of,
    parse_date,
    reference_target,
    relative_reference,
    resource_date,
    values_at,
)

NEVER_SHOWN = frozenset({"entered-in-error"})
_NEVER_SHOWN_ELEMENTS = ("status", "verificationStatus")
# Where a resource names its patient (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).
_PATIENT_PATHS = ("subject", "patient", "participant.actor", "beneficiary", "for")


@dataclass(frozen=True, slots=True)
class Context:
    """The document's anchors; `index` finds any gathered resource by (type, id)."""

    patient: JSON
    encounter: JSON
    author: JSON
    now: datetime
    index: Mapping[tuple[str, str], JSON]

    @property
    def encounter_id(self) -> str:
        return str(self.encounter.get("id"))


@dataclass(frozen=True, slots=True)
class Item:
    """One section entry: the resource (None for a reference we could not resolve), how to show it,
    and the Reference the Composition carries."""

    resource: JSON | None
    view: str
    reference: JSON

    @property
    def key(self) -> tuple[str, str] | None:
        return key_of(self.resource) if self.resource is not None else None


def as_item(resource: JSON, view: str | None = None) -> Item:
    return Item(resource, view or str(resource.get("resourceType")), {"reference": relative_reference(resource)})


def heading_items(heading: Heading, ctx: Context, by_type: Mapping[str, Sequence[JSON]]) -> list[Item]:
    """Every source of `heading` in order, each resource once (the first source that finds it wins)."""
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    for source in heading.sources:
        for item in source_items(source, ctx, by_type):
            if item.key is not None and item.key in seen:
                continue
            if item.key is not None:
                seen.add(item.key)
            items.append(item)
    return items


def source_items(source: Source, ctx: Context, by_type: Mapping[str, Sequence[JSON]]) -> list[Item]:
    if source.take is not None:
        return _anchor_items(source, ctx)
    assert source.type is not None  # a source has take or type (definitions.parse_definition)
    kept = [r for r in by_type.get(source.type, ()) if keeps(source, ctx, r)]
    kept.sort(key=_newest_first)
    if source.max is not None:
        kept = kept[: source.max]
    return [as_item(r, source.view) for r in kept]


def keeps(source: Source, ctx: Context, resource: JSON) -> bool:
    """Whether `resource` satisfies the source's scope, code filters and time window."""
    if _never_shown(resource) or not belongs_to(resource, str(ctx.patient.get("id"))):
        return False
    if source.scope == "encounter" and ctx.encounter_id not in encounter_ids(resource):
        return False
    for path, codes in source.where.items():
        if not _has_code(resource, path, codes):
            return False
    for path, codes in source.exclude.items():
        if _has_code(resource, path, codes):
            return False
    return source.window is None or in_window(source.window, ctx, resource_date(resource))


def in_window(window: Window, ctx: Context, moment: datetime | None) -> bool:
    if moment is None:
        return False
    anchor = window_anchor(window.anchor, ctx)
    if window.after:
        return moment >= anchor
    assert window.days_before is not None
    return anchor - timedelta(days=window.days_before) <= moment <= anchor


def window_anchor(name: str, ctx: Context) -> datetime:
    """`now`, or the encounter's start or end (an encounter still open ends now)."""
    period = ctx.encounter.get("period") or {}
    if name == "encounter-start":
        return parse_date(period.get("start")) or ctx.now
    if name == "encounter-end":
        return parse_date(period.get("end")) or ctx.now
    return ctx.now


def _anchor_items(source: Source, ctx: Context) -> list[Item]:
    if source.take == "patient":
        return [as_item(ctx.patient, source.view or "demographics")]
    if source.take == "encounter":
        return [as_item(ctx.encounter, source.view or "attendance")]
    if source.take == "author":
        return [_party_item(ctx.author, ctx, source.view)]
    return [_party_item(ref, ctx, source.view) for ref in gp_practice_references(ctx.patient)]


def gp_practice_references(patient: JSON) -> list[JSON]:
    """The registered GP practice: `Patient.generalPractitioner` references to an Organization."""
    found = []
    for reference in patient.get("generalPractitioner") or ():
        target = reference_target(reference)
        if target is not None and target[0] == "Organization":
            found.append(reference)
    return found


def _party_item(party: JSON, ctx: Context, view: str | None) -> Item:
    """A resource, or a Reference that may resolve to a gathered resource, as an item."""
    if "resourceType" in party:
        return as_item(party, view)
    target = reference_target(party)
    if target is not None and target in ctx.index:
        return as_item(ctx.index[target], view)
    return Item(None, view or "reference", dict(party))


def belongs_to(resource: JSON, patient_id: str) -> bool:
    """Whether `resource` is in the patient's record: a document never shows another patient's data."""
    for path in _PATIENT_PATHS:
        for reference in values_at(resource, path):
            target = reference_target(reference)
            if target is not None and target[0] == "Patient":
                return target[1] == patient_id
    return False


def _has_code(resource: JSON, path: str, codes: Iterable[str]) -> bool:
    wanted = set(codes)
    return any(code in wanted for value in values_at(resource, path) for code in codes_of(value))


def _never_shown(resource: JSON) -> bool:
    return any(_has_code(resource, element, NEVER_SHOWN) for element in _NEVER_SHOWN_ELEMENTS)


def _newest_first(resource: JSON) -> tuple[int, float, str]:
    moment = resource_date(resource)
    return (0, -moment.timestamp(), str(resource.get("id"))) if moment else (1, 0.0, str(resource.get("id")))


def by_type(resources: Iterable[JSON]) -> dict[str, list[JSON]]:
    grouped: dict[str, list[JSON]] = {}
    for resource in resources:
        grouped.setdefault(str(resource.get("resourceType")), []).append(resource)
    return grouped
