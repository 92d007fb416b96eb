"""The pure core of documents: definitions format, selection rules, sanitising, purity itself."""

from __future__ import annotations

import ast
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.documents.definitions import DefinitionError, Source, Window, definitions, parse_definition
from engine.documents.elements import date_text, parse_date
from engine.documents.html_page import render_document
from engine.documents.receive import match_definition
from engine.documents.sanitise import sanitise
from engine.documents.selection import Context, in_window, keeps

REPO = Path(__file__).resolve().parents[2]
PURE = ["build.py", "definitions.py", "elements.py", "html_page.py", "narrative.py", "receive.py", "sanitise.py",
        "selection.py"]
FORBIDDEN = {"sqlalchemy", "fastapi", "starlette", "httpx", "socket", "psycopg", "aiosqlite", "uvicorn", "asyncio",
             "engine.db", "engine.access", "engine.api", "engine.fhir", "engine.config"}


@pytest.mark.parametrize("name", PURE)
def test_the_builder_side_imports_no_io_and_reads_no_clock(name: str) -> None:
    tree = ast.parse((REPO / "engine" / "documents" / name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        if isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today", "environ", "getenv", "time"} \
                and getattr(node.value, "id", "") in {"datetime", "date", "os", "time"}:
            raise AssertionError(f"{name} line {node.lineno} reads the clock or the environment")
    assert not {m for m in imported if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}


# -- definitions ---------------------------------------------------------------------------------------


def minimal() -> dict[str, Any]:
    return {
        "id": "x", "title": "X letter", "type": {"system": "http://snomed.info/sct", "code": "1"},
        "headings": [{"title": "Diagnoses", "code": {"system": "http://snomed.info/sct", "code": "887161000000102"},
                      "obligation": "mandatory", "empty_text": "No diagnoses recorded",
                      "sources": [{"type": "Condition", "scope": "encounter", "max": 5}]}],
    }


def test_a_new_document_type_is_just_data() -> None:
    definition = parse_definition(minimal())
    assert definition.headings[0].mandatory and definition.resource_types == ("Condition",)


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d["headings"][0].update(obligation="sometimes"), "obligation"),
    (lambda d: d["headings"][0]["sources"][0].update(take="patient"), "exactly one of take or type"),
    (lambda d: d["headings"][0]["sources"][0].update(scope="ward"), "scope"),
    (lambda d: d["headings"][0]["sources"][0].update(window={"anchor": "now"}), "days_before"),
    (lambda d: d["headings"][0]["sources"][0].update(where={"status": "active"}), "where"),
    (lambda d: d["headings"][0]["sources"][0].update(colour="red"), "unknown keys"),
    (lambda d: d["headings"].append(copy.deepcopy(d["headings"][0])), "share a section code"),
    (lambda d: d["headings"][0].pop("empty_text"), "empty_text"),
])
def test_definition_errors_name_the_element(change: Any, named: str) -> None:
    data = minimal()
    change(data)
    with pytest.raises(DefinitionError, match=named):
        parse_definition(data)


def test_packaged_definitions_follow_uk_reference_codes() -> None:
    inpatient = definitions()["inpatient-discharge"]
    codes = {h.title: h.code["code"] for h in inpatient.headings}
    assert codes["Allergies and adverse reactions"] == "886921000000105"
    assert codes["Person completing record"] == "887231000000104"
    assert definitions()["outpatient-letter"].type["code"] == "823681000000100"
    mandatory = {h.title for h in definitions()["emergency-care-discharge"].headings if h.mandatory}
    assert {"Attendance details", "Clinical narrative", "Presenting complaints or issues",
            "Information and advice given", "Plan and requested actions"} <= mandatory
    raw = json.loads((REPO / "engine/documents/definitions/care-home-to-hospital.json").read_text())
    assert [h["title"] for h in raw["headings"]][1:8] == [
        "About me", "GP practice", "Current medication", "Allergies and adverse reactions", "Recent observations",
        "Falls", "Contacts"]


def test_a_type_is_encounter_scoped_only_when_every_source_of_it_is() -> None:
    """A discharge reads only its encounter's results; Conditions are also read as the problem list."""
    inpatient = definitions()["inpatient-discharge"]
    assert inpatient.encounter_scoped_types == {"DiagnosticReport", "DocumentReference", "Observation", "Procedure"}
    assert "Condition" in inpatient.resource_types
    # Plans are the active ones: a lifetime of completed lab orders need not be read.
    assert inpatient.status_scoped_types["ServiceRequest"] == {"active", "on-hold", "draft"}
    assert "AllergyIntolerance" not in inpatient.status_scoped_types  # excluded statuses only: all are read
    # A Flag has no `status` search parameter, so no status index rows to narrow a read by: all are read.
    assert "Flag" in inpatient.resource_types and "Flag" not in inpatient.status_scoped_types


