"""Deterministic resource ids from source identifiers (DESIGN.md principle 4).

The same identifier from the same sender always yields the same id, so replays and re-sends
update rather than duplicate. Ids are uuid5 in a sharedcare namespace over a `|`-joined key.
"""

from __future__ import annotations

import functools
import uuid

NAMESPACE = uuid.UUID("6f1c7a2e-3b0d-5c4e-9a8f-2d1e0b7c6a51")


def resource_id(resource_type: str, *parts: str) -> str:
    """`resource_id("Encounter", "RR8", "V123")` → a stable uuid string for that Encounter."""
    return _uuid5("|".join([resource_type, *(p.strip() for p in parts)]))


@functools.lru_cache(maxsize=65536)
def _uuid5(key: str) -> str:
    # The same organisations, clinicians, wards and code systems recur in message after message.
    return str(uuid.uuid5(NAMESPACE, key))
