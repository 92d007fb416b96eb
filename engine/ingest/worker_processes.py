"""More MLLP ingest processes beside the server's own: SHAREDCARE_MLLP_PROCESSES (docs/mllp.md, "Throughput").

Ingest is CPU-bound Python (parsing, mapping, index extraction, SQL round trips), so one process uses
one core. With `processes = N` the MLLP listener starts N - 1 worker processes (spawned: they import
afresh and read the same environment), each joined to it by a Unix socket pair. The listener alone
accepts connections, and gives each new one to the process — itself or a worker — holding the fewest
open connections (ties take turns): the accepted socket travels over the pair (SCM_RIGHTS), before any
byte of it is read and before its TLS handshake, and the worker serves it from there; each worker
writes a byte back on the pair when a connection it was given closes, so the counts stay true.
(Binding the port in every process with SO_REUSEPORT, as before, let the kernel spread connections by
a hash of their addresses: 8 connections often split 2 / 6 or worse between 2 processes, and one
process was saturated while the other idled.)

A connection stays with the process that serves it, so its messages are still processed one at a time
in arrival order, and each ACK still leaves only after its own commit. Writers in different processes
are serialised per patient by the same database locks that serialise concurrent connections in one
process, and de-duplication is the message row's unique key, so nothing else changes. Each worker has
its own database pool (SHAREDCARE_DB_POOL_SIZE) and its own metrics (the HTTP /metrics shows the first
process's only). A worker that stops, or whose pair breaks, is given no more connections.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("sharedcare.mllp")


@dataclass(eq=False)
class Worker:
    """An ingest process, seen from the listener: its end of the pair and the connections it holds."""

    process: multiprocessing.process.BaseProcess
    channel: socket.socket  # the listener's end of the pair, non-blocking
    connections: int = 0
    alive: bool = True

    def hand(self, accepted: socket.socket) -> bool:
        """Give `accepted` to this process (closing it here); False when it cannot take it now."""
        if not self.alive:
            return False
        try:
            socket.send_fds(self.channel, [b"c"], [accepted.fileno()])
        except BlockingIOError:  # its end is not being read just now: serve it elsewhere
            return False
        except OSError:
            self.alive = False
            return False
        accepted.close()
        self.connections += 1
        return True

    def hear(self) -> bool:
        """Read what the process wrote back — a byte per connection closed; False once its end has closed."""
        try:
            data = self.channel.recv(4096)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.alive = False
            return False
        self.connections = max(0, self.connections - data.count(b"-"))
        return True


def start_workers(count: int, log_level: int) -> list[Worker]:
    """Start `count` ingest processes, each joined by a socket pair, and wait until each is serving."""
    context = multiprocessing.get_context("spawn")
    workers = []
    for number in range(1, count + 1):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ready = context.Event()
        process = context.Process(target=worker_main, args=(theirs, log_level, ready, os.getpid()),
                                  name=f"sharedcare-mllp-{number}", daemon=True)
        process.start()
        while process.is_alive() and not ready.wait(0.1):
            pass
        theirs.close()  # the worker has its own copy now
        if not process.is_alive():
            log.error("an MLLP ingest process did not start", extra={"fields": {"exitcode": process.exitcode}})
            ours.close()
            continue
        ours.setblocking(False)
        workers.append(Worker(process, ours))
    return workers


def stop_workers(workers: list[Worker], grace: float) -> None:
    """SIGTERM each worker (it acknowledges what it received, then exits); kill what outlives `grace`."""
    for worker in workers:
        worker.alive = False
        if worker.process.is_alive() and worker.process.pid is not None:
            os.kill(worker.process.pid, signal.SIGTERM)
    for worker in workers:
        worker.process.join(grace + 5)
        if worker.process.is_alive():
            log.warning("an MLLP ingest process did not stop in time; killing it")
            worker.process.kill()
            worker.process.join(5)


def worker_main(channel: socket.socket, log_level: int, ready: Any, parent_pid: int) -> None:
    """Entry point of a worker process: the settings and the listener's configuration from the environment;
    it serves the connections handed to it over `channel` as the `--workers` MLLP child does (engine.serve)
    and stops with its parent."""
    from engine.config import load_settings
    from engine.mllp_server import mllp_config_from_env
    from engine.observability import configure_logging
    from engine.serve import run_event_loop, serve_mllp_only

    configure_logging(logging.getLevelName(log_level))
    config = replace(mllp_config_from_env(0), processes=1, handoff_fd=channel.detach())
    run_event_loop(serve_mllp_only(load_settings(), config, ready, parent_pid))
