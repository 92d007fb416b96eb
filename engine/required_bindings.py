"""Required value-set bindings the R4B models do not enforce, as data.

`fhir.resources` checks shapes, not codes: `Patient.gender = "sometimes"` passes its models. The
elements below have `required` bindings in FHIR R4 (https://hl7.org/fhir/R4/terminologies.html#required);
a value outside the set is a 400 naming the element. Only `code`-typed top-level elements are listed:
they are what receiving systems switch on (status, intent, gender).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

_REQUEST_STATUS = frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"})
_REQUEST_INTENT = frozenset({"proposal", "plan", "directive", "order", "original-order", "reflex-order",
                             "filler-order", "instance-order", "option"})
_EVENT_STATUS = frozenset({"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                           "entered-in-error", "unknown"})

REQUIRED_CODES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "Patient": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "Practitioner": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "RelatedPerson": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "Observation": {"status": frozenset({"registered", "preliminary", "final", "amended", "corrected",
                                         "cancelled", "entered-in-error", "unknown"})},
    "DiagnosticReport": {"status": frozenset({"registered", "partial", "preliminary", "final", "amended",
                                              "corrected", "appended", "cancelled", "entered-in-error",
                                              "unknown"})},
    "Encounter": {"status": frozenset({"planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                                       "cancelled", "entered-in-error", "unknown"})},
    "EpisodeOfCare": {"status": frozenset({"planned", "waitlist", "active", "onhold", "finished", "cancelled",
                                           "entered-in-error"})},
    "MedicationRequest": {
        "status": frozenset({"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped",
                             "draft", "unknown"}),
        "intent": frozenset({"proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
                             "instance-order", "option"}),
    },
    "MedicationStatement": {"status": frozenset({"active", "completed", "entered-in-error", "intended", "stopped",
                                                 "on-hold", "unknown", "not-taken"})},
    "MedicationAdministration": {"status": frozenset({"in-progress", "not-done", "on-hold", "completed",
                                                      "entered-in-error", "stopped", "unknown"})},
    "ServiceRequest": {"status": _REQUEST_STATUS, "intent": _REQUEST_INTENT},
    "DocumentReference": {"status": frozenset({"current", "superseded", "entered-in-error"})},
    "Composition": {"status": frozenset({"preliminary", "final", "amended", "entered-in-error"})},
    "Appointment": {"status": frozenset({"proposed", "pending", "booked", "arrived", "fulfilled", "cancelled",
                                         "noshow", "entered-in-error", "checked-in", "waitlist"})},
    "Flag": {"status": frozenset({"active", "inactive", "entered-in-error"})},
    "Consent": {"status": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})},
    "Task": {
        "status": frozenset({"draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
                             "in-progress", "on-hold", "failed", "completed", "entered-in-error"}),
        "intent": frozenset({"unknown", "proposal", "plan", "order", "original-order", "reflex-order",
                             "filler-order", "instance-order", "option"}),
    },
    "AllergyIntolerance": {"criticality": frozenset({"low", "high", "unable-to-assess"}),
                           "type": frozenset({"allergy", "intolerance"})},
    "AuditEvent": {"action": frozenset({"C", "R", "U", "D", "E"})},
    "Procedure": {"status": _EVENT_STATUS},
}


def binding_violations(resource: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(element, sorted allowed codes) for each top-level code outside its required value set."""
    bindings = REQUIRED_CODES.get(str(resource.get("resourceType")), {})
    for element, allowed in bindings.items():
        value = resource.get(element)
        if isinstance(value, str) and value not in allowed:
            yield element, ", ".join(sorted(allowed))
