"""One person, one Patient: NHS number first, then MRN; merges (UK-REFERENCE tests 1 and 3); staleness; order."""

from __future__ import annotations

import asyncio
import random

from engine.ingest import apply
from mappings.ids import resource_id

from .helpers import all_of, compartment, counts, ingest, messages, search_ids, stored
from .messages import NHS_A, NHS_B, NHS_C, NHS_SYSTEM, a40, adt

PATIENT_A = resource_id("Patient", "nhs", NHS_A)
RR8_MRN = "https://fhir.sharedcare.dev/Id/RR8/mrn"
RY6_MRN = "https://fhir.sharedcare.dev/Id/RY6/mrn"


def identifiers(patient: dict) -> set[tuple[str, str]]:
    return {(i["system"], i["value"]) for i in patient.get("identifier", [])}


def test_same_nhs_number_from_two_senders_is_one_patient_with_both_mrns(ctx, run) -> None:
    assert run(ingest(ctx, adt("A01", "RR8-1", mrn="RR81234567"))).code == "AA"
    assert run(ingest(ctx, adt("A04", "RY6-1", sender="RY6", mrn="C555", visit="CV1"))).code == "AA"
    [patient] = run(all_of(ctx.db, "Patient"))
    assert {(NHS_SYSTEM, NHS_A), (RR8_MRN, "RR81234567"), (RY6_MRN, "C555")} <= identifiers(patient)
    assert run(search_ids(ctx.db, "Patient", ("identifier", f"{RY6_MRN}|C555"))) == [patient["id"]]
    encounters = run(all_of(ctx.db, "Encounter"))
    assert len(encounters) == 2 and {e["subject"]["reference"] for e in encounters} == {f"Patient/{patient['id']}"}


