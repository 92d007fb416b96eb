"""`ingest_message`: one HL7 v2 message in, its ACK out — only after what it says is committed.

docs/hl7v2-ingest.md tells the whole story. In order:

1. decode and parse (adapters/hl7v2/parser.py); text that is not a message is stored `rejected`
   and answered AR with its table 0357 code and ERR location;
2. the sender (MSH-4) must be configured, else the message is stored `rejected` and answered AR,
   code 204 "Unknown key identifier" at MSH-4 — unless unknown senders are accepted, in which case
   the generic hospital adapter reads it;
3. the sender's adapter maps it (adapters/registry.py); a `MappingError` is stored `error` (AE) or
   `rejected` (AR, when the map says reject) with its code, location and text;
4. one write transaction: per-patient advisory locks, identity, the message row (`processed`, with
   its ACK text), the resources, their Provenance and `resource_sources`; the ACK is returned after
   that transaction commits. A failure inside rolls everything back and the message is stored
   `error` (207) instead.

De-duplication is the message row's UNIQUE(sender, control_id): a message whose key is stored
already gets the stored ACK back, verbatim, and changes nothing. The exception is a message that
failed for a transient reason (206 record locked, 207 internal error): its re-send is processed
again, as a replay of the stored row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import psycopg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.hl7v2.ack import ack_code, build_ack
from adapters.hl7v2.parser import Message, ParseError, decode_bytes, parse_message
from adapters.registry import Adapter
from adapters.registry import adapter_for as default_adapter_for
from adapters.senders import SenderConfig, generic_sender
from consent.labels import apply_labels
from consent.policy import Policy, load_policy
from engine.config import access_policy_path
from engine.db.database import Database
from engine.db.ingest_schema import ERROR, PROCESSED, REJECTED
from engine.db.repository import utc_now
from engine.ingest import apply, identity, store
from engine.ingest.group_commit import ApplyAlone, GroupCommit
from engine.ingest.senders import accept_unknown_senders, load_senders
from engine.ingest.staging import message_event_time, people, staged_changes
from engine.ingest.store import MessageRecord, StoredMessage
from engine.search.normalise import naive_utc
from engine.transfers.discharge import after_ingest
from mappings.result import (
    APPLICATION_INTERNAL_ERROR,
    APPLICATION_RECORD_LOCKED,
    UNKNOWN_KEY_IDENTIFIER,
    ErrorLocation,
    MappingError,
    MappingResult,
)

log = logging.getLogger("sharedcare.ingest")

AckCode = Literal["AA", "AE", "AR"]
TRANSIENT_CODES = frozenset({APPLICATION_RECORD_LOCKED, APPLICATION_INTERNAL_ERROR})
_STATUS = {"AA": PROCESSED, "AE": ERROR, "AR": REJECTED}
_RETRY_SQLSTATES = frozenset({"23505", "40001", "40P01", "55P03"})
_RETRY_SQLITE = ("unique constraint failed", "database is locked")
_UNREACHABLE = (OperationalError, psycopg.OperationalError)  # through SQLAlchemy, or on the driver connection


@dataclass
class IngestContext:
    """What ingestion needs from its surroundings: the store, the senders, the clock."""

    db: Database
    senders: Mapping[str, SenderConfig]
    accept_unknown_senders: bool = False
    now: Callable[[], datetime] = utc_now
    adapter_for: Callable[[str], Adapter] = field(default=default_adapter_for)
    max_attempts: int = 5  # transactions tried when they collide with concurrent writers
    # The access policy whose sensitive code lists label what is ingested (consent/policy.json).
    policy: Policy = field(default_factory=lambda: load_policy(access_policy_path()))
    # Concurrent messages applied in shared transactions (engine/ingest/group_commit.py); None: one each.
    group_commit: GroupCommit | None = None

    @classmethod
    def from_environment(cls, db: Database, environ: Mapping[str, str] | None = None) -> IngestContext:
        """Senders from SHAREDCARE_SENDERS_FILE, SHAREDCARE_ACCEPT_UNKNOWN_SENDERS (engine/ingest/senders.py)."""
        return cls(db=db, senders=load_senders(environ), accept_unknown_senders=accept_unknown_senders(environ))

    def sender(self, ods_code: str) -> SenderConfig | None:
        """The configuration for MSH-4, the generic one when unknown senders are accepted, else None."""
        configured = self.senders.get(ods_code)
        if configured is None and self.accept_unknown_senders:
            return generic_sender(ods_code)
        return configured

    def moment(self) -> datetime:
        return naive_utc(self.now())


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What happened to one message. `ack` is the text to send (None when MSH-15/16 ask for none)."""

    ack: str | None
    code: AckCode
    status: str
    message_id: int | None
    duplicate: bool = False
    error_code: str | None = None
    error_text: str | None = None


