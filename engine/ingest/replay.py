"""Replay: reprocess stored messages from the error queue with today's mappings and configuration.

DESIGN.md principle 1: a message that failed waits in `hl7_messages` with its reason; once the
cause is fixed (a map corrected, a sender configured) it is replayed. Replay runs the stored raw
text through the same pipeline as a new message (engine/ingest/pipeline.py `process`) with the
stored row as its record, so it is idempotent: the same deterministic resource ids, the same
Provenance id, unchanged resources get no new version, and the row itself is updated — status,
ACK, error, `attempts + 1` — never duplicated. A replayed message that now succeeds becomes
`processed`, and a re-send of it by the sender is then answered AA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from engine.db.ingest_schema import FAILED_STATUSES
from engine.ingest import store
from engine.ingest.pipeline import IngestContext, process


@dataclass(frozen=True)
class ReplaySelection:
    """Which stored messages to replay: every criterion given must hold (ids, window, code, status)."""

    ids: tuple[int, ...] = ()
    since: datetime | None = None  # received at or after (naive UTC)
    until: datetime | None = None  # received before (naive UTC)
    error_code: str | None = None  # HL7 table 0357
    statuses: tuple[str, ...] = FAILED_STATUSES

    @property
    def is_empty(self) -> bool:
        return not (self.ids or self.since or self.until or self.error_code)


@dataclass(frozen=True)
class ReplayResult:
    """One message before and after its replay (`after_*` is what a dry run would give)."""

    message_id: int
    sender: str | None
    control_id: str | None
    message_type: str | None
    before_status: str
    before_code: str | None
    after_status: str
    after_code: str | None
    detail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.after_status == "processed"


async def replay(ctx: IngestContext, selection: ReplaySelection, *, dry_run: bool = False) -> list[ReplayResult]:
    """Replay the selected messages, oldest first (so that their events apply in order).

    Messages named by id whose status is not among `selection.statuses` (e.g. already processed)
    are reported and left alone. With `dry_run` each message runs in a transaction that is rolled
    back: the result says what would happen and nothing changes.
    """
    async with ctx.db.read() as conn:
        ids = await store.select_message_ids(conn, ids=selection.ids, since=selection.since, until=selection.until,
                                             error_code=selection.error_code,
                                             statuses=() if selection.ids else selection.statuses)
    results = []
    for message_id in ids:
        async with ctx.db.read() as conn:
            stored = await store.get_message(conn, message_id)
        if stored is None:
            continue
        results.append(await _replay_one(ctx, stored, selection, dry_run))
    return results


async def _replay_one(ctx: IngestContext, stored: store.StoredMessage, selection: ReplaySelection,
                      dry_run: bool) -> ReplayResult:
    before = {"message_id": stored.id, "sender": stored.sender, "control_id": stored.control_id,
              "message_type": stored.message_type, "before_status": stored.status,
              "before_code": stored.error_code}
    if stored.status not in selection.statuses:
        return ReplayResult(**before, after_status=stored.status, after_code=stored.error_code,
                            detail=f"skipped: status is {stored.status}")
    outcome = await process(ctx, stored.raw, transport=stored.transport, received_at=stored.received_at,
                            existing=stored, dry_run=dry_run)
    detail = outcome.error_text or ("would be processed" if dry_run else "processed")
    return ReplayResult(**before, after_status=outcome.status, after_code=outcome.error_code, detail=detail)