def test_a_read_scope_covers_a_narrower_one() -> None:
    from engine.documents.gather import ReadScope

    wide = ReadScope("E1", frozenset({"Observation"}), (("ServiceRequest", frozenset({"active", "draft"})),))
    narrow = ReadScope("E1", frozenset({"Observation", "Procedure"}), (("ServiceRequest", frozenset({"active"})),
                                                                       ("Flag", frozenset({"active"}))))
    assert wide.covers(narrow) and not narrow.covers(wide)
    assert not wide.covers(ReadScope("E2", frozenset({"Observation"}))) and not wide.covers(None)
    assert ReadScope("E1").covers(None)


def test_discharge_documents_sharing_a_type_are_told_apart_by_care_setting_then_title() -> None:
    all_definitions = definitions().values()
    composition = {"type": {"coding": [{"system": "http://snomed.info/sct", "code": "373942005"}]}}
    assert match_definition(composition, all_definitions).id == "inpatient-discharge"  # the default
    by_title = {**composition, "title": "Mental health discharge summary"}
    assert match_definition(by_title, all_definitions).id == "mental-health-discharge"
    setting = definitions()["emergency-care-discharge"].care_setting
    by_setting = {**by_title, "category": [{"coding": [dict(setting)]}]}
    assert match_definition(by_setting, all_definitions).id == "emergency-care-discharge"
    assert match_definition({"type": {"text": "letter"}}, all_definitions) is None


# -- selection ------------------------------------------------------------------------------------------

NOW = datetime(2025, 1, 14, 12, 0, tzinfo=UTC)
PATIENT = {"resourceType": "Patient", "id": "p1"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "period": {"start": "2025-01-06T09:00:00Z",
                                                                  "end": "2025-01-10T09:00:00Z"}}
CTX = Context(PATIENT, ENCOUNTER, {"display": "x"}, NOW, {})


def observation(when: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": when, "status": "final", "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": when, **extra}


def test_windows_count_back_from_their_anchor() -> None:
    last_week = Window("now", days_before=7)
    assert in_window(last_week, CTX, parse_date("2025-01-08T00:00:00Z"))
    assert not in_window(last_week, CTX, parse_date("2025-01-01T00:00:00Z"))
    assert not in_window(last_week, CTX, None)
    before_admission = Window("encounter-start", days_before=2)
    assert in_window(before_admission, CTX, parse_date("2025-01-05T00:00:00Z"))
    assert not in_window(before_admission, CTX, parse_date("2025-01-07T00:00:00Z"))
    assert in_window(Window("now", after=True), CTX, parse_date("2026-01-01"))


def test_filters_scope_and_safety_rules() -> None:
    source = Source(type="Observation", where={"category": ("vital-signs",)}, exclude={"status": ("cancelled",)})
    vital = {"category": [{"coding": [{"code": "vital-signs"}]}]}
    assert keeps(source, CTX, observation("2025-01-07", **vital))
    assert not keeps(source, CTX, observation("2025-01-07"))
    assert not keeps(source, CTX, observation("2025-01-07", **vital, status="cancelled"))
    assert not keeps(source, CTX, observation("2025-01-07", **vital, status="entered-in-error"))
    assert not keeps(source, CTX, {**observation("2025-01-07", **vital), "subject": {"reference": "Patient/p2"}})
    in_encounter = Source(type="Observation", scope="encounter")
    assert keeps(in_encounter, CTX, observation("2025-01-07", encounter={"reference": "Encounter/e1"}))
    assert not keeps(in_encounter, CTX, observation("2025-01-07", encounter={"reference": "Encounter/e2"}))


def test_times_are_shown_in_uk_time() -> None:
    assert date_text("2025-07-08T13:00:00Z") == "2025-07-08 14:00"
    assert date_text("2025-01-08T13:00:00Z") == "2025-01-08 13:00"
    assert date_text("2025-01-08") == "2025-01-08"


# -- sanitising and the HTML page ------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", [
    '<script>alert(1)</script>', '<img src=x onerror=alert(1)>', '<a href="javascript:alert(1)">x</a>',
    '<style>body{display:none}</style>', '<iframe src="https://evil"></iframe>', '<svg onload=alert(1)>',
    '<table onclick="x()"><tr><td colspan="2" style="x">cell</td></tr></table>', '<div><p>unclosed',
    '<scr<script>ipt>alert(1)</script>',
])
def test_sanitise_keeps_formatting_and_drops_anything_active(hostile: str) -> None:
    clean = sanitise(hostile)
    lowered = clean.lower()
    for bad in ("<script", "<img", "<a ", "<style", "<iframe", "<svg", "onclick", "onerror", "style=", "javascript:"):
        assert bad not in lowered, clean
    if "cell" in hostile:
        assert clean == '<table><tr><td colspan="2">cell</td></tr></table>'


def test_page_escapes_banner_values() -> None:
    bundle = {"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Composition", "title": "<b>Title</b>",
                                               "subject": {"reference": "urn:uuid:p"}, "section": [
                                                   {"title": "<i>S</i>", "emptyReason": {"text": "None <known>"}}]}},
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p",
                                               "name": [{"family": "<script>x</script>"}]}},
    ]}
    page = render_document(bundle)
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<h1>&lt;b&gt;Title&lt;/b&gt;</h1>" in page and "None &lt;known&gt;" in page
