"""Which map handles which message: `"ADT^A01"` → its function (HL7 v2 MSH-9.1 ^ MSH-9.2).

One table, assembled from the per-domain modules; an unknown message type or event is rejected
(AR) with HL7 table 0357 code 200 or 201, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from adapters.hl7v2.parser import Message
from adapters.senders import SenderConfig
from mappings.result import (
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    ErrorLocation,
    MappingError,
    MappingResult,
)

MessageMap = Callable[[Message, SenderConfig], MappingResult]


@cache
def message_maps() -> dict[str, MessageMap]:
    from mappings.hl7v2.adt import ADT_MAPS
    from mappings.hl7v2.documents import DOCUMENT_MAPS
    from mappings.hl7v2.orders import ORDER_MAPS
    from mappings.hl7v2.results import RESULT_MAPS
    from mappings.hl7v2.scheduling import SCHEDULING_MAPS

    return {**ADT_MAPS, **RESULT_MAPS, **ORDER_MAPS, **DOCUMENT_MAPS, **SCHEDULING_MAPS}


def supported_message_types() -> list[str]:
    return sorted(message_maps())


def map_for(message: Message) -> MessageMap:
    """The map for `message`, or a rejecting MappingError naming MSH-9."""
    key = f"{message.message_code}^{message.trigger}"
    maps = message_maps()
    if key in maps:
        return maps[key]
    known_codes = {k.split("^")[0] for k in maps}
    if message.message_code in known_codes:
        raise MappingError(UNSUPPORTED_EVENT_CODE, f"Event {key} is not supported",
                           ErrorLocation("MSH", 1, 9, 1, 2), reject=True)
    raise MappingError(UNSUPPORTED_MESSAGE_TYPE, f"Message type {message.message_code or '(none)'} is not supported",
                       ErrorLocation("MSH", 1, 9, 1, 1), reject=True)


def map_message(message: Message, sender: SenderConfig) -> MappingResult:
    return map_for(message)(message, sender)
