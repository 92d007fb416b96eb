"""HTTP details of the FHIR RESTful API: formats, Prefer, If-Match, request bodies.

https://hl7.org/fhir/R4/http.html — pure functions over header values.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from engine import outcomes

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_XML_FORMATS = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir"}


def check_format(format_param: str | None, accept: str | None) -> None:
    """406 unless the client accepts JSON; `_format` overrides Accept (https://hl7.org/fhir/R4/http.html#mime-type)."""
    if format_param:
        value = format_param.strip().lower()
        if value in _JSON_FORMATS or value.startswith("application/fhir+json"):
            return
        raise outcomes.not_acceptable(format_param)
    if not accept:
        return
    for media in accept.split(","):
        media_type = media.split(";")[0].strip().lower()
        if media_type in _JSON_TYPES or media_type in {"*/*", "application/*", ""}:
            return
    raise outcomes.not_acceptable(accept)


def parse_body(content_type: str | None, body: bytes, limit: int) -> Any:
    """The JSON body of a create/update/transaction, or the right OperationOutcome error."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise outcomes.unsupported_media_type(media_type or "(none)")
    if len(body) > limit:
        raise outcomes.too_large(limit)
    if not body.strip():
        raise outcomes.bad_request("The request body is empty", details_code="empty-body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise outcomes.bad_request(f"The request body is not valid JSON: {exc}", details_code="malformed-json") from None


def prefer_return(prefer: str | None) -> str:
    """`Prefer: return=minimal|representation|OperationOutcome`; representation by default."""
    match = re.search(r"return\s*=\s*\"?([A-Za-z]+)", prefer or "")
    value = match.group(1) if match else "representation"
    return value if value in {"minimal", "representation", "OperationOutcome"} else "representation"


def prefer_lenient(prefer: str | None) -> bool:
    """`Prefer: handling=lenient` (https://hl7.org/fhir/R4/search.html#errors)."""
    return bool(re.search(r"handling\s*=\s*\"?lenient", prefer or ""))


def parse_if_match(value: str | None) -> int | None:
    """`If-Match: W/"3"` → 3; 400 when it is not a version ETag."""
    if value is None or not value.strip():
        return None
    match = re.fullmatch(r'\s*(?:W/)?"?(\d+)"?\s*', value)
    if not match:
        raise outcomes.bad_request(f"If-Match must be a version ETag such as W/\"1\", not {value!r}",
                                   details_code="bad-if-match")
    return int(match.group(1))


def parse_version(value: str) -> int:
    if not value.isdigit():
        raise outcomes.not_found("version", value)
    return int(value)
