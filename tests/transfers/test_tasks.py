"""The transfer Task and its state machine (engine/transfers/tasks.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fhir.resources.R4B.task import Task

from consent.vocabulary import owner_tag
from engine.transfers.receivers import CARE_HOME, GP_PRACTICE, Receiver, org_for_ods
from engine.transfers.tasks import (
    DocumentRefs,
    TransitionError,
    build_task,
    next_status,
    task_id,
    transition,
    waiting_seconds,
)

NOW = datetime(2024, 3, 5, 14, 30)
GP = Receiver(GP_PRACTICE, org_for_ods("B86001", "Beeston Village Surgery"))
HOSPITAL = org_for_ods("RR8", "Leeds Teaching Hospitals NHS Trust")
DOCUMENT = DocumentRefs("bundle-1", "composition-1", "docref-1")


def task(receiver: Receiver = GP, document: DocumentRefs | None = DOCUMENT) -> dict:
    return build_task(encounter_id="enc-1", patient_id="pat-1", receiver=receiver, requester=HOSPITAL,
                      document=document, now=NOW)


def test_the_task_is_valid_r4_and_names_everyone() -> None:
    built = task()
    Task.model_validate(built)
    assert (built["status"], built["intent"], built["code"]["text"]) == ("requested", "order", "Transfer of care")
    assert built["focus"] == {"reference": "DocumentReference/docref-1"}
    assert built["for"] == {"reference": "Patient/pat-1"} and built["encounter"] == {"reference": "Encounter/enc-1"}
    assert built["owner"]["identifier"]["value"] == "B86001"
    assert built["requester"]["identifier"]["value"] == "RR8"
    assert built["authoredOn"] == "2024-03-05T14:30:00.000Z"
    assert built["meta"]["tag"] == [owner_tag("RR8")]  # the discharging hospital owns the record of it
    assert built["businessStatus"]["coding"][0]["code"] == "awaiting-receipt"
    assert [i["valueReference"]["reference"] for i in built["input"]] == ["Composition/composition-1",
                                                                          "Bundle/bundle-1"]


def test_an_unidentified_receiver_has_no_owner_and_says_so() -> None:
    built = task(Receiver(CARE_HOME, None), document=None)
    Task.model_validate(built)
    assert "owner" not in built and built["focus"] == {"reference": "Encounter/enc-1"}
    assert built["businessStatus"]["coding"][0]["code"] == "receiver-not-identified"


def test_ids_are_stable_per_encounter_and_receiver() -> None:
    assert task_id("enc-1", GP) == task()["id"] == task_id("enc-1", Receiver(GP_PRACTICE, org_for_ods("B86001")))
    assert task_id("enc-1", GP) != task_id("enc-2", GP)
    assert task_id("enc-1", GP) != task_id("enc-1", Receiver(CARE_HOME, org_for_ods("VM4K2")))


# The state machine as a truth table: (current, action) → new status, or the HTTP status of the refusal.
TABLE = {
    ("requested", "receive"): "received", ("requested", "accept"): "accepted", ("requested", "reject"): "rejected",
    ("received", "receive"): None, ("received", "accept"): "accepted", ("received", "reject"): "rejected",
    ("accepted", "receive"): 409, ("accepted", "accept"): None, ("accepted", "reject"): 409,
    ("rejected", "receive"): 409, ("rejected", "accept"): 409, ("rejected", "reject"): None,
}


@pytest.mark.parametrize(("current", "action"), sorted(TABLE))
def test_transitions(current: str, action: str) -> None:
    expected = TABLE[(current, action)]
    if isinstance(expected, int):
        with pytest.raises(TransitionError) as caught:
            next_status(current, action)
        assert caught.value.status == expected
    else:
        assert next_status(current, action) == expected


def test_accepting_records_who_and_when_and_stays_valid() -> None:
    later = NOW + timedelta(hours=3)
    accepted = transition(task(), "accept", reason=None, actor="Dr A (B86001)", now=later)
    assert accepted is not None
    Task.model_validate(accepted)
    assert accepted["status"] == "accepted" and accepted["businessStatus"]["coding"][0]["code"] == "accepted"
    assert accepted["lastModified"] == accepted["executionPeriod"]["start"] == "2024-03-05T17:30:00.000Z"
    assert accepted["note"][-1]["text"] == "Accepted by Dr A (B86001)"
    assert transition(accepted, "accept", reason=None, actor="x", now=later) is None  # a repeat changes nothing
    stamped = {**task(), "meta": {"versionId": "1", "lastUpdated": "x", "tag": [owner_tag("RR8")]}}
    assert transition(stamped, "receive", reason=None, actor="x", now=later)["meta"] == {"tag": [owner_tag("RR8")]}


def test_a_rejection_needs_a_reason_and_keeps_it() -> None:
    with pytest.raises(TransitionError) as caught:
        transition(task(), "reject", reason="  ", actor="x", now=NOW)
    assert caught.value.status == 422
    rejected = transition(task(), "reject", reason="Not registered with this practice", actor="x", now=NOW)
    assert rejected is not None and rejected["statusReason"] == {"text": "Not registered with this practice"}


def test_waiting_time_counts_from_authored_on() -> None:
    assert waiting_seconds(task(), NOW + timedelta(hours=2, seconds=5)) == 7205
    assert waiting_seconds({**task(), "authoredOn": "2024-03-05T15:30:00+01:00"}, NOW) == 0