def test_mrn_only_then_nhs_number_later_is_still_one_patient(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-2", nhs=None, mrn="RR87654321", event="20240301100000")))
    [first] = run(all_of(ctx.db, "Patient"))
    assert (NHS_SYSTEM, NHS_B) not in identifiers(first)
    outcome = run(ingest(ctx, adt("A08", "RR8-3", nhs=NHS_B, mrn="RR87654321", family="JONES",
                                  event="20240302100000")))
    assert outcome.code == "AA"
    [patient] = run(all_of(ctx.db, "Patient"))
    assert patient["id"] == first["id"] and patient["name"][0]["family"] == "JONES"
    assert (NHS_SYSTEM, NHS_B) in identifiers(patient)
    assert run(search_ids(ctx.db, "Patient", ("identifier", f"{NHS_SYSTEM}|{NHS_B}"))) == [first["id"]]
    # Every reference the second message made points at the stored Patient.
    assert {e["subject"]["reference"] for e in run(all_of(ctx.db, "Encounter"))} == {f"Patient/{first['id']}"}
    [row] = [m for m in run(messages(ctx.db)) if m.control_id == "RR8-3"]
    assert row.patient_id == first["id"]


def test_a31_updates_demographics_without_a_duplicate(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-4", event="20240301100000")))
    run(ingest(ctx, adt("A31", "RR8-5", visit=None, family="TAYLOR", event="20240302100000")))
    [patient] = run(all_of(ctx.db, "Patient"))
    assert patient["name"][0]["family"] == "TAYLOR" and patient["meta"]["versionId"] == "2"


def test_a_local_number_held_by_a_different_nhs_number_is_an_error(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-6", nhs=NHS_A, mrn="RR8SHARED")))
    outcome = run(ingest(ctx, adt("A08", "RR8-7", nhs=NHS_B, mrn="RR8SHARED")))
    assert (outcome.code, outcome.error_code) == ("AE", "205")
    assert len(run(all_of(ctx.db, "Patient"))) == 1


# -- staleness and order ---------------------------------------------------------------------------


def test_an_older_a08_after_a_newer_one_does_not_overwrite(ctx, run) -> None:
    run(ingest(ctx, adt("A08", "RR8-10", family="NEWER", event="20240305120000")))
    outcome = run(ingest(ctx, adt("A08", "RR8-11", family="OLDER", event="20240304120000", mrn="RR8OTHER")))
    assert outcome.code == "AA"
    [patient] = run(all_of(ctx.db, "Patient"))
    assert patient["name"][0]["family"] == "NEWER"
    assert (RR8_MRN, "RR8OTHER") in identifiers(patient)  # a late message still links an identifier
    [_, late] = run(messages(ctx.db))
    assert any(w.startswith(f"stale: Patient/{PATIENT_A}") for w in late.warnings)


def test_concurrent_updates_for_one_patient_end_with_the_latest_event(ctx, run) -> None:
    events = [f"202403{day:02d}120000" for day in range(1, 13)]
    shuffled = random.Random(7).sample(events, len(events))

    async def flood():
        return await asyncio.gather(*(ingest(ctx, adt("A08", f"RR8-O{e}", family=f"F{e[6:8]}", event=e))
                                      for e in shuffled))

    assert {o.code for o in run(flood())} == {"AA"}
    [patient] = run(all_of(ctx.db, "Patient"))
    assert patient["name"][0]["family"] == "F12"


# -- encounters (UK-REFERENCE test 2) ---------------------------------------------------------------


def test_a11_cancels_and_a13_reopens_a_finished_encounter(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-20", event="20240301100000")))
    run(ingest(ctx, adt("A11", "RR8-21", event="20240301110000")))
    [encounter] = run(all_of(ctx.db, "Encounter"))
    assert encounter["status"] == "cancelled"
    run(ingest(ctx, adt("A01", "RR8-22", visit="V2", event="20240302100000")))
    run(ingest(ctx, adt("A03", "RR8-23", visit="V2", discharged="202403041100", event="20240304110000")))
    finished = run(stored(ctx.db, "Encounter", resource_id("Encounter", "RR8", "V2")))
    assert finished["status"] == "finished" and finished["period"].get("end")
    run(ingest(ctx, adt("A13", "RR8-24", visit="V2", event="20240305110000")))
    reopened = run(stored(ctx.db, "Encounter", resource_id("Encounter", "RR8", "V2")))
    assert reopened["status"] == "in-progress" and "end" not in reopened.get("period", {})


# -- merge (UK-REFERENCE test 1) ---------------------------------------------------------------------


def test_a40_merge_moves_the_old_record_to_the_survivor(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-30", nhs=NHS_C, mrn="RR80000042", visit="VOLD", event="20240301100000")))
    run(ingest(ctx, adt("A01", "RR8-31", nhs=NHS_A, mrn="RR81234567", visit="VNEW", event="20240302100000")))
    old_id = resource_id("Patient", "nhs", NHS_C)
    assert len(run(all_of(ctx.db, "Patient"))) == 2
    outcome = run(ingest(ctx, a40("RR8-32")))
    assert outcome.code == "AA"

    old = run(stored(ctx.db, "Patient", old_id))
    assert old["active"] is False
    assert {"other": {"reference": f"Patient/{PATIENT_A}"}, "type": "replaced-by"} in old["link"]
    survivor = run(stored(ctx.db, "Patient", PATIENT_A))
    assert {"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"} in survivor["link"]
    assert {(NHS_SYSTEM, NHS_C), (RR8_MRN, "RR80000042")} <= identifiers(survivor)
    assert [i for i in survivor["identifier"] if i["system"] == NHS_SYSTEM and i.get("use") != "old"] == [
        {"system": NHS_SYSTEM, "value": NHS_A, **_extra(survivor, NHS_A)}]

    # Everything the old record held now belongs to the survivor.
    moved = {t for t, _ in run(compartment(ctx.db, old_id))}
    assert moved <= {"Patient", "Provenance"}
    encounter_old = run(stored(ctx.db, "Encounter", resource_id("Encounter", "RR8", "VOLD")))
    assert encounter_old["subject"]["reference"] == f"Patient/{PATIENT_A}"
    assert encounter_old["meta"]["versionId"] == "2"

    # Search by either NHS number or either MRN finds the survivor.
    for token in (f"{NHS_SYSTEM}|{NHS_A}", f"{NHS_SYSTEM}|{NHS_C}", f"{RR8_MRN}|RR80000042", f"{RR8_MRN}|RR81234567"):
        found = run(search_ids(ctx.db, "Patient", ("identifier", token)))
        assert PATIENT_A in found and set(found) <= {PATIENT_A, old_id}
        assert run(search_ids(ctx.db, "Patient", ("identifier", token), ("active:not", "false"))) == [PATIENT_A]

    provenance = run(stored(ctx.db, "Provenance", apply.provenance_id(outcome.message_id)))
    assert {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "merge",
            "display": "Merge Record Lifecycle Event"} in provenance["activity"]["coding"]
    targets = {t["reference"].rsplit("/_history/", 1)[0] for t in provenance["target"]}
    assert {f"Patient/{old_id}", f"Patient/{PATIENT_A}",
            f"Encounter/{resource_id('Encounter', 'RR8', 'VOLD')}"} <= targets

    # Replaying the merge changes nothing; later messages about the old identity reach the survivor.
    again = run(ingest(ctx, a40("RR8-33")))
    assert again.code == "AA"
    assert run(stored(ctx.db, "Patient", old_id))["meta"]["versionId"] == old["meta"]["versionId"]
    run(ingest(ctx, adt("A08", "RR8-34", nhs=NHS_C, mrn="RR80000042", visit="VOLD", family="LATER",
                        event="20240405100000")))
    assert run(stored(ctx.db, "Patient", old_id))["active"] is False
    assert run(stored(ctx.db, "Patient", PATIENT_A))["name"][0]["family"] == "LATER"
    assert run(counts(ctx.db))["Patient"] == 2


def _extra(patient: dict, nhs: str) -> dict:
    [identifier] = [i for i in patient["identifier"] if i["value"] == nhs]
    return {k: v for k, v in identifier.items() if k not in {"system", "value"}}


def test_a40_for_an_old_patient_never_stored_gives_the_survivor_its_identifiers(ctx, run) -> None:
    run(ingest(ctx, adt("A01", "RR8-40")))
    outcome = run(ingest(ctx, a40("RR8-41", old_nhs=None, old_mrn="RR8GONE")))
    assert outcome.code == "AA"
    survivor = run(stored(ctx.db, "Patient", PATIENT_A))
    assert (RR8_MRN, "RR8GONE") in identifiers(survivor)
    [*_, row] = run(messages(ctx.db))
    assert any("MRG" in w for w in row.warnings)


def test_concurrent_messages_sharing_new_resources_store_them_once(ctx, run) -> None:
    """Different patients, the same new ward, consultant and trust: collisions are retried, not duplicated."""
    numbers = ["9000000009", "9000000017", "9000000025", "9000000033", "9000000041", "9000000068"]

    async def burst():
        return await asyncio.gather(*(ingest(ctx, adt("A01", f"RR8-C{i}", nhs=nhs, mrn=f"RR8C{i}", visit=f"VC{i}"))
                                      for i, nhs in enumerate(numbers)))

    outcomes = run(burst())
    assert [o.code for o in outcomes] == ["AA"] * len(numbers), [o.error_text for o in outcomes]
    found = run(counts(ctx.db))
    assert found["Patient"] == len(numbers) and found["Encounter"] == len(numbers)
    assert found["Organization"] == 1 and found["Location"] == 1


def test_allergies_and_diagnoses_stay_one_resource_when_the_nhs_number_arrives_later(ctx, run) -> None:
    """AL1/DG1 ids are keyed on the sender's MRN, not the Patient id: MRN first, NHS number later,
    a re-send and a replay of both all leave one AllergyIntolerance and one Condition."""
    from engine.ingest.replay import ReplaySelection, replay

    clinical = ("AL1|1|DA|91936005^Penicillin^SCT|SV|Rash", "DG1|1||J45^Asthma^I10||20240301")
    first = run(ingest(ctx, adt("A31", "RR8-D1", nhs=None, mrn="RR87654321", visit=None, segments=clinical,
                                event="20240301100000")))
    later = run(ingest(ctx, adt("A31", "RR8-D2", nhs=NHS_B, mrn="RR87654321", visit=None, segments=clinical,
                                event="20240302100000")))
    resent = run(ingest(ctx, adt("A31", "RR8-D2", nhs=NHS_B, mrn="RR87654321", visit=None, segments=clinical,
                                 event="20240302100000")))
    assert (first.code, later.code, resent.code, resent.duplicate) == ("AA", "AA", "AA", True)
    run(replay(ctx, ReplaySelection(ids=(first.message_id, later.message_id), statuses=("processed",))))
    [patient] = run(all_of(ctx.db, "Patient"))
    assert (NHS_SYSTEM, NHS_B) in identifiers(patient) and (RR8_MRN, "RR87654321") in identifiers(patient)
    [allergy] = run(all_of(ctx.db, "AllergyIntolerance"))
    [condition] = run(all_of(ctx.db, "Condition"))
    assert allergy["patient"]["reference"] == condition["subject"]["reference"] == f"Patient/{patient['id']}"
    assert allergy["meta"]["versionId"] == condition["meta"]["versionId"] == "1"  # nothing to change