class IngestUnavailable(Exception):
    """The message could not even be stored (the database is unreachable): send no ACK.

    The MLLP server should close the connection without answering, so that the sender re-sends
    later; nothing was stored and nothing was acknowledged.
    """


async def ingest_message(ctx: IngestContext, raw: bytes | str, *, transport: str,
                         received_at: datetime) -> IngestOutcome:
    """Store, apply and acknowledge one HL7 v2 message (module docstring; docs/hl7v2-ingest.md).

    Never raises for anything the message contains; raises `IngestUnavailable` only when the
    message could not be stored at all.
    """
    text = decode_bytes(bytes(raw)) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    return await process(ctx, text, transport=transport, received_at=naive_utc(received_at))


async def process(ctx: IngestContext, text: str, *, transport: str, received_at: datetime,
                  existing: StoredMessage | None = None, dry_run: bool = False) -> IngestOutcome:
    """Parse, map and apply `text`; `existing` is the stored row when this is a replay.

    With `dry_run` everything runs, in a transaction that is rolled back, and nothing is stored.
    """
    job = _Job(ctx, text, transport, received_at, existing, dry_run)
    try:
        message = parse_message(text)
    except ParseError as exc:
        return await job.failed(None, exc, "AR", sender=_raw_sender(text))
    sender = ctx.sender(message.sending_facility)
    if sender is None:
        error = MappingError(UNKNOWN_KEY_IDENTIFIER,
                             f"Sending facility {message.sending_facility or '(empty)'} is not configured",
                             ErrorLocation("MSH", 1, 4), reject=True)
        return await job.failed(message, error, "AR")
    try:
        adapter = ctx.adapter_for(sender.kind)
        result = with_sensitivity_labels(adapter(message, sender), ctx.policy)
    except MappingError as exc:
        return await job.failed(message, exc, "AR" if exc.reject else "AE")
    except Exception:  # a bug in a map must not lose the message: store it for replay after the fix
        log.exception("mapping failed: %s %s from %s", message.message_type, message.control_id, sender.ods_code)
        return await job.failed(message, _internal("The message could not be mapped"), "AE")
    return await job.apply(message, sender, result)


def _internal(text: str) -> MappingError:
    return MappingError(APPLICATION_INTERNAL_ERROR, text)


def _raw_sender(text: str) -> str | None:
    """MSH-4.1 read the hard way from text that did not parse (for the error queue; no de-duplication)."""
    start = text.find("MSH")
    line = text[start:].replace("\n", "\r").split("\r", 1)[0] if start >= 0 else ""
    if len(line) < 8:
        return None
    fields = line.split(line[3])
    if len(fields) < 4:
        return None
    return fields[3].split("^", 1)[0].strip()[:64] or None


def retryable(exc: BaseException) -> bool:
    """A collision with a concurrent writer (unique key, deadlock, serialisation, lock): try again."""
    if isinstance(exc, store.ConcurrentChange):
        return True
    if isinstance(exc, psycopg.Error):  # a statement run on the driver's connection (engine.db.direct)
        return exc.sqlstate in _RETRY_SQLSTATES
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if sqlstate in _RETRY_SQLSTATES:
            return True
        text = str(exc.orig).lower()
        return any(marker in text for marker in _RETRY_SQLITE)
    return False


class _Duplicate(Exception):
    """The message's (sender, control_id) is already stored: roll back and answer as before."""


class _RolledBack(Exception):
    """A dry run's way out of its transaction."""

    def __init__(self, outcome: IngestOutcome) -> None:
        super().__init__("dry run")
        self.outcome = outcome


