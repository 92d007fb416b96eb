"""Group commit: HL7 v2 messages that arrive together are applied in one transaction.

With many senders, much of what a message costs is per transaction rather than per row: the lock,
read and write round trips, each statement's start-up in PostgreSQL, the commit and its WAL flush.
The MLLP listener's messages therefore go through one `GroupCommit` per process (PostgreSQL only):
`submit` queues a mapped message and waits; a runner takes everything queued (up to `max_batch`) and
applies it in one transaction, while what arrives meanwhile queues for the next batch.

A batch costs ~2 ms of CPU however few messages it holds, so before taking one the runner gathers
(`_gather`). A sender that waits for its ACK and has more to send sends its next message a moment after
its answer: without gathering, the first of those next messages took a batch of its own and the others
followed in small ones. So each caller (an MLLP connection's task) is watched: one whose last message
followed its previous answer within `STREAMING_GAP` is *streaming*, and the runner waits until every
streaming caller the last batch answered has submitted again, or for `gather` seconds
(SHAREDCARE_INGEST_GATHER_MS), whichever comes first. A lone feed never waits for anyone, a slow feed
(a message now and then) never holds up a busy one, and a caller whose connection closes is not waited
for. Up to `concurrency` runners work at once (SHAREDCARE_INGEST_BATCHES_IN_FLIGHT); messages about one
person in two batches are applied one at a time by the advisory locks, and each connection submits its
next message only once the previous one is answered.

In the transaction (docs/hl7v2-ingest.md, "Group commit"):

1. a message about a person already in the batch (an advisory-lock key in common) or a re-send of
   a message already in it waits for the next batch, so one person's messages still apply one at a
   time, in order;
2. one statement takes every person's advisory lock, in key order, and reserves a message id each;
3. one read: the stored state of every message's resources and the Patients their identifiers find;
4. each message is planned against that state in arrival order (`engine.ingest.apply.prepare`). One
   that would read what an earlier message of the batch writes waits for the next batch, so every
   plan sees exactly the store it would have seen alone. One whose plan fails (an identity conflict:
   AE 205) leaves the batch and is stored in the error queue as it would have been alone;
5. the transfers of care of the batch's A03s (their discharge documents and Tasks), read as if the batch
   were written already (engine.documents.gather.StoreReader with the batch's versions pending);
6. one write: every message's row, resources, versions, index rows, Provenance and sources, and the
   documents and Tasks; then the Tasks' notifications, COMMIT, and only then is any message answered.

A message whose (sender, control id) turns out to be stored already (a re-send) leaves the batch and
is answered alone — with its stored ACK — and the rest are written again at once. Anything else that
goes wrong in the transaction (a collision with another writer, a storage error, a bug) rolls the
batch back and each of its messages is applied alone, exactly as without group commit, with its own
retries and error handling. A message's outcome is therefore the one it would have had alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from engine.documents.gather import Pending, StoreReader
from engine.ingest import apply, identity, store
from engine.ingest.staging import message_event_time, people, staged_changes
from engine.observability import REGISTRY
from engine.transfers import discharge
from mappings.result import MappingError

if TYPE_CHECKING:
    from adapters.hl7v2.parser import Message
    from adapters.senders import SenderConfig
    from engine.db.database import Database
    from engine.ingest.pipeline import IngestOutcome, _Job
    from mappings.result import MappingResult

log = logging.getLogger("sharedcare.ingest")

BATCH_SIZE = Histogram("sharedcare_ingest_batch_messages", "HL7 v2 messages applied per group-commit transaction",
                       registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
GATHERS = Counter("sharedcare_ingest_gathers_total",
                  "Group-commit gathers that waited for streaming senders, by how they ended: all of them in "
                  "(complete), the batch full (full), SHAREDCARE_INGEST_GATHER_MS reached (timeout)", ["outcome"],
                  registry=REGISTRY)
GATHER_WAIT = Histogram("sharedcare_ingest_gather_seconds", "Time a group-commit batch waited for streaming senders",
                        registry=REGISTRY, buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.03, 0.1))
ROLLED_BACK = Counter("sharedcare_ingest_batches_rolled_back_total",
                      "Group-commit transactions rolled back, their messages then applied one by one", ["reason"],
                      registry=REGISTRY)

DEFAULT_MAX_BATCH = 32
DEFAULT_CONCURRENCY = 1
DEFAULT_GATHER_MS = 3.0
STREAMING_GAP = 0.05  # s: a caller that sent its next message this soon after its answer has more to send


class ApplyAlone(Exception):
    """The batch could not take this message: apply it in a transaction of its own."""


class _Resent(Exception):
    """Messages of the batch whose (sender, control id) is stored already: roll back, answer them alone."""

    def __init__(self, entries: list[_Entry]) -> None:
        super().__init__(f"{len(entries)} re-sent")
        self.entries = entries


@dataclass(eq=False)
class _Entry:
    """One message waiting in the queue, and the caller waiting for its outcome."""

    job: _Job
    message: Message
    sender: SenderConfig
    result: MappingResult
    future: asyncio.Future[IngestOutcome]
    arrival: int
    caller: asyncio.Task[Any] | None  # the task that submitted it (an MLLP connection's)
    lock_keys: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lock_keys = frozenset(identity.patient_lock_keys(people(self.result)))

    @property
    def dedupe_key(self) -> tuple[str, str]:
        return self.message.sending_facility, self.message.control_id

    def answer(self, outcome: IngestOutcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(slots=True)
class _Caller:
    """What gathering knows of one caller."""

    answered_at: float | None = None  # loop time of its last answer, until it submits again
    streaming: bool = False  # its last message followed its previous answer within STREAMING_GAP


@dataclass(eq=False)
class _Staged:
    """A message planned within the batch: what it writes, and its answer once committed."""

    entry: _Entry
    message_id: int
    record: store.MessageRecord
    changes: list[apply.Change]
    sources: store.SourceUpdate


class GroupCommit:
    """Applies the messages `submit`ted concurrently in shared transactions (module docstring)."""

    def __init__(self, db: Database, now: Callable[[], datetime], *, max_batch: int = DEFAULT_MAX_BATCH,
                 concurrency: int = DEFAULT_CONCURRENCY, gather: float = DEFAULT_GATHER_MS / 1000) -> None:
        self.db = db
        self.now = now
        self.max_batch = max(1, max_batch)
        self.concurrency = max(1, concurrency)
        self.gather = max(0.0, gather)
        self._callers: weakref.WeakKeyDictionary[asyncio.Task[Any], _Caller] = weakref.WeakKeyDictionary()
        self._awaited: list[asyncio.Task[Any]] = []  # the streaming callers the last batch answered
        self._submitted = asyncio.Event()  # set by each `submit`: wakes the runners gathering
        self._queue: deque[_Entry] = deque()
        self._runners: set[asyncio.Task[None]] = set()
        self._arrivals = itertools.count()

    @classmethod
    def from_environment(cls, db: Database, now: Callable[[], datetime],
                         environ: Mapping[str, str] | None = None) -> GroupCommit | None:
        """On PostgreSQL unless SHAREDCARE_INGEST_GROUP_COMMIT is 0; SHAREDCARE_INGEST_MAX_BATCH caps a batch,
        SHAREDCARE_INGEST_BATCHES_IN_FLIGHT the batches at once, SHAREDCARE_INGEST_GATHER_MS the gathering."""
        env = os.environ if environ is None else environ
        if not db.is_postgres or env.get("SHAREDCARE_INGEST_GROUP_COMMIT", "1").strip().lower() in {"0", "false", "no", "off"}:
            return None
        gather_ms = env.get("SHAREDCARE_INGEST_GATHER_MS", "").strip()
        return cls(db, now, max_batch=int(env.get("SHAREDCARE_INGEST_MAX_BATCH") or DEFAULT_MAX_BATCH),
                   concurrency=int(env.get("SHAREDCARE_INGEST_BATCHES_IN_FLIGHT") or DEFAULT_CONCURRENCY),
                   gather=float(gather_ms or DEFAULT_GATHER_MS) / 1000)

    async def submit(self, job: _Job, message: Message, sender: SenderConfig, result: MappingResult) -> IngestOutcome:
        """Queue a mapped message; its outcome once its batch has committed.

        Raises `MappingError` when its plan fails (the caller stores it as failed) and `ApplyAlone`
        when the batch could not take it.
        """
        loop = asyncio.get_running_loop()
        caller = asyncio.current_task()
        entry = _Entry(job, message, sender, result, loop.create_future(), next(self._arrivals), caller)
        self._queue.append(entry)
        if caller is not None and self.gather > 0:
            watched = self._callers.setdefault(caller, _Caller())
            if watched.answered_at is not None:
                watched.streaming = loop.time() - watched.answered_at <= STREAMING_GAP
                watched.answered_at = None
        self._submitted.set()
        if len(self._runners) < self.concurrency:
            runner = asyncio.create_task(self._run())
            self._runners.add(runner)
        return await entry.future

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
                later = await self._apply(batch)
                self._queue.extendleft(sorted(later, key=lambda e: e.arrival, reverse=True))
        except BaseException:
            while self._queue:  # the runner itself failed: never leave a caller waiting
                self._queue.popleft().fail(ApplyAlone())
            raise
        finally:
            # Leave the set in the same step as the queue was found empty: a message submitted from now on
            # starts a runner of its own. (A done-callback would run later: a message submitted in between
            # — by a caller just answered — would find the set full and wait for a runner that never comes.)
            current = asyncio.current_task()
            if current is not None:
                self._runners.discard(current)

    async def _gather(self) -> None:
        """Wait until every streaming caller the last batch answered has submitted again (or its task has
        ended), the batch is full, or `gather` seconds have passed (module docstring)."""
        if self.gather <= 0 or not any(self._awaits(caller) for caller in self._awaited):
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await self._wait_for_awaited(loop, started + self.gather)
        GATHERS.labels(outcome).inc()
        GATHER_WAIT.observe(loop.time() - started)

    async def _wait_for_awaited(self, loop: asyncio.AbstractEventLoop, deadline: float) -> str:
        """Wait until the awaited callers are in, the batch is full or `deadline`: which came first."""
        while len(self._queue) < self.max_batch:
            if not any(self._awaits(caller) for caller in self._awaited):
                return "complete"
            if (left := deadline - loop.time()) <= 0:
                return "timeout"
            self._submitted.clear()
            try:
                async with asyncio.timeout(left):
                    await self._submitted.wait()
            except TimeoutError:
                return "timeout"
        return "full"

    def _awaits(self, caller: asyncio.Task[Any]) -> bool:
        """Whether `caller`, answered by the last batch, has not submitted since (nor ended). (After a quiet
        spell the first batch may so wait `gather` seconds once, for callers that had stopped.)"""
        watched = self._callers.get(caller)
        return watched is not None and watched.answered_at is not None and not caller.done()

    def _answered(self, entries: list[_Entry]) -> None:
        """Note the callers answered: the streaming ones among them are awaited by the next `_gather`."""
        if self.gather <= 0:
            return
        now = asyncio.get_running_loop().time()
        self._awaited = []
        for entry in entries:
            watched = self._callers.get(entry.caller) if entry.caller is not None else None
            if watched is not None:
                watched.answered_at = now
                if watched.streaming and entry.caller is not None:
                    self._awaited.append(entry.caller)

    async def _apply(self, batch: list[_Entry]) -> list[_Entry]:
        """Apply `batch` in one transaction; the entries left for the next batch."""
        batch, later = _one_per_person(batch)
        try:
            async with self.db.write() as conn:
                staged, failed, deferred = await self._apply_in(conn, batch)
        except _Resent as resent:  # answered alone, with the stored ACK; the rest are written again at once
            ROLLED_BACK.labels("resent").inc()
            for entry in resent.entries:
                entry.fail(ApplyAlone())
            return [e for e in batch if e not in resent.entries] + later
        except Exception as exc:  # noqa: BLE001 - rolled back: each message is applied alone, as without batching
            log.info("group commit of %d messages rolled back (%s); applying each alone", len(batch),
                     type(exc).__name__)
            ROLLED_BACK.labels("error").inc()
            for entry in batch:
                entry.fail(ApplyAlone())
            return later
        except BaseException:
            for entry in batch + later:
                entry.fail(ApplyAlone())
            raise
        BATCH_SIZE.observe(len(staged))
        for item in staged:
            item.entry.answer(item.entry.job.processed(item.record, item.message_id))
        for entry, error in failed:
            entry.fail(error)
        self._answered([item.entry for item in staged] + [entry for entry, _ in failed])
        return deferred + later

    async def _apply_in(self, conn: Any, batch: list[_Entry]
                        ) -> tuple[list[_Staged], list[tuple[_Entry, MappingError]], list[_Entry]]:
        """Locks, one read, each plan, one write, the transfers hooks: (written, failed, deferred)."""
        failed: list[tuple[_Entry, MappingError]] = []
        readable: list[tuple[_Entry, set[tuple[str, str]], list[tuple[str, str]]]] = []
        for entry in batch:
            try:
                apply.check_documents(entry.result.resources)
            except MappingError as exc:
                failed.append((entry, exc))
                continue
            readable.append((entry, *apply.state_keys(entry.result)))
        now = self.now()
        ids = await store.lock_and_reserve_many(conn, (k for e, _, _ in readable for k in e.lock_keys), len(readable))
        currents, candidates = await apply.read_state(
            conn, {k for _, wanted, _ in readable for k in wanted},
            sorted({i for _, _, identifiers in readable for i in identifiers}))
        staged: list[_Staged] = []
        deferred: list[_Entry] = []
        written: set[tuple[str, str]] = set()
        refreshed: set[int] = set()
        for (entry, wanted, identifiers), message_id in zip(readable, ids, strict=True):
            try:
                plan = await apply.prepare(conn, entry.result, event_time=message_event_time(entry.result),
                                           state=apply.state_view(currents, candidates, wanted, identifiers))
            except MappingError as exc:
                failed.append((entry, exc))
                continue
            touched = wanted | set(plan.currents) | {c.key for c in plan.changes}
            if touched & written or refreshed.intersection(plan.refreshed_sources):
                deferred.append(entry)  # it would read what an earlier message here writes
                continue
            record = entry.job.processed_record(entry.message, entry.result, plan, now)
            changes, sources = staged_changes(plan, entry.message, entry.sender, entry.result, message_id, now)
            written.update(c.key for c in changes)
            refreshed.update(plan.refreshed_sources)
            staged.append(_Staged(entry, message_id, record, changes, sources))
        if staged:
            versions = store.stamped_versions([c for s in staged for c in s.changes], now)
            versions += store.stamped_versions(await _transfer_changes(conn, staged, versions, currents, now), now)
            try:
                written = await store.write_messages(conn, versions, [s.sources for s in staged],
                                                     [(s.message_id, s.record) for s in staged])
            except store.DuplicateMessage as duplicate:
                raise _Resent([s.entry for s in staged if s.message_id in set(duplicate.args)]) from None
            new_tasks = [w.document for w in written if w.res_type == "Task" and w.created]
            await discharge.notify(conn, new_tasks, now)
        return staged, failed, deferred


async def _transfer_changes(conn: Any, staged: list[_Staged], versions: list[store.StampedVersion],
                            currents: dict[tuple[str, str], apply.Current], now: datetime) -> list[apply.Change]:
    """The transfers of care the batch's A03s raise (docs/transfers.md), before the batch's write: read
    through a `StoreReader` that sees the batch's `versions` as stored, so the document and Tasks are
    those raising them after the write would make, and they are written by the same statement."""
    if not any(discharge.discharged_encounter(s.entry.message, s.entry.result) for s in staged):
        return []
    pending = [Pending(v.document, v.current.pk if v.current is not None else None, v.patient_id) for v in versions]
    reader = StoreReader(conn, known=currents, pending=pending)
    raised: list[apply.Change] = []
    for item in staged:
        raised += await discharge.transfer_changes(reader, item.entry.message, item.entry.sender, item.entry.result,
                                                   now=now)
    return raised


def _one_per_person(batch: list[_Entry]) -> tuple[list[_Entry], list[_Entry]]:
    """The batch without any message about a person, or with a (sender, control id), already in it: those wait."""
    taken: list[_Entry] = []
    waiting: list[_Entry] = []
    locked: set[int] = set()
    keys: set[tuple[str, str]] = set()
    for entry in batch:
        if entry.lock_keys & locked or entry.dedupe_key in keys:
            waiting.append(entry)
            continue
        taken.append(entry)
        locked |= entry.lock_keys
        keys.add(entry.dedupe_key)
    return taken, waiting
