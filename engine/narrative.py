"""Narrative safety: `text.div` must not carry active content.

FHIR R4 narrative rules txt-1/txt-2 (https://hl7.org/fhir/R4/narrative.html#xhtml): XHTML only, no
scripts, forms, frames, event handlers or `javascript:` URLs. A shared record is displayed in other
organisations' systems, so a narrative that could run code there is refused at the door.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_ACTIVE_ELEMENTS = re.compile(
    r"<\s*/?\s*(script|iframe|frame|frameset|object|embed|applet|form|input|button|meta|link|style|base)\b",
    re.IGNORECASE,
)
_EVENT_ATTRIBUTE = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)
_SCRIPT_URL = re.compile(r"(href|src|action)\s*=\s*[\"']?\s*(javascript|vbscript|data):", re.IGNORECASE)


def narrative_problem(div: str) -> str | None:
    """Why `div` is unsafe, or None."""
    if not div.lstrip().startswith("<div"):
        return "Narrative text.div must be an XHTML <div> element"
    if _ACTIVE_ELEMENTS.search(div):
        return "Narrative contains an element that is not allowed (script, form, frame, style, …)"
    if _EVENT_ATTRIBUTE.search(div):
        return "Narrative contains an event-handler attribute (on…=)"
    if _SCRIPT_URL.search(div):
        return "Narrative contains a script or data URL"
    return None


def narrative_issues(resource: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(expression, problem) for the resource's narrative and those of its contained resources."""
    text = resource.get("text")
    if isinstance(text, dict) and isinstance(text.get("div"), str):
        problem = narrative_problem(text["div"])
        if problem:
            yield f"{path}.text.div", problem
    for index, contained in enumerate(resource.get("contained") or []):
        if isinstance(contained, dict):
            yield from narrative_issues(contained, f"{path}.contained[{index}]")
