"""Deterministic ids of stored documents (pure): one DocumentReference per encounter and document type."""

from __future__ import annotations

import uuid

# uuid5 namespace for DocumentReference ids (one per encounter and document type).
DOCUMENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://sharedcare.dev/documents")


def reference_id_for(encounter_id: str, doc_type: str) -> str:
    """The DocumentReference id of `doc_type` for an encounter: the same at every reissue."""
    return str(uuid.uuid5(DOCUMENT_NAMESPACE, f"Encounter/{encounter_id}|{doc_type}"))
