"""Request logging and Prometheus metrics, as one pure ASGI middleware.

One structured log line per request — method, route template, status, duration, user id,
request id — and never a query string, a path with ids filled in, or a body: those may carry a
patient's identifiers. `/metrics` exposes request counts and latency by route and status.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sharedcare.request")

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("sharedcare_http_requests_total", "HTTP requests by route template and status",
                   ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("sharedcare_http_request_duration_seconds", "HTTP request latency by route template and status",
                    ["method", "route", "status"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def metrics_text() -> bytes:
    return generate_latest(REGISTRY)


def route_template(scope: Scope) -> str:
    """The matched route's template (`/fhir/{type}/{id}`), never the concrete path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class JsonLogFormatter(logging.Formatter):
    """Log records as JSON lines; `extra={"fields": {...}}` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    # Our lines carry no source file or line: skip logging's stack walk for them on every call (the
    # logging HOWTO's "Optimization" section).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("sharedcare")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class ObservabilityMiddleware:
    """Times each HTTP request, logs it once and counts it by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            _counter(method, route, status).inc()
            _histogram(method, route, status).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info("request", extra={"fields": {
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "user": scope["state"].get("user_id"),
                    "request_id": request_id,
                }})


@lru_cache(maxsize=4096)
def _counter(method: str, route: str, status: int) -> Any:
    """The request counter's child for these labels (looked up once: routes are templates, not paths)."""
    return REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=4096)
def _histogram(method: str, route: str, status: int) -> Any:
    return LATENCY.labels(method, route, str(status))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")[:64]
            if candidate.replace("-", "").isalnum():
                return candidate
    return uuid.uuid4().hex
