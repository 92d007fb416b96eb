"""HL7 v2 datatypes → FHIR R4 datatypes: one small function per v2 datatype (and target).

Normative source: the HL7 v2-to-FHIR IG datatype maps (http://hl7.org/fhir/uv/v2mappings, "Data Type
Maps": CX[Identifier], XPN[HumanName], XAD[Address], XTN[ContactPoint], CWE[CodeableConcept],
CWE[Coding], DTM[dateTime], XCN[Practitioner], PL[Location], HD[Organization], HD[uri],
EI[Identifier-System], XON[Organization], CX[string], FN[HumanName]). Where UK practice differs (NHS
ITK HL7 v2 ADT specification; UK Core) the function says so.

Every function takes one field repetition (`Field` from `adapters/hl7v2/parser.py`, or anything with
its `component(i)` / `subcomponent(i, j)` / `is_null` interface) and returns a FHIR JSON dict (a
string for the `*_string` renderings) — or None when the repetition carries nothing usable. They
never raise on odd input: empty components, the explicit null `""` and malformed dates simply leave
elements out. Text is trimmed.

Pure: no I/O, no clock. Reused by every message map (ADT, ORU, ORM/OML, MDM, SIU).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from adapters.senders import LOCAL_ID_BASE
from mappings.hl7v2 import codes
from mappings.ids import resource_id

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message
    from adapters.senders import SecurityLabel, SenderConfig

JSON = dict[str, Any]

ODS_ORGANIZATION_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ODS_SITE_SYSTEM = "https://fhir.nhs.uk/Id/ods-site-code"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
LOCATION_PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
HL7_NULL = '""'


class FieldLike(Protocol):
    """The part of the parser's `Field` (one repetition) these functions use."""

    def component(self, i: int) -> str: ...

    def subcomponent(self, i: int, j: int) -> str: ...

    @property
    def is_null(self) -> bool: ...


# --------------------------------------------------------------------------------------------------
# Primitive helpers


def clean(text: str | None) -> str:
    """`text` trimmed, with the HL7 explicit null `""` read as empty (HL7 v2.5 ch. 2.5.3 "Null values").

    >>> clean('  Smith ')
    'Smith'
    >>> clean('""')
    ''
    """
    if not text:
        return ""
    text = text.strip()
    return "" if text == HL7_NULL else text


def comp(f: FieldLike | None, i: int) -> str:
    """Component `i` (1-based) of a field repetition, cleaned; "" for a missing field."""
    if f is None:
        return ""
    return clean(f.component(i))


def sub(f: FieldLike | None, i: int, j: int) -> str:
    """Subcomponent `j` of component `i`, cleaned; "" for a missing field."""
    if f is None:
        return ""
    return clean(f.subcomponent(i, j))


def prune(value: Any) -> Any:
    """Drop empty strings, None, empty lists and empty dicts, recursively (FHIR forbids empty elements).

    >>> prune({"a": "", "b": [None, {}, "x"], "c": {"d": []}, "e": 0, "f": False})
    {'b': ['x'], 'e': 0, 'f': False}

    Always a new dict or list, even when nothing is dropped: no two resources share a part.
    """
    if isinstance(value, dict):
        return _pruned_dict(value)
    if isinstance(value, list):
        return _pruned_list(value)
    return value


