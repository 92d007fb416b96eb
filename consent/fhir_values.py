"""Reading FHIR R4 datatypes the consent decisions need: instants, codings and organisation references.

Pure: strings and mappings in, Python values out. Nothing here knows about consent rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from consent.vocabulary import ODS_SITE_SYSTEM, ODS_SYSTEM

# FHIR R4 dateTime / instant (https://hl7.org/fhir/R4/datatypes.html#dateTime): YYYY, YYYY-MM, YYYY-MM-DD,
# or a full date and time with an optional offset.
_FHIR_DATE_TIME = re.compile(
    r"^(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<time>\d{2}:\d{2}(:\d{2}(\.\d+)?)?)(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
ODS_SYSTEMS = frozenset({ODS_SYSTEM, ODS_SITE_SYSTEM})
Coding = tuple[str, str]


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_fhir_datetime(text: object, *, upper: bool = False) -> datetime | None:
    """A FHIR `date`/`dateTime`/`instant` as an aware UTC datetime, or None when absent or malformed.

    A partial value stands for an interval (R4 datatypes §2.24.0.6: "2025-01" is all of January);
    `upper=False` gives its first instant, `upper=True` its last, so that `Period.end = "2025-01-14"`
    covers the whole of that day. A time without an offset is read as UTC.
    """
    if not isinstance(text, str):
        return None
    match = _FHIR_DATE_TIME.match(text.strip())
    if match is None:
        return None
    try:
        start, step = _interval_start(match)
    except ValueError:
        return None
    return start if not upper else _last_instant(start, step)


def _interval_start(match: re.Match[str]) -> tuple[datetime, str]:
    year, month, day = int(match["year"]), int(match["month"] or 1), int(match["day"] or 1)
    if match["time"] is None:
        step = "day" if match["day"] else "month" if match["month"] else "year"
        return datetime(year, month, day, tzinfo=UTC), step
    parsed = datetime.fromisoformat(f"{match['year']}-{match['month']}-{match['day']}T{match['time']}")
    offset = match["tz"] or "Z"
    return parsed.replace(tzinfo=UTC if offset == "Z" else _zone(offset)).astimezone(UTC), "instant"


@lru_cache(maxsize=64)
def _zone(offset: str) -> timezone:
    """The fixed zone of a `±hh:mm` offset (ValueError for minutes over 59 or a day or more)."""
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    if minutes > 59:
        raise ValueError(f"bad offset {offset}")
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _last_instant(start: datetime, step: str) -> datetime:
    if step == "instant":
        return start
    if step == "day":
        following = start + timedelta(days=1)
    elif step == "month":
        following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        following = start.replace(year=start.year + 1)
    return following - timedelta(microseconds=1)


def period_bounds(period: object) -> tuple[datetime | None, datetime | None]:
    """R4 `Period` → (start, end); a missing bound is None (open)."""
    if not isinstance(period, Mapping):
        return None, None
    return parse_fhir_datetime(period.get("start")), parse_fhir_datetime(period.get("end"), upper=True)


def within(moment: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    """Is `moment` inside the closed interval [start, end] (None bounds are open)?"""
    if moment is None:
        return False
    return (start is None or start <= moment) and (end is None or moment <= end)


def codings_of(value: object) -> Iterator[Coding]:
    """(system, code) pairs of a Coding, a CodeableConcept or a list of either; system "" when absent."""
    if isinstance(value, list):
        for item in value:
            yield from codings_of(item)
        return
    if not isinstance(value, Mapping):
        return
    if "code" in value and isinstance(value.get("code"), str):
        yield str(value.get("system") or ""), value["code"]
    yield from codings_of(value.get("coding"))


def coding_codes(value: object) -> frozenset[str]:
    """Just the codes of `codings_of(value)`."""
    return frozenset(code for _, code in codings_of(value))


def organisation_key(reference: object) -> str | None:
    """A Reference to an organisation as the key `Requester.orgs` and `Relationship.org` use.

    `{"reference": "Organization/org-rr8"}` (relative or absolute URL) → "Organization/org-rr8";
    an identifier-only reference with the ODS organisation or site system (UK-REFERENCE §1) → the ODS code.
    Anything else (a Practitioner, a contained reference) → None.
    """
    if not isinstance(reference, Mapping):
        return None
    literal = reference.get("reference")
    if isinstance(literal, str) and literal:
        parts = literal.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "Organization" and parts[-1]:
            return f"Organization/{parts[-1]}"
    identifier = reference.get("identifier")
    if isinstance(identifier, Mapping) and identifier.get("system") in ODS_SYSTEMS:
        value = identifier.get("value")
        return value if isinstance(value, str) and value else None
    return None


def reference_key(reference: object) -> str | None:
    """A literal reference reduced to "Type/id" (base URL and version dropped), else None."""
    if not isinstance(reference, Mapping) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/_history/")[0].rstrip("/").split("/")
    return f"{parts[-2]}/{parts[-1]}" if len(parts) >= 2 and parts[-1] else None


def first_present(document: Mapping[str, Any], paths: Iterable[str]) -> object:
    """The value at the first dotted path in `paths` that `document` has (e.g. "effectivePeriod.start")."""
    for path in paths:
        value: object = document
        for step in path.split("."):
            value = value.get(step) if isinstance(value, Mapping) else None
        if value is not None:
            return value
    return None
