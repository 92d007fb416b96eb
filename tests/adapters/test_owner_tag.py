"""The data-owner tag: every resource a sender yields names it in `meta.tag`, except shared directory types.

The access-control engine decides on this tag (consent/vocabulary.py `owner_tag`), so it is tested
through each adapter kind, not only the helper.
"""

from __future__ import annotations

import pytest

from adapters.hl7v2.parser import parse_message
from adapters.hospital import DIRECTORY_TYPES, tag_owner
from adapters.registry import adapter_for
from adapters.senders import SecurityLabel, SenderConfig
from consent.vocabulary import OWNER_TAG_SYSTEM, owner_tag
from mappings.result import MappingResult

A01 = (
    "MSH|^~\\&|PAS|{ods}|SHAREDCARE|SC|20240301101500||ADT^A01|C1|P|2.4|||||||UNICODE UTF-8\r"
    "EVN|A01|20240301101200\r"
    "PID|1||9449305552^^^NHS^NH~RR81234567^^^{ods}^MR||SMITH^JANE||19620315|2\r"
    "PV1|1|I|{ods}01^WARD 12^BED 4^{ods}||||C123^JONES^ANN^^^DR||||||||||||V0001234^^^{ods}^VN\r"
    "AL1|1|DA|PEN^Penicillin^L|SV|Rash\r"
    "DG1|1||I10^Hypertension^I10||20240301|A\r"
)


def owners(resource: dict) -> list[str]:
    return [t["code"] for t in (resource.get("meta") or {}).get("tag") or () if t["system"] == OWNER_TAG_SYSTEM]


@pytest.mark.parametrize("kind", ["hospital", "community", "mental_health"])
def test_every_patient_resource_is_tagged_with_its_sender(kind: str) -> None:
    sender = SenderConfig("RX1", kind)  # type: ignore[arg-type]
    result = adapter_for(kind)(parse_message(A01.format(ods="RX1")), sender)
    types = {r["resourceType"] for r in result.resources}
    assert {"Patient", "Encounter", "AllergyIntolerance", "Condition", "Organization"} <= types
    for resource in result.resources:
        expected = [] if resource["resourceType"] in DIRECTORY_TYPES else ["RX1"]
        assert owners(resource) == expected, resource["resourceType"]


def test_the_tag_is_the_shared_vocabulary_coding() -> None:
    result = adapter_for("hospital")(parse_message(A01.format(ods="RR8")), SenderConfig("RR8"))
    patient = next(r for r in result.resources if r["resourceType"] == "Patient")
    assert patient["meta"]["tag"] == [owner_tag("RR8")]


def test_tagging_is_idempotent_and_replaces_another_owner() -> None:
    resource = {"resourceType": "Condition", "id": "c1",
                "meta": {"tag": [owner_tag("OTHER"), {"system": "urn:x", "code": "keep"}]}}
    result = MappingResult("ADT^A01", [resource], None, None, None)
    tag_owner(tag_owner(result, "RR8"), "RR8")
    assert resource["meta"]["tag"] == [{"system": "urn:x", "code": "keep"}, owner_tag("RR8")]


def test_directory_types_lose_an_owner_tag_and_configuration_can_change_them() -> None:
    organization = {"resourceType": "Organization", "id": "o1", "meta": {"tag": [owner_tag("RR8")]}}
    tag_owner(MappingResult("ADT^A01", [organization], None, None, None), "RR8")
    assert "meta" not in organization
    sender = SenderConfig("RX2", security_labels=(SecurityLabel("urn:s", "R"),),
                          extra={"unlabelled_types": ["Organization"]})
    result = adapter_for("hospital")(parse_message(A01.format(ods="RX2")), sender)
    practitioner = next(r for r in result.resources if r["resourceType"] == "Practitioner")
    assert owners(practitioner) == ["RX2"] and practitioner["meta"]["security"][0]["code"] == "R"
