"""More MLLP ingest processes beside the server's own: SHAREDCARE_MLLP_PROCESSES (docs/mllp.md, "Throughput").

Ingest is CPU-bound Python (parsing, mapping, index extraction, SQL round trips), so one process uses
one core. With `processes = N` the MLLP listener binds its port with SO_REUSEPORT and starts N - 1
worker processes (spawned: they import afresh and read the same environment) that bind the same port
the same way; the kernel hands each new connection to one of them. A connection stays with the process
that accepted it, so its messages are still processed one at a time in arrival order, and each ACK
still leaves only after its own commit. Writers in different processes are serialised per patient by
the same database locks that serialise concurrent connections in one process, and de-duplication is the
message row's unique key, so nothing else changes. Each worker has its own database pool
(SHAREDCARE_DB_POOL_SIZE) and its own metrics (the HTTP /metrics shows the first process's only).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from dataclasses import replace
from typing import Any

log = logging.getLogger("sharedcare.mllp")


def start_workers(count: int, port: int, log_level: int) -> list[multiprocessing.process.BaseProcess]:
    """Start `count` ingest processes listening on `port` (SO_REUSEPORT) and wait until each listens."""
    context = multiprocessing.get_context("spawn")
    workers = []
    for number in range(1, count + 1):
        ready = context.Event()
        worker = context.Process(target=worker_main, args=(port, log_level, ready, os.getpid()),
                                 name=f"sharedcare-mllp-{number}", daemon=True)
        worker.start()
        while worker.is_alive() and not ready.wait(0.1):
            pass
        if not worker.is_alive():
            log.error("an MLLP ingest process did not start", extra={"fields": {"exitcode": worker.exitcode}})
            continue
        workers.append(worker)
    return workers


def stop_workers(workers: list[multiprocessing.process.BaseProcess], grace: float) -> None:
    """SIGTERM each worker (it acknowledges what it received, then exits); kill what outlives `grace`."""
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join(grace + 5)
        if worker.is_alive():
            log.warning("an MLLP ingest process did not stop in time; killing it")
            worker.kill()
            worker.join(5)


def worker_main(port: int, log_level: int, ready: Any, parent_pid: int) -> None:
    """Entry point of a worker process: the settings and the listener's configuration from the environment;
    it serves as the `--workers` MLLP child does (engine.serve) and stops with its parent."""
    from engine.config import load_settings
    from engine.mllp_server import mllp_config_from_env
    from engine.observability import configure_logging
    from engine.serve import run_event_loop, serve_mllp_only

    configure_logging(logging.getLevelName(log_level))
    config = replace(mllp_config_from_env(port), processes=1, reuse_port=True)
    run_event_loop(serve_mllp_only(load_settings(), config, ready, parent_pid))
