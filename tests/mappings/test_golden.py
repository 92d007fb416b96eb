"""Golden files: each `fixtures/hl7v2/ADT_*/NN_name.hl7` maps to exactly `NN_name.expected.json`.

A mapping change is a data diff plus a golden diff (STYLE.md "mappings as data, proven by golden
files"). Regenerate after an intended change with

    SHAREDCARE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/mappings/test_golden.py

and review the JSON diff. The expected file also records `unmapped` — what the message carried that
no map used — and `test_coverage_report` prints it for every golden message.
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
from mappings.hl7v2.adt import ADT_MAPS
from mappings.result import MappingError, MappingResult

# tests/ is not a package (no tests/__init__.py), so a tests/mappings/__init__.py would shadow the real
# `mappings` package on sys.path; each mapping test module therefore carries its own few helpers.
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "hl7v2"
REGENERATE = os.environ.get("SHAREDCARE_REGENERATE_GOLDEN") == "1"
GOLDEN = sorted(FIXTURES.glob("ADT_*/*.hl7"))


def demo_senders() -> dict[str, SenderConfig]:
    """The senders of fixtures/senders.json (RR8 hospital, RY6 community, RGD mental health with labels)."""
    senders = {}
    for entry in json.loads((REPO / "fixtures" / "senders.json").read_text()):
        labels = tuple(SecurityLabel(**label) for label in entry.pop("security_labels", []))
        senders[entry["ods_code"]] = SenderConfig(security_labels=labels, **entry)
    return senders


SENDERS = demo_senders()


def sender_for(message: Message) -> SenderConfig:
    return SENDERS.get(message.sending_facility) or generic_sender(message.sending_facility)


def validate_r4(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


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
    def key(k: Any) -> dict[str, Any]:
        return {"nhs_number": k.nhs_number, "local": [i.__dict__ for i in k.local]} if k else None

    return {
        "message_type": result.message_type,
        "patient_id": result.patient_id,
        "patient_key": key(result.patient_key),
        "event_time": result.event_time.isoformat() if result.event_time else None,
        "actions": [{"kind": a.kind, "survivor": key(a.detail.survivor), "old": key(a.detail.old)}
                    for a in result.actions],
        "unmapped": result.unmapped,
        "warnings": result.warnings,
        "resources": result.resources,
    }


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """JSON paths where two documents differ (the first few are enough to see what changed)."""
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


def test_there_are_golden_messages_for_every_adt_event() -> None:
    events = {p.parent.name.replace("_", "^") for p in GOLDEN}
    assert events >= set(ADT_MAPS), f"no golden message for {sorted(set(ADT_MAPS) - events)}"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    actual = outcome(path)
    expected_path = path.with_suffix(".expected.json")
    if REGENERATE or not expected_path.exists():
        expected_path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not REGENERATE:
            pytest.fail(f"{expected_path.name} was missing and has been written: review it and re-run")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    diff = differences(expected, json.loads(json.dumps(actual)))
    assert not diff, f"{path.name} no longer maps to {expected_path.name}:\n  " + "\n  ".join(diff[:15])


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_resources_are_valid_r4(path: Path) -> None:
    for resource in outcome(path).get("resources", []):
        validate_r4(resource)


def test_coverage_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Print what each golden message carried that no map used (run with -s to see it)."""
    lines = []
    for path in GOLDEN:
        result = outcome(path)
        if "error" in result:
            lines.append(f"{path.parent.name}/{path.name}: error {result['error']['code']}")
        else:
            lines.append(f"{path.parent.name}/{path.name}: unmapped {', '.join(result['unmapped']) or '-'}")
    with capsys.disabled():
        print("\nHL7 v2 ADT golden coverage\n  " + "\n  ".join(lines))
    assert lines
