"""Loading a fixture folder: messages are found, golden files (`*.expected.json`) never are."""

from __future__ import annotations

from pathlib import Path

from engine.ingest.files import hl7_files, ingest_files, is_golden_file

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


def test_golden_files_are_recognised() -> None:
    assert is_golden_file(Path("ADT_A01/01_admit.expected.json"))
    assert not is_golden_file(Path("ADT_A01/01_admit.hl7")) and not is_golden_file(Path("bundle.json"))


def test_a_fixture_folder_yields_its_messages_only() -> None:
    found = hl7_files([FIXTURES])
    assert found and all(p.suffix == ".hl7" for p in found)
    assert len(found) == len(list(FIXTURES.glob("*/*.expected.json")))  # one golden file per message


def test_loading_the_golden_folder_ingests_every_message(ctx, run) -> None:
    report = run(ingest_files(ctx, [FIXTURES]))
    assert report.files == report.messages == len(list(FIXTURES.glob("*/*.hl7")))
    assert report.codes["AA"] + report.codes["AE"] == report.messages  # AE: the two deliberate bad ADTs
    assert all("expected.json" not in failure for failure in report.failures)


def test_the_fhir_loader_does_not_take_golden_files_for_fhir() -> None:
    from engine.loader import find_files

    assert not [p for p in find_files([FIXTURES]) if is_golden_file(p)]