@dataclass
class _Job:
    """One message on its way through the pipeline."""

    ctx: IngestContext
    text: str
    transport: str
    received_at: datetime
    existing: StoredMessage | None
    dry_run: bool

    # -- success ---------------------------------------------------------------------------------

    async def apply(self, message: Message, sender: SenderConfig, result: MappingResult) -> IngestOutcome:
        if self.ctx.group_commit is not None and self.existing is None and not self.dry_run:
            try:
                return await self.ctx.group_commit.submit(self, message, sender, result)
            except MappingError as exc:
                return await self.failed(message, exc, "AR" if exc.reject else "AE")
            except ApplyAlone:
                pass
        return await self.apply_alone(message, sender, result)

    async def apply_alone(self, message: Message, sender: SenderConfig, result: MappingResult) -> IngestOutcome:
        """Apply the message in a transaction of its own, retried when it collides with other writers."""
        for attempt in range(1, self.ctx.max_attempts + 1):
            try:
                async with self.ctx.db.write() as conn:
                    outcome = await self._apply_in(conn, message, sender, result)
                    if self.dry_run:
                        raise _RolledBack(outcome)
                return outcome  # committed: now the ACK may leave
            except _RolledBack as rolled_back:
                return rolled_back.outcome
            except _Duplicate:
                return await self.duplicate(message)
            except MappingError as exc:
                return await self.failed(message, exc, "AR" if exc.reject else "AE")
            except Exception as exc:
                if retryable(exc) and attempt < self.ctx.max_attempts:
                    await asyncio.sleep(0.005 * attempt)
                    continue
                if retryable(exc):
                    error = MappingError(APPLICATION_RECORD_LOCKED,
                                         "The patient's record was busy; the message is queued for replay")
                    return await self.failed(message, error, "AE")
                # A database that cannot be reached is not a bug: one line, no traceback.
                log.error("applying failed: %s %s from %s: %s", message.message_type, message.control_id,
                          sender.ods_code, type(exc).__name__, exc_info=not isinstance(exc, _UNREACHABLE))
                return await self.failed(message, _internal("The message could not be stored; "
                                                            "it is queued for replay"), "AE")
        raise AssertionError("unreachable")

    async def _apply_in(self, conn: AsyncConnection, message: Message, sender: SenderConfig,
                        result: MappingResult) -> IngestOutcome:
        now = self.ctx.moment()
        reserved = await self._lock(conn, result)
        extra = [("Provenance", apply.provenance_id(self.existing.id))] if self.existing else []
        event_time = message_event_time(result)
        plan = await apply.prepare(conn, result, event_time=event_time, extra_keys=extra)
        record = self.processed_record(message, result, plan, now)
        if reserved is None:  # stored now; on PostgreSQL, by the write statement below
            message_id = await self._store(conn, record)
            if message_id is None:
                raise _Duplicate()
        else:
            message_id = reserved
        changes, sources = staged_changes(plan, message, sender, result, message_id, now)
        try:
            await store.write_changes(conn, changes, now, sources,
                                      message=(message_id, record) if reserved is not None else None)
        except store.DuplicateMessage:
            raise _Duplicate() from None
        await after_ingest(conn, message, sender, result, now=now)  # transfers of care (docs/transfers.md)
        return self.processed(record, message_id)

    def processed(self, record: MessageRecord, message_id: int) -> IngestOutcome:
        """The outcome of a message applied and committed as `record`."""
        return IngestOutcome(record.ack, "AA", PROCESSED, message_id)

    def processed_record(self, message: Message, result: MappingResult, plan: apply.Plan,
                         now: datetime) -> MessageRecord:
        """The message's row once applied: `processed`, its AA (the ACK text), warnings, what no map used."""
        warnings = [*result.warnings, *plan.warnings, *(f"stale: {key} reflects a later event" for key in plan.stale)]
        return self._record(message, PROCESSED, "AA", self._ack(message, "AA", now), now,
                            event_time=message_event_time(result), unmapped=list(result.unmapped) or None,
                            warnings=warnings or None, patient_id=plan.patient_id)

    async def _lock(self, conn: AsyncConnection, result: MappingResult) -> int | None:
        """Lock the people the message is about; on PostgreSQL also reserve the new message's id, in the
        same round trip (the message row is then inserted by the write statement). None: store it first."""
        if conn.dialect.name != "postgresql" or self.existing is not None:
            await identity.lock_patients(conn, people(result))
            return None
        return await store.lock_and_reserve(conn, identity.patient_lock_keys(people(result)))

    # -- failure -----------------------------------------------------------------------------------

    async def failed(self, message: Message | None, error: MappingError | ParseError, code: AckCode,
                     sender: str | None = None) -> IngestOutcome:
        """Store the message in the error queue with why it failed; answer AE or AR."""
        now = self.ctx.moment()
        status = _STATUS[code]
        ack = self._ack(message, code, now, error)
        record = self._record(message, status, code, ack, now, error=error, sender=sender)
        outcome = IngestOutcome(ack, code, status, self.existing.id if self.existing else None,
                                error_code=error.code, error_text=error.message)
        if self.dry_run:
            return outcome
        try:
            async with self.ctx.db.write() as conn:
                message_id = await self._store(conn, record)
        except DBAPIError as exc:
            raise IngestUnavailable("the message could not be stored") from exc
        if message_id is None:
            return await self.duplicate(message)
        return IngestOutcome(ack, code, status, message_id, error_code=error.code, error_text=error.message)

    async def duplicate(self, message: Message | None) -> IngestOutcome:
        """A message already stored: its original ACK, verbatim — or a retry if it failed transiently."""
        assert message is not None
        async with self.ctx.db.read() as conn:
            stored = await store.find_message(conn, message.sending_facility, message.control_id)
        if stored is None:
            # ON CONFLICT DO NOTHING waits for the colliding transaction, so this cannot happen;
            # if it ever does, answer nothing and let the sender re-send.
            raise IngestUnavailable("the stored copy of a duplicate message could not be read")
        if stored.status != PROCESSED and stored.error_code in TRANSIENT_CODES and self.existing is None:
            return await process(self.ctx, stored.raw, transport=stored.transport, received_at=stored.received_at,
                                 existing=stored, dry_run=self.dry_run)
        return IngestOutcome(stored.ack, stored.ack_code, stored.status, stored.id, duplicate=True,  # type: ignore[arg-type]
                             error_code=stored.error_code, error_text=stored.error_text)

    # -- helpers -------------------------------------------------------------------------------------

    async def _store(self, conn: AsyncConnection, record: MessageRecord) -> int | None:
        if self.existing is not None:
            await store.update_message(conn, self.existing.id, record)
            return self.existing.id
        return await store.insert_message(conn, record)

    def _ack(self, message: Message | None, code: AckCode, now: datetime,
             error: MappingError | ParseError | None = None) -> str | None:
        """The ACK text for `code`, or None when the message's MSH-15/16 ask for no ACK (HL7 table 0155)."""
        sent = ack_code(message, code)
        if sent is None:
            return None
        return build_ack(message, sent, now=now, control_id=_ack_control_id(), error=error,
                         raw_header=self.text if message is None else None)

    def _record(self, message: Message | None, status: str, code: AckCode, ack: str | None, now: datetime, *,
                error: MappingError | ParseError | None = None, sender: str | None = None,
                event_time: datetime | None = None, unmapped: list[str] | None = None,
                warnings: list[str] | None = None, patient_id: str | None = None) -> MessageRecord:
        return MessageRecord(
            raw=self.text, transport=self.transport, received_at=self.received_at, status=status, ack_code=code,
            ack=ack, sender=message.sending_facility if message is not None else sender,
            control_id=message.control_id if message is not None else None,
            message_type=message.message_type if message is not None else None,
            error_code=error.code if error else None, error_text=error.message if error else None,
            error_location=store.location_text(error.location) if error else None,
            event_time=event_time, processed_at=now, unmapped=unmapped, warnings=warnings, patient_id=patient_id,
        )


def with_sensitivity_labels(result: MappingResult, policy: Policy) -> MappingResult:
    """The policy's sensitive code lists applied to what a message yields (`meta.security`: e.g. an
    ICD-10 F32 diagnosis is labelled PSY and R), as every write through the access gate is."""
    result.resources[:] = [apply_labels(resource, policy) for resource in result.resources]
    return result


def _ack_control_id() -> str:
    """MSH-10 of an ACK: unique, 20 characters (the HL7 v2.4 length of MSH-10)."""
    return uuid.uuid4().hex[:20]
