"""Fixtures for the document tests: the Leeds demo record loaded through the FHIR API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "fixtures" / "demo"
FHIR = "application/fhir+json"
ALICE_ADMISSION = "enc-alice-admission-2025-01"


def demo_bundles() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(DEMO.glob("0*.json"))]


@pytest.fixture
def demo_client(client) -> Iterator[Any]:
    """The authenticated TestClient (user/*.cruds, R8000 at RR8) over a store holding the demo record."""
    for bundle in demo_bundles():
        response = client.post("/fhir", json=bundle, headers={"Content-Type": FHIR})
        assert response.status_code == 200, response.text
    yield client
