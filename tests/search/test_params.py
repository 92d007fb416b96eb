"""parse_search: the FHIR search grammar (https://hl7.org/fhir/R4/search.html) without a database."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.search.params import (
    Chain,
    Condition,
    DateMatch,
    IdMatch,
    Include,
    NumberMatch,
    ReferenceMatch,
    SearchError,
    SearchRequest,
    SortKey,
    StringMatch,
    TokenMatch,
    UriMatch,
    parse_search,
    split_unescaped,
    unescape,
)

YEAR_2020 = (datetime(2020, 1, 1), datetime(2020, 12, 31, 23, 59, 59, 999999))


def one(resource_type: str, name: str, value: str) -> Condition:
    (condition,) = parse_search(resource_type, [(name, value)]).criteria
    return condition


def error(resource_type: str, items: list[tuple[str, str]], **kwargs: object) -> SearchError:
    with pytest.raises(SearchError) as caught:
        parse_search(resource_type, items, **kwargs)  # type: ignore[arg-type]
    assert caught.value.status == 400
    return caught.value


# -- escapes, OR and AND -------------------------------------------------------------------------


def test_split_keeps_escaped_separators() -> None:
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert [unescape(p) for p in split_unescaped(r"a\,b,c\\,d", ",")] == ["a,b", "c\\", "d"]
    assert unescape(r"x\|y\$z") == "x|y$z"


def test_a_search_asks_for_a_bounded_amount_of_work() -> None:
    from engine.search.params import MAX_CRITERIA, MAX_INCLUDES, MAX_VALUES

    assert len(parse_search("Patient", [("family", f"a{i}") for i in range(MAX_CRITERIA)]).criteria) == MAX_CRITERIA
    too_many = error("Patient", [("family", f"a{i}") for i in range(MAX_CRITERIA + 1)])
    assert too_many.param == "family" and str(MAX_CRITERIA) in too_many.message
    assert len(one("Patient", "family", ",".join(f"a{i}" for i in range(MAX_VALUES))).matches) == MAX_VALUES
    assert error("Patient", [("family", ",".join(f"a{i}" for i in range(MAX_VALUES + 1)))]).param == "family"
    includes = [("_include", "Observation:subject")] * (MAX_INCLUDES + 1)
    assert error("Observation", includes).param == "_include"


def test_the_values_of_all_parameters_together_are_bounded() -> None:
    from engine.search.params import MAX_TOTAL_VALUES, MAX_VALUES

    assert MAX_VALUES < MAX_TOTAL_VALUES <= 2 * MAX_VALUES
    half = ",".join(f"a{i}" for i in range(MAX_TOTAL_VALUES // 2))
    items = [("family", half), ("given", half + ",b" * (MAX_TOTAL_VALUES % 2))]
    assert sum(len(c.matches) for c in parse_search("Patient", items).criteria) == MAX_TOTAL_VALUES
    too_many = error("Patient", [*items, ("_id", "x")])
    assert too_many.param == "_id" and str(MAX_TOTAL_VALUES) in too_many.message


def test_comma_is_or_and_repetition_is_and() -> None:
    req = parse_search("Observation", [("code", "a,b"), ("code", "c")])
    assert [len(c.matches) for c in req.criteria] == [2, 1]
    assert req.criteria[0].matches == (TokenMatch(None, "a"), TokenMatch(None, "b"))


def test_escaped_comma_is_part_of_the_value() -> None:
    assert one("Patient", "family:exact", r"Smith\,Jones").matches == (StringMatch("exact", "Smith,Jones"),)


# -- tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("http://loinc.org|1234-5", TokenMatch("http://loinc.org", "1234-5")),
        ("|1234-5", TokenMatch("", "1234-5")),
        ("http://loinc.org|", TokenMatch("http://loinc.org", None)),
        ("1234-5", TokenMatch(None, "1234-5")),
        (r"a\|b", TokenMatch(None, "a|b")),
    ],
)
def test_token_forms(value: str, match: TokenMatch) -> None:
    assert one("Observation", "code", value).matches == (match,)


def test_token_modifiers() -> None:
    assert one("Patient", "gender:not", "male").negate
    assert one("Observation", "code:text", "Heart Rate").matches == (TokenMatch(None, None, "heart rate"),)
    assert one("Patient", "gender:missing", "true") == Condition("gender", "token", missing=True)
    assert error("Observation", [("code", "a|b|c")]).param == "code"
    assert error("Observation", [("code", "|")]).param == "code"
    assert error("Observation", [("code:in", "http://vs")]).param == "code:in"


# -- strings ---------------------------------------------------------------------------------------


def test_string_default_is_normalised_prefix() -> None:
    assert one("Patient", "name", "  ZOË ").matches == (StringMatch("start", "zoe"),)
    assert one("Patient", "name:exact", "Zoë").matches == (StringMatch("exact", "Zoë"),)
    assert one("Patient", "name:contains", "OË").matches == (StringMatch("contains", "oe"),)
    assert one("Patient", "name:missing", "false") == Condition("name", "string", missing=False)
    assert error("Patient", [("name:missing", "yes")]).param == "name"


# -- dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["eq", "ne", "lt", "le", "gt", "ge", "sa", "eb", "ap"])
def test_date_prefixes(prefix: str) -> None:
    assert one("Observation", "date", f"{prefix}2020").matches == (DateMatch(prefix, *YEAR_2020),)  # type: ignore[arg-type]


def test_partial_dates_and_timezones() -> None:
    assert one("Observation", "date", "2020").matches == (DateMatch("eq", *YEAR_2020),)
    (march,) = one("Observation", "date", "2020-03").matches
    assert (march.low, march.high) == (datetime(2020, 3, 1), datetime(2020, 3, 31, 23, 59, 59, 999999))  # type: ignore[union-attr]
    (moment,) = one("Observation", "date", "ge2020-03-01T10:00:00+01:00").matches
    assert moment.low == datetime(2020, 3, 1, 9, 0)  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["2020-13", "yesterday", "xx2020", "2020-02-30", "ge", "GE2020", "2020-01-01T25:00"])
def test_bad_dates_name_the_parameter(value: str) -> None:
    assert error("Observation", [("date", value)]).param == "date"
    assert error("Observation", [("_lastUpdated", value)]).param == "_lastUpdated"


# -- numbers and quantities -------------------------------------------------------------------------


def test_quantity_forms_and_implicit_precision() -> None:
    assert one("Observation", "value-quantity", "5.4|http://unitsofmeasure.org|mg").matches == (
        NumberMatch("eq", 5.4, pytest.approx(5.35), pytest.approx(5.45), "http://unitsofmeasure.org", "mg"),  # type: ignore[arg-type]
    )
    (m,) = one("Observation", "value-quantity", "gt100||mg").matches
    assert (m.prefix, m.value, m.system, m.code) == ("gt", 100.0, None, "mg")  # type: ignore[union-attr]
    (m,) = one("Observation", "value-quantity", "100").matches
    assert (m.low, m.high) == (99.5, 100.5)  # type: ignore[union-attr]
    (m,) = one("Observation", "value-quantity", "1e2").matches
    assert (m.low, m.high) == (50.0, 150.0)  # type: ignore[union-attr]
    (m,) = one("Observation", "value-quantity", "ap100").matches
    assert (m.low, m.high) == (90.0, 110.0)  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["abc", "5.4|mg", "NaN", "Infinity", "1e99999", "5,4x", "--1", "zz5", "1.", ".5"])
def test_bad_quantities_name_the_parameter(value: str) -> None:
    assert error("Observation", [("value-quantity", value)]).param == "value-quantity"


# -- references and chains ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("patient", "123", ReferenceMatch("Patient", "123")),  # a single target type is implied
        ("subject", "123", ReferenceMatch(None, "123")),
        ("subject", "Patient/123", ReferenceMatch("Patient", "123")),
        ("subject:Patient", "123", ReferenceMatch("Patient", "123")),
        ("subject", "http://host/fhir/Patient/1", ReferenceMatch("Patient", "1", "http://host/fhir/Patient/1")),
        ("subject", "urn:uuid:5d4a", ReferenceMatch(None, None, "urn:uuid:5d4a")),
        ("focus", "Basic/9", ReferenceMatch("Basic", "9")),  # `focus` may point at any type
    ],
)
def test_reference_forms(name: str, value: str, match: ReferenceMatch) -> None:
    assert one("Observation", name, value).matches == (match,)


def test_reference_errors() -> None:
    assert error("Observation", [("subject", "Questionnaire/1")]).param == "subject"
    assert error("Observation", [("subject:Questionnaire", "1")]).param == "subject:Questionnaire"
    assert error("Observation", [("subject:identifier", "a|b")]).param == "subject:identifier"


def test_chains() -> None:
    typed = one("Observation", "subject:Patient.identifier", "https://fhir.nhs.uk/Id/nhs-number|9000000009")
    assert typed == Condition(
        "subject",
        "reference",
        chain=Chain("Patient", Condition("identifier", "token", (TokenMatch("https://fhir.nhs.uk/Id/nhs-number", "9000000009"),))),
    )
    implied = one("Observation", "patient.name:exact", "Smith")
    assert implied.chain == Chain("Patient", Condition("name", "string", (StringMatch("exact", "Smith"),)))
    assert one("Observation", "patient._id", "p1").chain == Chain("Patient", Condition("_id", "id", (IdMatch("p1"),)))
    assert "several types" in error("Observation", [("subject.name", "smith")]).message
    assert error("Observation", [("patient.organization.name", "x")]).param == "organization.name"
    assert error("Observation", [("code.name", "x")]).param == "code.name"
    assert error("Observation", [("patient.nonsense", "x")]).param == "nonsense"


# -- uri, _id, _lastUpdated ------------------------------------------------------------------------------


def test_uri_id_and_last_updated() -> None:
    assert one("Patient", "_profile", "http://x/SD").matches == (UriMatch("http://x/SD"),)
    assert one("Patient", "_profile:below", "http://x/").matches == (UriMatch("http://x/", True),)
    assert one("Patient", "_id", "a,b") == Condition("_id", "id", (IdMatch("a"), IdMatch("b")))
    assert one("Patient", "_lastUpdated", "gt2020").matches == (DateMatch("gt", *YEAR_2020),)
    assert error("Patient", [("_id:not", "a")]).param == "_id"


# -- result parameters ------------------------------------------------------------------------------------


def test_count_default_clamp_and_errors() -> None:
    assert parse_search("Patient", []).count == 50
    assert parse_search("Patient", [], default_count=20).count == 20
    clamped = parse_search("Patient", [("_count", "5000")], max_count=1000)
    assert clamped.count == 1000 and clamped.items == (("_count", "1000"),)
    assert parse_search("Patient", [("_count", "0")]).count == 0
    for bad in ("-1", "abc", "1.5", "", "١٢"):
        assert error("Patient", [("_count", bad)]).param == "_count"


def test_sort() -> None:
    req = parse_search("Patient", [("_sort", "family,-birthdate,_id,-_lastUpdated,gender")])
    assert req.sort == (
        SortKey("family", "string"),
        SortKey("birthdate", "date", True),
        SortKey("_id", "id"),
        SortKey("_lastUpdated", "lastUpdated", True),
        SortKey("gender", "token"),
    )
    for bad in ("general-practitioner", "nonsense", "", "family,,gender", "--family"):
        assert error("Patient", [("_sort", bad)]).param == "_sort"


def test_summary_total_elements_format() -> None:
    req = parse_search(
        "Patient",
        [("_summary", "count"), ("_total", "none"), ("_elements", "name,birthDate"), ("_format", "json"), ("_pretty", "true")],
    )
    assert (req.summary, req.total, req.elements) == ("count", "none", ("name", "birthDate"))
    assert ("_format", "json") in req.items and ("_pretty", "true") in req.items
    assert error("Patient", [("_summary", "maybe")]).param == "_summary"
    assert error("Patient", [("_total", "exact")]).param == "_total"
    assert error("Patient", [("_elements", "name,<b>")]).param == "_elements"
    assert error("Patient", [("_count", "1"), ("_count", "2")]).param == "_count"


def test_includes() -> None:
    req = parse_search(
        "Observation",
        [
            ("_include", "Observation:patient"),
            ("_include", "Observation:subject:Patient"),
            ("_include:iterate", "Patient:general-practitioner"),
            ("_include", "Observation:*"),
            ("_revinclude", "Provenance:target"),
            ("_revinclude:iterate", "Provenance:target:Patient"),
        ],
    )
    assert req.includes == (
        Include("Observation", "patient"),
        Include("Observation", "subject", "Patient"),
        Include("Patient", "general-practitioner", None, True),
        Include("Observation", None),
    )
    assert req.revincludes == (Include("Provenance", "target"), Include("Provenance", "target", "Patient", True))
    for bad in ("Observation", "Patient:general-practitioner", "Observation:code", "Observation:subject:Questionnaire", "x:y"):
        assert error("Observation", [("_include", bad)]).param == "_include"
    assert error("Observation", [("_include:deep", "Observation:patient")]).param == "_include:deep"


def test_cursor_is_kept_out_of_the_links() -> None:
    req = parse_search("Patient", [("name", "smith"), ("_cursor", "abc")])
    assert req.cursor == "abc" and req.items == (("name", "smith"),)


# -- strict and lenient ----------------------------------------------------------------------------------------


def test_unknown_parameters_fail_unless_lenient() -> None:
    assert error("Patient", [("nonsense", "1")]).param == "nonsense"
    assert error("Patient", [("name:sounds-like", "x")]).param == "name:sounds-like"
    assert error("Patient", [("_has:Observation:patient:code", "x")]).param == "_has"
    req = parse_search(
        "Patient",
        [("name", "smith"), ("nonsense", "1"), ("name:sounds-like", "x"), ("_count", "5")],
        lenient=True,
    )
    assert req.ignored == (("nonsense", "1"), ("name:sounds-like", "x"))
    assert req.items == (("name", "smith"), ("_count", "5"))
    assert len(req.criteria) == 1


def test_lenient_still_rejects_bad_values() -> None:
    assert error("Patient", [("birthdate", "soon")], lenient=True).param == "birthdate"


def test_empty_values_are_ignored() -> None:
    req = parse_search("Patient", [("name", ""), ("gender", ",")])
    assert req.criteria == () and req.ignored == (("name", ""), ("gender", ","))


def test_request_is_frozen() -> None:
    req = parse_search("Patient", [])
    assert isinstance(req, SearchRequest)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.count = 3  # type: ignore[misc]


# -- never anything but SearchError -------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "name", "family", "given", "birthdate", "gender", "identifier", "general-practitioner", "_id",
        "_lastUpdated", "_count", "_sort", "_summary", "_total", "_elements", "_include", "_revinclude",
        "_cursor", "_format", "organization", "link", "_profile", "active", "nonsense", "phone",
    ]
)
_MODIFIERS = st.sampled_from(["", ":exact", ":contains", ":missing", ":not", ":text", ":Patient", ":iterate",
                              ":below", ":of-type", ":", ".name", ":Organization.name", ".identifier:not"])
_VALUE_ALPHABET = st.sampled_from(list("0123456789-:T+Z.|,\\$ aeglnqtsbpZ*/%_") + ["http://x/", "Patient/", "2020-01-01"])
_VALUES = st.one_of(st.text(max_size=30), st.lists(_VALUE_ALPHABET, max_size=12).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.one_of(st.builds(str.__add__, _NAMES, _MODIFIERS), st.text(max_size=12)), _VALUES), max_size=6),
    st.booleans(),
    st.sampled_from(["Patient", "Observation", "Nonsense"]),
)
def test_parse_search_raises_only_search_error(items: list[tuple[str, str]], lenient: bool, resource_type: str) -> None:
    try:
        req = parse_search(resource_type, items, lenient=lenient)
    except SearchError as exc:
        assert exc.status == 400 and isinstance(exc.param, str) and exc.message
        return
    assert 0 <= req.count <= 1000
    assert set(req.items).isdisjoint(set(req.ignored)) or len(items) != len(set(items))
