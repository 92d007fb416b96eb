"""Golden files for results, orders, documents and appointments: each `fixtures/hl7v2/{ORU_R01,ORM_O01,
OML_O21,MDM_T02,SIU_S12}/NN_name.hl7` maps to exactly `NN_name.expected.json`.

A mapping change is a data diff plus a golden diff (STYLE.md). Regenerate after an intended change with

    SHAREDCARE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/mappings/test_golden_results.py

and review the JSON diff. The golden messages are our own UK-shaped ones (MSH-4 RR8, v2.4, NHS number
plus local MRN in PID-3). Across files they tell a story the tests below check: a corrected (OBX-11 C)
and a withdrawn (W) result re-use the first result's Observation id (UK-REFERENCE test case 7); a T04
status change re-uses the document id and a T08 edit replaces it; a cancelled order and a cancelled
appointment keep the ids of their bookings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from adapters.hl7v2.parser import Message, parse_message
from adapters.registry import adapter_for
from adapters.senders import SecurityLabel, SenderConfig, generic_sender
from mappings.hl7v2.documents import DOCUMENT_MAPS
from mappings.hl7v2.orders import ORDER_MAPS
from mappings.hl7v2.results import RESULT_MAPS
from mappings.hl7v2.scheduling import SCHEDULING_MAPS
from mappings.result import MappingError, MappingResult

# tests/ is not a package: a tests/mappings/__init__.py would shadow the real `mappings` package, so this
# module carries its own few helpers (as tests/mappings/test_golden.py does).
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "hl7v2"
REGENERATE = os.environ.get("SHAREDCARE_REGENERATE_GOLDEN") == "1"
FOLDERS = ("ORU_R01", "ORM_O01", "OML_O21", "MDM_T02", "SIU_S12")
GOLDEN = sorted(p for folder in FOLDERS for p in (FIXTURES / folder).glob("*.hl7"))
MAPS = {**RESULT_MAPS, **ORDER_MAPS, **DOCUMENT_MAPS, **SCHEDULING_MAPS}


def demo_senders() -> dict[str, SenderConfig]:
    senders = {}
    for entry in json.loads((REPO / "fixtures" / "senders.json").read_text()):
        labels = tuple(SecurityLabel(**label) for label in entry.pop("security_labels", []))
        senders[entry["ods_code"]] = SenderConfig(security_labels=labels, **entry)
    return senders


SENDERS = demo_senders()


def sender_for(message: Message) -> SenderConfig:
    return SENDERS.get(message.sending_facility) or generic_sender(message.sending_facility)


def outcome(path: Path) -> dict[str, Any]:
    """What the sender's adapter makes of one golden message (the maps, then the sender's labels and
    data-owner tag) as plain JSON: the result, or the error it raises."""
    message = parse_message(path.read_text(encoding="utf-8"))
    try:
        sender = sender_for(message)
        result = adapter_for(sender.kind)(message, sender)
    except MappingError as exc:
        location = exc.location.__dict__ if exc.location else None
        return {"error": {"code": exc.code, "message": exc.message, "location": location, "reject": exc.reject}}
    return result_json(result)


def result_json(result: MappingResult) -> dict[str, Any]:
    key = result.patient_key
    return {
        "message_type": result.message_type,
        "patient_id": result.patient_id,
        "patient_key": {"nhs_number": key.nhs_number, "local": [i.__dict__ for i in key.local]} if key else None,
        "event_time": result.event_time.isoformat() if result.event_time else None,
        "unmapped": result.unmapped,
        "warnings": result.warnings,
        **({"actions": [{"kind": a.kind, **a.detail.__dict__} for a in result.actions]} if result.actions else {}),
        "resources": result.resources,
    }


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """JSON paths where two documents differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for k in sorted(set(expected) | set(actual), key=str):
            if k not in actual:
                out.append(f"{path}.{k}: missing")
            elif k not in expected:
                out.append(f"{path}.{k}: unexpected {json.dumps(actual[k])[:80]}")
            else:
                out += differences(expected[k], actual[k], f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = [f"{path}: {len(expected)} items, got {len(actual)}"] if len(expected) != len(actual) else []
        for i, (e, a) in enumerate(zip(expected, actual)):
            out += differences(e, a, f"{path}[{i}]")
        return out
    return [] if expected == actual else [f"{path}: expected {json.dumps(expected)[:80]}, got {json.dumps(actual)[:80]}"]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    actual = outcome(path)
    expected_path = path.with_name(path.stem + ".expected.json")
    if REGENERATE or not expected_path.exists():
        expected_path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not REGENERATE:
            pytest.fail(f"{expected_path.name} was missing and has been written: review it and re-run")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    diff = differences(expected, json.loads(json.dumps(actual)))
    assert not diff, f"{path.name} no longer maps to {expected_path.name}:\n  " + "\n  ".join(diff[:15])


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_resources_are_valid_r4(path: Path) -> None:
    result = outcome(path)
    assert "error" not in result, result.get("error")
    for resource in result["resources"]:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_message_type_has_a_golden_folder() -> None:
    for folder in FOLDERS:
        assert list((FIXTURES / folder).glob("*.hl7")), folder
    triggers = {parse_message(p.read_text()).message_type for p in GOLDEN}
    assert triggers == set(MAPS), sorted(set(MAPS) ^ triggers)


# --- the story across files ---------------------------------------------------------------------------------


def resources(folder: str, stem: str, resource_type: str) -> list[dict[str, Any]]:
    result = outcome(FIXTURES / folder / f"{stem}.hl7")
    return [r for r in result["resources"] if r["resourceType"] == resource_type]


def by_code(observations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["code"]["coding"][0]["code"]: o for o in observations}


def test_corrected_and_withdrawn_results_reuse_the_ids() -> None:
    final = by_code(resources("ORU_R01", "01_fbc_final", "Observation"))
    corrected = by_code(resources("ORU_R01", "02_fbc_corrected", "Observation"))
    withdrawn = by_code(resources("ORU_R01", "03_fbc_withdrawn", "Observation"))
    assert {o["id"] for o in final.values()} == {o["id"] for o in corrected.values()} == \
        {o["id"] for o in withdrawn.values()}
    assert (final["HB"]["status"], corrected["HB"]["status"]) == ("final", "corrected")
    assert (final["HB"]["valueQuantity"]["value"], corrected["HB"]["valueQuantity"]["value"]) == (118, 128)
    assert withdrawn["PLT"]["status"] == "entered-in-error"
    reports = [resources("ORU_R01", stem, "DiagnosticReport")[0]
               for stem in ("01_fbc_final", "02_fbc_corrected", "03_fbc_withdrawn")]
    assert len({r["id"] for r in reports}) == 1
    assert [r["status"] for r in reports] == ["final", "corrected", "corrected"]


def test_document_status_change_and_edit() -> None:
    original = resources("MDM_T02", "01_discharge_summary_text", "DocumentReference")[0]
    changed = resources("MDM_T02", "03_status_change_T04", "DocumentReference")[0]
    edited = resources("MDM_T02", "04_edit_T08", "DocumentReference")[0]
    assert changed["id"] == original["id"] and (original["docStatus"], changed["docStatus"]) == ("preliminary", "final")
    assert edited["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{original['id']}"


def test_order_and_appointment_cancellations_keep_their_ids() -> None:
    new, cancelled = (resources("ORM_O01", stem, "ServiceRequest")[0] for stem in ("01_new_order", "02_cancel_order"))
    assert new["id"] == cancelled["id"] and (new["status"], cancelled["status"]) == ("active", "revoked")
    appointments = [resources("SIU_S12", p.stem, "Appointment")[0] for p in sorted((FIXTURES / "SIU_S12").glob("*.hl7"))]
    assert len({a["id"] for a in appointments}) == 1
    assert [a["status"] for a in appointments] == ["booked", "booked", "booked", "cancelled"]


def test_result_report_is_based_on_the_order_it_fulfils() -> None:
    report = resources("ORU_R01", "01_fbc_final", "DiagnosticReport")[0]
    request = resources("ORU_R01", "01_fbc_final", "ServiceRequest")[0]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]


def test_coverage_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Print what each golden message carried that no map used (run with -s to see it)."""
    lines = []
    for path in GOLDEN:
        result = outcome(path)
        lines.append(f"{path.parent.name}/{path.name}: unmapped {', '.join(result.get('unmapped', [])) or '-'}")
    with capsys.disabled():
        print("\nHL7 v2 results/orders/documents/appointments golden coverage\n  " + "\n  ".join(lines))
    assert lines
