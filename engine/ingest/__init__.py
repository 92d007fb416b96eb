"""HL7 v2 ingestion, the engine side: store, de-duplicate, match identity, apply, acknowledge.

`ingest_message` is the entry point every transport uses (MLLP, files, replay);
docs/hl7v2-ingest.md describes the pipeline and its guarantees. The names below are loaded on first
use, so that the write-side modules (`engine.ingest.apply`, `engine.ingest.store`) can be imported by
the transfers and documents code the pipeline itself calls, without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["IngestContext", "IngestOutcome", "IngestUnavailable", "ingest_message"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("engine.ingest.pipeline"), name)
    raise AttributeError(f"module 'engine.ingest' has no attribute {name!r}")
