"""The delivery worker: sends the outbox's notifications with httpx, retrying until they are acknowledged.

One asyncio task per process (several processes may run one each: claims are exclusive, see
engine/transfers/store.py). Each round it activates requested Subscriptions, claims due
notifications, sends them concurrently and records every attempt. The outbox is the truth: a worker
that stops or is killed loses nothing — its claims lapse after `lease_seconds` and any worker takes
them again.

A notification is an HTTP request fixed when its event was written (R4 rest-hook semantics:
engine/transfers/subscriptions.py) plus these headers:

- `X-Sharedcare-Delivery-Id` and `Idempotency-Key`: the notification's key, the same on every
  attempt — a receiver that answered 2xx but whose answer was lost sees the same key again and
  can ignore the repeat;
- `X-Sharedcare-Event` (task-requested, task-status), `X-Sharedcare-Attempt` (1, 2, …),
  `X-Sharedcare-Focus` (`Task/[id]/_history/[version]`), and for Subscriptions
  `X-Sharedcare-Subscription` (`Subscription/[id]`).

2xx is an acknowledgement; anything else (another status, a refused connection, a timeout) is a
failed attempt, retried on the schedule of engine/transfers/backoff.py and dead-lettered when the
retry window closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import httpx

from engine.db.database import Database
from engine.db.repository import format_instant, utc_now
from engine.transfers import store
from engine.transfers.config import TransfersConfig
from engine.transfers.store import AttemptResult, OutboxRow
from engine.transfers.subscriptions import (
    FHIR_JSON,
    SubscriptionError,
    parse_subscription,
    stored_subscription,
)

log = logging.getLogger("sharedcare.transfers.delivery")
USER_AGENT = "sharedcare-transfers/1"


def notification_headers(row: OutboxRow) -> dict[str, str]:
    """The headers of the next attempt at `row` (pure)."""
    headers = {name: value for name, value in row.headers}
    headers.update({
        "User-Agent": USER_AGENT,
        "X-Sharedcare-Delivery-Id": row.delivery_key,
        "Idempotency-Key": row.delivery_key,
        "X-Sharedcare-Event": row.event,
        "X-Sharedcare-Attempt": str(row.attempts + 1),
        "X-Sharedcare-Focus": f"Task/{row.task_id}/_history/{row.task_version}",
    })
    if row.target_kind == store.SUBSCRIPTION:
        headers["X-Sharedcare-Subscription"] = f"Subscription/{row.target_ref}"
    if row.body is not None:
        headers["Content-Type"] = FHIR_JSON
    return headers


def describe_error(exc: BaseException) -> str:
    """A short, stable description of a failed send for the attempt log (no stack trace)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class DeliveryWorker:
    """Delivers the outbox. `run_once` is one round (tests drive it); `start`/`stop` run it in the background."""

    def __init__(self, db: Database, config: TransfersConfig, *, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], datetime] = utc_now, worker_id: str | None = None,
                 draw: Callable[[], float] = random.random) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self.draw = draw
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._client = client
        self._owns_client = client is None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_seconds, follow_redirects=False)
        return self._client

    # -- one round ------------------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Activate Subscriptions, then claim, send and record one batch; the number of attempts made."""
        await self.activate_subscriptions()
        async with self.db.read() as conn:
            if not await store.anything_due(conn, self.clock()):
                return 0
        async with self.db.write() as conn:
            rows = await store.claim(conn, self.worker_id, self.clock(), self.config.lease_seconds,
                                     self.config.batch_size)
        if rows:
            await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def _deliver(self, row: OutboxRow) -> None:
        result = await self.send(row)
        async with self.db.write() as conn:
            state = await store.record_attempt(conn, row, result, self.worker_id, self.config.retry, self.draw())
        level = logging.INFO if state != store.PENDING else logging.WARNING
        log.log(level, "notification %s", state, extra={"fields": {
            "outbox_id": row.id, "task": row.task_id, "attempt": row.attempts + 1, "url": row.url,
            "status_code": result.status_code, "error": result.error}})

    async def send(self, row: OutboxRow) -> AttemptResult:
        """One HTTP attempt; never raises for what the network or the receiver does."""
        started = self.clock()
        try:
            response = await self.client.request(row.method, row.url, headers=notification_headers(row),
                                                 content=row.body.encode() if row.body is not None else b"",
                                                 timeout=self.config.timeout_seconds)
        except httpx.HTTPError as exc:
            return AttemptResult(started, self.clock(), None, describe_error(exc))
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        return AttemptResult(started, self.clock(), response.status_code, error)

    async def activate_subscriptions(self) -> int:
        """requested → active for well-formed Subscriptions, → error (with the reason) for others."""
        async with self.db.read() as conn:
            waiting = await store.requested_subscriptions(conn)
        if not waiting:
            return 0
        now = self.clock()
        async with self.db.write() as conn:
            for sub in waiting:
                try:
                    parse_subscription(sub.content)
                    status, error = "active", None
                except SubscriptionError as exc:
                    status, error = "error", exc.message
                content = stored_subscription(sub.content, sub.id, status, sub.version_id + 1, format_instant(now),
                                              error)
                await store.save_subscription(conn, content, now)
        return len(waiting)

    # -- running in the background --------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll (e.g. right after an event in this process)."""
        self._wake.set()

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                busy = await self.run_once() >= self.config.batch_size
            except Exception:  # the database may be away for a while: keep going, say so once a round
                log.exception("delivery round failed")
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
                self._wake.clear()

    def start(self) -> asyncio.Task[None]:
        self._stop.clear()
        self._task = asyncio.create_task(self.run_forever(), name=f"delivery-{self.worker_id}")
        return self._task

    async def stop(self) -> None:
        """Stop after the round in progress (its attempts are recorded); close the HTTP client."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


@contextlib.asynccontextmanager
async def delivery_worker(db: Database, config: TransfersConfig) -> AsyncIterator[DeliveryWorker | None]:
    """The worker running in the background while open (None when SHAREDCARE_DELIVERY_ENABLED=0)."""
    if not config.delivery_enabled:
        yield None
        return
    worker = DeliveryWorker(db, config)
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def _main() -> None:
    """`python -m engine.transfers.delivery`: a stand-alone worker on SHAREDCARE_DATABASE_URL until signalled."""
    import signal

    from engine.config import load_settings
    from engine.db.database import open_database
    from engine.observability import configure_logging
    from engine.transfers.config import load_transfers_config

    configure_logging()
    db = open_database(load_settings().database_url)
    config = load_transfers_config()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = DeliveryWorker(db, config)
    worker.start()
    await stop.wait()
    await worker.stop()
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(_main())
