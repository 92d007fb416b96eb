"""`sharedcare serve`: the FHIR API over HTTP and the HL7 v2 MLLP listener, started and stopped together.

- `workers == 1`: one process, one event loop — `uvicorn.Server.serve()` and the MLLP server side by
  side. SIGTERM or SIGINT stops both: neither accepts any more, HTTP requests and received HL7
  messages in progress are finished (a second SIGINT cuts that short), then the process exits.
- `workers > 1`: HTTP through uvicorn's multi-worker supervisor in this process; the MLLP server in
  one child process of its own (multiprocessing, spawn), started first (a port already in use fails
  the start) and stopped after the HTTP workers. The child exits by itself if its parent dies.

`SHAREDCARE_MLLP_PORT=0` serves HTTP only. The listener's other settings (`SHAREDCARE_MLLP_HOST`,
TLS, limits) are read by `engine.mllp_server.mllp_config_from_env`; docs/mllp.md lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from engine.config import Settings
from engine.http_protocol import NoDelayHttpProtocol
from engine.mllp_server import MllpConfig, MllpServer, mllp_config_from_env
from engine.observability import configure_logging

log = logging.getLogger("sharedcare.serve")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(settings: Settings, host: str, port: int, workers: int = 1, log_level: str = "info") -> int:
    """Serve HTTP on `host:port` and MLLP on `SHAREDCARE_MLLP_HOST:settings.mllp_port` until signalled."""
    configure_logging(log_level.upper())
    try:
        mllp = mllp_config_from_env(settings.mllp_port) if settings.mllp_port else None
    except (OSError, ValueError) as exc:  # a TLS file missing or unreadable, a bad number: say which
        log.error("the MLLP listener's configuration is not usable", extra={"fields": {"error": str(exc)}})
        return 2
    if workers <= 1:
        return run_event_loop(_serve_one_process(settings, host, port, mllp))
    return _serve_with_workers(settings, host, port, workers, log_level, mllp)


def run_event_loop(main: Any) -> Any:
    """Run `main` on uvloop where it is installed (as uvicorn's own workers do), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency except on Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def tune_garbage_collection() -> None:
    """Collect garbage less often in a serving process (HTTP, and the MLLP-only ingest processes).

    Each request allocates thousands of short-lived objects, so CPython's default first-generation
    threshold (700) runs a collection every few requests, and every full collection walks all that
    start-up left (modules, the app, the policy). Start-up objects are moved out of the collector's
    sight (`gc.freeze`) and the first generation is collected every 20,000 allocations: measured with
    bench/read_search.py, the 99th-percentile latency of reads and searches roughly halves.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def served_app() -> Any:
    """The application for uvicorn's worker processes (`--workers` > 1), with the collector tuned."""
    from engine.api.app import create_app

    app = create_app()
    tune_garbage_collection()
    return app


# -- one process ------------------------------------------------------------------------------------


class _HttpServer(uvicorn.Server):
    """uvicorn's server with its signal handling left to `run`, which stops HTTP and MLLP together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_one_process(settings: Settings, host: str, port: int, mllp: MllpConfig | None) -> int:
    from engine.api.app import create_app

    app = create_app(settings)
    tune_garbage_collection()
    http = _HttpServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                      access_log=False, lifespan="on", http=NoDelayHttpProtocol))
    stop = asyncio.Event()
    listener: MllpServer | None = None

    def hurry() -> None:
        http.force_exit = True
        if listener is not None:
            listener.abort()

    with _stop_signals(stop, on_second_interrupt=hurry):
        async with contextlib.AsyncExitStack() as stack:
            try:
                listener = await stack.enter_async_context(mllp_service(settings, mllp)) if mllp else None
            except OSError as exc:  # the port is taken, or the interface does not exist
                log.error("the MLLP listener could not start", extra={"fields": {"error": str(exc)}})
                return 1
            serving = asyncio.create_task(_serve_http(http))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            http.should_exit = True
            if listener is not None:  # both drain at once: HTTP requests and received HL7 messages
                await asyncio.gather(serving, listener.stop())
            return await serving


async def _serve_http(http: uvicorn.Server) -> int:
    """uvicorn's serve(), with its start-up failure (it calls sys.exit, e.g. on a port in use) as an exit code."""
    try:
        await http.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@contextlib.contextmanager
def _stop_signals(stop: asyncio.Event, on_second_interrupt: Any = None) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set() and sig == signal.SIGINT and on_second_interrupt is not None:
            log.warning("second interrupt: not waiting for work in progress")
            on_second_interrupt()
        log.info("stopping", extra={"fields": {"signal": sig.name}})
        stop.set()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def mllp_service(settings: Settings, config: MllpConfig) -> AsyncIterator[MllpServer]:
    """The MLLP listener wired to the ingest pipeline on `settings.database_url`, listening while open."""
    from engine.ingest.pipeline import ingest_message

    async with ingest_context(settings) as ctx:
        server = MllpServer(ingest_message, ctx, config)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def ingest_context(settings: Settings) -> AsyncIterator[Any]:
    """The pipeline's context for this process — its own database pool, the senders from
    SHAREDCARE_SENDERS_FILE (engine/ingest/senders.py) — disposed on exit."""
    from engine.db.database import open_database
    from engine.ingest.group_commit import GroupCommit
    from engine.ingest.pipeline import IngestContext

    db = open_database(settings.database_url)
    try:
        ctx = IngestContext.from_environment(db)
        ctx.group_commit = GroupCommit.from_environment(db, ctx.moment)
        yield ctx
    finally:
        await db.dispose()


# -- several workers: MLLP in a child process -----------------------------------------------------------


def _serve_with_workers(settings: Settings, host: str, port: int, workers: int, log_level: str,
                        mllp: MllpConfig | None) -> int:
    supervisor = _MllpSupervisor(settings, log_level, mllp.shutdown_grace + 5) if mllp else None
    if supervisor is not None and not supervisor.start():
        return 1
    try:
        uvicorn.run("engine.serve:served_app", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False, http="engine.http_protocol:NoDelayHttpProtocol")
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


class _MllpSupervisor:
    """Keeps the MLLP child process running beside uvicorn's workers; restarts it if it dies."""

    def __init__(self, settings: Settings, log_level: str, stop_timeout: float) -> None:
        self.settings, self.log_level, self.stop_timeout = settings, log_level, stop_timeout
        self.child: multiprocessing.process.BaseProcess | None = None
        self.stopping = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="mllp-supervisor", daemon=True)

    def start(self) -> bool:
        """Start the child and wait until it listens; False (logged) when it could not start."""
        self.child = _start_mllp_process(self.settings, self.log_level)
        if not self.child.is_alive():
            log.error("the MLLP listener did not start", extra={"fields": {"exitcode": self.child.exitcode}})
            return False
        self.watcher.start()
        return True

    def _watch(self) -> None:
        delay = 1.0
        while not self.stopping.wait(delay):
            child = self.child
            # Exit status 0 is a requested stop (a Ctrl-C reaches the whole process group): no restart.
            if child is not None and not child.is_alive() and child.exitcode != 0:
                log.error("the MLLP listener exited; restarting it", extra={"fields": {"exitcode": child.exitcode}})
                self.child = _start_mllp_process(self.settings, self.log_level)
                delay = 1.0 if self.child.is_alive() else min(delay * 2, 30.0)

    def stop(self) -> None:
        self.stopping.set()
        if self.watcher.is_alive():
            self.watcher.join(5)
        if self.child is not None:
            _stop_process(self.child, self.stop_timeout)