# Every map prunes what it builds, so this runs over every element of every resource: one loop per
# container and no function call per leaf keep it cheap.
def _pruned_dict(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _pruned_dict(item)
            if not item:
                continue
        elif isinstance(item, list):
            item = _pruned_list(item)
            if not item:
                continue
        elif item is None or item == "":
            continue
        out[key] = item
    return out


def _pruned_list(value: list[Any]) -> list[Any]:
    out = []
    for item in value:
        if isinstance(item, dict):
            item = _pruned_dict(item)
            if not item:
                continue
        elif isinstance(item, list):
            item = _pruned_list(item)
            if not item:
                continue
        elif item is None or item == "":
            continue
        out.append(item)
    return out


def _or_none(value: JSON) -> JSON | None:
    pruned = prune(value)
    return pruned or None


def compact(elements: JSON) -> JSON:
    """`elements` without its empty values (None, "", [], {}): what `prune` makes of an object whose values
    are strings, numbers or already pruned, without walking those again.

    >>> compact({"code": "F32", "display": "", "coding": [], "version": None, "rank": 0})
    {'code': 'F32', 'rank': 0}
    """
    # Only a false value (0 and False are kept) needs the second test.
    return {key: value for key, value in elements.items()
            if value or (value is not None and value not in ("", [], {}))}


# --------------------------------------------------------------------------------------------------
# DTM / TS / DT (HL7 v2.5 ch. 2A.22 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ])

_DTM = re.compile(
    r"(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?(?P<hour>\d{2})?(?P<minute>\d{2})?"
    r"(?P<second>\d{2})?(?:\.(?P<fraction>\d{1,9}))?(?P<offset>[+-]\d{4})?"
)


@dataclass(frozen=True)
class V2DateTime:
    """A parsed v2 DTM with its precision: the moment's fields as sent, and its UTC offset if any."""

    year: int
    month: int | None
    day: int | None
    hour: int | None
    minute: int | None
    second: int | None
    fraction: str | None
    offset: timedelta | None

    @property
    def has_time(self) -> bool:
        return self.hour is not None


# The date functions below are pure functions of short texts that recur within a message (MSH-7, EVN-2,
# OBR-7, each OBX-14 …) and across a patient's messages: they are cached.
@functools.lru_cache(maxsize=4096)
def parse_v2_dtm(text: str | None) -> V2DateTime | None:
    """Parse a v2 DTM/TS/DT keeping its precision; None if it is not a real date/time.

    Accepts only the normative form (trailing TS component `^precision` must be split off by the
    caller, as `Field.component(1)` does). Minute, hour and day ranges are checked; second 60
    (leap second) is refused, as Python cannot represent it.

    >>> parse_v2_dtm("20240301").day
    1
    >>> parse_v2_dtm("20240230") is None
    True
    """
    text = clean(text)
    match = _DTM.fullmatch(text)
    if match is None:
        return None
    parts = match.groupdict()
    if parts["fraction"] and parts["second"] is None:
        return None
    number = {k: (int(v) if v is not None else None) for k, v in parts.items() if k not in {"fraction", "offset"}}
    offset = _parse_offset(parts["offset"]) if parts["offset"] else None
    if parts["offset"] and offset is None:
        return None
    value = V2DateTime(number["year"], number["month"], number["day"], number["hour"], number["minute"],
                       number["second"], parts["fraction"], offset)
    return value if _is_real(value) else None


def _parse_offset(text: str) -> timedelta | None:
    hours, minutes = int(text[1:3]), int(text[3:5])
    if hours > 14 or minutes > 59 or (hours == 14 and minutes):
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return -delta if text[0] == "-" else delta


def _is_real(v: V2DateTime) -> bool:
    """True when every field sent is in range (a real calendar date and clock time)."""
    if v.year < 1 or (v.month is not None and not 1 <= v.month <= 12):
        return False
    if v.day is not None:
        try:
            date(v.year, v.month or 1, v.day)
        except ValueError:
            return False
    if v.hour is not None and v.hour > 23:
        return False
    if v.minute is not None and v.minute > 59:
        return False
    return v.second is None or v.second <= 59


# The time zone in which a DTM without an offset is read: the sender's (`SenderConfig.timezone`) while
# one of its messages is mapped (`in_sender_time_zone`), UTC otherwise. One value for a whole map,
# set at its entry, so that every datatype function below need not carry it.
_LOCAL_TIME: ContextVar[tzinfo] = ContextVar("v2_local_time", default=UTC)
MapFunction = TypeVar("MapFunction", bound=Callable[..., Any])


@functools.cache
def zone(name: str) -> tzinfo:
    """The IANA time zone `name` (zoneinfo; ZoneInfoNotFoundError if unknown)."""
    return ZoneInfo(name)


def in_sender_time_zone(message_map: MapFunction) -> MapFunction:
    """Decorate a message map `(Message, SenderConfig) -> MappingResult` so that, while it runs, a DTM
    without an offset is read in the sender's configured time zone (HL7 v2.5 §2A.22: a time without
    an offset is the sender's local time). UK senders default to Europe/London: GMT in winter, BST
    (+01:00) in summer.
    """
    @functools.wraps(message_map)
    def mapped(message: Message, sender: SenderConfig) -> Any:
        token = _LOCAL_TIME.set(zone(sender.timezone))
        try:
            return message_map(message, sender)
        finally:
            _LOCAL_TIME.reset(token)

    return mapped  # type: ignore[return-value]


def _local(default_tz: tzinfo | None) -> tzinfo:
    return default_tz if default_tz is not None else _LOCAL_TIME.get()


def parse_v2_datetime(text: str | None, default_tz: tzinfo | None = None) -> datetime | None:
    """A v2 DTM/TS as an aware datetime in UTC (missing parts take their lowest value); None if invalid.

    Without an offset the time is read in `default_tz`, else in the sender's time zone while a map
    runs (`in_sender_time_zone`), else UTC. A local time that occurs twice (the autumn clock change)
    is its first occurrence; one that does not exist (spring) is read with the offset before the
    change (PEP 495, fold=0).

    >>> parse_v2_datetime("202403011230+0100")
    datetime.datetime(2024, 3, 1, 11, 30, tzinfo=datetime.timezone.utc)
    >>> parse_v2_datetime("2024")
    datetime.datetime(2024, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> parse_v2_datetime("not a date") is None
    True
    """
    return _utc_datetime(text, _local(default_tz))


@functools.lru_cache(maxsize=4096)
def _utc_datetime(text: str | None, local_tz: tzinfo) -> datetime | None:
    """`parse_v2_datetime` with the time zone for a time without an offset already chosen."""
    v = parse_v2_dtm(text)
    if v is None:
        return None
    micro = int((v.fraction or "0")[:6].ljust(6, "0"))
    naive = datetime(v.year, v.month or 1, v.day or 1, v.hour or 0, v.minute or 0, v.second or 0, micro)
    tz: tzinfo = timezone(v.offset) if v.offset is not None else local_tz
    try:
        return naive.replace(tzinfo=tz).astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 with a positive offset, year 9999 with a negative one
        return None


@functools.lru_cache(maxsize=4096)
def v2_to_fhir_date(text: str | None) -> str | None:
    """A v2 DT/DTM as a FHIR `date` at the source's precision (YYYY, YYYY-MM or YYYY-MM-DD); time dropped.

    >>> v2_to_fhir_date("19620315")
    '1962-03-15'
    >>> v2_to_fhir_date("196203")
    '1962-03'
    >>> v2_to_fhir_date("199913") is None
    True
    """
    v = parse_v2_dtm(text)
    if v is None:
        return None
    out = f"{v.year:04d}"
    if v.month is not None:
        out += f"-{v.month:02d}"
        if v.day is not None:
            out += f"-{v.day:02d}"
    return out


def v2_to_fhir_datetime(text: str | None, default_tz: tzinfo | None = None) -> str | None:
    """A v2 DTM/TS as a FHIR `dateTime` at the source's precision; None if invalid.

    FHIR requires seconds and a zone once a time is given (R4 datatypes §2.24.0.1 dateTime), so
    HH or HHMM are padded with zeros and a missing offset is the one `default_tz` (else the sender's
    time zone while a map runs, else UTC) has at that local time. An offset sent is kept as sent
    (the instant is not converted).

    >>> v2_to_fhir_datetime("20240301")
    '2024-03-01'
    >>> v2_to_fhir_datetime("202403011230")
    '2024-03-01T12:30:00+00:00'
    >>> v2_to_fhir_datetime("20240301123005.25-0500")
    '2024-03-01T12:30:05.25-05:00'
    """
    if not text:  # most date components of a name, address or telecom are empty
        return None
    return _fhir_datetime(text, _local(default_tz))


@functools.lru_cache(maxsize=4096)
def _fhir_datetime(text: str | None, local_tz: tzinfo) -> str | None:
    """`v2_to_fhir_datetime` with the time zone for a time without an offset already chosen."""
    v = parse_v2_dtm(text)
    if v is None:
        return None
    day = v2_to_fhir_date(text)
    if not v.has_time:
        return day
    clock = f"{v.hour:02d}:{v.minute or 0:02d}:{v.second or 0:02d}"
    if v.fraction:
        clock += f".{v.fraction}"
    offset = v.offset
    if offset is None:
        naive = datetime(v.year, v.month or 1, v.day or 1, v.hour or 0, v.minute or 0, v.second or 0)
        offset = local_tz.utcoffset(naive) or timedelta(0)
    return f"{day}T{clock}{_format_offset(offset)}"


def _format_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def dr_period(f: FieldLike | None, start: int = 1, end: int = 2) -> JSON | None:
    """DR (date range: component `start` .. `end`) → Period (IG DR[Period])."""
    return _or_none({"start": v2_to_fhir_datetime(comp(f, start)), "end": v2_to_fhir_datetime(comp(f, end))})


# --------------------------------------------------------------------------------------------------
# Coded values: CWE / CE / CNE / ID / IS


@functools.lru_cache(maxsize=1024)  # a feed names the same few coding systems in every message
def coding_system_uri(name: str) -> str | None:
    """The FHIR system URI for a v2 coding-system name (HL7 table 0396), e.g. "SCT" → SNOMED CT.

    "HL70001"-style names become `http://terminology.hl7.org/CodeSystem/v2-0001`; a value that is
    already a URI (contains ":") is kept; an unknown local name gives None (the code still maps,
    without a system, as the IG's CWE[Coding] does when CWE.3 is absent).

    >>> coding_system_uri("SCT")
    'http://snomed.info/sct'
    >>> coding_system_uri("HL70004")
    'http://terminology.hl7.org/CodeSystem/v2-0004'
    """
    name = clean(name)
    if not name:
        return None
    known = codes.CODING_SYSTEMS.get(name.upper())
    if known:
        return known
    table = re.fullmatch(r"HL7(\d{4})", name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    if ":" in name and " " not in name:
        return name
    return None


def cwe_coding(f: FieldLike | None, offset: int = 0) -> JSON | None:
    """One CWE triplet → Coding (IG CWE[Coding]): code .1, display .2, system .3, version .7.

    `offset=3` reads the alternate triplet (.4/.5/.6, version .8).
    """
    code, display, system = comp(f, 1 + offset), comp(f, 2 + offset), comp(f, 3 + offset)
    if not code:
        return None
    version = comp(f, 7 + offset // 3)
    return compact({"system": coding_system_uri(system), "version": version, "code": code, "display": display})


def cwe_codeable_concept(f: FieldLike | None) -> JSON | None:
    """CWE/CE/CNE → CodeableConcept (IG CWE[CodeableConcept]): the three triplets (.1-3, .4-6, .10-12) as
    codings, CWE.9 as text.
    A CWE with text but no code (only CWE.2 or CWE.5) keeps that text, so nothing is lost.

    Example: `91936005^Penicillin allergy^SCT` → coding [{system http://snomed.info/sct, code 91936005,
    display "Penicillin allergy"}].
    """
    codings = [c for c in (cwe_coding(f, 0), cwe_coding(f, 3), _third_triplet(f)) if c]
    text = comp(f, 9) or ("" if codings else comp(f, 2) or comp(f, 5))
    if not codings and not text:
        return None
    return compact({"coding": codings, "text": text})


def _third_triplet(f: FieldLike | None) -> JSON | None:
    """CWE.10-.13 (second alternate triplet, v2.6+) → coding[3] (IG CWE[CodeableConcept])."""
    code = comp(f, 10)
    if not code:
        return None
    return compact({"system": coding_system_uri(comp(f, 12)), "version": comp(f, 13), "code": code,
                    "display": comp(f, 11)})


def code_concept(system: str, code: str, display: str | None = None, text: str | None = None) -> JSON:
    """A CodeableConcept with one coding (for table-mapped values)."""
    coding = compact({"system": system, "code": code, "display": display})
    return compact({"coding": [coding] if coding else [], "text": text})


def mapped_concept(f: FieldLike | None, table: Mapping[str, tuple[str, str, str]],
                   fallback_system: str | None = None) -> JSON | None:
    """A coded field looked up in a code table (`code → (system, code, display)`).

    The mapped coding comes first; the sender's own coding follows when it says something the mapped
    one does not (a different system or code). `fallback_system` is the v2 table the field is drawn
    from, used when CWE.3 is empty (e.g. v2-0002 for PID-16). An unknown code keeps the sender's
    coding, so nothing is lost.
    """
    original = cwe_coding(f)
    if original and fallback_system and "system" not in original:
        original = {"system": fallback_system, **original}
    hit = table.get(comp(f, 1).upper())
    codings: list[JSON] = []
    if hit is not None:
        codings.append({"system": hit[0], "code": hit[1], "display": hit[2]})
    if original and _adds_information(original, hit):
        codings.append(original)
    return _or_none({"coding": codings, "text": comp(f, 9)})


def _adds_information(original: JSON, hit: tuple[str, str, str] | None) -> bool:
    """Whether the sender's coding differs from the mapped one in anything but a missing system."""
    if hit is None:
        return True
    system = original.get("system")
    return bool(system and system != hit[0]) or original["code"] != hit[1]


def table_code(value: str | None, table: Mapping[str, str]) -> str | None:
    """A v2 ID/IS value looked up in a code table (case-insensitive); None if absent or unknown."""
    return table.get(clean(value).upper())


def yes_no(value: str | None) -> bool | None:
    """HL7 table 0136 Y/N → boolean (IG YesNoIndicator); anything else → None."""
    return {"Y": True, "N": False}.get(clean(value).upper())


# --------------------------------------------------------------------------------------------------
# HD / EI / CX


def ods_identifier(code: str) -> JSON:
    """An ODS organisation identifier (UK Core: `https://fhir.nhs.uk/Id/ods-organization-code`)."""
    return {"system": ODS_ORGANIZATION_SYSTEM, "value": code}


def ods_reference(code: str, display: str | None = None) -> JSON:
    """A logical reference to the organisation with that ODS code (an Identifier-only Reference)."""
    return compact({"identifier": compact(ods_identifier(code)), "display": display})


def hd_uri(f: FieldLike | None, i: int) -> str | None:
    """HD in component `i` → uri (IG HD[uri]): HD.1 when it is a URI, else HD.2 by HD.3 (ISO → urn:oid:,
    UUID → urn:uuid:, URI → as is). A bare local namespace (e.g. an ODS code) is not a URI → None.
    """
    namespace, universal, kind = sub(f, i, 1), sub(f, i, 2), sub(f, i, 3).upper()
    if ":" in namespace and " " not in namespace:
        return namespace
    if universal and kind == "ISO" and re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", universal):
        return f"urn:oid:{universal}"
    if universal and kind == "UUID":
        return f"urn:uuid:{universal.lower()}"
    if universal and kind in {"URI", "URL"}:
        return universal
    return None


def hd_namespace(f: FieldLike | None, i: int) -> str:
    """HD.1 (namespace id) of component `i`, else HD.2 (universal id): the assigner's name or code."""
    return sub(f, i, 1) or sub(f, i, 2)


def ei_identifier(f: FieldLike | None, system: str | None = None, type_code: str | None = None) -> JSON | None:
    """EI → Identifier (IG EI[Identifier-System]): value EI.1; system from EI.2-4 as HD, else `system`."""
    value = comp(f, 1)
    if not value:
        return None
    found = _ei_system(f)
    return compact({"type": _v2_0203(type_code) if type_code else None, "system": found or system, "value": value})


def _ei_system(f: FieldLike | None) -> str | None:
    namespace, universal, kind = comp(f, 2), comp(f, 3), comp(f, 4).upper()
    if ":" in namespace and " " not in namespace:
        return namespace
    if universal and kind == "ISO" and re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", universal):
        return f"urn:oid:{universal}"
    if universal and kind == "UUID":
        return f"urn:uuid:{universal.lower()}"
    return None


def _v2_0203(code: str, display: str | None = None) -> JSON:
    return code_concept(V2_0203, code, display)


def identifier_type(code: str) -> JSON:
    """A v2-0203 identifier type CodeableConcept (e.g. "MR", "VN", "NH")."""
    return _v2_0203(code, codes.IDENTIFIER_TYPE_DISPLAY.get(code))


def cx_identifier(f: FieldLike | None, system: str | None = None, type_code: str | None = None) -> JSON | None:
    """CX → Identifier (IG CX[Identifier]): value CX.1, system from CX.4 (HD[uri]) else `system`,
    type CX.5 (v2-0203) else `type_code`, period CX.7/CX.8; assigner from CX.4 as a display.

    UK: when CX.4 is an ODS code (a bare namespace) the caller passes the system and assigner
    (`mappings/hl7v2/patient.py`); this generic form only names it.
    """
    value = comp(f, 1)
    if not value:
        return None
    code = comp(f, 5) or type_code
    assigner = hd_namespace(f, 4)
    return _or_none({
        "type": identifier_type(code) if code else None,
        "system": hd_uri(f, 4) or system,
        "value": value,
        "period": {"start": v2_to_fhir_date(comp(f, 7)), "end": v2_to_fhir_date(comp(f, 8))},
        "assigner": {"display": assigner} if assigner else None,
    })


# --------------------------------------------------------------------------------------------------
# XPN / XCN names


def xpn_human_name(f: FieldLike | None) -> JSON | None:
    """XPN → HumanName (IG XPN[HumanName]): family .1.1, given .2 and .3 (.3 split on spaces), suffix
    .4/.6/.14, prefix .5, use .7 (table 0200 → name-use), period .12/.13 else .10.

    Example: `SMITH^JOHN^A B^JR^DR^^L` → {use official, family SMITH, given [JOHN, A, B], prefix [DR], suffix [JR]}.
    """
    return _human_name(f, family=1, given=2, middle=3, suffix=(4, 6, 14), prefix=5, use=7, start=12, end=13,
                       range_=10)


def _human_name(f: FieldLike | None, *, family: int, given: int, middle: int, suffix: tuple[int, ...],
                prefix: int, use: int, start: int, end: int, range_: int | None) -> JSON | None:
    # IG XPN.2 → given[1] as sent; XPN.3 (further given names) may hold several, space-separated.
    given_names = [comp(f, given), *comp(f, middle).split()]
    period = {"start": v2_to_fhir_datetime(comp(f, start)), "end": v2_to_fhir_datetime(comp(f, end))}
    if range_ and not period["start"] and not period["end"]:
        period = {"start": v2_to_fhir_datetime(sub(f, range_, 1)), "end": v2_to_fhir_datetime(sub(f, range_, 2))}
    name = compact({
        "use": table_code(comp(f, use), codes.NAME_USE),
        "family": sub(f, family, 1),
        "given": [n for n in given_names if n],
        "prefix": [p for p in (comp(f, prefix),) if p],
        "suffix": [s for s in (comp(f, i) for i in suffix) if s],
        "period": compact(period),
    })
    if not any(k in name for k in ("family", "given", "prefix", "suffix")):
        return None
    return name


def xcn_human_name(f: FieldLike | None) -> JSON | None:
    """XCN name part → HumanName (IG XCN[Practitioner]): family .2, given .3/.4, suffix .5, prefix .6,
    use .10, period .19/.20."""
    return _human_name(f, family=2, given=3, middle=4, suffix=(5, 21), prefix=6, use=10, start=19, end=20,
                       range_=None)


def xcn_identifier(f: FieldLike | None) -> JSON | None:
    """XCN id part → Identifier (IG XCN[Practitioner] identifier[1]): value .1, system from .9 and .13.

    UK: professional registers are named by XCN.13 or XCN.9 ("GMC", "GMP", "NMC", "GPHC", "HCPC",
    "SDS") → the UK Core identifier systems (UK-REFERENCE §1). A bare local assigner gives no system:
    the caller then supplies the sender's own (`practitioner_system_for`).
    """
    value = comp(f, 1)
    if not value:
        return None
    return compact({"system": xcn_system(f), "value": value,
                    "type": identifier_type(comp(f, 13)) if comp(f, 13) in codes.IDENTIFIER_TYPE_DISPLAY else None})


def xcn_system(f: FieldLike | None) -> str | None:
    """The identifier system an XCN names: a UK register (XCN.13 or XCN.9 code), else XCN.9 as HD[uri]."""
    for code in (comp(f, 13), sub(f, 9, 1)):
        system = codes.PRACTITIONER_SYSTEMS.get(code.upper())
        if system:
            return system
    return hd_uri(f, 9)


def xcn_assigner(f: FieldLike | None) -> str:
    """XCN.9 assigning authority namespace (e.g. "GMC" or a trust's ODS code), or ""."""
    return hd_namespace(f, 9)


def xcn_practitioner(f: FieldLike | None, fallback_system: str | None = None) -> JSON | None:
    """XCN → Practitioner body without id or meta (IG XCN[Practitioner]); None when neither id nor name."""
    identifier = xcn_identifier(f)
    if identifier and "system" not in identifier and fallback_system:
        identifier = {"system": fallback_system, **identifier}
    name = xcn_human_name(f)
    qualification = comp(f, 7)
    if not identifier and not name:
        return None
    return compact({
        "resourceType": "Practitioner",
        "identifier": [identifier] if identifier else [],
        "name": [name] if name else [],
        "qualification": [{"code": {"text": qualification}}] if qualification else [],
    })


# --------------------------------------------------------------------------------------------------
# XON organisations


def xon_ods_code(f: FieldLike | None) -> str:
    """The organisation code of an XON: XON.10 (organisation identifier, v2.5+) else XON.3 (ID number).

    UK: PD1-3 is sent as `practice name^^ODS code` (v2.4), so XON.3 carries the ODS code.
    """
    return comp(f, 10) or comp(f, 3)


def xon_organization(f: FieldLike | None, system: str = ODS_ORGANIZATION_SYSTEM) -> JSON | None:
    """XON → Organization body without id (IG XON[Organization]): name .1, identifier .10 else .3."""
    code, name = xon_ods_code(f), comp(f, 1)
    if not code and not name:
        return None
    return _or_none({"resourceType": "Organization",
                     "identifier": [{"system": system, "value": code}] if code else [],
                     "name": name})


# --------------------------------------------------------------------------------------------------
# XAD / XTN


def xad_address(f: FieldLike | None) -> JSON | None:
    """XAD → Address (IG XAD[Address]): lines .1.1-3 and .2 (and .19), city .3, state .4, postal code .5,
    country .6, type/use .7 (table 0190), district .9, period .12 or .13/.14.

    UK: senders put the county in XAD.4 and the postcode in XAD.5, exactly as the IG maps them.
    """
    kind = comp(f, 7).upper()
    lines = [sub(f, 1, 1), sub(f, 1, 2), sub(f, 1, 3), comp(f, 2), comp(f, 19)]
    period = {"start": v2_to_fhir_datetime(comp(f, 13)), "end": v2_to_fhir_datetime(comp(f, 14))}
    if not period["start"] and not period["end"]:
        period = {"start": v2_to_fhir_datetime(sub(f, 12, 1)), "end": v2_to_fhir_datetime(sub(f, 12, 2))}
    content = prune({"line": lines, "city": comp(f, 3), "district": comp(f, 9), "state": comp(f, 4),
                     "postalCode": comp(f, 5), "country": comp(f, 6)})
    if not content:
        return None
    return compact({"use": codes.ADDRESS_USE.get(kind), "type": codes.ADDRESS_TYPE.get(kind), **content,
                    "period": compact(period)})


_EMAIL_EQUIPMENT = {"INTERNET", "X.400"}


def xtn_contact_point(f: FieldLike | None, default_use: str | None = None) -> JSON | None:
    """XTN → ContactPoint (IG XTN[ContactPoint]): use .2 (table 0201), system .3 (table 0202), value
    .4 for e-mail else .12, else .1 (v2.4 formatted number), else built from .5/.6/.7/.8; rank .18.

    `default_use` is the field's own use when XTN.2 is empty (PID-13 home, PID-14 work). XTN.3 CP
    (the IG maps it to use mobile) gives use mobile when XTN.2 does not say otherwise.
    """
    equipment = comp(f, 3).upper()
    value = _xtn_value(f, equipment)
    if not value:
        return None
    system = codes.TELECOM_SYSTEM.get(equipment) or ("email" if comp(f, 4) and not equipment else None)
    use = codes.TELECOM_USE.get(comp(f, 2).upper()) or ("mobile" if equipment == "CP" else default_use)
    rank = comp(f, 18)
    period = {"start": v2_to_fhir_datetime(comp(f, 13)), "end": v2_to_fhir_datetime(comp(f, 14))}
    point = compact({"system": system or inferred_telecom_system(value), "value": value, "use": use,
                     "rank": int(rank) if rank.isdigit() and int(rank) > 0 else None, "period": compact(period)})
    if "system" not in point:  # IG XTN.3: not valued → system data-absent-reason "unknown" (cpt-2)
        point["_system"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
    return point


_PHONE = re.compile(r"\+?[0-9(][0-9 ()\-]{5,}(\s*[Xx]\s*[0-9]+)?")


def inferred_telecom_system(value: str) -> str | None:
    """ContactPoint.system when XTN.3 is empty: email for an address with "@", phone for a dialable
    number. UK PAS often leave XTN.3 empty; the IG would give system data-absent-reason instead,
    which leaves receivers unable to dial the number, so we infer where it is unambiguous."""
    if "@" in value and " " not in value:
        return "email"
    return "phone" if _PHONE.fullmatch(value) else None


def _xtn_value(f: FieldLike | None, equipment: str) -> str:
    if equipment in _EMAIL_EQUIPMENT:
        return comp(f, 4) or comp(f, 1)
    if comp(f, 12):
        return comp(f, 12)
    if comp(f, 7):
        number = " ".join(p for p in (comp(f, 6), comp(f, 7)) if p)
        number = f"+{comp(f, 5)} {number}" if comp(f, 5) else number
        return f"{number} X{comp(f, 8)}" if comp(f, 8) else number
    return comp(f, 1) or comp(f, 4)


# --------------------------------------------------------------------------------------------------
# Datatypes as text: the IG's [string] maps, and a readable rendering where R4 has no element of the
# structured type (OBX-5 of OBX-2 XAD, XTN, CX, FN → Observation.valueString, `results.VALUE_MAPS`)


def cx_string(f: FieldLike | None) -> str | None:
    """CX → string (IG CX[string]: CX.1 → $value): the ID number alone. Example: `10614^^^RR8^MR` → "10614"."""
    return comp(f, 1) or None


def fn_string(f: FieldLike | None) -> str | None:
    """FN → string: the surname FN.1, which IG FN[HumanName] maps to HumanName.family (and XPN[string] writes
    as the name). FN.2-5 only decompose FN.1 (own and partner's prefix and surname); without FN.1, which
    HL7 v2.5 §2A.30 requires, there is no name: None. Example: `de Vries^de^Vries` → "de Vries"."""
    return comp(f, 1) or None


def address_text(address: JSON) -> str:
    """An Address written on one line, as a UK address is read out: its lines, city, district, county
    (state), postcode and country, joined by ", "."""
    places = (address.get(k, "") for k in ("city", "district", "state", "postalCode", "country"))
    return ", ".join(p for p in (*address.get("line", []), *places) if p)


def xad_string(f: FieldLike | None) -> str | None:
    """XAD → string: the elements IG XAD[Address] maps (`xad_address`) written on one line (`address_text`);
    XAD.7 use/type and the validity period are not part of the text.

    Example: `1 HIGH STREET^FLAT 2^LEEDS^WEST YORKSHIRE^LS1 4AB^GBR^H` →
    "1 HIGH STREET, FLAT 2, LEEDS, WEST YORKSHIRE, LS1 4AB, GBR".
    """
    address = xad_address(f)
    return address_text(address) if address else None


def xtn_string(f: FieldLike | None) -> str | None:
    """XTN → string: what IG XTN[ContactPoint] puts in ContactPoint.value (`xtn_contact_point`): XTN.4 for
    e-mail, else XTN.12, else the number built from XTN.5-8, else XTN.1.

    Example: `^WPN^PH^^44^113^4960000` → "+44 113 4960000"; `^NET^Internet^ward12@nhs.net` → "ward12@nhs.net".
    """
    point = xtn_contact_point(f)
    return point.get("value") if point else None


# --------------------------------------------------------------------------------------------------
# PL locations


@dataclass(frozen=True)
class PlaceParts:
    """The components of a PL (person location), HL7 v2.5 ch. 2A.53. UK (ITK): point of care is the
    ward's ODS site or ward code, facility (.4) the hospital site code."""

    point_of_care: str
    room: str
    bed: str
    facility: str
    status: str
    person_location_type: str
    building: str
    floor: str
    description: str

    @property
    def is_empty(self) -> bool:
        return not any((self.point_of_care, self.room, self.bed, self.facility, self.building, self.floor,
                        self.description))

    def key(self) -> tuple[str, ...]:
        """The identity of the place (facility, building, floor, point of care, room, bed)."""
        return (self.facility, self.building, self.floor, self.point_of_care, self.room, self.bed)


def pl_parts(f: FieldLike | None) -> PlaceParts:
    """A PL field's components (HD components read by their namespace id .1, else universal id .2)."""
    return PlaceParts(point_of_care=hd_namespace(f, 1), room=hd_namespace(f, 2), bed=hd_namespace(f, 3),
                      facility=hd_namespace(f, 4), status=comp(f, 5), person_location_type=comp(f, 6),
                      building=hd_namespace(f, 7), floor=hd_namespace(f, 8), description=comp(f, 9))


# The PL component → Location.physicalType (IG PL[Location]), most granular first.
_PLACE_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("bed", "bd", "Bed"),
    ("room", "ro", "Room"),
    ("point_of_care", "wa", "Ward"),
    ("floor", "lvl", "Level"),
    ("building", "bu", "Building"),
    ("facility", "si", "Site"),
)


def pl_location(parts: PlaceParts) -> JSON | None:
    """The most granular place of a PL → Location body without id (IG PL[Location]: the most
    granular location goes in Encounter.location). Its name joins the parts, coarse to fine, and
    each part is an identifier; physicalType names the level.

    UK: PV1-3.1 is the ward ("point of care"), so its physical type is `wa` (ward) rather than the
    IG's unspecified point-of-care type.
    """
    if parts.is_empty:
        return None
    level = next(((attr, code, display) for attr, code, display in _PLACE_LEVELS if getattr(parts, attr)), None)
    named = [getattr(parts, attr) for attr, _, _ in reversed(_PLACE_LEVELS) if getattr(parts, attr)]
    return compact({
        "resourceType": "Location",
        "status": "active",
        "mode": "instance",
        "name": " / ".join(named) or parts.description,
        "description": parts.description,
        "physicalType": code_concept(LOCATION_PHYSICAL_TYPE, level[1], level[2]) if level else None,
    })


# --------------------------------------------------------------------------------------------------
# Resource plumbing shared by every map


def security_meta(labels: Iterable[SecurityLabel]) -> JSON | None:
    """`meta` carrying the sender's security labels (UK-REFERENCE §5; FHIR R4 Meta.security), or None."""
    codings = [label.to_coding() for label in labels]
    return {"security": codings} if codings else None


def finish_resource(resource: JSON, resource_id: str, labels: Iterable[SecurityLabel] = ()) -> JSON:
    """`resource` with its id first, empty elements pruned and the security labels in `meta.security`."""
    body = prune(resource)
    for key in ("resourceType", "id", "meta"):
        body.pop(key, None)
    out: JSON = {"resourceType": resource["resourceType"], "id": resource_id}
    meta = security_meta(labels)
    if meta:
        out["meta"] = meta
    out.update(body)
    return out


def reference(resource_type: str, resource_id: str, display: str | None = None) -> JSON:
    """A literal reference `Type/id`, with its display when there is one."""
    literal: JSON = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        literal["display"] = display
    return literal


def organization_resource(ods_code: str, name: str | None, labels: Iterable[SecurityLabel] = ()) -> JSON:
    """An Organization identified by its ODS code, id `resource_id("Organization", ods)` (mappings.ids)."""
    body = {"resourceType": "Organization", "identifier": [ods_identifier(ods_code)], "name": name}
    return finish_resource(body, resource_id("Organization", ods_code), labels)


def sender_organization(sender: SenderConfig) -> JSON:
    """The sending trust's Organization (MSH-4 ODS code, configured name): every map's serviceProvider/performer."""
    return organization_resource(sender.ods_code, sender.name or None, sender.security_labels)


def practitioner_system(f: FieldLike | None, sender: SenderConfig, default_system: str | None = None) -> str:
    """The identifier system for an XCN: a UK register or URI named by the XCN, else `default_system`,
    else the assigner's (XCN.9, or the sender's) local staff-number system under our id base."""
    return xcn_system(f) or default_system or f"{LOCAL_ID_BASE}/{xcn_assigner(f) or sender.ods_code}/practitioner"


def practitioner_from_xcn(f: FieldLike | None, sender: SenderConfig,
                          default_system: str | None = None) -> tuple[JSON | None, JSON | None]:
    """XCN → (Practitioner resource or None, Reference or None).

    With an id (XCN.1) the Practitioner gets `resource_id("Practitioner", system, value)` and the
    reference points at it; a name without an id gives no resource, only a display reference.
    """
    body = xcn_practitioner(f)
    if body is None:
        return None, None
    name = (body.get("name") or [{}])[0]
    display = " ".join([*name.get("prefix", []), *name.get("given", []), name.get("family", "")]).strip() or None
    if not body.get("identifier"):
        return None, {"display": display} if display else None
    system = practitioner_system(f, sender, default_system)
    ident = {**body["identifier"][0], "system": system}
    body = {**body, "identifier": [ident]}
    practitioner_id = resource_id("Practitioner", system, ident["value"])
    return finish_resource(body, practitioner_id, sender.security_labels), reference(
        "Practitioner", practitioner_id, display)


# --------------------------------------------------------------------------------------------------
# Field tables: the declarative part of every segment map


class SegmentLike(Protocol):
    """The part of the parser's `Segment` the field tables use."""

    name: str
    occurrence: int

    def repetitions(self, field: int) -> list[Any]: ...


@dataclass(frozen=True)
class FieldMap:
    """One row of a segment map: field `field` → FHIR element `path` via datatype function `convert`.

    `repeats`: every repetition is converted and appended to the list at `path`; otherwise only the
    first usable repetition sets `path`. `path` may be dotted (`hospitalization.admitSource`).
    """

    field: int
    path: str
    convert: Callable[[Any], Any]  # FieldLike → FHIR JSON value, or None
    repeats: bool = False


def apply_field_maps(segment: SegmentLike | None, table: Iterable[FieldMap], resource: JSON) -> JSON:
    """Run a segment's field table into `resource` (mutated and returned). Explicit nulls are skipped."""
    if segment is None:
        return resource
    for row in table:
        values = [value for rep in segment.repetitions(row.field) if not rep.is_null
                  if (value := row.convert(rep)) not in (None, "", [], {})]
        if not values:
            continue
        if row.repeats:
            _list_at(resource, row.path).extend(values)
        else:
            _set_at(resource, row.path, values[0])
    return resource


def fields_read(*tables: Iterable[FieldMap]) -> frozenset[int]:
    """The field numbers a set of field tables reads (for the coverage report)."""
    return frozenset(row.field for table in tables for row in table)


@functools.cache
def _steps(path: str) -> tuple[tuple[str, ...], str]:
    """A dotted path as (the names of its parents, its leaf): `hospitalization.admitSource` → ((hospitalization,), admitSource)."""
    *parents, leaf = path.split(".")
    return tuple(parents), leaf


def _parent(resource: JSON, path: str) -> tuple[JSON, str]:
    parents, leaf = _steps(path)
    node = resource
    for name in parents:
        node = node.setdefault(name, {})
    return node, leaf


def _set_at(resource: JSON, path: str, value: Any) -> None:
    node, leaf = _parent(resource, path)
    node[leaf] = value


def _list_at(resource: JSON, path: str) -> list[Any]:
    node, leaf = _parent(resource, path)
    return node.setdefault(leaf, [])


def first_text(f: FieldLike | None) -> str | None:
    """Component 1 of a field, cleaned, or None (for ST/ID/IS fields mapped to a FHIR string)."""
    return comp(f, 1) or None


def date_of(f: FieldLike | None) -> str | None:
    """A DT/DTM field → FHIR date (`v2_to_fhir_date` of component 1)."""
    return v2_to_fhir_date(comp(f, 1))


def datetime_of(f: FieldLike | None) -> str | None:
    """A DTM/TS field → FHIR dateTime (`v2_to_fhir_datetime` of component 1)."""
    return v2_to_fhir_datetime(comp(f, 1))
