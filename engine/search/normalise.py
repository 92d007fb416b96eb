"""Normalisation shared by the search index and the query layer.

Index rows and search values must be folded the same way, or a search misses what was indexed; the
query layer therefore calls these same functions on the values a client sends.

- strings: https://hl7.org/fhir/R4/search.html#string (case- and accent-insensitive "starts with")
- dates: https://hl7.org/fhir/R4/search.html#date (every value is an implicit range)
- references: https://hl7.org/fhir/R4/search.html#reference and
  https://hl7.org/fhir/R4/references.html#literal

Pure: no I/O, no clock.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

MAX_STRING = 256
"""Width of idx_string.value/exact and idx_token.system/code/display."""

MAX_URL = 512
"""Width of idx_reference.url and idx_uri.value."""

# The same texts recur across the resources of one message and of one patient (names, timestamps, the
# patient and encounter references): the pure functions below remember their recent answers.
_CACHE_SIZE = 4096

# FHIR R4 date / dateTime / instant, leniently: a time may stop at minutes, a timezone may be absent.
# https://hl7.org/fhir/R4/datatypes.html#dateTime
_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)

# Literal references: https://hl7.org/fhir/R4/references.html#literal (the id rule is FHIR's id type).
_RELATIVE_RE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_ABSOLUTE_RE = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://[^?#]*?/([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


class ReferenceTarget(NamedTuple):
    """Where a literal reference points: a local `type/id`, an absolute `url`, or both."""

    target_type: str | None
    target_id: str | None
    url: str | None


@lru_cache(maxsize=_CACHE_SIZE)
def normalise_string(value: str) -> str:
    """Fold a string for FHIR's default string matching (case- and accent-insensitive).

    Unicode NFKD, combining marks dropped, casefolded, runs of whitespace collapsed to one space,
    stripped, then cut to 256 characters. https://hl7.org/fhir/R4/search.html#string

    >>> normalise_string("  Zoë   Ó'Brien ")
    "zoe o'brien"
    """
    if value.isascii():
        return " ".join(value.lower().split())[:MAX_STRING]
    folded = _strip_marks(_strip_marks(value).casefold())
    return " ".join(folded.split())[:MAX_STRING]


def _strip_marks(value: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))


def parse_fhir_date_range(value: str) -> tuple[datetime, datetime]:
    """The closed interval [low, high] a FHIR date, dateTime or instant stands for.

    A value is as precise as it is written: "2020" covers the whole year, "2020-02" the whole of
    February, "2020-02-29T10:00:00.5Z" a tenth of a second. Both ends are naive UTC datetimes; an
    offset is converted to UTC and a value without one is taken as UTC.
    https://hl7.org/fhir/R4/search.html#date

    >>> parse_fhir_date_range("2020")
    (datetime.datetime(2020, 1, 1, 0, 0), datetime.datetime(2020, 12, 31, 23, 59, 59, 999999))

    Raises ValueError when the text is not a FHIR date, dateTime or instant.
    """
    found = _date_range(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"not a FHIR date/dateTime/instant: {value!r}")
    return found


@lru_cache(maxsize=_CACHE_SIZE)
def _date_range(value: str) -> tuple[datetime, datetime] | None:
    """parse_fhir_date_range of a string, None when it is not a date (out-of-range parts still raise)."""
    match = _DATE_RE.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    y = int(year)
    if month is None:
        return datetime(y, 1, 1), datetime(y, 12, 31, 23, 59, 59, 999999)
    m = int(month)
    if day is None:
        return datetime(y, m, 1), datetime(y, m, calendar.monthrange(y, m)[1], 23, 59, 59, 999999)
    d = int(day)
    if hour is None:
        return datetime(y, m, d), datetime(y, m, d, 23, 59, 59, 999999)
    low, high = _time_range(y, m, d, int(hour), int(minute), second, fraction)
    if zone is None or zone == "Z" or zone in ("+00:00", "-00:00"):
        return low, high
    offset = _offset(zone)
    return _shift(low, offset), _shift(high, offset)


def _time_range(
    y: int, m: int, d: int, hour: int, minute: int, second: str | None, fraction: str | None
) -> tuple[datetime, datetime]:
    """The interval of a dateTime from its minute and the seconds and fraction digits as written."""
    if second is None:
        return datetime(y, m, d, hour, minute), datetime(y, m, d, hour, minute, 59, 999999)
    s = int(second)
    if s == 60:  # a leap second is folded into the last microsecond of its minute
        last = datetime(y, m, d, hour, minute, 59, 999999)
        return last, last
    if fraction is None:
        return datetime(y, m, d, hour, minute, s), datetime(y, m, d, hour, minute, s, 999999)
    digits = fraction[:6]
    micro = int(digits.ljust(6, "0"))
    high = micro + 10 ** (6 - len(digits)) - 1
    return datetime(y, m, d, hour, minute, s, micro), datetime(y, m, d, hour, minute, s, high)


@lru_cache(maxsize=256)
def _offset(zone: str) -> timedelta:
    """The offset of "+01:00" / "-05:30" as a timedelta to subtract to reach UTC (few distinct values)."""
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if minutes > 59:
        raise ValueError(f"bad timezone offset: {zone!r}")
    offset = timedelta(hours=hours, minutes=minutes)
    return offset if zone[0] == "+" else -offset


def _shift(moment: datetime, offset: timedelta) -> datetime:
    """Local time → naive UTC, clamped to datetime's range."""
    try:
        return moment - offset
    except OverflowError:
        return datetime.min if offset > timedelta(0) else datetime.max


@lru_cache(maxsize=_CACHE_SIZE)
def parse_reference(reference: str) -> ReferenceTarget | None:
    """Split a literal reference into target type, id and (for absolute ones) the URL.

    "Patient/123" and "Patient/123/_history/2" → (Patient, 123, None); an absolute RESTful URL
    "https://host/fhir/Patient/123" → (Patient, 123, the URL); "urn:uuid:…" or any other absolute
    URI → (None, None, the URI). Contained ("#x") and conditional ("Patient?identifier=…")
    references, and text that is none of these, give None.
    https://hl7.org/fhir/R4/references.html#literal

    >>> parse_reference("Patient/123/_history/2")
    ReferenceTarget(target_type='Patient', target_id='123', url=None)
    """
    if not reference or reference[0] == "#":
        return None
    relative = _RELATIVE_RE.fullmatch(reference)
    if relative is not None:
        return ReferenceTarget(relative.group(1), relative.group(2), None)
    if ":" not in reference or len(reference) > MAX_URL:
        return None
    absolute = _ABSOLUTE_RE.fullmatch(reference)
    if absolute is not None:
        return ReferenceTarget(absolute.group(1), absolute.group(2), reference)
    if reference.startswith(("urn:", "http://", "https://")):
        return ReferenceTarget(None, None, reference)
    return None


def reference_type(reference: object) -> str | None:
    """The resource type a Reference (JSON object) points to, from its literal or its `type`.

    The literal wins; `Reference.type` may be a bare type ("Patient") or a StructureDefinition URL.
    None when neither says: such a reference cannot satisfy `resolve() is X`.
    """
    if type(reference) is not dict:
        return None
    literal = reference.get("reference")
    if type(literal) is str:
        target = parse_reference(literal)
        if target is not None and target.target_type is not None:
            return target.target_type
    declared = reference.get("type")
    if type(declared) is str and declared:
        return declared.rsplit("/", 1)[-1]
    return None


def naive_utc(moment: datetime) -> datetime:
    """Naive UTC, as the store keeps times (engine/db/schema.py); a naive value is taken as UTC."""
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment
