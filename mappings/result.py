"""What a mapping returns, and how it fails: the contract between mappings/ and engine/ingest.

A mapping is pure: `(parsed message, sender configuration) → MappingResult` or a `MappingError`.
It never reads the store, the clock or the environment. The engine resolves patient identity,
applies the result in one transaction and acknowledges only after it has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

# HL7 table 0357 (message error condition codes), the ones this engine uses.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_RECORD_LOCKED = "206"
APPLICATION_INTERNAL_ERROR = "207"


@dataclass(frozen=True)
class ErrorLocation:
    """HL7 ERR-2 (ERL): segment id, its occurrence (1-based), field, repetition, component (1-based)."""

    segment: str
    sequence: int = 1
    field: int | None = None
    repetition: int | None = None
    component: int | None = None


class MappingError(Exception):
    """A message the engine cannot apply, with what an integration engineer needs to fix it.

    `code` is from HL7 table 0357; `reject` says AR (the message as a whole is unsupported)
    rather than AE (its content is in error).
    """

    def __init__(self, code: str, message: str, location: ErrorLocation | None = None, *,
                 reject: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.location = location
        self.reject = reject


@dataclass(frozen=True)
class Identifier:
    system: str
    value: str


@dataclass(frozen=True)
class PatientKey:
    """How the engine finds the person: NHS number first, then local identifiers (DESIGN.md #4)."""

    nhs_number: str | None
    local: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class Merge:
    """A34/A40: every resource of `old` moves to `survivor`; `old` becomes inactive, replaced-by."""

    survivor: PatientKey
    old: PatientKey


@dataclass(frozen=True)
class Supersede:
    """MDM^T08 edit with replacement: the stored `resource_type/resource_id` (the original document)
    is superseded by `by` (`DocumentReference/<id>`, the replacement this message carries)."""

    resource_type: str
    resource_id: str
    by: str


@dataclass(frozen=True)
class Action:
    """Something the engine does beyond upserting resources: ("merge", Merge(...)) or
    ("supersede", Supersede(...)) — a change to a stored resource the map cannot write whole."""

    kind: Literal["merge", "supersede"]
    detail: Any


@dataclass
class MappingResult:
    """The resources a message yields, in dependency order, with what the engine needs to apply them.

    - Every resource has a deterministic `id` derived from source identifiers (`mappings.ids`).
    - The message's subject Patient is the resource with id `patient_id`; other resources refer to
      it as `Patient/<patient_id>`. The engine may replace that id with the one of the Patient it
      matches in the store (by `patient_key`) and rewrites those references.
    - `merge_identifiers` lists resource types whose identifiers the engine should merge into the
      stored resource rather than replace (a Patient keeps every sender's MRN).
    - `event_time` (EVN-2, else MSH-7) orders events: a stored resource that reflects a later
      event is not overwritten.
    - `patient_elements_not_sent` lists the subject Patient's elements whose segment the message does not
      carry (an ORU^R01 has no PD1): the engine keeps their stored values instead of dropping them.
    - `unmapped` lists what the message carried that no map used, as field addresses such as
      "PID-9", "PV1-52", "ZU1" (coverage report).
    """

    message_type: str
    resources: list[dict[str, Any]]
    patient_id: str | None
    patient_key: PatientKey | None
    event_time: datetime | None
    actions: list[Action] = field(default_factory=list)
    merge_identifiers: frozenset[str] = frozenset({"Patient"})
    patient_elements_not_sent: frozenset[str] = frozenset()
    unmapped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
