"""String, date and reference normalisation.

https://hl7.org/fhir/R4/search.html#string, #date and #reference
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.search.normalise import (
    ReferenceTarget,
    normalise_string,
    parse_fhir_date_range,
    parse_reference,
    reference_type,
)

END_OF_DAY = (23, 59, 59, 999999)


# --- strings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Zoë Ó'Brien", "zoe o'brien"),
        ("  Siân \t\n  MacDonald  ", "sian macdonald"),
        ("STRAẞE", "strasse"),
        ("Straße", "strasse"),
        ("Ångström", "angstrom"),
        ("ﬁnch", "finch"),  # compatibility ligature
        ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
        ("Łukasz", "łukasz"),  # a stroke is not a combining mark: kept, lower-cased
        ("Nguyễn", "nguyen"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalise_string(text: str, expected: str) -> None:
    assert normalise_string(text) == expected


def test_normalise_string_truncates_to_256() -> None:
    assert normalise_string("a" * 300) == "a" * 256
    assert normalise_string("é" * 300) == "e" * 256


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_normalise_string_is_idempotent_and_folded(text: str) -> None:
    once = normalise_string(text)
    assert normalise_string(once) == once
    assert once == once.strip()
    assert "  " not in once
    assert len(once) <= 256


# --- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", datetime(2020, 1, 1), datetime(2020, 12, 31, *END_OF_DAY)),
        ("2020-02", datetime(2020, 2, 1), datetime(2020, 2, 29, *END_OF_DAY)),  # leap year
        ("2023-02", datetime(2023, 2, 1), datetime(2023, 2, 28, *END_OF_DAY)),
        ("1900-02", datetime(1900, 2, 1), datetime(1900, 2, 28, *END_OF_DAY)),  # century, not leap
        ("2000-02", datetime(2000, 2, 1), datetime(2000, 2, 29, *END_OF_DAY)),  # 400th year, leap
        ("2024-02-29", datetime(2024, 2, 29), datetime(2024, 2, 29, *END_OF_DAY)),
        ("2024-12", datetime(2024, 12, 1), datetime(2024, 12, 31, *END_OF_DAY)),
        ("2021-03-04T10:15:00Z", datetime(2021, 3, 4, 10, 15), datetime(2021, 3, 4, 10, 15, 0, 999999)),
        ("2021-03-04T10:15:00", datetime(2021, 3, 4, 10, 15), datetime(2021, 3, 4, 10, 15, 0, 999999)),
        ("2021-07-04T10:15:00+01:00", datetime(2021, 7, 4, 9, 15), datetime(2021, 7, 4, 9, 15, 0, 999999)),
        ("2021-12-31T22:30:00-05:00", datetime(2022, 1, 1, 3, 30), datetime(2022, 1, 1, 3, 30, 0, 999999)),
        (
            "2021-01-01T00:30:00+14:00",
            datetime(2020, 12, 31, 10, 30),
            datetime(2020, 12, 31, 10, 30, 0, 999999),
        ),
        ("2021-03-04T10:15", datetime(2021, 3, 4, 10, 15), datetime(2021, 3, 4, 10, 15, 59, 999999)),
        (
            "2021-03-04T10:15:30.5Z",
            datetime(2021, 3, 4, 10, 15, 30, 500000),
            datetime(2021, 3, 4, 10, 15, 30, 599999),
        ),
        (
            "2021-03-04T10:15:30.123Z",
            datetime(2021, 3, 4, 10, 15, 30, 123000),
            datetime(2021, 3, 4, 10, 15, 30, 123999),
        ),
        (
            "2021-03-04T10:15:30.1234567Z",
            datetime(2021, 3, 4, 10, 15, 30, 123456),
            datetime(2021, 3, 4, 10, 15, 30, 123456),
        ),
        (
            "2016-12-31T23:59:60Z",
            datetime(2016, 12, 31, 23, 59, 59, 999999),
            datetime(2016, 12, 31, 23, 59, 59, 999999),
        ),
        (
            "2015-02-07T13:28:17.239+02:00",
            datetime(2015, 2, 7, 11, 28, 17, 239000),
            datetime(2015, 2, 7, 11, 28, 17, 239999),
        ),
        ("0001-01-01T00:00:00+01:00", datetime.min, datetime.min),
        ("9999-12-31T23:00:00-05:00", datetime.max, datetime.max),
    ],
)
def test_parse_fhir_date_range(text: str, low: datetime, high: datetime) -> None:
    assert parse_fhir_date_range(text) == (low, high)


def test_results_are_naive_utc() -> None:
    low, high = parse_fhir_date_range("2021-07-04T10:15:00+01:00")
    assert low.tzinfo is None and high.tzinfo is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20",
        "2020-1",
        "2020-13",
        "2023-02-29",
        "2020-01-32",
        "2020-01-01T25:00:00Z",
        "2020-01-01T10:00:00+01:99",
        "0000",
        "2020-01-01T10",
        "2020/01/01",
        "yesterday",
        "2020-01-01Z",
        "2020-01-01 10:00:00",
    ],
)
def test_invalid_dates_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fhir_date_range(text)


_PRECISIONS = ("year", "month", "day", "minute", "second", "fraction")
_OFFSETS = st.integers(min_value=-12 * 4, max_value=14 * 4).map(lambda q: timedelta(minutes=15 * q))


def _format(moment: datetime, precision: str, digits: int, offset: timedelta | None) -> str:
    text = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d"}.get(precision)
    if text is not None:
        return moment.strftime(text)
    text = moment.strftime("%Y-%m-%dT%H:%M" if precision == "minute" else "%Y-%m-%dT%H:%M:%S")
    if precision == "fraction":
        text += "." + f"{moment.microsecond:06d}"[:digits]
    if offset is None:
        return text
    if offset == timedelta(0):
        return text + "Z"
    sign = "+" if offset >= timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@given(
    moment=st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30)),
    precision=st.sampled_from(_PRECISIONS),
    digits=st.integers(min_value=1, max_value=9),
    offset=st.none() | _OFFSETS,
)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_any_instant_within_the_precision_falls_inside(
    moment: datetime, precision: str, digits: int, offset: timedelta | None
) -> None:
    """low ≤ high, and the instant written (to any precision) lies within [low, high] in UTC."""
    local_offset = offset if precision in ("minute", "second", "fraction") else None
    text = _format(moment, precision, digits, local_offset)
    low, high = parse_fhir_date_range(text)
    assert low <= high
    instant = (
        moment
        if local_offset is None
        else (moment.replace(tzinfo=timezone(local_offset)).astimezone(UTC).replace(tzinfo=None))
    )
    assert low <= instant <= high


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", ReferenceTarget("Patient", "123", None)),
        ("Patient/123/_history/2", ReferenceTarget("Patient", "123", None)),
        ("Observation/a.b-C", ReferenceTarget("Observation", "a.b-C", None)),
        (
            "https://host.example/fhir/Patient/123",
            ReferenceTarget("Patient", "123", "https://host.example/fhir/Patient/123"),
        ),
        (
            "http://host.example/fhir/Patient/123/_history/4",
            ReferenceTarget("Patient", "123", "http://host.example/fhir/Patient/123/_history/4"),
        ),
        (
            "urn:uuid:8e5a7f5c-1c1e-4a2b-9a53-2f0c2b0e7d11",
            ReferenceTarget(None, None, "urn:uuid:8e5a7f5c-1c1e-4a2b-9a53-2f0c2b0e7d11"),
        ),
        ("urn:oid:1.2.3", ReferenceTarget(None, None, "urn:oid:1.2.3")),
        ("http://example.org/something", ReferenceTarget(None, None, "http://example.org/something")),
        ("#p1", None),
        ("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919", None),
        ("patient/123", None),
        ("Patient/", None),
        ("", None),
    ],
)
def test_parse_reference(reference: str, expected: ReferenceTarget | None) -> None:
    assert parse_reference(reference) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ({"reference": "Patient/1"}, "Patient"),
        ({"reference": "Group/1", "type": "Patient"}, "Group"),  # the literal wins
        ({"reference": "urn:uuid:1", "type": "Patient"}, "Patient"),
        ({"reference": "urn:uuid:1", "type": "http://hl7.org/fhir/StructureDefinition/Patient"}, "Patient"),
        ({"reference": "urn:uuid:1"}, None),
        ({"reference": "#contained"}, None),
        ({"identifier": {"value": "x"}}, None),
        ("Patient/1", None),
    ],
)
def test_reference_type(reference: object, expected: str | None) -> None:
    assert reference_type(reference) == expected
