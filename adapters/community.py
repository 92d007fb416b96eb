"""Community EPR senders (district nursing, therapies, community clinics).

Community systems send the same ITK HL7 v2 ADT as hospitals (UK-REFERENCE §3): no quirk of their
own is known yet, so they share the hospital adapter — the declarative maps, Z-segment policy and
configured security labels. A quirk found in a community feed belongs here, as a named function
with a test, so that hospital feeds are not changed by it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from adapters.hl7v2.parser import Message
from adapters.hospital import check_z_segments, label_for_sender
from adapters.senders import SenderConfig
from mappings.hl7v2.dispatch import map_message
from mappings.result import MappingResult


def adapt(message: Message, sender: SenderConfig) -> MappingResult:
    """`message` from a community service → its MappingResult, labelled per configuration."""
    check_z_segments(message, sender)
    return label_for_sender(map_message(message, sender), sender, sender.security_labels)
