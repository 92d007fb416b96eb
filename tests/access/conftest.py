"""The access tests' record and users: a small Leeds record (tests/access/test_access_http.py) loaded by
a backend service, and tokens for users of any organisation and role."""

from __future__ import annotations

from typing import Any

import pytest

from tests.access.test_access_http import FHIR, RECORD


@pytest.fixture
def record(client) -> Any:
    for document in RECORD:
        response = client.put(f"/fhir/{document['resourceType']}/{document['id']}", json=document,
                              headers={"Content-Type": FHIR})
        assert response.status_code in {200, 201}, response.text
    return client


@pytest.fixture
def as_user(make_token):
    def headers(org: str = "RR8", role: str = "R8000", user: str | None = None, **extra: str) -> dict[str, str]:
        token = make_token("user/*.cruds", role=role, org=org, user=user or f"{org}-{role}")
        return {"Authorization": f"Bearer {token}", **extra}
    return headers
