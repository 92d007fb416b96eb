"""Which adapter reads a sender's messages: `SenderConfig.kind` → adapter function.

An adapter is `(Message, SenderConfig) → MappingResult` and raises `MappingError`; adding a sender
of an existing kind is configuration, adding a kind is a module here and one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from adapters import community, hospital, mental_health
from adapters.hl7v2.parser import Message
from adapters.senders import SenderConfig
from mappings.result import MappingResult

Adapter = Callable[[Message, SenderConfig], MappingResult]

ADAPTERS: Mapping[str, Adapter] = MappingProxyType({
    "hospital": hospital.adapt,
    "community": community.adapt,
    "mental_health": mental_health.adapt,
})


def adapter_for(kind: str) -> Adapter:
    """The adapter for a sender kind; ValueError for a kind nobody wrote."""
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"no adapter for sender kind {kind!r} (known: {', '.join(sorted(ADAPTERS))})") from None
