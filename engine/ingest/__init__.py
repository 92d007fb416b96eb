"""HL7 v2 ingestion, the engine side: store, de-duplicate, match identity, apply, acknowledge.

`ingest_message` is the entry point every transport uses (MLLP, files, replay);
docs/hl7v2-ingest.md describes the pipeline and its guarantees.
"""

from engine.ingest.pipeline import IngestContext, IngestOutcome, IngestUnavailable, ingest_message

__all__ = ["IngestContext", "IngestOutcome", "IngestUnavailable", "ingest_message"]
