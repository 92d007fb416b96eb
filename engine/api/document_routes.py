"""Transfer-of-care document endpoints: $transfer-of-care, Composition $document, HTML rendering, receiving documents."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from engine.fhir.rest import FhirRequest, FhirResponse

Handle = Callable[[Request, Callable[[FhirRequest], Awaitable[FhirResponse]]], Awaitable[Response]]


def install(app: FastAPI, handle: Handle, state_of: Callable[[Request], Any]) -> None:
    """Add this module's routes; `handle` authenticates and renders like every /fhir route."""
