"""Who may send us HL7 v2, and how their messages are to be read: configuration as data.

Each sender is identified by the ODS code it puts in MSH-4. Its `kind` picks the adapter
(`adapters/hospital.py`, `community.py`, `mental_health.py`); the rest says which identifier
systems its local numbers belong to, what to do with its Z-segments and which security labels
every resource it sends carries. A new sender of an existing kind is a configuration entry, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SenderKind = Literal["hospital", "community", "mental_health"]
LOCAL_ID_BASE = "https://fhir.sharedcare.dev/Id"
DEFAULT_TIMEZONE = "Europe/London"


@dataclass(frozen=True)
class SecurityLabel:
    system: str
    code: str
    display: str | None = None

    def to_coding(self) -> dict[str, str]:
        coding = {"system": self.system, "code": self.code}
        if self.display:
            coding["display"] = self.display
        return coding


@dataclass(frozen=True)
class SenderConfig:
    """One configured sending facility (MSH-4)."""

    ods_code: str
    kind: SenderKind = "hospital"
    name: str = ""
    # Identifier systems for the sender's local numbers: MRN (PID-3 type MR / CX-4 = its ODS code),
    # visit numbers (PV1-19), placer and filler order numbers (ORC/OBR), document ids (TXA).
    mrn_system: str = ""
    visit_system: str = ""
    order_system: str = ""
    document_system: str = ""
    # "keep": Z-segments are stored with the raw message and reported as unmapped, never fatal.
    z_segments: Literal["keep", "reject"] = "keep"
    security_labels: tuple[SecurityLabel, ...] = ()
    # IANA time zone in which the sender's times without a UTC offset are read (HL7 v2.5 §2A.22 DTM:
    # no offset means the sender's local time). UK systems send local time: GMT in winter, BST in summer.
    timezone: str = DEFAULT_TIMEZONE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def system_for(self, what: str) -> str:
        """The configured identifier system for `what` (mrn, visit, order, document), or our default."""
        configured = getattr(self, f"{what}_system", "")
        return configured or f"{LOCAL_ID_BASE}/{self.ods_code}/{what}"


def generic_sender(ods_code: str) -> SenderConfig:
    """The configuration used for an unknown sender when SHAREDCARE_ACCEPT_UNKNOWN_SENDERS=1."""
    return SenderConfig(ods_code=ods_code or "UNKNOWN", kind="hospital", name=f"unconfigured sender {ods_code}")
