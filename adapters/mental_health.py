"""Mental health trust senders: everything they send is sensitive (UK-REFERENCE §5).

Every resource a mental health sender yields carries its configured security labels — the Patient
included — except the shared directory types (Organization, Practitioner, PractitionerRole,
Location; configurable with `extra.unlabelled_types`). A mental health sender configured without
labels gets `DEFAULT_LABELS` (v3-ActCode PSY, v3-Confidentiality R), so a missing line of
configuration can never share mental health records unlabelled.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from adapters.hl7v2.parser import Message
from adapters.hospital import check_z_segments, label_for_sender
from adapters.senders import SecurityLabel, SenderConfig
from mappings.hl7v2.dispatch import map_message
from mappings.result import MappingResult

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DEFAULT_LABELS = (
    SecurityLabel(ACT_CODE, "PSY", "psychiatry information sensitivity"),
    SecurityLabel(CONFIDENTIALITY, "R", "restricted"),
)


def labels_for(sender: SenderConfig) -> tuple[SecurityLabel, ...]:
    """The sender's configured labels, or `DEFAULT_LABELS` when none are configured."""
    return sender.security_labels or DEFAULT_LABELS


def adapt(message: Message, sender: SenderConfig) -> MappingResult:
    """`message` from a mental health trust → its MappingResult with every patient resource labelled."""
    check_z_segments(message, sender)
    return label_for_sender(map_message(message, sender), sender, labels_for(sender))
