"""What applying one planned message writes: shared by the one-message path (engine/ingest/pipeline.py)
and group commit (engine/ingest/group_commit.py)."""

from __future__ import annotations

from datetime import datetime

from adapters.hl7v2.parser import Message
from adapters.senders import SenderConfig
from engine.ingest import apply, store
from engine.search.normalise import naive_utc
from mappings.result import MappingResult, Merge, PatientKey


def message_event_time(result: MappingResult) -> datetime | None:
    """The message's event time (EVN-2, else MSH-7) as the store keeps times: naive UTC."""
    return naive_utc(result.event_time) if result.event_time else None


def staged_changes(plan: apply.Plan, message: Message, sender: SenderConfig, result: MappingResult,
                   message_id: int, now: datetime) -> tuple[list[apply.Change], store.SourceUpdate]:
    """What applying a planned message writes: its changes and their Provenance, and its event's sources."""
    document = apply.provenance(plan, message_id=message_id, sender_ods=sender.ods_code,
                                sender_name=sender.name, message_type=message.message_type,
                                control_id=message.control_id, now=now,
                                sender_reference=apply.sender_reference(result, sender.ods_code))
    changes = list(plan.changes)
    if document is not None:
        current = plan.currents.get(("Provenance", document["id"]))
        changes.append(apply.Change(document, current, track_source=False))
    sources = store.SourceUpdate(message_id, message_event_time(result),
                                 frozenset(c.key for c in plan.changes if c.track_source),
                                 tuple(plan.refreshed_sources))
    return changes, sources


def people(result: MappingResult) -> list[PatientKey | None]:
    """The keys of everyone a message touches: its subject and, for a merge, both records."""
    merges = [a.detail for a in result.actions if a.kind == "merge" and isinstance(a.detail, Merge)]
    return [result.patient_key, *(m.survivor for m in merges), *(m.old for m in merges)]