def _start_mllp_process(settings: Settings, log_level: str) -> multiprocessing.process.BaseProcess:
    """Start the MLLP child and wait until it listens (or has failed)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_mllp_process_main, args=(settings, log_level, ready, os.getpid()),
                            name="sharedcare-mllp", daemon=False)
    child.start()
    while child.is_alive() and not ready.wait(0.1):
        pass
    return child


def _stop_process(child: multiprocessing.process.BaseProcess, timeout: float) -> None:
    if child.is_alive():
        os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
        child.join(timeout)
    if child.is_alive():
        log.warning("the MLLP listener did not stop in time; killing it")
        child.kill()
        child.join(5)


def _mllp_process_main(settings: Settings, log_level: str, ready: Any, parent_pid: int) -> None:
    """Entry point of the MLLP child process (spawned: imports afresh, reads the same environment)."""
    configure_logging(log_level.upper())
    config = mllp_config_from_env(settings.mllp_port)
    metrics_port = int(os.environ.get("SHAREDCARE_MLLP_METRICS_PORT") or 0)
    if metrics_port:  # the HTTP workers' /metrics cannot see this process's counters
        from prometheus_client import start_http_server

        from engine.observability import REGISTRY

        start_http_server(metrics_port, addr=config.host, registry=REGISTRY)
    try:
        run_event_loop(serve_mllp_only(settings, config, ready, parent_pid))
    except OSError as exc:
        log.error("the MLLP listener could not start", extra={"fields": {"error": str(exc)}})
        sys.exit(1)


async def serve_mllp_only(settings: Settings, config: MllpConfig, ready: Any, parent_pid: int) -> None:
    """Serve MLLP until SIGTERM/SIGINT or until the parent process `parent_pid` has gone."""
    stop = asyncio.Event()
    with _stop_signals(stop):
        async with mllp_service(settings, config) as server:
            tune_garbage_collection()  # a message allocates thousands of objects too: ~12 % less CPU per message
            ready.set()
            watch = asyncio.create_task(_watch_parent(parent_pid, stop))
            await stop.wait()
            watch.cancel()
            await server.stop()


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the supervising process has gone (killed without a chance to stop us)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1)
    log.warning("parent process gone; stopping the MLLP listener")
    stop.set()
